from django.dispatch import receiver

from contacts.signals import (
    contact_data_requested,
    contact_erasing,
    contact_merged,
    contact_unmerged,
)
from journeys.erasure import enrollments_erase, enrollments_personal_data
from journeys.services import (
    enrollments_merge,
    enrollments_unmerge,
    journeys_enroll_on_segment_entry,
)
from segments.signals import segment_entered


@receiver(segment_entered, dispatch_uid="journeys.enroll_on_segment_entry")
def enroll(sender, segment, contact_ids, **kwargs) -> None:
    journeys_enroll_on_segment_entry(segment=segment, contact_ids=contact_ids)


@receiver(contact_merged, dispatch_uid="journeys.enrollments_merge")
def move_enrollments(sender, record, survivor, duplicate, **kwargs) -> None:
    enrollments_merge(record=record, survivor=survivor, duplicate=duplicate)


@receiver(contact_unmerged, dispatch_uid="journeys.enrollments_unmerge")
def move_enrollments_back(sender, record, survivor, duplicate, **kwargs) -> None:
    enrollments_unmerge(record=record, survivor=survivor, duplicate=duplicate)


@receiver(contact_erasing, dispatch_uid="journeys.erase")
def erase(sender, erasure, contact_ids, **kwargs) -> None:
    enrollments_erase(erasure=erasure, contact_ids=contact_ids)


@receiver(contact_data_requested, dispatch_uid="journeys.personal_data")
def personal_data(sender, contact_ids, **kwargs) -> dict:
    return enrollments_personal_data(contact_ids=contact_ids)
