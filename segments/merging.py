"""Static lists through a contact merge and its undo.

Rule-based segments re-evaluate the merged contacts after commit (segments_refresh_after_merge);
a static list holds exactly the contacts put into it, so the duplicate's place in a list moves to
the survivor like the rows other apps hold. The person was in the list all along, so the move
writes no `segment_entered` / `segment_exited` event and sends no signal: a journey triggered by
entering the list must not start again for them.
"""

import datetime as dt

from django.db import transaction
from django.db.models import F

from contacts.models import Contact, MergeRecord
from segments.models import Segment, SegmentKind, SegmentMembership

# Keys of record.moved: the lists whose row was given to the survivor, and the rows removed
# because the survivor was already in the list (with what it takes to put them back).
MOVED_KEY = "segments.segmentmembership"
DROPPED_KEY = "segments.segmentmembership_dropped"


@transaction.atomic
def static_lists_merge(*, record: MergeRecord, survivor: Contact, duplicate: Contact) -> None:
    """Move the duplicate's static-list memberships to the survivor; in a list the survivor is
    already in, remove the duplicate's row instead (record.moved keeps both for the undo)."""
    static = SegmentMembership.objects.filter(segment__kind=SegmentKind.STATIC)
    taken = set(static.filter(contact=survivor).values_list("segment_id", flat=True))
    moved: list[int] = []
    dropped: list[dict] = []
    rows = (
        static.select_for_update(of=("self",))
        .filter(contact=duplicate)
        .order_by("segment_id")
        .values_list("segment_id", "entered_at")
    )
    for segment_id, entered_at in rows:
        if segment_id in taken:
            dropped.append({"segment": segment_id, "entered_at": entered_at.isoformat()})
        else:
            moved.append(segment_id)
    # A row is keyed by (segment, contact): moving it is a change of key, done in place.
    SegmentMembership.objects.filter(contact=duplicate, segment_id__in=moved).update(
        contact=survivor
    )
    if dropped:
        lists = [row["segment"] for row in dropped]
        SegmentMembership.objects.filter(contact=duplicate, segment_id__in=lists).delete()
        Segment.objects.filter(pk__in=lists).update(member_count=F("member_count") - 1)
    record.moved[MOVED_KEY] = moved
    record.moved[DROPPED_KEY] = dropped
    record.save(update_fields=["moved"])


@transaction.atomic
def static_lists_unmerge(*, record: MergeRecord, survivor: Contact, duplicate: Contact) -> None:
    """Give the duplicate back the static-list memberships static_lists_merge moved or removed."""
    # A row the survivor lost since (removed from the list by an operator) stays gone.
    SegmentMembership.objects.filter(
        contact=survivor, segment_id__in=record.moved.get(MOVED_KEY, [])
    ).update(contact=duplicate)
    dropped = record.moved.get(DROPPED_KEY, [])
    lists = [row["segment"] for row in dropped]
    # A list deleted since has nothing to put the row back into.
    alive = set(Segment.objects.filter(pk__in=lists).values_list("pk", flat=True))
    present = set(
        SegmentMembership.objects.filter(contact=duplicate, segment_id__in=lists).values_list(
            "segment_id", flat=True
        )
    )
    restored = [
        SegmentMembership(
            segment_id=row["segment"],
            contact=duplicate,
            entered_at=dt.datetime.fromisoformat(row["entered_at"]),
        )
        for row in dropped
        if row["segment"] in alive - present
    ]
    SegmentMembership.objects.bulk_create(restored)
    if restored:
        Segment.objects.filter(pk__in=[row.segment_id for row in restored]).update(
            member_count=F("member_count") + 1
        )
