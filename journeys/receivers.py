from django.dispatch import receiver

from journeys.services import journeys_enroll_on_segment_entry
from segments.signals import segment_entered


@receiver(segment_entered, dispatch_uid="journeys.enroll_on_segment_entry")
def enroll(sender, segment, contact_ids, **kwargs) -> None:
    journeys_enroll_on_segment_entry(segment=segment, contact_ids=contact_ids)
