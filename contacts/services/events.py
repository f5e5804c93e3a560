"""Events the product itself records on contacts."""

import datetime as dt
import uuid
from decimal import Decimal
from typing import Any

from django.utils import timezone

from contacts.models import (
    Contact,
    Event,
)
from contacts.signals import events_recorded


def event_record(
    *,
    contact: Contact,
    name: str,
    properties: dict[str, Any] | None = None,
    value: Decimal | None = None,
    occurred_at: dt.datetime | None = None,
    source: str = "system",
    event_id: str = "",
) -> Event:
    """Record one event raised by the product itself (message sent, tag added …)."""
    event = Event.objects.create(
        event_id=event_id or uuid.uuid4().hex,
        contact=contact,
        name=name,
        properties=properties or {},
        value=value,
        occurred_at=occurred_at or timezone.now(),
        source=source,
    )
    events_recorded.send(sender=Event, events=[event])
    return event


# Rows per INSERT when the product appends many events at once; well under SQLite's
# 32,766-parameter limit at 8 columns per row.
APPEND_BATCH = 2000


def events_append(
    *,
    contact_ids: list[int],
    name: str,
    properties: dict[str, Any],
    occurred_at: dt.datetime,
    source: str = "system",
) -> int:
    """Record the same product event for many contacts in batched inserts."""
    total = 0
    for start in range(0, len(contact_ids), APPEND_BATCH):
        batch = [
            Event(
                event_id=uuid.uuid4().hex,
                contact_id=contact_id,
                name=name,
                properties=properties,
                occurred_at=occurred_at,
                source=source,
            )
            for contact_id in contact_ids[start : start + APPEND_BATCH]
        ]
        Event.objects.bulk_create(batch)
        events_recorded.send(sender=Event, events=batch)
        total += len(batch)
    return total
