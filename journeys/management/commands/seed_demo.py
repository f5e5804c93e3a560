import argparse
import time

from django.core.management.base import BaseCommand, OutputWrapper

from contacts import roles
from journeys.demo.services import (
    CONSOLE_CHANNEL,
    DAILY_HISTORY_UP_TO,
    DEFAULT_CONTACTS,
    DEFAULT_EVENTS_PER_CONTACT,
    DEFAULT_SEED,
    DEMO_PASSWORD,
    DEMO_STORE,
    DEMO_USERNAME,
    HISTORY_DAYS,
    LEAD_SCORE_THRESHOLD,
    LEAD_SCORES_INLINE_UP_TO,
    WEEKLY,
    LeadScoringResult,
    demo_seed,
)

BAR_WIDTH = 30
# Redraw at most this often on a terminal; elsewhere (logs, CI) print a line per tenth.
REDRAW_SECONDS = 0.2
ROLE_NOTES = {
    roles.STORE_STAFF: f"store staff of {DEMO_STORE['name']}, sees only that store's customers",
    roles.ANALYST: "analyst, reads everything, changes nothing, phones and emails masked",
}


def positive_int(raw: str) -> int:
    value = int(raw)
    if value < 1:
        raise argparse.ArgumentTypeError("must be at least 1")
    return value


def _duration(seconds: float) -> str:
    seconds = int(seconds)
    return f"{seconds // 3600}:{seconds // 60 % 60:02d}:{seconds % 60:02d}"


class ProgressBar:
    """A one-line progress bar with rate and ETA, redrawn in place on a terminal."""

    def __init__(self, stream: OutputWrapper):
        self.stream = stream
        self.tty = stream.isatty()
        self.started = time.monotonic()
        self.last_draw = 0.0
        self.last_tenth = -1
        self.drawn = False

    def update(self, done: int, total: int, rows: int) -> None:
        now = time.monotonic()
        if done == 0:
            self.started = now  # the clock starts with the load, not with the command
            return
        tenth = done * 10 // total
        if self.tty and now - self.last_draw < REDRAW_SECONDS and done < total:
            return
        if not self.tty and tenth == self.last_tenth:
            return
        self.last_draw, self.last_tenth = now, tenth
        elapsed = max(now - self.started, 1e-6)
        rate = done / elapsed
        eta = (total - done) / rate if rate else 0
        filled = BAR_WIDTH * done // total
        line = (
            f"[{'#' * filled}{'-' * (BAR_WIDTH - filled)}] {100 * done / total:5.1f}%  "
            f"{done:,}/{total:,} contacts  {rate:,.0f} contacts/s  {rows / elapsed:,.0f} rows/s  "
            f"ETA {_duration(eta)}"
        )
        if self.tty:
            self.stream.write(f"\r{line}\x1b[K", style_func=str, ending="")
            self.stream.flush()
            self.drawn = True
        else:
            self.stream.write(line, style_func=str)

    def say(self, message: str) -> None:
        """Print a message on a line of its own, below the bar."""
        self.close()
        self.stream.write(message, style_func=str)

    def close(self) -> None:
        """End the bar's line; safe to call more than once."""
        if self.drawn:
            self.stream.write("", style_func=str)
            self.drawn = False


class Command(BaseCommand):
    help = (
        "Load realistic demo data: Chinese contacts with WeChat identities, 90 days of events, "
        "tags, members and points, the custom fields they carry (肤质, 常去门店), segments with "
        f"{HISTORY_DAYS} days of size history worked out from the data (a point a day, or a "
        f"point every {WEEKLY} days above {DAILY_HISTORY_UP_TO:,} contacts), RFM layers and "
        "KOC influence computed as the nightly passes do, lead-scoring rules (purchase, add to "
        f"cart, product views, a profile fit) with a threshold of {LEAD_SCORE_THRESHOLD} for "
        f"意向 and the lead scores they give (worked out here up to "
        f"{LEAD_SCORES_INLINE_UP_TO:,} contacts; above, by the worker in the background), and a "
        "live journey. Safe to run again: existing demo data is kept and nothing is duplicated."
    )

    def add_arguments(self, parser):
        parser.add_argument(
            "--contacts",
            type=positive_int,
            default=DEFAULT_CONTACTS,
            help=f"How many contacts to generate (default {DEFAULT_CONTACTS}).",
        )
        parser.add_argument(
            "--events-per-contact",
            type=positive_int,
            default=DEFAULT_EVENTS_PER_CONTACT,
            help=f"Average events per contact (default {DEFAULT_EVENTS_PER_CONTACT}).",
        )
        parser.add_argument(
            "--seed",
            type=int,
            default=DEFAULT_SEED,
            help="Random seed; the same seed on an empty database gives the same data.",
        )

    def handle(self, *args, contacts: int, events_per_contact: int, seed: int, **options):
        bar = ProgressBar(self.stderr)
        bar.say(f"Generating {contacts:,} contacts (seed {seed}) …")
        result = demo_seed(
            contacts=contacts,
            events_per_contact=events_per_contact,
            seed=seed,
            progress=bar.update,
            notify=bar.say,
        )
        bar.close()
        if result.bulk_skipped:
            self.stdout.write(
                "Demo contacts are already loaded; skipped generating contacts and events."
            )
        else:
            rate = result.rows / result.bulk_seconds if result.bulk_seconds else 0
            self.stdout.write(
                f"Loaded {result.contacts:,} contacts, {result.events:,} events and "
                f"{result.members:,} members ({result.rows:,} rows in "
                f"{result.bulk_seconds:.1f} s, {rate:,.0f} rows/s)."
            )
        self.stdout.write("Segments:")
        for name, members, created in result.segments:
            note = "" if created else " (already existed)"
            self.stdout.write(f"  {name}: {members:,} members{note}")
        if result.history_points:
            spacing = (
                "a point a day"
                if result.history_every == 1
                else (
                    f"a point every {result.history_every} days (more than "
                    f"{DAILY_HISTORY_UP_TO:,} contacts)"
                )
            )
            self.stdout.write(
                f"Segment size history: {result.history_points} past points over "
                f"{HISTORY_DAYS} days, {spacing}, each counted from the data as of that day."
            )
        if result.rfm_run is not None:
            self.stdout.write(
                f"RFM layers: {result.rfm_run.contacts:,} buyers placed in the eight layers."
            )
        else:
            self.stdout.write("RFM layers: already computed; kept.")
        if result.influence is not None:
            self.stdout.write(
                f"Influence: {result.influence['contacts']:,} contacts scored, "
                f"{result.influence['kocs']:,} of them KOCs."
            )
        else:
            self.stdout.write("Influence: already computed; kept.")
        self._lead_scoring(result.lead_scoring)
        journey = result.journey
        self.stdout.write(
            f'Journey "{journey.name}" is {journey.status}: tag a contact '
            f'with 高价值 and about a minute later a message appears on the "{CONSOLE_CHANNEL}" '
            "channel (the worker and beat must be running, e.g. `manage.py runall`)."
        )
        if result.user_created:
            login = f"Log in as {DEMO_USERNAME} / {DEMO_PASSWORD}"
        else:
            login = f"Log in as {DEMO_USERNAME} (user already existed; password unchanged)"
        self.stdout.write(self.style.SUCCESS(f"Demo ready. {login}"))
        for username, password, role, created in result.role_users:
            login = f"{username} / {password}" if created else f"{username} (password unchanged)"
            self.stdout.write(f"  or as {login}: {ROLE_NOTES[role]}")

    def _lead_scoring(self, scoring: LeadScoringResult) -> None:
        created = f"{scoring.rules_created} rules created" if scoring.rules_created else ""
        if scoring.deferred:
            self.stdout.write(
                f"Lead scores: {created or 'rules kept'}; more than "
                f"{LEAD_SCORES_INLINE_UP_TO:,} contacts, so the worker works the scores out in "
                "the background (start it, e.g. `manage.py runall`)."
            )
        elif scoring.scored is not None:
            self.stdout.write(
                f"Lead scores: {scoring.scored:,} contacts scored, "
                f"{scoring.above_threshold:,} of them at {LEAD_SCORE_THRESHOLD} or more (意向)"
                + (f"; {created}." if created else ".")
            )
        else:
            self.stdout.write("Lead scores: already computed; kept.")
