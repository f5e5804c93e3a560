"""What the lead-scoring tests share: a fixed clock, the half-life, an event rule on purchases,
events at a given time and the stored score."""

import datetime as dt

from contacts.models import Contact, Event
from segments import scoring
from segments.models import LeadScoreRule, LeadScoringConfig
from tests.factories import EventFactory

NOW = dt.datetime(2026, 3, 18, 12, 0, tzinfo=dt.UTC)


def half_life(days: int) -> None:
    LeadScoringConfig.objects.update_or_create(pk=1, defaults={"half_life_days": days})


def event_rule(**kwargs) -> LeadScoreRule:
    """An event rule, by default +10 per purchase."""
    data = {"name": "下单", "kind": "event", "event_name": "purchase", "points": 10, **kwargs}
    return scoring.score_rule_create(data=data)


def event_at(
    contact: Contact, at: dt.datetime = NOW, name: str = "purchase", **properties
) -> Event:
    return EventFactory(contact=contact, name=name, occurred_at=at, properties=properties)


def stored_score(contact: Contact) -> float:
    return Contact.objects.get(pk=contact.pk).lead_score
