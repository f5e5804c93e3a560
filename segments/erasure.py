"""Segments' part of erasing a person (contacts.services.erasure) and of the copy of their data.

Memberships carry no database foreign key (SegmentMembership), and every segment keeps its
member count and daily sizes by difference: a cascade would take the rows and leave the counts
one too high until each segment's next full refresh (static lists have none). So the places are
removed here, under each segment's lock as a merge removes them (segments.merging), silently:
the person is gone, so there is no one to write a `segment_exited` event for, and no journey or
auto-tag has anything left to react to. The queue of changed contacts has no foreign key either.

Lead score awards, RFM scores and influence rows hang off the contact (or its events) and go
with the cascade; nothing counts them by difference.
"""

import datetime as dt
from collections import Counter
from typing import Any

from django.db import transaction
from django.utils import timezone

from contacts.models import Erasure
from contacts.services import erasure_count
from core.sql import delete_returning
from segments.merging import segment_counts_adjust, segments_lock_by_id
from segments.models import (
    DirtyContact,
    Influence,
    LeadScoreAward,
    RFMScore,
    Segment,
    SegmentMembership,
)

# Reads of the person's places. A second read finds the places a first build (silent, so it
# never waits for the person's locked contact row) committed while the first was read.
ERASE_ROUNDS = 3


@transaction.atomic
def segments_erase(*, erasure: Erasure, contact_ids: list[int]) -> None:
    """Take the erased contacts out of every segment, lowering each one's member count and
    today's size by the places removed, and out of the queue of changed contacts."""
    ids = sorted(contact_ids)
    now = timezone.now()
    locked: dict[int, Segment] = {}
    seen: set[int] = set()
    removed: Counter[int] = Counter()
    for _round in range(ERASE_ROUNDS):
        held = set(
            SegmentMembership.objects.filter(contact_id__in=ids).values_list(
                "segment_id", flat=True
            )
        )
        if not held:
            break
        # Each segment's lock before its rows, as every writer of membership takes it.
        locked.update(segments_lock_by_id(held - seen))
        seen |= held
        removed.update(
            delete_returning(
                SegmentMembership.objects.filter(contact_id__in=ids, segment_id__in=seen),
                returning="segment",
            )
        )
    # A row left by a segment deleted meanwhile counts in no segment; it is still the person's.
    segment_counts_adjust({pk: -n for pk, n in removed.items() if pk in locked}, now)
    erasure_count(
        erasure=erasure, label=SegmentMembership._meta.label_lower, count=sum(removed.values())
    )
    queued, _ = DirtyContact.objects.filter(contact_id__in=ids).delete()
    erasure_count(erasure=erasure, label=DirtyContact._meta.label_lower, count=queued)


def _iso(value: dt.datetime | None) -> str | None:
    return value.isoformat() if value is not None else None


def segments_personal_data(*, contact_ids: list[int]) -> dict[str, list[dict[str, Any]]]:
    """The segments and static lists the person is in, the lead-score points they were given
    and what was computed about them (RFM value layer, influence), as sections of their copy
    of their data."""
    memberships = [
        {
            "contact_id": row.contact_id,
            "segment": row.segment.name,
            "kind": row.segment.kind,
            "entered_at": _iso(row.entered_at),
        }
        for row in SegmentMembership.objects.filter(contact_id__in=contact_ids)
        .select_related("segment")
        .order_by("entered_at", "segment_id", "contact_id")
    ]
    awards = [
        {
            "contact_id": award.contact_id,
            "rule": award.rule.name,
            "points": award.points,
            "awarded_at": _iso(award.awarded_at),
            "event_id": award.event.event_id if award.event_id else None,
        }
        for award in LeadScoreAward.objects.filter(contact_id__in=contact_ids)
        .select_related("rule", "event")
        .order_by("awarded_at", "pk")
    ]
    rfm = [
        {
            "contact_id": row.contact_id,
            "recency_days": row.recency_days,
            "frequency": row.frequency,
            "monetary": str(row.monetary),
            "r_score": row.r_score,
            "f_score": row.f_score,
            "m_score": row.m_score,
            "layer": row.layer,
            "computed_at": _iso(row.computed_at),
        }
        for row in RFMScore.objects.filter(contact_id__in=contact_ids).order_by("contact_id")
    ]
    influence = [
        {
            "contact_id": row.contact_id,
            "invites_accepted": row.invites_accepted,
            "referred_purchases": row.referred_purchases,
            "referred_revenue": str(row.referred_revenue),
            "shares": row.shares,
            "share_reach": row.share_reach,
            "score": row.score,
            "is_koc": row.is_koc,
            "computed_at": _iso(row.computed_at),
        }
        for row in Influence.objects.filter(contact_id__in=contact_ids).order_by("contact_id")
    ]
    return {
        "segments.memberships": memberships,
        "segments.lead_score_awards": awards,
        "segments.rfm": rfm,
        "segments.influence": influence,
    }
