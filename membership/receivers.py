from django.dispatch import receiver

from contacts.signals import contact_merged, contact_unmerged, events_recorded
from membership.services import members_merge, members_unmerge, purchase_reward


@receiver(events_recorded, dispatch_uid="membership.purchase_reward")
def reward_purchases(sender, events, **kwargs) -> None:
    for event in events:
        if event.name == "purchase":
            purchase_reward(event=event)


@receiver(contact_merged, dispatch_uid="membership.members_merge")
def move_membership(sender, record, survivor, duplicate, **kwargs) -> None:
    members_merge(record=record, survivor=survivor, duplicate=duplicate)


@receiver(contact_unmerged, dispatch_uid="membership.members_unmerge")
def move_membership_back(sender, record, survivor, duplicate, **kwargs) -> None:
    members_unmerge(record=record, survivor=survivor, duplicate=duplicate)
