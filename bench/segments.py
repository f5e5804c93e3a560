"""Segments at scale: compiled counts vs hand-written SQL, materialising 20 segments, and the
incremental refresh vs a full rebuild (PostgreSQL).

    createdb -h 127.0.0.1 -U postgres scrm_bench_segments
    export DATABASE_URL=postgres://postgres@127.0.0.1:5432/scrm_bench_segments
    .venv/bin/python manage.py migrate
    .venv/bin/python manage.py seed_demo --contacts 1000000 --events-per-contact 10
    .venv/bin/python bench/segments.py

Prints, from one run:
1. for each of 20 segments of mixed kinds (attributes, relative dates, birthdays, tags,
   events performed / not / counted / summed / averaged / with property filters / last
   occurrence, membership, reachability, nesting, another segment): the app's count
   (`segment_queryset(...).count()`) vs a hand-written SQL count of the same rule — median of
   --repeat runs each, interleaved — their ratio, the geometric mean and the worst ratio
   (targets: ≤ 1.2× and ≤ 2×);
2. the time to materialise all 20 (create + first build, in dependency order; target ≤ 30 s);
3. 10,000 new purchase events and 1,000 attribute changes, then, from that same state and at
   the same instant, beat's incremental pass (in this database) and a full rebuild of every
   on-change segment (in a copy of the database made before the changes with CREATE DATABASE
   … TEMPLATE, in a child process; the same changes, drawn from the same seed, are written in
   each database right before its pass), both for real and the way the product runs them
   (independent segments side by side), and whether both leave identical memberships (target
   ≥ 20× faster). Both include what follows a change:
   entry/exit events, auto-tags, journey enrolments. As a check on the copy, the same full
   rebuild is timed again here afterwards (nothing left to move).
4. One contact's rules with and without a heavy history: each event-reading segment's rule
   for one contact (what "why is this contact in", an operator's inline re-evaluation and each
   incremental pass ask), then the same after --heavy-events page views are added to that
   contact (a bot, or a fan of the mini-program), and the ratio: a rule about purchases must
   not read the contact's page views (no target in the issue; the reason for the
   event_contact_name_time index). The page views are deleted afterwards.
The script deletes the segments it creates (names start with "bench:") before and after.
"""

import argparse
import datetime as dt
import json
import logging
import math
import os
import random
import statistics
import subprocess
import sys
import tempfile
import time
from decimal import Decimal
from pathlib import Path
from urllib.parse import urlsplit

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
os.environ.setdefault("DJANGO_SETTINGS_MODULE", "config.settings")

import django

django.setup()

from django.conf import settings  # noqa: E402
from django.db import connection, transaction  # noqa: E402
from django.db.models import Case, Value, When  # noqa: E402
from django.utils import timezone  # noqa: E402

from contacts.models import Contact, Event, Tag  # noqa: E402
from contacts.services import events_stored  # noqa: E402
from segments.models import DirtyContact, Segment, SegmentMembership  # noqa: E402
from segments.rules.schema import rule_conditions  # noqa: E402
from segments.services import (  # noqa: E402
    mark_dirty,
    segment_create,
    segment_queryset,
    segments_in_refresh_order,
    segments_materialise,
    segments_refresh_incremental,
)

PREFIX = "bench:"


def tag(ctx: dict, name: str) -> int:
    return ctx["tags"][name]


def specs(ctx: dict) -> list[tuple[str, dict, str, list]]:
    """(name, rule, hand-written SQL count, params). `%(now)s` is the shared instant."""
    live = "c.merged_into_id IS NULL"
    base = f"SELECT count(*) FROM contacts_contact c WHERE {live} AND "
    a, b = ctx["interest_tags"][:2]
    return [
        (
            "city",
            {
                "op": "and",
                "conditions": [
                    {"type": "attribute", "field": "city", "operator": "eq", "value": "上海"}
                ],
            },
            base + "c.city = '上海'",
            [],
        ),
        (
            "created 30 days",
            {
                "op": "and",
                "conditions": [
                    {
                        "type": "attribute",
                        "field": "created_at",
                        "operator": "within_last_days",
                        "value": 30,
                    }
                ],
            },
            base + "c.created_at >= %(now)s - interval '30 days' AND c.created_at <= %(now)s",
            [],
        ),
        (
            "birthday next 7 days",
            {
                "op": "and",
                "conditions": [
                    {
                        "type": "attribute",
                        "field": "birthday",
                        "operator": "anniversary_within_days",
                        "value": 7,
                    }
                ],
            },
            base + "to_char(c.birthday, 'MM-DD') = ANY(%(birthdays)s)",
            [],
        ),
        (
            "tag any",
            {
                "op": "and",
                "conditions": [{"type": "tag", "match": "any", "tags": [tag(ctx, "高价值")]}],
            },
            base + "EXISTS (SELECT 1 FROM contacts_contacttag t WHERE t.contact_id = c.id "
            f"AND t.tag_id = {tag(ctx, '高价值')} AND (t.expires_at IS NULL OR t.expires_at > %(now)s))",
            [],
        ),
        (
            "tag all",
            {"op": "and", "conditions": [{"type": "tag", "match": "all", "tags": [a, b]}]},
            base
            + " AND ".join(
                f"EXISTS (SELECT 1 FROM contacts_contacttag t WHERE t.contact_id = c.id AND t.tag_id = {t} "
                "AND (t.expires_at IS NULL OR t.expires_at > %(now)s))"
                for t in (a, b)
            ),
            [],
        ),
        (
            "tag none",
            {
                "op": "and",
                "conditions": [{"type": "tag", "match": "none", "tags": [tag(ctx, "价格敏感")]}],
            },
            base + "NOT EXISTS (SELECT 1 FROM contacts_contacttag t WHERE t.contact_id = c.id "
            f"AND t.tag_id = {tag(ctx, '价格敏感')} AND (t.expires_at IS NULL OR t.expires_at > %(now)s))",
            [],
        ),
        (
            "purchased 90 days",
            {
                "op": "and",
                "conditions": [
                    {
                        "type": "event",
                        "name": "purchase",
                        "measure": "performed",
                        "window": {"last_days": 90},
                    }
                ],
            },
            base
            + "EXISTS (SELECT 1 FROM contacts_event e WHERE e.contact_id = c.id AND e.name = 'purchase' "
            "AND e.occurred_at >= %(now)s - interval '90 days')",
            [],
        ),
        (
            "no sign-in 30 days",
            {
                "op": "and",
                "conditions": [
                    {
                        "type": "event",
                        "name": "sign_in",
                        "measure": "not_performed",
                        "window": {"last_days": 30},
                    }
                ],
            },
            base
            + "NOT EXISTS (SELECT 1 FROM contacts_event e WHERE e.contact_id = c.id AND e.name = 'sign_in' "
            "AND e.occurred_at >= %(now)s - interval '30 days')",
            [],
        ),
        (
            "2+ purchases 90 days",
            {
                "op": "and",
                "conditions": [
                    {
                        "type": "event",
                        "name": "purchase",
                        "measure": "count",
                        "operator": "gte",
                        "value": 2,
                        "window": {"last_days": 90},
                    }
                ],
            },
            base + "c.id IN (SELECT e.contact_id FROM contacts_event e WHERE e.name = 'purchase' "
            "AND e.occurred_at >= %(now)s - interval '90 days' GROUP BY e.contact_id HAVING count(*) >= 2)",
            [],
        ),
        (
            "spent 500 in 90 days",
            {
                "op": "and",
                "conditions": [
                    {
                        "type": "event",
                        "name": "purchase",
                        "measure": "sum",
                        "operator": "gte",
                        "value": 500,
                        "window": {"last_days": 90},
                    }
                ],
            },
            base + "c.id IN (SELECT e.contact_id FROM contacts_event e WHERE e.name = 'purchase' "
            "AND e.occurred_at >= %(now)s - interval '90 days' GROUP BY e.contact_id "
            "HAVING coalesce(sum(e.value), 0) >= 500)",
            [],
        ),
        (
            "order over 300 (property)",
            {
                "op": "and",
                "conditions": [
                    {
                        "type": "event",
                        "name": "purchase",
                        "measure": "performed",
                        "window": {"last_days": 180},
                        "filters": [{"property": "amount", "operator": "gt", "value": 300}],
                    }
                ],
            },
            base
            + "EXISTS (SELECT 1 FROM contacts_event e WHERE e.contact_id = c.id AND e.name = 'purchase' "
            "AND e.occurred_at >= %(now)s - interval '180 days' "
            "AND jsonb_typeof(e.properties -> 'amount') = 'number' AND (e.properties -> 'amount') > '300'::jsonb)",
            [],
        ),
        (
            "last purchase 60+ days ago",
            {
                "op": "and",
                "conditions": [
                    {
                        "type": "event",
                        "name": "purchase",
                        "measure": "last",
                        "operator": "more_than_days_ago",
                        "value": 60,
                    }
                ],
            },
            base + "c.id IN (SELECT e.contact_id FROM contacts_event e WHERE e.name = 'purchase' "
            "GROUP BY e.contact_id HAVING max(e.occurred_at) < %(now)s - interval '60 days')",
            [],
        ),
        (
            "not seen 60 days",
            {
                "op": "and",
                "conditions": [
                    {
                        "type": "attribute",
                        "field": "last_seen_at",
                        "operator": "more_than_days_ago",
                        "value": 60,
                    }
                ],
            },
            base + "c.last_seen_at < %(now)s - interval '60 days'",
            [],
        ),
        (
            "gold or black gold",
            {
                "op": "and",
                "conditions": [
                    {
                        "type": "membership",
                        "field": "tier",
                        "operator": "in",
                        "value": ["gold", "black_gold"],
                    }
                ],
            },
            base
            + "EXISTS (SELECT 1 FROM membership_member m JOIN membership_tier t ON t.id = m.tier_id "
            "WHERE m.contact_id = c.id AND t.code IN ('gold', 'black_gold'))",
            [],
        ),
        (
            "points 1000+",
            {
                "op": "and",
                "conditions": [
                    {
                        "type": "membership",
                        "field": "points_balance",
                        "operator": "gte",
                        "value": 1000,
                    }
                ],
            },
            base
            + "EXISTS (SELECT 1 FROM membership_member m WHERE m.contact_id = c.id AND m.points_balance >= 1000)",
            [],
        ),
        (
            "repeat/loyal from mini-program",
            {
                "op": "and",
                "conditions": [
                    {
                        "type": "attribute",
                        "field": "lifecycle_stage",
                        "operator": "in",
                        "value": ["repeat", "loyal"],
                    },
                    {"type": "attribute", "field": "source", "operator": "eq", "value": "小程序"},
                ],
            },
            base + "c.lifecycle_stage IN ('repeat', 'loyal') AND c.source = '小程序'",
            [],
        ),
        (
            "nested and/or/not",
            {
                "op": "and",
                "conditions": [
                    {
                        "op": "or",
                        "conditions": [
                            {
                                "type": "attribute",
                                "field": "city",
                                "operator": "in",
                                "value": ["北京", "上海"],
                            },
                            {"type": "tag", "match": "any", "tags": [a]},
                        ],
                    },
                    {
                        "op": "not",
                        "conditions": [
                            {
                                "type": "attribute",
                                "field": "lifecycle_stage",
                                "operator": "eq",
                                "value": "churned",
                            },
                        ],
                    },
                ],
            },
            base + "(c.city IN ('北京', '上海') OR EXISTS (SELECT 1 FROM contacts_contacttag t "
            f"WHERE t.contact_id = c.id AND t.tag_id = {a} AND (t.expires_at IS NULL OR t.expires_at > %(now)s))) "
            "AND c.lifecycle_stage <> 'churned'",
            [],
        ),
        (
            "average order 200+",
            {
                "op": "and",
                "conditions": [
                    {
                        "type": "event",
                        "name": "purchase",
                        "measure": "avg",
                        "operator": "gte",
                        "value": 200,
                    }
                ],
            },
            base + "c.id IN (SELECT e.contact_id FROM contacts_event e WHERE e.name = 'purchase' "
            "GROUP BY e.contact_id HAVING avg(e.value) >= 200)",
            [],
        ),
        (
            "reachable by SMS",
            {"op": "and", "conditions": [{"type": "reachable", "channel": "sms"}]},
            base
            + "c.phone <> '' AND NOT EXISTS (SELECT 1 FROM contacts_consent k WHERE k.contact_id = c.id "
            "AND k.channel = 'sms' AND k.purpose = 'marketing' AND NOT k.granted)",
            [],
        ),
        (
            "in segment + recent buyer",
            {
                "op": "and",
                "conditions": [
                    {"type": "segment", "match": "in", "segment": "@tag any"},
                    {
                        "type": "event",
                        "name": "purchase",
                        "measure": "performed",
                        "window": {"last_days": 30},
                    },
                ],
            },
            base + "EXISTS (SELECT 1 FROM segments_segmentmembership s WHERE s.contact_id = c.id "
            "AND s.segment_id = %(ref)s) AND EXISTS (SELECT 1 FROM contacts_event e WHERE e.contact_id = c.id "
            "AND e.name = 'purchase' AND e.occurred_at >= %(now)s - interval '30 days')",
            [],
        ),
    ]


def resolve_refs(rule: dict, created: dict[str, Segment]) -> dict:
    """Replace "@name" segment references with the id of the bench segment of that name."""
    if "op" in rule:
        return {**rule, "conditions": [resolve_refs(c, created) for c in rule["conditions"]]}
    if rule.get("type") == "segment" and isinstance(rule.get("segment"), str):
        return {**rule, "segment": created[rule["segment"][1:]].pk}
    return rule


def timed(fn) -> tuple[float, object]:
    start = time.perf_counter()
    result = fn()
    return time.perf_counter() - start, result


def raw_count(sql: str, params: dict) -> int:
    with connection.cursor() as cursor:
        cursor.execute(sql, params)
        return cursor.fetchone()[0]


def fingerprints(segment_ids: list[int]) -> dict[int, list]:
    """Each segment's member count and a digest of its sorted member ids."""
    with connection.cursor() as cursor:
        cursor.execute(
            "SELECT segment_id, count(*), "
            "md5(string_agg(contact_id::text, ',' ORDER BY contact_id)) "
            f"FROM {SegmentMembership._meta.db_table} WHERE segment_id = ANY(%s) "
            "GROUP BY segment_id",
            [segment_ids],
        )
        found = {pk: [n, digest] for pk, n, digest in cursor.fetchall()}
    return {pk: found.get(pk, [0, None]) for pk in segment_ids}


def _admin_connection():
    import psycopg

    params = connection.get_connection_params()
    return psycopg.connect(
        dbname="postgres",
        **{k: params[k] for k in ("host", "port", "user", "password") if params.get(k)},
        autocommit=True,
    )


def clone_database() -> str:
    """A copy of this database, as it is now; the caller drops it."""
    name = connection.settings_dict["NAME"]
    clone = f"{name}_incremental"
    connection.close()  # a template must have no other session
    with _admin_connection() as admin:
        admin.execute(f'DROP DATABASE IF EXISTS "{clone}"')
        for attempt in range(30):
            try:
                admin.execute(f'CREATE DATABASE "{clone}" TEMPLATE "{name}" STRATEGY FILE_COPY')
                break
            except Exception:  # autovacuum may hold the template for a moment
                if attempt == 29:
                    raise
                time.sleep(1)
    return clone


def drop_database(name: str) -> None:
    with _admin_connection() as admin:
        admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def make_changes(instant: dt.datetime, seed: int, new_events: int, attribute_changes: int) -> int:
    """Write `new_events` purchases and `attribute_changes` city changes, a minute before
    `instant`, the way the product writes them, drawn from `seed` (the same in every database
    copy); return how many contacts they queued."""
    rng = random.Random(seed)
    ids = list(
        Contact.objects.filter(merged_into__isnull=True).order_by("pk").values_list("pk", flat=True)
    )
    buyers = rng.sample(ids, new_events)
    at = instant - dt.timedelta(minutes=1)
    # Ids new in every run (T0 differs): ids repeated from an earlier run on the same database
    # would be taken for purchases already credited (points are earned once per event), so a
    # second run would measure fewer changes than the first.
    run = instant.strftime("%Y%m%d%H%M%S%f")
    batch = []
    for i, pk in enumerate(buyers):
        amount = Decimal(rng.choice([59, 129, 299, 599]))
        batch.append(
            Event(
                event_id=f"bench-{run}-{i:06d}",
                contact_id=pk,
                name="purchase",
                occurred_at=at,
                properties={"amount": float(amount), "order_id": f"B{run}-{i:06d}"},
                value=amount,
                source="bench",
            )
        )
    for start in range(0, len(batch), 500):
        chunk = batch[start : start + 500]
        with transaction.atomic():
            Event.objects.bulk_create(chunk)
            # What the events API does after storing a batch: last activity moves, and every
            # receiver runs (segments queue the contacts with the events' topics, purchases earn
            # points, which queue the contacts for membership rules too).
            events_stored(chunk)
    changed = rng.sample(ids, attribute_changes)
    # A real change in every run: a contact moved to 上海 by an earlier run moves to 北京.
    Contact.objects.filter(pk__in=changed).update(
        city=Case(When(city="上海", then=Value("北京")), default=Value("上海")), updated_at=at
    )
    # What contact_update's signal does for a big set: queue them, saying the city changed.
    mark_dirty(contact_ids=changed, at=at, topics=["city"])
    # The receivers stamped their queue rows with the wall clock, after T0; both passes
    # evaluate at T0, so the queue is dated back to the changes' time for the pass to take it.
    DirtyContact.objects.update(changed_at=at)
    return DirtyContact.objects.count()


def full_in(
    database: str, instant: dt.datetime, changes: list[str]
) -> tuple[float, dict[int, list]]:
    """Make the same changes in `database` and run a full rebuild of every on-change segment
    there (a child process), the way the product runs it; return its time and the segments'
    fingerprints afterwards."""
    url = urlsplit(os.environ["DATABASE_URL"])._replace(path="/" + database).geturl()
    with tempfile.NamedTemporaryFile(suffix=".json") as out:
        command = [sys.executable, __file__, "--full-only", instant.isoformat(), out.name, *changes]
        subprocess.run(command, env={**os.environ, "DATABASE_URL": url}, check=True)
        result = json.loads(Path(out.name).read_text())
    return (
        result["seconds"],
        {int(pk): value for pk, value in result["fingerprints"].items()},
    )


def on_change_segments() -> list[Segment]:
    return segments_in_refresh_order(
        Segment.objects.filter(is_archived=False, kind="dynamic", refresh_policy="on_change")
    )


def full_only(instant: str, out: str, seed: str, new_events: str, attribute_changes: str) -> None:
    at = dt.datetime.fromisoformat(instant)
    make_changes(at, int(seed), int(new_events), int(attribute_changes))
    every = on_change_segments()
    seconds, _ = timed(lambda: segments_materialise(segments=every, now=at))
    Path(out).write_text(
        json.dumps({"seconds": seconds, "fingerprints": fingerprints([s.pk for s in every])})
    )


def cleanup() -> None:
    Segment.objects.filter(name__startswith=PREFIX).delete()
    # Each run writes and deletes millions of membership rows: start every run from compact
    # tables, not from whatever autovacuum has got round to (a bloated table made builds 50%
    # slower).
    with connection.cursor() as cursor:
        cursor.execute(f"VACUUM FULL {SegmentMembership._meta.db_table}")
        cursor.execute(f"VACUUM (ANALYZE) {SegmentMembership._meta.db_table}")
        cursor.execute(f"VACUUM (ANALYZE) {Event._meta.db_table}")


def reads_events(segment: Segment) -> bool:
    return any(node.get("type") == "event" for node in rule_conditions(segment.rule))


def heavy_contact(segments: list[Segment], page_views: int) -> None:
    """Part 4: each rule for one contact, before and after `page_views` page views of it."""
    now = timezone.now()
    # A buyer: the purchase rules then have something to find.
    pk = (
        Event.objects.filter(name="purchase", contact__merged_into__isnull=True)
        .order_by("pk")
        .values_list("contact_id", flat=True)
        .first()
    )

    def per_rule() -> dict[str, float]:
        times = {}
        for segment in segments:
            query = segment_queryset(segment=segment, now=now).filter(pk=pk)
            query.exists()  # warm-up: plans and pages
            runs = [timed(query.exists)[0] for _ in range(5)]
            times[segment.name] = statistics.median(runs)
        return times

    before = per_rule()
    with connection.cursor() as cursor:
        # The last N seconds, one view a second: inside every rule's window.
        cursor.execute(
            f"INSERT INTO {Event._meta.db_table} "
            "(event_id, contact_id, name, occurred_at, received_at, properties, source) "
            "SELECT 'bench-heavy-' || g, %s, 'page_view', %s - make_interval(secs => g), %s, "
            "'{}'::jsonb, 'bench-heavy' FROM generate_series(1, %s) AS g",
            [pk, now, now, page_views],
        )
        # What autovacuum would do after such a burst.
        cursor.execute(f"ANALYZE {Event._meta.db_table}")
    try:
        after = per_rule()
    finally:
        Event.objects.filter(source="bench-heavy").delete()
    print(f"\none contact's rules, before and after {page_views:,} page views of it:")
    ratios = []
    for name, seconds in before.items():
        ratios.append(after[name] / seconds)
        print(
            f"  {name:32} {seconds * 1000:7.2f} ms {after[name] * 1000:8.2f} ms "
            f"{after[name] / seconds:6.2f}x"
        )
    print(f"  worst: {max(ratios):.2f}x")


def machine_reference() -> float:
    """Seconds the database server takes for a fixed piece of pure CPU work (best of 3): the
    one target stated in seconds (materialising) depends on the machine, and machines "of the
    same kind" have differed threefold in single-core speed. Session 12's machine: 2.3 s."""
    best = float("inf")
    with connection.cursor() as cursor:
        for _ in range(3):
            started = time.perf_counter()
            cursor.execute("SELECT sum(i) FROM generate_series(1, 10000000) AS i")
            best = min(best, time.perf_counter() - started)
    return best


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--new-events", type=int, default=10_000)
    parser.add_argument("--attribute-changes", type=int, default=1_000)
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--keep", action="store_true", help="keep the bench segments afterwards")
    parser.add_argument(
        "--skip-counts", action="store_true", help="skip part 1 (counts vs hand SQL)"
    )
    parser.add_argument(
        "--verbose", action="store_true", help="log each segment of the incremental pass"
    )
    parser.add_argument(
        "--heavy-events", type=int, default=200_000, help="part 4's page views (0: skip it)"
    )
    parser.add_argument("--full-only", nargs=5, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.verbose:
        logging.basicConfig(format="%(relativeCreated)8.0f ms %(message)s")
        logging.getLogger("segments").setLevel(logging.INFO)
    if connection.vendor != "postgresql":
        sys.exit("Run against PostgreSQL (DATABASE_URL).")
    if args.full_only:
        full_only(*args.full_only)
        return
    contacts = Contact.objects.count()
    events = Event.objects.count()
    print(f"data: {contacts:,} contacts, {events:,} events")
    if contacts < 1000:
        sys.exit("Seed first: manage.py seed_demo --contacts 1000000 --events-per-contact 10")
    print(f"machine reference: {machine_reference():.2f} s (see docs/benchmarks.md)")

    tags = dict(Tag.objects.values_list("name", "pk"))
    interests = list(
        Tag.objects.filter(group__name="兴趣").order_by("pk").values_list("pk", flat=True)
    )
    now = timezone.now()
    today = timezone.localdate(now)
    birthdays = sorted({(today + dt.timedelta(days=i)).strftime("%m-%d") for i in range(8)})
    ctx = {"tags": tags, "interest_tags": interests, "birthday_days": 7}
    cleanup()

    # 2. Materialise: create the 20 (rules validated and stored), then build them all the way
    # the product refreshes several segments at once (segments_materialise: independent ones
    # side by side, SEGMENT_REFRESH_CONCURRENCY at a time, each after the segments it reads).
    created: dict[str, Segment] = {}
    items = specs(ctx)
    for name, rule, _, _ in items:
        rule = resolve_refs(rule, created)
        created[name] = segment_create(name=PREFIX + name, rule=rule, build=False)
    total_build, _ = timed(lambda: segments_materialise(segments=list(created.values())))
    build_times = {}
    for name, segment in created.items():
        segment.refresh_from_db()
        build_times[name] = segment.last_refresh_seconds
        print(
            f"  built {name}: {segment.member_count:,} members in "
            f"{segment.last_refresh_seconds:.2f} s",
            flush=True,
        )
    print(f"  concurrency: {settings.SEGMENT_REFRESH_CONCURRENCY}")

    # 1. Counts: app vs hand-written SQL, same instant, interleaved, median of --repeat.
    print(
        f"\n{'segment':32} {'members':>9} {'app ms':>9} {'SQL ms':>9} {'ratio':>6} {'build s':>8}"
    )
    ratios = []
    for name, _, sql, _ in [] if args.skip_counts else items:
        segment = created[name]
        params = {"now": now, "birthdays": birthdays, "ref": created["tag any"].pk}
        qs = segment_queryset(segment=segment, now=now)
        app_n, raw_n = qs.count(), raw_count(sql, params)  # warm-up
        assert app_n == raw_n, f"{name}: app {app_n} != SQL {raw_n}"
        app_t, raw_t = [], []
        for _ in range(args.repeat):
            app_t.append(timed(lambda: segment_queryset(segment=segment, now=now).count())[0])  # noqa: B023
            raw_t.append(timed(lambda: raw_count(sql, params))[0])  # noqa: B023
        a, r = statistics.median(app_t), statistics.median(raw_t)
        ratios.append(a / r)
        print(
            f"{name:32} {app_n:>9,} {a * 1000:>9.1f} {r * 1000:>9.1f} {a / r:>6.2f} "
            f"{build_times[name]:>8.2f}"
        )
    if ratios:
        geo = math.exp(sum(math.log(x) for x in ratios) / len(ratios))
        print(
            f"\ncount ratio: geometric mean {geo:.2f}x (target <= 1.2x), "
            f"worst {max(ratios):.2f}x (target <= 2x)"
        )
    print(f"materialising all {len(items)} segments: {total_build:.1f} s (target <= 30 s)")

    # 3. Incremental vs full after new events and attribute changes. Everything is evaluated at
    # one instant T0, so that time windows do not age between the passes being compared (aging
    # is the scheduled full refresh's job, not the incremental pass's).
    instant = timezone.now()
    every = on_change_segments()
    # Bring every segment the incremental pass covers to T0 first.
    segments_materialise(segments=every, now=instant)
    # Start from an empty queue, as beat's passes leave it: seed_demo's RFM and KOC runs queue
    # most contacts (their layers changed) and no worker has drained them. The builds above
    # evaluated every contact at T0, so those rows are answered already.
    DirtyContact.objects.filter(changed_at__lte=instant).delete()
    # A copy of the database is made now (CREATE DATABASE … TEMPLATE), before the changes: the
    # same changes (drawn from the same seed) are then written in each database and each pass
    # runs right after them, as beat's pass would a minute after them, with no checkpoint
    # forced in between (the copy forces one; PostgreSQL's own come every few minutes). The
    # incremental pass runs here, the full rebuild in the copy, in a child process.
    clone = clone_database()
    try:
        queued = make_changes(instant, args.seed, args.new_events, args.attribute_changes)
        print(f"queued {queued:,} changed contacts")
        incr_t, changes = timed(lambda: segments_refresh_incremental(now=instant))
        moved = sum(a + b for a, b in changes.values())
        after_incremental = fingerprints([s.pk for s in every])
        full_t, after_full = full_in(
            clone, instant, [str(args.seed), str(args.new_events), str(args.attribute_changes)]
        )
    finally:
        drop_database(clone)
    # The copy's pages start cold in PostgreSQL's cache; a full rebuild scans everything, so
    # that should not matter: the same rebuild here (nothing left to move) shows it.
    again_t, _ = timed(lambda: segments_materialise(segments=every, now=instant))
    identical = after_full == after_incremental
    for s in every:
        if after_full[s.pk] != after_incremental[s.pk]:
            print(f"  differs: {s.name}")
    print(
        f"\nincremental refresh after {args.new_events:,} new events and "
        f"{args.attribute_changes:,} attribute changes: {incr_t:.2f} s ({moved:,} entries/exits)"
    )
    print(
        f"full rebuild of the same {len(every)} segments from the same state: {full_t:.2f} s "
        f"(the same rebuild in this database afterwards, nothing left to move: {again_t:.2f} s)"
    )
    print(f"speed-up: {full_t / incr_t:.1f}x (target >= 20x); identical membership: {identical}")
    Event.objects.filter(source="bench").delete()
    if args.heavy_events:
        heavy_contact([s for s in created.values() if reads_events(s)], args.heavy_events)
    # Whatever the passes queued (a later run must start from an empty queue).
    DirtyContact.objects.filter(changed_at__lte=timezone.now()).delete()
    if not args.keep:
        cleanup()


if __name__ == "__main__":
    main()
