"""RFM value layers: recency, frequency and monetary value of buyers, scored 1–5 and layered.

Definitions (docs/rfm.md explains them to operators):

- The window is (now − window_days, now]; events after `now` are ignored.
- A buyer is a contact that is not merged away and has at least one `purchase` event in the window.
- R = whole days (24-hour periods, rounded down) from the buyer's last purchase to `now`.
- F = number of `purchase` events in the window. Refunds never count.
- M = sum of purchase `value` in the window minus the sum of refund amounts (|value|) in the
  window, floored at 0; a missing value counts as 0.
- Scores, on each figure turned so that larger is better (R negated): buyers sorted from worst
  to best, the buyers sharing a figure (a tie group, or one buyer alone) fill the places
  w + 1 … w + e, w being the buyers strictly worse and e the group's size. The group scores the
  quintile in which the middle of its places falls: 1 + floor(5 × (2w + e) / (2n)). The best
  figure always scores 5 and the worst 1, however many buyers share it (best first: when every
  buyer has the same figure they all score 5). Equal figures therefore always get equal scores.
- A dimension is "high" when its score is ≥ 3; the three high/low flags pick one of 8 layers.
"""

import datetime as dt
from collections.abc import Iterator
from decimal import Decimal
from typing import Any

import numpy as np
from django.contrib.auth.models import AbstractBaseUser
from django.core.cache import cache
from django.db import connection, transaction
from django.db.models import Avg, Count, Max, Q, Sum
from django.db.models.functions import Abs
from django.utils import timezone
from django.utils.translation import gettext as _

from contacts.models import Event
from core import jobs
from core.errors import ValidationFailed
from core.models import Job
from segments.models import RFMLayer, RFMRun, RFMScore
from segments.rules.topics import RFM
from segments.services import queue_contacts_matching

DEFAULT_WINDOW_DAYS = 365
PURCHASE = "purchase"
REFUND = "refund"
SCORES = 5
HIGH_SCORE = 3
JOB_KIND = "rfm_recompute"
# A queued or running job older than this is taken for dead (worker lost) and no longer watched.
JOB_STALE_AFTER = dt.timedelta(hours=6)
# Rows fetched from the cursor per step: bounds the Python tuples alive at once (~10 MB).
FETCH_CHUNK = 20_000
# Rows converted to Python values at once while writing (and per INSERT outside PostgreSQL).
WRITE_BATCH = 5_000

# Indexed by 4·R_high + 2·F_high + M_high.
LAYER_BY_FLAGS = (
    RFMLayer.GENERAL_RETAIN,  # R↓ F↓ M↓
    RFMLayer.IMPORTANT_RETAIN,  # R↓ F↓ M↑
    RFMLayer.GENERAL_KEEP,  # R↓ F↑ M↓
    RFMLayer.IMPORTANT_KEEP,  # R↓ F↑ M↑
    RFMLayer.GENERAL_DEVELOP,  # R↑ F↓ M↓
    RFMLayer.IMPORTANT_DEVELOP,  # R↑ F↓ M↑
    RFMLayer.GENERAL_VALUE,  # R↑ F↑ M↓
    RFMLayer.IMPORTANT_VALUE,  # R↑ F↑ M↑
)

# The classic Chinese names, shown next to the translated label whatever the UI language.
LAYER_CLASSIC_NAMES = {
    RFMLayer.IMPORTANT_VALUE: "重要价值",
    RFMLayer.IMPORTANT_DEVELOP: "重要发展",
    RFMLayer.IMPORTANT_KEEP: "重要保持",
    RFMLayer.IMPORTANT_RETAIN: "重要挽留",
    RFMLayer.GENERAL_VALUE: "一般价值",
    RFMLayer.GENERAL_DEVELOP: "一般发展",
    RFMLayer.GENERAL_KEEP: "一般保持",
    RFMLayer.GENERAL_RETAIN: "一般挽留",
}

LAYER_PATTERNS = {
    layer: "".join(
        f"{dim}{'↑' if (index >> shift) & 1 else '↓'}"
        for dim, shift in (("R", 2), ("F", 1), ("M", 0))
    )
    for index, layer in enumerate(LAYER_BY_FLAGS)
}


def rfm_scores(values: np.ndarray) -> np.ndarray:
    """Score `values` 1–5, larger values scoring higher: each tie group by the quintile of the
    middle of its places, the best figure 5 and the worst 1."""
    n = len(values)
    if n == 0:
        return np.zeros(0, dtype=np.int8)
    ordered = np.sort(values, kind="stable")
    worse = np.searchsorted(ordered, values, side="left")
    not_better = np.searchsorted(ordered, values, side="right")
    # worse + not_better = 2w + e: twice the middle of the group's places, kept in integers.
    scores = 1 + (SCORES * (worse + not_better)) // (2 * n)
    # A big tie at either end would otherwise score its middle: with 60 % one-time buyers the
    # worst F would be 2, and with 30 % who bought today nobody would get R = 5.
    scores[values == ordered[0]] = 1
    scores[values == ordered[-1]] = SCORES
    return scores.astype(np.int8)


def _layer_indexes(r: np.ndarray, f: np.ndarray, m: np.ndarray) -> np.ndarray:
    """Per buyer, the index into LAYER_BY_FLAGS of its layer."""
    high = HIGH_SCORE
    return ((r >= high) * 4 + (f >= high) * 2 + (m >= high)).astype(np.int8)


def rfm_layers(r: np.ndarray, f: np.ndarray, m: np.ndarray) -> np.ndarray:
    """Map score arrays to layer codes (an object array of RFMLayer values)."""
    return np.array([str(layer) for layer in LAYER_BY_FLAGS], dtype=object)[_layer_indexes(r, f, m)]


def _buyer_rows(*, start: dt.datetime, now: dt.datetime):
    """One aggregated row per buyer: (contact_id, frequency, last_purchase_at, bought, refunded)."""
    return (
        Event.objects.filter(
            name__in=(PURCHASE, REFUND),
            occurred_at__gt=start,
            occurred_at__lte=now,
            contact__merged_into__isnull=True,
        )
        .values("contact_id")
        .annotate(
            frequency=Count("pk", filter=Q(name=PURCHASE)),
            last_purchase_at=Max("occurred_at", filter=Q(name=PURCHASE)),
            bought=Sum("value", filter=Q(name=PURCHASE)),
            refunded=Sum(Abs("value"), filter=Q(name=REFUND)),
        )
        .filter(frequency__gt=0)
        .order_by("contact_id")
        .values_list("contact_id", "frequency", "last_purchase_at", "bought", "refunded")
    )


def _fetch(qs) -> Iterator[tuple]:
    """The rows of `qs`, converted to Python values a chunk at a time."""
    if connection.vendor != "postgresql":
        return qs.iterator(chunk_size=FETCH_CHUNK)
    # A server-side cursor (what iterator() uses here) cannot run the GROUP BY in parallel and
    # took 4× as long at 1M buyers; a plain cursor keeps the result in libpq (~100 MB at 1M)
    # and psycopg already returns aware datetimes and Decimals, as Django would.
    sql, params = qs.query.sql_with_params()

    def rows() -> Iterator[tuple]:
        with connection.cursor() as cursor:
            cursor.execute(sql, params)
            while batch := cursor.fetchmany(FETCH_CHUNK):
                yield from batch

    return rows()


def _cents(amount: Decimal | None) -> int:
    return int((amount or 0) * 100)


def _load(*, start: dt.datetime, now: dt.datetime) -> dict[str, np.ndarray]:
    """Fetch the aggregated rows into numeric columns, one chunk of tuples at a time."""
    parts: dict[str, list[np.ndarray]] = {"id": [], "r": [], "f": [], "m": []}
    chunk: list[tuple] = []

    def flush() -> None:
        if not chunk:
            return
        parts["id"].append(np.fromiter((row[0] for row in chunk), np.int64, len(chunk)))
        parts["f"].append(np.fromiter((row[1] for row in chunk), np.int64, len(chunk)))
        parts["r"].append(
            np.fromiter(
                ((now - row[2]) // dt.timedelta(days=1) for row in chunk), np.int64, len(chunk)
            )
        )
        parts["m"].append(
            np.fromiter(
                (max(0, _cents(row[3]) - _cents(row[4])) for row in chunk), np.int64, len(chunk)
            )
        )
        chunk.clear()

    for row in _fetch(_buyer_rows(start=start, now=now)):
        chunk.append(row)
        if len(chunk) >= FETCH_CHUNK:
            flush()
    flush()
    return {
        key: np.concatenate(arrays) if arrays else np.zeros(0, np.int64)
        for key, arrays in parts.items()
    }


def _edges(values: np.ndarray, scores: np.ndarray, *, money: bool = False) -> list[Any]:
    """Per score 1–5, the [lowest, highest] figure of the buyers holding it (None if nobody)."""
    edges: list[Any] = []
    for score in range(1, SCORES + 1):
        held = values[scores == score]
        if not len(held):
            edges.append(None)
            continue
        low, high = int(held.min()), int(held.max())
        edges.append(
            [f"{Decimal(low) / 100:.2f}", f"{Decimal(high) / 100:.2f}"] if money else [low, high]
        )
    return edges


def _lock_scores() -> None:
    # Two runs at once (beat and the button) would each delete then insert and collide on the
    # primary key; EXCLUSIVE still lets readers (the page, the rule engine) see the old rows.
    if connection.vendor == "postgresql":
        with connection.cursor() as cursor:
            table = connection.ops.quote_name(RFMScore._meta.db_table)
            cursor.execute(f"LOCK TABLE {table} IN EXCLUSIVE MODE")


_SCORE_COLUMNS = (
    "contact_id",
    "recency_days",
    "frequency",
    "monetary",
    "r_score",
    "f_score",
    "m_score",
    "layer",
    "computed_at",
)


def _score_rows(columns: dict[str, np.ndarray], computed_at: dt.datetime, begin: int, end: int):
    """Plain tuples in _SCORE_COLUMNS order for buyers begin..end."""
    layer_codes = [layer.value for layer in LAYER_BY_FLAGS]
    return zip(
        columns["id"][begin:end].tolist(),
        columns["r"][begin:end].tolist(),
        columns["f"][begin:end].tolist(),
        (Decimal(cents).scaleb(-2) for cents in columns["m"][begin:end].tolist()),
        columns["r_score"][begin:end].tolist(),
        columns["f_score"][begin:end].tolist(),
        columns["m_score"][begin:end].tolist(),
        (layer_codes[index] for index in columns["layer"][begin:end].tolist()),
        (computed_at for _ in range(end - begin)),
        strict=True,
    )


def _write(*, columns: dict[str, np.ndarray], computed_at: dt.datetime) -> None:
    table = connection.ops.quote_name(RFMScore._meta.db_table)
    n = len(columns["id"])
    with connection.cursor() as cursor:
        # A plain DELETE: the table has no dependants and no delete signals to honour.
        cursor.execute(f"DELETE FROM {table}")
        if connection.vendor == "postgresql":
            # COPY streams the rows without building a model object or an INSERT per batch.
            names = ", ".join(connection.ops.quote_name(name) for name in _SCORE_COLUMNS)
            with cursor.cursor.copy(f"COPY {table} ({names}) FROM STDIN") as copy:
                for begin in range(0, n, WRITE_BATCH):
                    end = min(begin + WRITE_BATCH, n)
                    for row in _score_rows(columns, computed_at, begin, end):
                        copy.write_row(row)
            return
    for begin in range(0, n, WRITE_BATCH):
        end = min(begin + WRITE_BATCH, n)
        RFMScore.objects.bulk_create(
            [
                RFMScore(**dict(zip(_SCORE_COLUMNS, row, strict=True)))
                for row in _score_rows(columns, computed_at, begin, end)
            ]
        )


PREVIOUS_LAYERS_TABLE = "rfm_previous_layers"


def _keep_previous_layers() -> None:
    """Copy the current (contact, layer) rows into a keyed temporary table of this connection."""
    table = connection.ops.quote_name(RFMScore._meta.db_table)
    with connection.cursor() as cursor:
        cursor.execute(f"DROP TABLE IF EXISTS {PREVIOUS_LAYERS_TABLE}")
        cursor.execute(
            f"CREATE TEMPORARY TABLE {PREVIOUS_LAYERS_TABLE} "
            "(contact_id bigint PRIMARY KEY, layer varchar(20) NOT NULL)"
        )
        cursor.execute(
            f"INSERT INTO {PREVIOUS_LAYERS_TABLE} (contact_id, layer) "
            f"SELECT contact_id, layer FROM {table}"
        )
        if connection.vendor == "postgresql":
            # Temporary tables are never analysed automatically; the diff below joins on it.
            cursor.execute(f"ANALYZE {PREVIOUS_LAYERS_TABLE}")


def _queue_layer_changes() -> int:
    """Queue for the segments' incremental pass, with the `rfm` topic, the contacts whose layer
    differs between the kept rows and the table (gained or lost a row included); drop the kept
    rows and return how many were queued."""
    table = connection.ops.quote_name(RFMScore._meta.db_table)
    previous = PREVIOUS_LAYERS_TABLE
    changed = (
        f"SELECT n.contact_id FROM {table} n LEFT JOIN {previous} p "
        "ON p.contact_id = n.contact_id WHERE p.contact_id IS NULL OR p.layer <> n.layer "
        f"UNION ALL SELECT p.contact_id FROM {previous} p WHERE NOT EXISTS "
        f"(SELECT 1 FROM {table} n WHERE n.contact_id = p.contact_id)"
    )
    queued = queue_contacts_matching(select_sql=changed, params=[], topics=[RFM])
    with connection.cursor() as cursor:
        cursor.execute(f"DROP TABLE {previous}")
    return queued


@transaction.atomic
def rfm_compute(
    *, window_days: int = DEFAULT_WINDOW_DAYS, now: dt.datetime | None = None
) -> RFMRun:
    """Recompute every buyer's RFM scores and layer, replacing the previous run's rows."""
    if isinstance(window_days, bool) or not isinstance(window_days, int) or window_days < 1:
        raise ValidationFailed(
            _("window_days must be a whole number of days ≥ 1, got %(value)s.")
            % {"value": repr(window_days)},
            details={"window_days": window_days},
        )
    started_at = timezone.now()
    now = now or started_at
    _lock_scores()
    columns = _load(start=now - dt.timedelta(days=window_days), now=now)
    # Smaller recency is better, so it is ranked on its negation.
    columns["r_score"] = rfm_scores(-columns["r"])
    columns["f_score"] = rfm_scores(columns["f"])
    columns["m_score"] = rfm_scores(columns["m"])
    columns["layer"] = _layer_indexes(columns["r_score"], columns["f_score"], columns["m_score"])
    _keep_previous_layers()
    _write(columns=columns, computed_at=now)
    # Segments read the layer only: the buyers whose layer moved (or who came or went) are
    # re-evaluated by the next incremental pass, queued with the scores they follow.
    _queue_layer_changes()

    counts = np.bincount(columns["layer"], minlength=len(LAYER_BY_FLAGS)).tolist()
    found = {LAYER_BY_FLAGS[index].value: count for index, count in enumerate(counts)}
    return RFMRun.objects.create(
        started_at=started_at,
        finished_at=timezone.now(),
        window_days=window_days,
        contacts=len(columns["id"]),
        edges={
            "as_of": now.isoformat(),
            "recency_days": _edges(columns["r"], columns["r_score"]),
            "frequency": _edges(columns["f"], columns["f_score"]),
            "monetary": _edges(columns["m"], columns["m_score"], money=True),
        },
        layer_counts={layer.value: found.get(layer.value, 0) for layer in RFMLayer},
    )


def rfm_recompute_request(*, actor: AbstractBaseUser | None) -> Job:
    """Queue a recompute as a job the page can watch (the one pending, if any)."""
    from segments import tasks

    return jobs.job_request_once(
        kind=JOB_KIND,
        actor=actor,
        stale_after=JOB_STALE_AFTER,
        enqueue=lambda job_id: tasks.rfm_recompute.delay(job_id=job_id),
    )


def rfm_recompute_run(*, job_id: int | None = None) -> RFMRun:
    """Run a recompute, recording its outcome on the job when one was queued."""
    return jobs.job_run(
        job_id=job_id,
        work=rfm_compute,
        result=lambda run: {"run": run.pk, "contacts": run.contacts},
    )


def rfm_last_run() -> RFMRun | None:
    """The latest finished run: the one whose rows RFMScore holds."""
    return RFMRun.objects.filter(finished_at__isnull=False).order_by("-finished_at", "-pk").first()


def rfm_active_job() -> Job | None:
    """The recompute job queued or running right now, if any."""
    return jobs.job_active(kind=JOB_KIND, stale_after=JOB_STALE_AFTER)


def rfm_job(*, job_id: str | int) -> Job | None:
    """A recompute job by id; None for a malformed id or another kind of job."""
    return jobs.job_of_kind(kind=JOB_KIND, job_id=job_id)


def rfm_layer_info(*, layer: RFMLayer) -> dict[str, Any]:
    """How to show a layer: code, translated label, classic Chinese name and R/F/M pattern."""
    return {
        "code": layer.value,
        "label": layer.label,
        "classic": LAYER_CLASSIC_NAMES[layer],
        "pattern": LAYER_PATTERNS[layer],
    }


def rfm_layer_summary(*, run: RFMRun | None) -> list[dict[str, Any]]:
    """Every layer with its buyer count and share (percent) in `run`, in the classic order."""
    total = run.contacts if run else 0
    counts = run.layer_counts if run else {}
    return [
        {
            **rfm_layer_info(layer=layer),
            "count": counts.get(layer.value, 0),
            "share": round(100 * counts.get(layer.value, 0) / total, 1) if total else 0.0,
        }
        for layer in RFMLayer
    ]


def rfm_heatmap(*, run: RFMRun | None) -> dict[str, Any] | None:
    """Buyers and their average M per (R score, F score) cell, cached per run."""
    if run is None:
        return None

    def grid() -> dict[str, Any]:
        rows = (
            RFMScore.objects.values("r_score", "f_score")
            .annotate(buyers=Count("pk"), avg_m=Avg("monetary"))
            .order_by()
        )
        cells = [
            [row["r_score"] - 1, row["f_score"] - 1, row["buyers"], f"{row['avg_m'] or 0:.2f}"]
            for row in rows
        ]
        return {"cells": cells, "max": max((cell[2] for cell in cells), default=0)}

    # The rows only change with a new run, so one GROUP BY per run serves every page view.
    data = dict(cache.get_or_set(f"segments:rfm:heatmap:{run.pk}", grid, timeout=7 * 86400))
    data.update(
        scores=[str(score) for score in range(1, SCORES + 1)],
        x_name=_("R score (5 = bought most recently)"),
        y_name=_("F score (5 = buys most often)"),
        buyers_label=_("Buyers"),
        avg_m_label=_("Average M (¥)"),
    )
    return data


def rfm_edge_rows(*, run: RFMRun | None) -> list[dict[str, Any]]:
    """Per score 1–5, the ranges of R, F and M it covered in `run` (None where nobody had it)."""
    if run is None or not run.contacts:
        return []
    edges = run.edges
    return [
        {
            "score": score,
            "recency_days": edges["recency_days"][score - 1],
            "frequency": edges["frequency"][score - 1],
            "monetary": edges["monetary"][score - 1],
        }
        for score in range(1, SCORES + 1)
    ]
