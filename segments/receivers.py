from django.db import transaction
from django.dispatch import receiver

from contacts.services import is_activity
from contacts.signals import (
    contact_changed,
    contact_data_requested,
    contact_erasing,
    contact_merged,
    contact_unmerged,
    contacts_changed_in_bulk,
    events_recorded,
)
from membership.signals import membership_changed
from segments import erasure as erasure_module
from segments import merging, scoring, services, tasks
from segments.rules.topics import MEMBERSHIP, event_topic, topic_bit


@receiver(contact_changed, dispatch_uid="segments.reevaluate_changed_contacts")
def reevaluate(sender, contact_ids, changed=None, **kwargs) -> None:
    # Small changes (an operator's click, one API call) are evaluated at once so that the
    # operator sees the result; big ones are queued for beat's incremental pass.
    services.segment_refresh_contacts(contact_ids=contact_ids, topics=changed)


@receiver(contacts_changed_in_bulk, dispatch_uid="segments.refresh_after_bulk_change")
def refresh_after_bulk_change(sender, **kwargs) -> None:
    # Too many contacts to queue one by one: the on-change segments are rebuilt in a worker.
    transaction.on_commit(tasks.refresh_on_change.delay)


@receiver(membership_changed, dispatch_uid="segments.queue_membership_changes")
def queue_membership_changes(sender, contact_ids, **kwargs) -> None:
    # Queued, not evaluated at once: points mostly move with purchases, inside event ingestion.
    services.mark_dirty(contact_ids=contact_ids, topics=[MEMBERSHIP])


# Events written by the segment refresh itself never change what a rule matches in a way the
# refresh has not already applied; re-queueing their contacts would only repeat the work.
SELF_EVENTS = {"segment_entered", "segment_exited"}


ACTIVE_BIT = topic_bit("last_active_at")


@receiver(events_recorded, dispatch_uid="segments.queue_contacts_with_new_events")
def queue_event_contacts(sender, events, **kwargs) -> None:
    # Each contact is queued with the names of its new events and, for activity, the
    # last_active_at the contacts app has just moved: only rules reading those re-evaluate it.
    masks: dict[int, int] = {}
    for event in events:
        if event.name in SELF_EVENTS:
            continue
        bit = topic_bit(event_topic(event.name))
        if is_activity(event.name):
            bit |= ACTIVE_BIT
        masks[event.contact_id] = masks.get(event.contact_id, 0) | bit
    services.queue_contacts(masks=masks)


@receiver(events_recorded, dispatch_uid="segments.lead_score_events")
def score_events(sender, events, **kwargs) -> None:
    # Inside the recording transaction: the points commit or roll back with the events.
    scoring.lead_scores_award_events(events=events)


@receiver(contact_changed, dispatch_uid="segments.lead_score_fit")
def score_fit(sender, contact_ids, **kwargs) -> None:
    if len(contact_ids) <= scoring.FIT_INLINE_LIMIT:
        scoring.lead_scores_fit(contact_ids=contact_ids)
    else:
        tasks.lead_scores_fit.delay(list(contact_ids))


@receiver(contacts_changed_in_bulk, dispatch_uid="segments.lead_score_fit_all")
def score_fit_all(sender, **kwargs) -> None:
    # Profile fit for everyone, as the daily pass does; its score changes reach segments
    # through the queue.
    transaction.on_commit(tasks.lead_scores_fit.delay)


@receiver(contact_merged, dispatch_uid="segments.lead_score_merge")
def score_merge(sender, record, survivor, duplicate, **kwargs) -> None:
    scoring.lead_scores_merge(record=record, survivor=survivor, duplicate=duplicate)


@receiver(contact_unmerged, dispatch_uid="segments.lead_score_unmerge")
def score_unmerge(sender, record, survivor, duplicate, **kwargs) -> None:
    scoring.lead_scores_unmerge(record=record, survivor=survivor, duplicate=duplicate)


# The merge receivers below come after the lead-score ones on purpose (receivers run in the
# order they are connected): a survivor is checked against the duplicate's rule-based segments
# with its merged score, and the re-evaluation after an undo runs after the rescoring.


@receiver(contact_merged, dispatch_uid="segments.memberships_merge")
def memberships_merge(sender, record, survivor, duplicate, **kwargs) -> None:
    merging.memberships_merge(record=record, survivor=survivor, duplicate=duplicate)


@receiver(contact_unmerged, dispatch_uid="segments.memberships_unmerge")
def memberships_unmerge(sender, record, survivor, duplicate, **kwargs) -> None:
    merging.memberships_unmerge(record=record, survivor=survivor, duplicate=duplicate)


@receiver(contact_merged, dispatch_uid="segments.reevaluate_merged_contacts")
@receiver(contact_unmerged, dispatch_uid="segments.reevaluate_unmerged_contacts")
def reevaluate_merged(sender, record, survivor, duplicate, **kwargs) -> None:
    services.segments_refresh_after_merge(contact_ids=[survivor.pk, duplicate.pk])


@receiver(contact_erasing, dispatch_uid="segments.erase")
def erase(sender, erasure, contact_ids, **kwargs) -> None:
    erasure_module.segments_erase(erasure=erasure, contact_ids=contact_ids)


@receiver(contact_data_requested, dispatch_uid="segments.personal_data")
def personal_data(sender, contact_ids, **kwargs) -> dict:
    return erasure_module.segments_personal_data(contact_ids=contact_ids)
