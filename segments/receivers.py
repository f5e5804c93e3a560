from django.dispatch import receiver

from contacts.signals import contact_changed, contact_merged, contact_unmerged, events_recorded
from segments import scoring, services, tasks


@receiver(contact_changed, dispatch_uid="segments.reevaluate_changed_contacts")
def reevaluate(sender, contact_ids, **kwargs) -> None:
    # Small changes (an operator's click, one API call) are evaluated at once so that the
    # operator sees the result; big ones are queued for beat's incremental pass.
    services.segment_refresh_contacts(contact_ids=contact_ids)


# Events written by the segment refresh itself never change what a rule matches in a way the
# refresh has not already applied; re-queueing their contacts would only repeat the work.
SELF_EVENTS = {"segment_entered", "segment_exited"}


@receiver(events_recorded, dispatch_uid="segments.queue_contacts_with_new_events")
def queue_event_contacts(sender, events, **kwargs) -> None:
    services.mark_dirty(contact_ids=[e.contact_id for e in events if e.name not in SELF_EVENTS])


@receiver(contact_merged, dispatch_uid="segments.reevaluate_merged_contacts")
@receiver(contact_unmerged, dispatch_uid="segments.reevaluate_unmerged_contacts")
def reevaluate_merged(sender, record, survivor, duplicate, **kwargs) -> None:
    services.segments_refresh_after_merge(contact_ids=[survivor.pk, duplicate.pk])


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


@receiver(contact_merged, dispatch_uid="segments.lead_score_merge")
def score_merge(sender, record, survivor, duplicate, **kwargs) -> None:
    scoring.lead_scores_merge(record=record, survivor=survivor, duplicate=duplicate)


@receiver(contact_unmerged, dispatch_uid="segments.lead_score_unmerge")
def score_unmerge(sender, record, survivor, duplicate, **kwargs) -> None:
    scoring.lead_scores_unmerge(record=record, survivor=survivor, duplicate=duplicate)
