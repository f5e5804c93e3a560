"""Consent records and the current consent state."""

from django.contrib.auth.models import AbstractBaseUser
from django.db import IntegrityError, connection, transaction
from django.utils.translation import gettext as _

from contacts.models import (
    Consent,
    ConsentChannel,
    ConsentPurpose,
    ConsentRecord,
    Contact,
    Event,
)
from contacts.services.events import event_record
from contacts.services.locking import contact_lock_survivor
from contacts.signals import contact_changed
from core.errors import ValidationFailed
from core.sql import contains_nul

# A call's request_id becomes the event_id of its consent event, so the events table's unique
# index is what makes a retried call find its first answer (no column of its own is needed).
REQUEST_EVENT_PREFIX = "consent:"
MAX_REQUEST_ID = 50
CONSENT_EVENTS = ("consent_granted", "consent_withdrawn")


def _invalid(field: str, message: str) -> ValidationFailed:
    return ValidationFailed(message, code="invalid_field", details={"field": field})


def _request_reused(request_id: str) -> ValidationFailed:
    return ValidationFailed(
        _("request_id '%(id)s' was already used for another consent.") % {"id": request_id},
        code="request_id_reused",
        details={"field": "request_id"},
    )


def _record_of_request(request_id: str) -> ConsentRecord | None:
    """The record an earlier call with this request_id made, if there was one."""
    event = (
        Event.objects.filter(event_id=REQUEST_EVENT_PREFIX + request_id)
        .only("name", "properties")
        .first()
    )
    if event is None:
        return None
    record_id = event.properties.get("record_id") if event.name in CONSENT_EVENTS else None
    record = ConsentRecord.objects.filter(pk=record_id).first() if record_id else None
    if record is None:  # an event the client sent itself happens to carry this id
        raise _request_reused(request_id)
    return record


def consent_request_id(*, record: ConsentRecord) -> str:
    """The `request_id` of the call that recorded `record`; "" when it was sent without one."""
    # Its consent event carries the record's id, and the call's key in its event_id.
    event_id = (
        Event.objects.filter(
            contact_id=record.contact_id,
            name__in=CONSENT_EVENTS,
            event_id__startswith=REQUEST_EVENT_PREFIX,
            properties__record_id=record.pk,
        )
        .values_list("event_id", flat=True)
        .first()
    )
    return event_id.removeprefix(REQUEST_EVENT_PREFIX) if event_id else ""


def _as_stored(evidence: dict) -> dict:
    """`evidence` as the database gives it back once stored: PostgreSQL's jsonb keeps a
    number's decimal value, not the float sent (1e23 comes back as the integer 10^23)."""
    if not evidence:
        return {}
    field = ConsentRecord._meta.get_field("evidence")
    cast = "::jsonb" if connection.vendor == "postgresql" else ""
    with connection.cursor() as cursor:
        cursor.execute(f"SELECT %s{cast}", [field.get_db_prep_value(evidence, connection)])
        (stored,) = cursor.fetchone()
    return field.from_db_value(stored, None, connection)


def _same_call(record: ConsentRecord, **call) -> bool:
    return all(getattr(record, name) == value for name, value in call.items())


@transaction.atomic
def consent_record(
    *,
    contact: Contact,
    channel: str,
    purpose: str,
    granted: bool,
    source: str,
    notice_version: str = "",
    evidence: dict | None = None,
    actor: AbstractBaseUser | None = None,
    request_id: str = "",
) -> ConsentRecord:
    """Append a consent record and make it the contact's current state for channel/purpose.

    Recorded on the contact that absorbed `contact` when it was merged.

    Safe to retry: a call with the `request_id` of an earlier one returns that call's record,
    and a call without one that repeats the current record (same state, source, notice version,
    evidence and actor) returns it; neither appends a record or an event.
    """
    if channel not in ConsentChannel.values:
        raise _invalid(
            "channel",
            _("Field '%(field)s' must be one of %(choices)s.")
            % {"field": "channel", "choices": ", ".join(ConsentChannel.values)},
        )
    if purpose not in ConsentPurpose.values:
        raise _invalid(
            "purpose",
            _("Field '%(field)s' must be one of %(choices)s.")
            % {"field": "purpose", "choices": ", ".join(ConsentPurpose.values)},
        )
    if not isinstance(granted, bool):
        raise _invalid(
            "granted", _("Field '%(field)s' must be true or false.") % {"field": "granted"}
        )
    source = (source or "").strip()
    if not source or len(source) > 50:
        raise _invalid(
            "source",
            _("Field '%(field)s' is required and at most %(max)s characters.")
            % {"field": "source", "max": 50},
        )
    notice_version = notice_version or ""
    if len(notice_version) > 30:
        raise _invalid(
            "notice_version",
            _("Field '%(field)s' is longer than %(max)s characters.")
            % {"field": "notice_version", "max": 30},
        )
    if evidence is not None and not isinstance(evidence, dict):
        raise _invalid(
            "evidence", _("Field '%(field)s' must be an object.") % {"field": "evidence"}
        )
    evidence = evidence or {}
    request_id = request_id or ""
    if not isinstance(request_id, str):
        raise _invalid("request_id", _("Field '%(field)s' must be text.") % {"field": "request_id"})
    if len(request_id) > MAX_REQUEST_ID:
        raise _invalid(
            "request_id",
            _("Field '%(field)s' is longer than %(max)s characters.")
            % {"field": "request_id", "max": MAX_REQUEST_ID},
        )
    # PostgreSQL's text and jsonb cannot store U+0000: refuse it by name, not with a 500.
    for field, value in (
        ("source", source),
        ("notice_version", notice_version),
        ("evidence", evidence),
        ("request_id", request_id),
    ):
        if contains_nul(value):
            raise _invalid(
                field, _("Field '%(field)s' must not contain the NUL character.") % {"field": field}
            )
    call = {
        "channel": channel,
        "purpose": purpose,
        "granted": granted,
        "source": source,
        "notice_version": notice_version,
        # As stored, to compare with the records read back and to answer as a retry will.
        "evidence": _as_stored(evidence),
        "actor_id": actor.pk if actor is not None else None,
    }
    # One consent call per contact at a time: two copies of a retried call must not both miss
    # each other's record and both append one. The consent is the person's: on a merged
    # contact (or one whose merge commits while this waits) it goes to the contact that
    # absorbed it, or a withdrawal would leave the survivor consenting.
    # NO KEY UPDATE, which excludes the other consent calls and profile changes of the contact
    # (and merges), not FOR UPDATE: that also blocks the key-share lock the foreign-key checks
    # of another transaction's events take at its commit, while this call waits for that
    # transaction's queue row of the same contact with its own consent event (a deadlock,
    # answered 500, under concurrent consent, tag and PATCH calls). A consent changes no key.
    contact = contact_lock_survivor(contact=contact, lock="no_key_update")
    if request_id:
        earlier = _record_of_request(request_id)
        if earlier is not None:
            if earlier.contact_id != contact.pk or not _same_call(earlier, **call):
                raise _request_reused(request_id)
            return earlier
    else:
        current = (
            Consent.objects.filter(contact=contact, channel=channel, purpose=purpose)
            .select_related("record")
            .first()
        )
        if current is not None and _same_call(current.record, **call):
            return current.record
    try:
        with transaction.atomic():
            record = _append(contact=contact, call=call, request_id=request_id)
    except IntegrityError:
        # Only a call with the same request_id for another contact, at the same moment, can
        # have taken the event_id since the check above.
        event_id = REQUEST_EVENT_PREFIX + request_id
        if not request_id or not Event.objects.filter(event_id=event_id).exists():
            raise
        raise _request_reused(request_id) from None
    contact_id = contact.pk
    transaction.on_commit(
        lambda: contact_changed.send(sender=Contact, contact_ids=[contact_id], changed=["consent"]),
        robust=True,
    )
    return record


def _append(*, contact: Contact, call: dict, request_id: str) -> ConsentRecord:
    record = ConsentRecord.objects.create(contact=contact, **call)
    Consent.objects.update_or_create(
        contact=contact,
        channel=record.channel,
        purpose=record.purpose,
        defaults={"granted": record.granted, "updated_at": record.recorded_at, "record": record},
    )
    event_record(
        contact=contact,
        name=CONSENT_EVENTS[0] if record.granted else CONSENT_EVENTS[1],
        properties={
            "channel": record.channel,
            "purpose": record.purpose,
            "source": record.source,
            "notice_version": record.notice_version,
            "record_id": record.pk,
        },
        event_id=REQUEST_EVENT_PREFIX + request_id if request_id else "",
    )
    return record
