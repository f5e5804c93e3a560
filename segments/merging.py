"""Segment memberships through a contact merge and its undo.

A merge and its undo are bookkeeping about who is who, not something the customer did: the
memberships they move write no `segment_entered` / `segment_exited` event and send no signal,
so a journey triggered by entering a segment does not start again for a person who was in it
all along.

- A static list holds exactly the contacts put into it: the duplicate's place moves to the
  survivor, or is removed where the survivor is already in the list.
- A rule-based segment: the duplicate, hidden, matches no rule. Its place moves to the survivor
  where the survivor is not in the segment but matches the rule now (the person was in it all
  along, say with the tag that has just moved to the survivor), and in an archived segment
  (frozen: it keeps its people, as a list does). Otherwise the place is removed. The entry time
  goes with the place.
- The undo gives the duplicate back every place it had, with its entry time, and takes back
  from the survivor the places it was given (unless it left and entered again since: then that
  membership is its own). Rule-based segments first built while the duplicate was merged take
  it in silently where it matches: it would have been one of their initial members, and a first
  build is silent.

After either, both contacts are re-evaluated as after any change
(services.segments_refresh_after_merge): what differs then is a real change and is applied with
events and signals as usual (see docs/segments.md, "Merges and their undo").
"""

import datetime as dt
import logging

from django.db import DatabaseError, transaction
from django.db.models import F
from django.utils import timezone

from contacts.models import Contact, MergeRecord
from core.errors import DomainError
from segments.models import Segment, SegmentKind, SegmentMembership, SegmentSize
from segments.services import auto_tags_sync, segment_queryset, segments_in_refresh_order

logger = logging.getLogger(__name__)

# Keys of record.moved. Static lists: the lists whose row was given to the survivor, and the
# rows removed because the survivor was already in the list (with what it takes to put them
# back). Rule-based segments: every membership the duplicate had, with its entry time and
# whether the survivor was given the place.
MOVED_KEY = "segments.segmentmembership"
DROPPED_KEY = "segments.segmentmembership_dropped"
RULE_KEY = "segments.segmentmembership_rule"


def segments_lock_by_id(ids: set[int]) -> dict[int, Segment]:
    """Lock the segments (those still there) whose membership a merge, an undo or an erasure
    writes.

    The row lock every refresh takes before writing membership (services._lock_segment), so
    that none writes these contacts' rows in between; in id order, as every merge and undo
    takes them, so that two never wait on each other in a circle."""
    if not ids:
        return {}
    # NO KEY UPDATE, as _lock_segment: a plain FOR UPDATE would also wait for the KEY SHARE
    # locks a segment save holds on the segments its rule reads, and deadlock with it.
    locked = Segment.objects.select_for_update(no_key=True).filter(pk__in=ids).order_by("pk")
    return {s.pk: s for s in locked}


def _give(*, segment_ids: list[int], source: Contact, target: Contact) -> None:
    # A row is keyed by (segment, contact): giving it is a change of key, done in place, so
    # the entry time goes with it.
    if segment_ids:
        SegmentMembership.objects.filter(contact=source, segment_id__in=segment_ids).update(
            contact=target
        )


def segment_counts_adjust(deltas: dict[int, int], now: dt.datetime) -> None:
    """Apply member-count changes and redraw today's point of each segment's growth chart."""
    changed = sorted(pk for pk, delta in deltas.items() if delta)
    for pk in changed:
        Segment.objects.filter(pk=pk).update(member_count=F("member_count") + deltas[pk])
    day = timezone.localdate(now)
    SegmentSize.objects.bulk_create(
        [
            SegmentSize(segment_id=pk, day=day, member_count=count)
            for pk, count in Segment.objects.filter(pk__in=changed).values_list(
                "pk", "member_count"
            )
        ],
        update_conflicts=True,
        unique_fields=["segment", "day"],
        update_fields=["member_count"],
    )


def _matches(segment: Segment, contact: Contact, now: dt.datetime, *, unknown: bool) -> bool:
    """Whether the contact matches the segment's rule now; `unknown` for a rule that cannot be
    evaluated (its next refresh that succeeds puts the place right, as a real entry or exit)."""
    try:
        # A savepoint: on PostgreSQL a failed query would otherwise abort the whole merge.
        with transaction.atomic():
            return segment_queryset(segment=segment, now=now, scope=[contact.pk]).exists()
    except (DomainError, DatabaseError):
        logger.warning("segment %s could not be evaluated for contact %s", segment.pk, contact.pk)
        return unknown


@transaction.atomic
def memberships_merge(*, record: MergeRecord, survivor: Contact, duplicate: Contact) -> None:
    """Give the duplicate's segment places to the survivor or remove them, silently, and keep
    in record.moved what the undo needs to give them back."""
    now = timezone.now()
    segments = segments_lock_by_id(
        set(
            SegmentMembership.objects.filter(contact=duplicate).values_list("segment_id", flat=True)
        )
    )
    held = dict(
        SegmentMembership.objects.filter(contact=duplicate, segment_id__in=segments).values_list(
            "segment_id", "entered_at"
        )
    )
    taken = set(
        SegmentMembership.objects.filter(contact=survivor, segment_id__in=held).values_list(
            "segment_id", flat=True
        )
    )
    static = sorted(pk for pk in held if segments[pk].kind == SegmentKind.STATIC)
    moved = [pk for pk in static if pk not in taken]
    dropped = [{"segment": pk, "entered_at": held[pk].isoformat()} for pk in static if pk in taken]
    _give(segment_ids=moved, source=duplicate, target=survivor)
    removed = [row["segment"] for row in dropped]

    rule_rows: list[dict] = []
    # In refresh order, after the lists: a rule reading another segment sees the survivor's
    # place there already.
    for segment in segments_in_refresh_order(
        s for s in segments.values() if s.pk in held and s.kind == SegmentKind.DYNAMIC
    ):
        # An archived segment is frozen: it keeps its people, as a list does.
        given = segment.pk not in taken and (
            segment.is_archived or _matches(segment, survivor, now, unknown=True)
        )
        rule_rows.append(
            {"segment": segment.pk, "entered_at": held[segment.pk].isoformat(), "survivor": given}
        )
        if given:
            _give(segment_ids=[segment.pk], source=duplicate, target=survivor)
        else:
            removed.append(segment.pk)
    SegmentMembership.objects.filter(contact=duplicate, segment_id__in=removed).delete()
    segment_counts_adjust({pk: -1 for pk in removed}, now)
    record.moved[MOVED_KEY] = moved
    record.moved[DROPPED_KEY] = dropped
    record.moved[RULE_KEY] = rule_rows
    record.save(update_fields=["moved"])


@transaction.atomic
def memberships_unmerge(*, record: MergeRecord, survivor: Contact, duplicate: Contact) -> None:
    """Give the duplicate back the segment places memberships_merge gave away or removed, with
    their entry times, silently; then (after commit) put it into the segments first built
    while it was merged where it matches."""
    now = timezone.now()
    moved = record.moved.get(MOVED_KEY, [])
    dropped = record.moved.get(DROPPED_KEY, [])
    # Absent from merges recorded before rule-based places were kept: their undo leaves
    # rule-based segments to the re-evaluation.
    rule_rows = record.moved.get(RULE_KEY, [])
    # A segment deleted since has nothing to put the row back into.
    segments = segments_lock_by_id({*moved, *(row["segment"] for row in dropped + rule_rows)})

    # A list row the survivor lost since (removed from the list by an operator) stays gone.
    _give(segment_ids=[pk for pk in moved if pk in segments], source=survivor, target=duplicate)
    wanted = {
        row["segment"]: dt.datetime.fromisoformat(row["entered_at"])
        for row in dropped
        if row["segment"] in segments
    }
    rule_places = {
        row["segment"]: dt.datetime.fromisoformat(row["entered_at"])
        for row in rule_rows
        if row["segment"] in segments and segments[row["segment"]].kind == SegmentKind.DYNAMIC
    }
    survivor_rows = dict(
        SegmentMembership.objects.filter(contact=survivor, segment_id__in=rule_places).values_list(
            "segment_id", "entered_at"
        )
    )
    given = {row["segment"] for row in rule_rows if row["survivor"]}
    # The very row the survivor was given, known by its entry time; a survivor that left the
    # segment since keeps nothing, and one that left and entered again keeps its own entry.
    back = sorted(
        pk for pk, at in rule_places.items() if pk in given and survivor_rows.get(pk) == at
    )
    _give(segment_ids=back, source=survivor, target=duplicate)
    wanted.update({pk: at for pk, at in rule_places.items() if pk not in back})

    present = set(
        SegmentMembership.objects.filter(contact=duplicate, segment_id__in=wanted).values_list(
            "segment_id", flat=True
        )
    )
    restored = sorted(pk for pk in wanted if pk not in present)
    SegmentMembership.objects.bulk_create(
        [
            SegmentMembership(segment_id=pk, contact=duplicate, entered_at=wanted[pk])
            for pk in restored
        ]
    )
    segment_counts_adjust({pk: 1 for pk in restored}, now)
    transaction.on_commit(
        lambda: _join_segments_built_while_merged(record_id=record.pk, contact_id=duplicate.pk),
        robust=True,
    )


def _join_segments_built_while_merged(*, record_id: int, contact_id: int) -> None:
    """Put the restored contact, silently, into the rule-based segments first built while it
    was merged, where it matches now (their first build was silent and it would have been one
    of their initial members)."""
    span = (
        MergeRecord.objects.filter(pk=record_id, undone_at__isnull=False)
        .values_list("created_at", "undone_at")
        .first()
    )
    if span is None:
        return
    built = Segment.objects.filter(
        kind=SegmentKind.DYNAMIC,
        is_archived=False,
        created_at__gt=span[0],
        created_at__lte=span[1],
        last_refreshed_at__isnull=False,
    )
    contact = Contact(pk=contact_id)
    for segment in segments_in_refresh_order(built):
        now = timezone.now()
        with transaction.atomic():
            locked = segments_lock_by_id({segment.pk}).get(segment.pk)
            if locked is None or locked.is_archived:
                continue
            if not Contact.objects.filter(pk=contact_id, merged_into__isnull=True).exists():
                return  # merged again meanwhile
            if SegmentMembership.objects.filter(segment=locked, contact_id=contact_id).exists():
                continue
            if not _matches(locked, contact, now, unknown=False):
                continue
            SegmentMembership.objects.create(segment=locked, contact=contact, entered_at=now)
            segment_counts_adjust({locked.pk: 1}, now)
            # As its first build gave them to its initial members.
            auto_tags_sync(segment=locked)
