from django.dispatch import receiver

from contacts.signals import (
    contact_data_requested,
    contact_erasing,
    contact_merged,
    contact_unmerged,
    events_recorded,
)
from membership.erasure import members_erase, members_personal_data
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


@receiver(contact_erasing, dispatch_uid="membership.erase")
def erase(sender, erasure, contact_ids, **kwargs) -> None:
    members_erase(erasure=erasure, contact_ids=contact_ids)


@receiver(contact_data_requested, dispatch_uid="membership.personal_data")
def personal_data(sender, contact_ids, **kwargs) -> dict:
    return members_personal_data(contact_ids=contact_ids)
