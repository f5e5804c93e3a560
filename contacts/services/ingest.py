"""Batches of client events (the events API): validated, deduplicated, never all-or-nothing."""

import datetime as dt
import json
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any

from django.db import IntegrityError, connection, transaction
from django.db.models.expressions import RawSQL
from django.utils import timezone
from django.utils.translation import gettext as _

from contacts.models import (
    Contact,
    Event,
)
from contacts.selectors import contact_follow_merges
from contacts.services.erasure import erasure_of_contact
from contacts.services.events import events_stored
from contacts.services.identity import IdentityInput, identify
from core.errors import ValidationFailed
from core.ids import MAX_ID
from core.sql import bigint_array, contains_nul, text_array


@dataclass
class EventInput:
    name: str
    occurred_at: dt.datetime
    event_id: str = ""
    contact_id: int | None = None
    identities: list[IdentityInput] = field(default_factory=list)
    properties: dict[str, Any] = field(default_factory=dict)
    value: Decimal | None = None
    source: str = "api"


@dataclass
class EventOutcome:
    index: int
    status: str  # accepted | duplicate | rejected
    event_id: str = ""
    reason: str = ""


MAX_EVENTS_PER_BATCH = 500
MAX_CLOCK_SKEW = dt.timedelta(minutes=5)


def _validate_event(item: EventInput) -> str | None:
    if not item.event_id or len(item.event_id) > 64:
        return _("event_id is required and at most 64 characters.")
    if not item.name or len(item.name) > 64:
        return _("name is required and at most 64 characters.")
    # A naive time would be read in the server's zone, whatever zone the sender meant.
    if timezone.is_naive(item.occurred_at):
        return _("occurred_at needs a UTC offset (like +08:00, or Z for UTC).")
    if item.occurred_at > timezone.now() + MAX_CLOCK_SKEW:
        return _("occurred_at is in the future.")
    if contains_nul(item.properties):
        return _("properties must not contain the NUL character (\\u0000).")
    if item.contact_id is not None and not 1 <= item.contact_id <= MAX_ID:
        return _("contact_id must be between 1 and %(max)s.") % {"max": MAX_ID}
    # Which one names the person is not guessed: they may disagree.
    if item.contact_id is not None and item.identities:
        return _("Send either contact_id or identities, not both.")
    # Money paid back is a `refund` event with the amount refunded.
    if item.name == "purchase" and item.value is not None and item.value < 0:
        return _(
            "A purchase's value must not be negative: send a refund event for money paid back."
        )
    # Points and revenue count once per event_id; a purchase without its order's own id could
    # not even be traced when resent under a new event_id, so it is refused, not guessed.
    if item.name == "purchase" and not _is_order_id(item.properties.get("order_id")):
        return _("A purchase needs properties.order_id: the order's id (text or a number).")
    return None


def _is_order_id(value: object) -> bool:
    if isinstance(value, str):
        return bool(value.strip())
    return isinstance(value, int) and not isinstance(value, bool)


def events_batch_check(*, count: int) -> None:
    """Refuse a batch of more than MAX_EVENTS_PER_BATCH events (`too_many`)."""
    if count > MAX_EVENTS_PER_BATCH:
        raise ValidationFailed(
            _("At most %(max)s events per call.") % {"max": MAX_EVENTS_PER_BATCH},
            code="too_many",
        )


def events_record(*, items: list[EventInput], ip: str | None = None) -> list[EventOutcome]:
    """Store a batch of events; duplicates and bad items are reported, never block the rest.

    `ip` is the caller's address, for the audit entries of merges its identities make."""
    events_batch_check(count=len(items))
    outcomes: list[EventOutcome | None] = [None] * len(items)
    candidates: list[tuple[int, EventInput]] = []
    for index, item in enumerate(items):
        error = _validate_event(item)
        if error:
            outcomes[index] = EventOutcome(index, "rejected", item.event_id, error)
        else:
            candidates.append((index, item))

    event_ids = list(dict.fromkeys(i.event_id for _, i in candidates))
    contact_ids = {i.contact_id for _, i in candidates if i.contact_id is not None}
    if connection.vendor == "postgresql":
        # One array each instead of hundreds of placeholders for the driver to parse.
        event_ids = RawSQL("SELECT unnest(%s::text[])", [text_array(event_ids)])
        contact_ids = RawSQL("SELECT unnest(%s::bigint[])", [bigint_array(contact_ids)])
    existing = set(Event.objects.filter(event_id__in=event_ids).values_list("event_id", flat=True))
    # One query for every contact id in the batch instead of one per event.
    known = {
        row["pk"]: row["merged_into_id"]
        for row in Contact.objects.filter(pk__in=contact_ids).values("pk", "merged_into_id")
    }
    to_store: list[tuple[int, Event]] = []
    # The ids of the items stored already or to be stored: a later copy is a duplicate of one
    # of them. A copy that was rejected (its contact unknown) stores nothing, so the next copy
    # is judged on its own.
    taken: set[str] = set()
    for index, item in candidates:
        if item.event_id in taken:
            # Before resolving its contact: identify would create one for an event not stored.
            outcomes[index] = EventOutcome(
                index, "duplicate", item.event_id, _("repeated in batch")
            )
            continue
        if item.event_id in existing:
            outcomes[index] = EventOutcome(index, "duplicate", item.event_id)
            taken.add(item.event_id)
            continue
        try:
            contact_id = _resolve_event_contact(item, known, ip)
        except ValidationFailed as exc:
            outcomes[index] = EventOutcome(index, "rejected", item.event_id, exc.message)
            continue
        taken.add(item.event_id)
        to_store.append(
            (
                index,
                Event(
                    event_id=item.event_id,
                    contact_id=contact_id,
                    name=item.name,
                    occurred_at=item.occurred_at,
                    properties=item.properties,
                    value=item.value,
                    source=item.source,
                ),
            )
        )

    stored, gone = _store_events(to_store)
    for index, event in to_store:
        if index in stored:
            outcomes[index] = EventOutcome(index, "accepted", event.event_id)
        elif index in gone:
            reason = _("Contact %(id)s was erased at the person's request.") % {
                "id": event.contact_id
            }
            outcomes[index] = EventOutcome(index, "rejected", event.event_id, reason)
        else:
            outcomes[index] = EventOutcome(index, "duplicate", event.event_id)
    return [o for o in outcomes if o is not None]


def _resolve_event_contact(item: EventInput, known: dict[int, int | None], ip: str | None) -> int:
    if item.contact_id is not None:
        if item.contact_id not in known:
            if erasure_of_contact(contact_id=item.contact_id) is not None:
                raise ValidationFailed(
                    _("Contact %(id)s was erased at the person's request.")
                    % {"id": item.contact_id},
                    code="erased",
                )
            raise ValidationFailed(_("Contact %(id)s does not exist.") % {"id": item.contact_id})
        if known[item.contact_id] is None:
            return item.contact_id
        # Events sent for a merged contact land on the contact that absorbed it.
        contact = Contact.objects.get(pk=item.contact_id)
        return contact_follow_merges(contact=contact).pk
    if not item.identities:
        raise ValidationFailed(_("Either contact_id or identities is required."))
    # Conflicts are not lost with the answer: identify puts them on the contacts' timelines.
    # A replayed or delayed batch must not bring back a person erased at their request.
    return identify(
        identities=item.identities, source=item.source, via="events", ip=ip, erased="refuse"
    ).contact.pk


class _ContactsMerged(Exception):
    """Some of a batch's contacts were merged since the batch resolved them."""


class _ContactsGone(Exception):
    """Some of a batch's contacts were erased since the batch resolved them."""


def _lock_contacts(events: list[Event]) -> None:
    """Lock the events' contacts against a merge, in id order, in one statement; raise
    _ContactsMerged when any of them turns out merged (the batch resolved its contacts without
    a lock: a merge may have committed since, or while this waited for its lock), and
    _ContactsGone when any of them was erased meanwhile (its events would fail the foreign
    key at commit, taking the whole batch with them).

    KEY SHARE: the lock the events' foreign-key checks take at commit anyway, taken first and
    in one order. It waits for a merge's FOR UPDATE, and lets profile updates (NO KEY UPDATE)
    through. A merge locks its two contacts in id order too, so neither holds a lock the other
    needs while waiting for one it holds.
    """
    ids = sorted({e.contact_id for e in events})
    table = connection.ops.quote_name(Contact._meta.db_table)
    if connection.vendor == "postgresql":
        # Every contact is locked (a condition on merged_into_id would skip the rows a merge is
        # changing, without waiting); the count reads each row as it is once its lock is had.
        rows = (
            f"SELECT merged_into_id FROM {table} WHERE id = ANY(%s::bigint[]) "
            "ORDER BY id FOR KEY SHARE"
        )
        params: list = [bigint_array(ids)]
    else:
        rows = f"SELECT merged_into_id FROM {table} WHERE id IN ({', '.join(['%s'] * len(ids))})"
        params = ids
    with connection.cursor() as cursor:
        cursor.execute(f"SELECT count(*), count(merged_into_id) FROM ({rows}) AS batch", params)
        found, merged = cursor.fetchone()
    if found < len(ids):
        raise _ContactsGone()
    if merged:
        raise _ContactsMerged()


def _follow_merges(events: list[Event]) -> None:
    """Point each event of a merged contact at the contact that absorbed it."""
    ids = {e.contact_id for e in events}
    merged = {
        pk: contact_follow_merges(contact=Contact(pk=pk, merged_into_id=into)).pk
        for pk, into in Contact.objects.filter(pk__in=ids, merged_into__isnull=False).values_list(
            "pk", "merged_into_id"
        )
    }
    for event in events:
        event.contact_id = merged.get(event.contact_id, event.contact_id)


def _on_survivors(events: list[Event], write) -> list[Event]:
    """Run `write()` in a transaction (a savepoint inside the caller's) that holds a lock on
    each of the events' contacts, none of them merged: an event stored on a merged contact
    would be lost to its survivor's timeline, segments and points.

    Events of a contact found merged are moved to its survivor and the block runs again; the
    rollback releases the locks taken, so the next attempt locks the new set in id order.
    Events of a contact erased meanwhile are taken out of `events` (which `write` reads) and
    returned: they are about a person who asked to be forgotten.
    """
    gone: list[Event] = []
    while True:
        try:
            with transaction.atomic():
                _lock_contacts(events)
                write()
            return gone
        except _ContactsMerged:
            _follow_merges(events)
        except _ContactsGone:
            _follow_merges(events)
            alive = set(
                Contact.objects.filter(pk__in={e.contact_id for e in events}).values_list(
                    "pk", flat=True
                )
            )
            gone += [e for e in events if e.contact_id not in alive]
            events[:] = [e for e in events if e.contact_id in alive]
            if not events:
                return gone


def _store_events(rows: list[tuple[int, Event]]) -> tuple[set[int], set[int]]:
    """Insert events; return the batch indexes actually stored (a racing retry may win) and
    those of events whose contact was erased before they could be."""
    if not rows:
        return set(), set()
    events = [e for _, e in rows]
    index_of = {id(event): index for index, event in rows}

    def insert_all() -> None:
        _insert_events(events)
        events_stored(events)

    try:
        gone = {index_of[id(e)] for e in _on_survivors(events, insert_all)}
        return {i for i, _ in rows} - gone, gone
    except IntegrityError:
        pass
    # A concurrent call stored some of these ids first: fall back to one savepoint per event.
    stored: set[int] = set()
    gone = set()
    for index, event in rows:

        def insert_one(event: Event = event) -> None:
            event.pk = None
            event.save(force_insert=True)
            events_stored([event])

        try:
            if _on_survivors([event], insert_one):
                gone.add(index)
            else:
                stored.add(index)
        except IntegrityError:
            continue
    return stored, gone


def _insert_events(events: list[Event]) -> None:
    """Insert a batch of new events and give each its id.

    On PostgreSQL one INSERT … SELECT FROM unnest over eight array literals: the ORM's
    bulk_create prepares every value of every row in Python and has the driver adapt its
    arrays element by element, which cost as much as the database's work for a batch of 500.
    """
    if connection.vendor != "postgresql":
        Event.objects.bulk_create(events)
        return
    with connection.cursor() as cursor:
        cursor.execute(
            f"INSERT INTO {Event._meta.db_table} "
            "(event_id, contact_id, name, occurred_at, received_at, properties, value, source) "
            "SELECT * FROM unnest(%s::text[], %s::bigint[], %s::text[], %s::timestamptz[], "
            "%s::timestamptz[], %s::jsonb[], %s::numeric[], %s::text[]) "
            "RETURNING id, event_id",
            [
                text_array(e.event_id for e in events),
                bigint_array(e.contact_id for e in events),
                text_array(e.name for e in events),
                text_array(e.occurred_at.isoformat() for e in events),
                text_array(e.received_at.isoformat() for e in events),
                text_array(json.dumps(e.properties) for e in events),
                text_array(None if e.value is None else str(e.value) for e in events),
                text_array(e.source for e in events),
            ],
        )
        ids = {event_id: pk for pk, event_id in cursor.fetchall()}
    for event in events:
        event.pk = ids[event.event_id]
        event._state.adding = False
        event._state.db = connection.alias
