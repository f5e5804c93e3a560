from django.dispatch import receiver

from contacts.signals import events_recorded
from membership.services import purchase_reward


@receiver(events_recorded, dispatch_uid="membership.purchase_reward")
def reward_purchases(sender, events, **kwargs) -> None:
    for event in events:
        if event.name == "purchase":
            purchase_reward(event=event)
