"""KOC (key opinion consumer) identification: who brings other people in.

Influence is computed daily from events over a rolling window (see docs/events.md for the event
conventions and docs/lead-scoring-and-koc.md for the operator view):

- invites accepted: distinct invitees whose `referral_accepted` event names the contact in
  `properties.referrer_contact_id`;
- referred purchases / revenue: `purchase` events naming the contact in
  `properties.referrer_contact_id` (count, and the sum of `value`);
- shares: the contact's own `share` events;
- share reach: distinct other contacts whose `page_view` or `qr_scanned` event came through one
  of the contact's shares (`properties.share_id`) or names them in `properties.from_contact_id`.

score = Σ weight × component (INFLUENCE_WEIGHTS). A contact is a KOC when its score is at least
KOC_MIN_SCORE *and* it ranks within the top KOC_TOP_PERCENT of contacts with a positive score
(at least one contact qualifies when anyone reaches the minimum).
"""

import datetime as dt
import math
from collections import defaultdict
from decimal import Decimal
from typing import Any

from django.conf import settings
from django.contrib.auth.models import AbstractBaseUser
from django.db import transaction
from django.db.models import Count, Sum
from django.db.models.fields.json import KT
from django.utils import timezone

from contacts.models import Contact, Event
from core import jobs
from core.models import Job
from segments.models import Influence
from segments.rules.topics import KOC
from segments.services import mark_dirty

REFERRAL_EVENT = "referral_accepted"
PURCHASE_EVENT = "purchase"
SHARE_EVENT = "share"
VISIT_EVENTS = ("page_view", "qr_scanned")
REFERRER_PROPERTY = "referrer_contact_id"
SHARE_PROPERTY = "share_id"
FROM_CONTACT_PROPERTY = "from_contact_id"

# One place for the weights: a referred purchase is worth less than the invite that brought the
# buyer in, and a share only counts for much through the people it reaches.
INFLUENCE_WEIGHTS = {
    "invites_accepted": 5.0,
    "referred_purchases": 3.0,
    "referred_revenue": 0.01,
    "shares": 1.0,
    "share_reach": 0.5,
}
# Overridable in settings (SCRM_KOC_MIN_SCORE, SCRM_KOC_TOP_PERCENT, SCRM_INFLUENCE_WINDOW_DAYS).
KOC_MIN_SCORE = 20.0
KOC_TOP_PERCENT = 5.0
INFLUENCE_WINDOW_DAYS = 365
# Rows per upsert; well under SQLite's parameter limit at 8 columns per row.
WRITE_BATCH = 1000
JOB_KIND = "influence_compute"
# A queued or running recompute older than this is taken for dead (worker lost), not watched.
JOB_STALE_AFTER = dt.timedelta(hours=6)
# Merges are rarely chained; a referrer id is followed at most this many hops to its survivor.
MAX_MERGE_HOPS = 5


def koc_rule() -> dict[str, float]:
    """The KOC rule in force: minimum score, top percentage and window."""
    return {
        "min_score": float(getattr(settings, "SCRM_KOC_MIN_SCORE", KOC_MIN_SCORE)),
        "top_percent": float(getattr(settings, "SCRM_KOC_TOP_PERCENT", KOC_TOP_PERCENT)),
        "window_days": int(getattr(settings, "SCRM_INFLUENCE_WINDOW_DAYS", INFLUENCE_WINDOW_DAYS)),
    }


def influence_score(components: dict[str, Any]) -> float:
    """The weighted sum of a contact's influence components."""
    return round(sum(float(components[k]) * w for k, w in INFLUENCE_WEIGHTS.items()), 4)


def _contact_id(raw: Any) -> int | None:
    if isinstance(raw, bool):
        return None
    if isinstance(raw, int):
        return raw if raw > 0 else None
    if isinstance(raw, str) and raw.strip().isdigit():
        return int(raw.strip()) or None
    return None


def _survivors(ids: set[int]) -> dict[int, int]:
    """Map contact ids to the live contact they were merged into (or themselves); drop unknowns."""
    result: dict[int, int] = {}
    current = {i: i for i in ids}
    for _ in range(MAX_MERGE_HOPS):
        if not current:
            break
        rows = dict(
            Contact.objects.filter(pk__in=set(current.values())).values_list("pk", "merged_into_id")
        )
        following: dict[int, int] = {}
        for original, at in current.items():
            if at not in rows:
                continue
            if rows[at] is None:
                result[original] = at
            else:
                following[original] = rows[at]
        current = following
    return result


def _components(since: dt.datetime) -> dict[int, dict[str, Any]]:
    events = Event.objects.filter(occurred_at__gte=since)
    raw: dict[int, dict[str, Any]] = defaultdict(
        lambda: {
            "invitees": set(),
            "referred_purchases": 0,
            "referred_revenue": Decimal(0),
            "shares": 0,
            "reached": set(),
        }
    )

    # Distinct (referrer, invitee) pairs; the database removes the repeats.
    referrals = (
        events.filter(name=REFERRAL_EVENT)
        .annotate(ref=KT(f"properties__{REFERRER_PROPERTY}"))
        .values_list("ref", "contact_id")
        .distinct()
    )
    # Referred purchases, grouped per (referrer, buyer) so that self-referrals can be dropped.
    purchases = (
        events.filter(name=PURCHASE_EVENT)
        .annotate(ref=KT(f"properties__{REFERRER_PROPERTY}"))
        .exclude(ref__isnull=True)
        .values("ref", "contact_id")
        .annotate(n=Count("pk"), revenue=Sum("value"))
    )
    shares = events.filter(name=SHARE_EVENT).values("contact_id").annotate(n=Count("pk"))
    share_owner = dict(
        events.filter(name=SHARE_EVENT)
        .annotate(share=KT(f"properties__{SHARE_PROPERTY}"))
        .exclude(share__isnull=True)
        .values_list("share", "contact_id")
    )
    visits = (
        events.filter(name__in=VISIT_EVENTS)
        .annotate(
            share=KT(f"properties__{SHARE_PROPERTY}"),
            sender=KT(f"properties__{FROM_CONTACT_PROPERTY}"),
        )
        .exclude(share__isnull=True, sender__isnull=True)
        .values_list("share", "sender", "contact_id")
        .distinct()
    )

    referenced: set[int] = set()
    referral_pairs = []
    for ref, invitee in referrals:
        ref_id = _contact_id(ref)
        if ref_id is not None:
            referral_pairs.append((ref_id, invitee))
            referenced.add(ref_id)
    purchase_rows = []
    for row in purchases:
        ref_id = _contact_id(row["ref"])
        if ref_id is not None:
            purchase_rows.append((ref_id, row))
            referenced.add(ref_id)
    visit_pairs = []
    for share, sender, visitor in visits:
        sharer = share_owner.get(share) if share is not None else None
        if sharer is None:
            sharer = _contact_id(sender)
        if sharer is not None:
            visit_pairs.append((sharer, visitor))
            referenced.add(sharer)
    alive = _survivors(referenced | {v for _, v in visit_pairs} | {i for _, i in referral_pairs})

    for ref_id, invitee in referral_pairs:
        ref_id, invitee = alive.get(ref_id), alive.get(invitee, invitee)
        if ref_id is not None and ref_id != invitee:
            raw[ref_id]["invitees"].add(invitee)
    for ref_id, row in purchase_rows:
        ref_id = alive.get(ref_id)
        if ref_id is not None and ref_id != row["contact_id"]:
            raw[ref_id]["referred_purchases"] += row["n"]
            raw[ref_id]["referred_revenue"] += row["revenue"] or Decimal(0)
    for row in shares:
        raw[row["contact_id"]]["shares"] += row["n"]
    for sharer, visitor in visit_pairs:
        sharer, visitor = alive.get(sharer), alive.get(visitor, visitor)
        if sharer is not None and sharer != visitor:
            raw[sharer]["reached"].add(visitor)

    return {
        pk: {
            "invites_accepted": len(c["invitees"]),
            "referred_purchases": c["referred_purchases"],
            "referred_revenue": max(c["referred_revenue"], Decimal(0)),
            "shares": c["shares"],
            "share_reach": len(c["reached"]),
        }
        for pk, c in raw.items()
    }


def _koc_ids(scores: dict[int, float], *, min_score: float, top_percent: float) -> set[int]:
    positive = sorted(((s, pk) for pk, s in scores.items() if s > 0), key=lambda t: (-t[0], t[1]))
    if not positive:
        return set()
    top_n = max(1, math.ceil(len(positive) * top_percent / 100))
    return {pk for score, pk in positive[:top_n] if score >= min_score}


@transaction.atomic
def influence_compute(*, now: dt.datetime | None = None) -> dict[str, int]:
    """Recompute every contact's influence and KOC flag from the events in the window."""
    now = now or timezone.now()
    rule = koc_rule()
    components = _components(now - dt.timedelta(days=rule["window_days"]))
    live = set(
        Contact.objects.filter(pk__in=list(components), merged_into__isnull=True).values_list(
            "pk", flat=True
        )
    )
    components = {pk: c for pk, c in components.items() if pk in live}
    scores = {pk: influence_score(c) for pk, c in components.items()}
    kocs = _koc_ids(scores, min_score=rule["min_score"], top_percent=rule["top_percent"])
    previous = {
        pk: (score, is_koc)
        for pk, score, is_koc in Influence.objects.values_list("contact_id", "score", "is_koc")
    }
    rows = [
        Influence(
            contact_id=pk,
            score=scores[pk],
            is_koc=pk in kocs,
            computed_at=now,
            **components[pk],
        )
        for pk in sorted(components)
    ]
    Influence.objects.bulk_create(
        rows,
        batch_size=WRITE_BATCH,
        update_conflicts=True,
        unique_fields=["contact"],
        update_fields=[
            "invites_accepted",
            "referred_purchases",
            "referred_revenue",
            "shares",
            "share_reach",
            "score",
            "is_koc",
            "computed_at",
        ],
    )
    # Contacts that fell out of the window keep no stale row.
    stale = Influence.objects.exclude(computed_at=now).delete()[0]
    # Rules read the score and the KOC flag (no row: 0, not a KOC): segments re-evaluate the
    # contacts for which either moved on their next incremental pass.
    changed = {pk for pk in scores if previous.pop(pk, None) != (scores[pk], pk in kocs)}
    mark_dirty(contact_ids=sorted(changed | previous.keys()), topics=[KOC])
    return {"contacts": len(rows), "kocs": len(kocs), "removed": stale}


def influence_recompute_request(*, actor: AbstractBaseUser | None) -> Job:
    """Queue a recompute as a job the KOC page can watch (the one pending, if any)."""
    from segments import tasks

    return jobs.job_request_once(
        kind=JOB_KIND,
        actor=actor,
        stale_after=JOB_STALE_AFTER,
        enqueue=lambda job_id: tasks.influence_compute.delay(job_id=job_id),
    )


def influence_recompute_run(*, job_id: int | None = None) -> dict[str, int]:
    """Recompute influence, recording the outcome on the job when one was queued."""
    return jobs.job_run(job_id=job_id, work=influence_compute, result=dict)


def influence_active_job() -> Job | None:
    """The recompute job queued or running right now, if any."""
    return jobs.job_active(kind=JOB_KIND, stale_after=JOB_STALE_AFTER)


def influence_job(*, job_id: str | int) -> Job | None:
    """A recompute job by id; None for a malformed id or another kind of job."""
    return jobs.job_of_kind(kind=JOB_KIND, job_id=job_id)


def influence_last_computed_at() -> dt.datetime | None:
    """When the influence table was last computed (None before the first run)."""
    return Influence.objects.order_by("-computed_at").values_list("computed_at", flat=True).first()


def koc_ranking(*, koc_only: bool = False, limit: int = 100):
    """The top contacts by influence score, best first."""
    qs = Influence.objects.select_related("contact").order_by("-score", "contact_id")
    if koc_only:
        qs = qs.filter(is_koc=True)
    return qs[:limit]
