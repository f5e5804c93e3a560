from django.dispatch import receiver

from channels.services import deliveries_merge, deliveries_unmerge
from contacts.signals import contact_merged, contact_unmerged


@receiver(contact_merged, dispatch_uid="channels.deliveries_merge")
def move_deliveries(sender, record, survivor, duplicate, **kwargs) -> None:
    deliveries_merge(record=record, survivor=survivor, duplicate=duplicate)


@receiver(contact_unmerged, dispatch_uid="channels.deliveries_unmerge")
def move_deliveries_back(sender, record, survivor, duplicate, **kwargs) -> None:
    deliveries_unmerge(record=record, survivor=survivor, duplicate=duplicate)
