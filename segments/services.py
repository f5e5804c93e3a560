from collections.abc import Iterable

from django.db import transaction
from django.db.models import QuerySet
from django.utils import timezone

from contacts.models import Contact
from contacts.services import events_append
from segments.models import Segment, SegmentMembership
from segments.rules import compile_rule, validate_rule
from segments.signals import segment_entered, segment_exited

# Above this many changed contacts, re-evaluation leaves the request and runs in a worker.
INLINE_REFRESH_LIMIT = 200


def segment_queryset(*, segment: Segment) -> QuerySet[Contact]:
    """The contacts the segment's rule matches right now (one SQL query)."""
    # Contacts merged into another are kept only for undo and never match a rule.
    return Contact.objects.filter(compile_rule(segment.rule), merged_into__isnull=True)


def segment_create(*, name: str, rule: dict, description: str = "") -> Segment:
    """Validate the rule, create the segment and materialise its members."""
    validate_rule(rule)
    segment = Segment.objects.create(name=name, rule=rule, description=description)
    segment_refresh(segment=segment)
    return segment


def segment_update_rule(*, segment: Segment, rule: dict) -> Segment:
    validate_rule(rule)
    segment.rule = rule
    segment.save(update_fields=["rule", "updated_at"])
    segment_refresh(segment=segment)
    return segment


def segment_update(*, segment: Segment, name: str, description: str, rule: dict) -> Segment:
    """Rename or re-describe a segment and, when its rule changed, re-evaluate its members."""
    validate_rule(rule)
    rule_changed = rule != segment.rule
    segment.name, segment.description, segment.rule = name, description, rule
    segment.save(update_fields=["name", "description", "rule", "updated_at"])
    if rule_changed:
        segment_refresh(segment=segment)
    return segment


# Contact ids per statement: bounded so that SQLite's parameter limit is never reached.
DIFF_BATCH = 2000


def _batches(ids: list[int]):
    for start in range(0, len(ids), DIFF_BATCH):
        yield ids[start : start + DIFF_BATCH]


@transaction.atomic
def _apply_diff(*, segment: Segment, entered: list[int], exited: list[int]) -> None:
    now = timezone.now()
    for batch in _batches(exited):
        SegmentMembership.objects.filter(segment=segment, contact_id__in=batch).delete()
    for batch in _batches(entered):
        SegmentMembership.objects.bulk_create(
            [SegmentMembership(segment=segment, contact_id=c, entered_at=now) for c in batch],
            ignore_conflicts=True,
        )
    properties = {"segment_id": segment.pk, "segment": segment.name}
    events_append(
        contact_ids=entered, name="segment_entered", properties=properties, occurred_at=now
    )
    events_append(contact_ids=exited, name="segment_exited", properties=properties, occurred_at=now)
    count = SegmentMembership.objects.filter(segment=segment).count()
    Segment.objects.filter(pk=segment.pk).update(member_count=count, last_refreshed_at=now)
    segment.member_count, segment.last_refreshed_at = count, now
    # Inside the transaction: journeys enroll atomically with the membership change.
    if entered:
        segment_entered.send(sender=Segment, segment=segment, contact_ids=entered)
    if exited:
        segment_exited.send(sender=Segment, segment=segment, contact_ids=exited)


def segment_refresh(*, segment: Segment) -> tuple[int, int]:
    """Re-evaluate every contact; return (entered, exited) counts."""
    matching = set(segment_queryset(segment=segment).values_list("pk", flat=True))
    current = set(segment.memberships.values_list("contact_id", flat=True))
    entered, exited = sorted(matching - current), sorted(current - matching)
    _apply_diff(segment=segment, entered=entered, exited=exited)
    return len(entered), len(exited)


def segment_refresh_contacts(*, contact_ids: Iterable[int]) -> None:
    """Re-evaluate only the given contacts against every active segment."""
    ids = sorted(set(contact_ids))
    if not ids:
        return
    for segment in Segment.objects.filter(is_archived=False):
        matching: set[int] = set()
        current: set[int] = set()
        for batch in _batches(ids):
            qs = segment_queryset(segment=segment).filter(pk__in=batch)
            matching.update(qs.values_list("pk", flat=True))
            current.update(
                segment.memberships.filter(contact_id__in=batch).values_list(
                    "contact_id", flat=True
                )
            )
        entered, exited = sorted(matching - current), sorted(current - matching)
        if entered or exited:
            _apply_diff(segment=segment, entered=entered, exited=exited)


def segments_refresh_all() -> int:
    """Full refresh of every active segment (catches time windows that aged out)."""
    n = 0
    for segment in Segment.objects.filter(is_archived=False):
        segment_refresh(segment=segment)
        n += 1
    return n


def segments_refresh_after_merge(*, contact_ids: list[int]) -> None:
    """Re-evaluate merged (or unmerged) contacts once the merge has committed.

    After commit, so that every app has moved its rows first: the survivor's segments then see
    its full history, and the hidden duplicate leaves every segment.
    """
    ids = list(contact_ids)
    transaction.on_commit(lambda: segment_refresh_contacts(contact_ids=ids))
