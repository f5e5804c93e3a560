"""Channels' part of erasing a person (contacts.services.erasure) and of the copy of their data.

A delivery holds the message as sent (its payload, often personalised), so it goes with the
person, sent or not: a pending one is never sent, and one a worker is sending right now (under
a lease) is deleted under it. The worker then finds no row to record the outcome on, and
records nothing (services.delivery_send, services._finish): no event is written about a person
who is gone. What the provider was already handed cannot be called back.
"""

from typing import Any

from channels.models import Delivery
from contacts.models import Erasure
from contacts.services import erasure_rows_delete


def deliveries_erase(*, erasure: Erasure, contact_ids: list[int]) -> None:
    """Delete the erased contacts' deliveries, pending and in flight ones included; a worker
    recording an outcome now holds its row, and the erasure waits for it."""
    erasure_rows_delete(erasure=erasure, rows=Delivery.objects.filter(contact_id__in=contact_ids))


def deliveries_personal_data(*, contact_ids: list[int]) -> dict[str, list[dict[str, Any]]]:
    """The messages planned or sent to the person, as a section of their copy of their data."""
    rows = [
        {
            "contact_id": row.contact_id,
            "channel": row.channel.name,
            "status": row.status,
            "message": row.payload,
            "created_at": row.created_at.isoformat(),
            "send_at": row.send_at.isoformat(),
            "sent_at": row.sent_at.isoformat() if row.sent_at else None,
        }
        for row in Delivery.objects.filter(contact_id__in=contact_ids)
        .select_related("channel")
        .order_by("created_at", "pk")
    ]
    return {"channels.deliveries": rows}
