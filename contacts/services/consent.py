"""Consent records and the current consent state."""

from django.contrib.auth.models import AbstractBaseUser
from django.db import transaction

from contacts.models import (
    Consent,
    ConsentChannel,
    ConsentPurpose,
    ConsentRecord,
    Contact,
)
from contacts.services.events import event_record
from contacts.services.validation import field_error
from contacts.signals import contact_changed


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
) -> ConsentRecord:
    """Append a consent record and make it the contact's current state for channel/purpose."""
    if channel not in ConsentChannel.values:
        raise field_error("channel", f"must be one of {', '.join(ConsentChannel.values)}")
    if purpose not in ConsentPurpose.values:
        raise field_error("purpose", f"must be one of {', '.join(ConsentPurpose.values)}")
    if not isinstance(granted, bool):
        raise field_error("granted", "must be true or false")
    source = (source or "").strip()
    if not source or len(source) > 50:
        raise field_error("source", "is required and at most 50 characters")
    if len(notice_version or "") > 30:
        raise field_error("notice_version", "is longer than 30 characters")
    if evidence is not None and not isinstance(evidence, dict):
        raise field_error("evidence", "must be an object")
    record = ConsentRecord.objects.create(
        contact=contact,
        channel=channel,
        purpose=purpose,
        granted=granted,
        source=source,
        notice_version=notice_version or "",
        evidence=evidence or {},
        actor=actor,
    )
    Consent.objects.update_or_create(
        contact=contact,
        channel=channel,
        purpose=purpose,
        defaults={"granted": granted, "updated_at": record.recorded_at, "record": record},
    )
    event_record(
        contact=contact,
        name="consent_granted" if granted else "consent_withdrawn",
        properties={
            "channel": channel,
            "purpose": purpose,
            "source": source,
            "notice_version": notice_version or "",
            "record_id": record.pk,
        },
    )
    contact_id = contact.pk
    transaction.on_commit(
        lambda: contact_changed.send(sender=Contact, contact_ids=[contact_id], changed=["consent"])
    )
    return record
