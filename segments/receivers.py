from django.dispatch import receiver

from contacts.signals import contact_changed, contact_merged, contact_unmerged
from segments import services, tasks


@receiver(contact_changed, dispatch_uid="segments.reevaluate_changed_contacts")
def reevaluate(sender, contact_ids, **kwargs) -> None:
    # Small changes (an operator's click, one API call) are evaluated at once so that the
    # operator sees the result; big ones go to a worker.
    if len(contact_ids) <= services.INLINE_REFRESH_LIMIT:
        services.segment_refresh_contacts(contact_ids=contact_ids)
    else:
        tasks.refresh_contacts.delay(list(contact_ids))


@receiver(contact_merged, dispatch_uid="segments.reevaluate_merged_contacts")
@receiver(contact_unmerged, dispatch_uid="segments.reevaluate_unmerged_contacts")
def reevaluate_merged(sender, record, survivor, duplicate, **kwargs) -> None:
    services.segments_refresh_after_merge(contact_ids=[survivor.pk, duplicate.pk])
