"""Consent records and the current consent state."""

from django.contrib.auth.models import AbstractBaseUser
from django.db import transaction
from django.utils.translation import gettext as _

from contacts.models import (
    Consent,
    ConsentChannel,
    ConsentPurpose,
    ConsentRecord,
    Contact,
)
from contacts.services.events import event_record
from contacts.signals import contact_changed
from core.errors import ValidationFailed


def _invalid(field: str, message: str) -> ValidationFailed:
    return ValidationFailed(message, code="invalid_field", details={"field": field})


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
    if len(notice_version or "") > 30:
        raise _invalid(
            "notice_version",
            _("Field '%(field)s' is longer than %(max)s characters.")
            % {"field": "notice_version", "max": 30},
        )
    if evidence is not None and not isinstance(evidence, dict):
        raise _invalid(
            "evidence", _("Field '%(field)s' must be an object.") % {"field": "evidence"}
        )
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
