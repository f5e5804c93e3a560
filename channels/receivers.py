from django.dispatch import receiver

from channels.erasure import deliveries_erase, deliveries_personal_data
from channels.services import deliveries_merge, deliveries_unmerge
from contacts.signals import (
    contact_data_requested,
    contact_erasing,
    contact_merged,
    contact_unmerged,
)


@receiver(contact_merged, dispatch_uid="channels.deliveries_merge")
def move_deliveries(sender, record, survivor, duplicate, **kwargs) -> None:
    deliveries_merge(record=record, survivor=survivor, duplicate=duplicate)


@receiver(contact_unmerged, dispatch_uid="channels.deliveries_unmerge")
def move_deliveries_back(sender, record, survivor, duplicate, **kwargs) -> None:
    deliveries_unmerge(record=record, survivor=survivor, duplicate=duplicate)


@receiver(contact_erasing, dispatch_uid="channels.erase")
def erase(sender, erasure, contact_ids, **kwargs) -> None:
    deliveries_erase(erasure=erasure, contact_ids=contact_ids)


@receiver(contact_data_requested, dispatch_uid="channels.personal_data")
def personal_data(sender, contact_ids, **kwargs) -> dict:
    return deliveries_personal_data(contact_ids=contact_ids)
