"""Events the product itself records on contacts."""

import datetime as dt
import json
from decimal import Decimal
from typing import Any

from django.db import connection
from django.db.models.base import ModelState
from django.utils import timezone

from contacts.models import (
    Contact,
    Event,
    new_event_id,
)
from contacts.signals import events_recorded
from core.sql import bigint_array, text_array

# Events that record what the product or staff did to a contact, not what the contact did:
# they never make a contact "active". Every other name, standard or custom, does.
PASSIVE_EVENTS = frozenset(
    {
        "contact_merged",
        "merge_undone",
        "identity_conflict",
        "profile_updated",
        "contact_imported",
        "note_added",
        "follow_up_done",
        "tag_added",
        "tag_removed",
        "consent_granted",
        "consent_withdrawn",
        "segment_entered",
        "segment_exited",
        "stage_changed",
        "journey_enrolled",
        "message_sent",
        "message_failed",
        "message_delivered",
    }
)


def is_activity(name: str) -> bool:
    return name not in PASSIVE_EVENTS


def events_stored(events: list[Event]) -> None:
    """What follows storing events, inside their transaction: the contacts' last activity
    moves forward, then the other apps hear of the events (events_recorded)."""
    latest: dict[int, dt.datetime] = {}
    for event in events:
        if is_activity(event.name):
            seen = latest.get(event.contact_id)
            if seen is None or event.occurred_at > seen:
                latest[event.contact_id] = event.occurred_at
    if latest:
        _last_active_forward(latest)
    events_recorded.send(sender=Event, events=events)


def _last_active_forward(latest: dict[int, dt.datetime]) -> None:
    """Move each contact's last_active_at to the given time, never backwards (an old event
    arriving late leaves a newer time alone). One statement per batch, in id order so that
    concurrent batches lock shared contacts in the same order."""
    table = Contact._meta.db_table
    rows = sorted(latest.items())
    with connection.cursor() as cursor:
        if connection.vendor == "postgresql":
            cursor.execute(
                f"UPDATE {table} AS c SET last_active_at = v.at "
                "FROM unnest(%s::bigint[], %s::timestamptz[]) AS v(id, at) "
                "WHERE c.id = v.id AND (c.last_active_at IS NULL OR c.last_active_at < v.at)",
                [bigint_array(pk for pk, _ in rows), text_array(at.isoformat() for _, at in rows)],
            )
        else:
            adapt = connection.ops.adapt_datetimefield_value
            cursor.executemany(
                f"UPDATE {table} SET last_active_at = %s "
                "WHERE id = %s AND (last_active_at IS NULL OR last_active_at < %s)",
                [(adapt(at), pk, adapt(at)) for pk, at in rows],
            )


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
        event_id=event_id or new_event_id(),
        contact=contact,
        name=name,
        properties=properties or {},
        value=value,
        occurred_at=occurred_at or timezone.now(),
        source=source,
    )
    events_stored([event])
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
        ids = contact_ids[start : start + APPEND_BATCH]
        if connection.vendor == "postgresql":
            batch = _append_postgresql(ids, name, properties, occurred_at, source)
        else:
            batch = [
                Event(
                    event_id=new_event_id(),
                    contact_id=contact_id,
                    name=name,
                    properties=properties,
                    occurred_at=occurred_at,
                    source=source,
                )
                for contact_id in ids
            ]
            Event.objects.bulk_create(batch)
        events_stored(batch)
        total += len(batch)
    return total


def _append_postgresql(
    contact_ids: list[int],
    name: str,
    properties: dict[str, Any],
    occurred_at: dt.datetime,
    source: str,
) -> list[Event]:
    """One INSERT … SELECT over the ids, the ids made by the server as new_event_id makes
    them: the ORM's bulk_create spends far longer preparing thousands of identical rows in
    Python than the database spends storing them (a segment refresh appends one per entry)."""
    received = timezone.now()
    with connection.cursor() as cursor:
        cursor.execute(
            f"INSERT INTO {Event._meta.db_table} "
            "(event_id, contact_id, name, occurred_at, received_at, properties, value, source) "
            "SELECT lpad(to_hex((extract(epoch FROM clock_timestamp()) * 1000)::bigint), 12, '0')"
            " || substr(replace(gen_random_uuid()::text, '-', ''), 1, 20), "
            "c, %s, %s, %s, %s::jsonb, NULL, %s FROM unnest(%s::bigint[]) AS t(c) "
            "RETURNING id, event_id, contact_id",
            [
                name,
                occurred_at,
                received,
                json.dumps(properties),
                source,
                bigint_array(contact_ids),
            ],
        )
        rows = cursor.fetchall()
    # The rows differ only in id, event_id and contact: one instance is built the ORM's way
    # and the others share its field values (Model.__init__ per row cost as much as the
    # INSERT itself). Each gets its own state, as Model.from_db gives it.
    alias = connection.alias  # the proxy's attribute lookup costs µs per row
    template = Event.from_db(
        alias,
        [f.attname for f in Event._meta.concrete_fields],
        (None, "", 0, name, occurred_at, received, properties, None, source),
    ).__dict__
    events = []
    for pk, event_id, contact_id in rows:
        event = Event.__new__(Event)
        values = dict(template, id=pk, event_id=event_id, contact_id=contact_id)
        values["_state"] = state = ModelState()
        state.adding, state.db = False, alias
        event.__dict__ = values
        events.append(event)
    return events
