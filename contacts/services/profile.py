"""Profile updates by operators and integrations."""

import datetime as dt
from typing import Any

from django.contrib.auth import get_user_model
from django.contrib.auth.models import AbstractBaseUser
from django.db import IntegrityError, transaction
from django.utils import timezone
from django.utils.text import capfirst
from django.utils.translation import gettext as _

from contacts.labels import contact_field_label
from contacts.models import (
    Contact,
    Gender,
    Identity,
    IdentityKind,
    Stage,
    Store,
)
from contacts.services.custom_fields import custom_fields_validate
from contacts.services.erasure import erased_identity_message, identities_suppressed
from contacts.services.events import event_record
from contacts.services.identity import (
    IdentityInput,
    identity_follow_column,
    normalize_identity,
    normalize_phone,
)
from contacts.services.locking import contact_lock_survivor
from contacts.signals import contact_changed
from core.errors import ValidationFailed
from core.sql import contains_nul

# Profile fields an operator or an integration may set, with their maximum length for text.
PROFILE_TEXT_FIELDS = {
    "name": 100,
    "nickname": 100,
    "province": 30,
    "city": 30,
    "utm_source": 100,
    "utm_medium": 100,
    "utm_campaign": 100,
    "utm_content": 100,
    "utm_term": 100,
}
PROFILE_FIELDS = {
    *PROFILE_TEXT_FIELDS,
    "gender",
    "birthday",
    "phone",
    "email",
    "lifecycle_stage",
    "owner",
    "store",
}
# Where a contact came from: identify and imports set these, a PATCH does not.
ORIGIN_TEXT_FIELDS = {"source": 50, "channel_code": 50}
TEXT_FIELD_LIMITS = {**PROFILE_TEXT_FIELDS, **ORIGIN_TEXT_FIELDS}
OLDEST_BIRTHDAY = dt.date(1900, 1, 1)


def _invalid(key: str, message: str, code: str = "invalid_field") -> ValidationFailed:
    return ValidationFailed(message, code=code, details={"field": key})


def _name(key: str) -> str:
    """How a message names a profile field: its label as the edit form shows it ("Birthday",
    "生日"), which operators read; the key itself travels in the error's details for API
    clients."""
    return capfirst(contact_field_label(key, custom={}))


def _profile_value(key: str, raw: Any) -> Any:
    """Validate one profile field; return the value to set on the model attribute."""
    if contains_nul(raw):
        # Before any look-up by the value (stage, store, owner): PostgreSQL refuses NUL in
        # text parameters with a server error.
        raise _invalid(
            key,
            _("Field '%(field)s' must not contain the NUL character.") % {"field": _name(key)},
        )
    if key in TEXT_FIELD_LIMITS:
        if raw is None:
            return ""
        if not isinstance(raw, str):
            raise _invalid(key, _("Field '%(field)s' must be text.") % {"field": _name(key)})
        if contains_nul(raw):
            raise _invalid(
                key,
                _("Field '%(field)s' must not contain the NUL character.") % {"field": _name(key)},
            )
        value = raw.strip()
        if len(value) > TEXT_FIELD_LIMITS[key]:
            raise _invalid(
                key,
                _("Field '%(field)s' is longer than %(max)s characters.")
                % {"field": _name(key), "max": TEXT_FIELD_LIMITS[key]},
            )
        return value
    if key == "gender":
        if raw not in Gender.values:
            raise _invalid(
                key,
                _("Field '%(field)s' must be one of %(choices)s.")
                % {"field": _name(key), "choices": ", ".join(Gender.values)},
            )
        return raw
    if key == "birthday":
        if raw is None or raw == "":
            return None
        if isinstance(raw, dt.date) and not isinstance(raw, dt.datetime):
            day = raw
        else:
            try:
                day = dt.date.fromisoformat(raw) if isinstance(raw, str) else None
            except ValueError:
                day = None
            if day is None:
                raise _invalid(
                    key,
                    _("Field '%(field)s' must be a date like 1990-05-17.") % {"field": _name(key)},
                )
        if day > timezone.localdate():
            raise _invalid(key, _("Field '%(field)s' is in the future.") % {"field": _name(key)})
        if day < OLDEST_BIRTHDAY:
            raise _invalid(key, _("Field '%(field)s' is before 1900.") % {"field": _name(key)})
        return day
    if key == "phone":
        if raw is None or raw == "":
            return ""
        if not isinstance(raw, str | int) or isinstance(raw, bool):
            raise _invalid(
                key,
                _("Field '%(field)s' must be text.") % {"field": _name(key)},
                code="invalid_phone",
            )
        try:
            return normalize_phone(str(raw))
        except ValidationFailed as exc:
            raise ValidationFailed(exc.message, code=exc.code, details={"field": key}) from exc
    if key == "email":
        if raw is None or raw == "":
            return ""
        if not isinstance(raw, str):
            raise _invalid(
                key, _("'%(value)s' is not a valid email.") % {"value": raw}, code="invalid_email"
            )
        # An email is an identity too, whose value is shorter than the column allows.
        longest = Identity._meta.get_field("value").max_length
        if len(raw.strip()) > longest:
            raise _invalid(
                key,
                _("Field '%(field)s' is longer than %(max)s characters.")
                % {"field": _name(key), "max": longest},
                code="invalid_email",
            )
        try:
            return normalize_identity(IdentityInput(IdentityKind.EMAIL, raw)).value
        except ValidationFailed as exc:
            raise ValidationFailed(exc.message, code=exc.code, details={"field": key}) from exc
    if key == "lifecycle_stage":
        stage = Stage.objects.filter(key=raw, is_active=True).first() if raw else None
        if not isinstance(raw, str) or stage is None:
            raise _invalid(
                key,
                _("Field '%(field)s' must be the key of an active lifecycle stage.")
                % {"field": _name(key)},
            )
        return stage
    if key == "owner":
        if raw is None or raw == "":
            return None
        user = None
        if isinstance(raw, int) and not isinstance(raw, bool):
            user = get_user_model().objects.filter(pk=raw, is_active=True).first()
        if user is None:
            raise _invalid(
                key,
                _("Field '%(field)s' must be the id of an active user.") % {"field": _name(key)},
            )
        return user
    if key == "store":
        if raw is None or raw == "":
            return None
        store = None
        if isinstance(raw, int) and not isinstance(raw, bool):
            store = Store.objects.filter(pk=raw).first()
        elif isinstance(raw, str):
            store = Store.objects.filter(code=raw.strip()).first()
        if store is None:
            raise _invalid(
                key,
                _("Field '%(field)s' must be the id or code of a store.") % {"field": _name(key)},
            )
        return store
    raise _invalid(
        key,
        _("Field '%(field)s' is not a profile field.") % {"field": _name(key)},
        code="unknown_field",
    )


def profile_values_check(
    *, data: dict[str, Any], origin: bool = False
) -> tuple[dict[str, Any], dict[str, Any], list[ValidationFailed]]:
    """Check every profile and custom field value, not stopping at the first bad one; return
    (model attribute values, custom values) of the good ones and the error of each bad one."""
    fields = PROFILE_FIELDS | ORIGIN_TEXT_FIELDS.keys() if origin else PROFILE_FIELDS
    profile = {k: v for k, v in data.items() if k in fields}
    others = {k: v for k, v in data.items() if k not in profile}
    errors: list[ValidationFailed] = []
    try:
        custom = custom_fields_validate(values=others)
    except ValidationFailed:
        # Once more one key at a time (only when something is wrong), to name every bad value.
        custom = {}
        for key, raw in others.items():
            try:
                custom.update(custom_fields_validate(values={key: raw}))
            except ValidationFailed as exc:
                errors.append(exc)
    values: dict[str, Any] = {}
    for key, raw in profile.items():
        try:
            values[key] = _profile_value(key, raw)
        except ValidationFailed as exc:
            errors.append(exc)
    return values, custom, errors


def validation_failed_all(errors: list[ValidationFailed]) -> ValidationFailed:
    """One error standing for several: the first one's code, message and details, exactly as
    when it is alone, and with more than one every error (field, code, message) listed in
    `details["errors"]`, so that a form shows each at its field at once."""
    first = errors[0]
    if len(errors) == 1:
        return first
    details = dict(first.details) if isinstance(first.details, dict) else {}
    details["errors"] = [
        {
            **(error.details if isinstance(error.details, dict) else {}),
            "code": error.code,
            "message": error.message,
        }
        for error in errors
    ]
    return ValidationFailed(first.message, code=first.code, details=details)


def profile_values_validate(
    *, data: dict[str, Any], origin: bool = False
) -> tuple[dict[str, Any], dict[str, Any]]:
    """Check profile and custom field values; return (model attribute values, custom values).

    `origin` also accepts `source` and `channel_code`, which identify sets and a PATCH does not.
    Every value is checked: one error names them all (see validation_failed_all).
    """
    values, custom, errors = profile_values_check(data=data, origin=origin)
    if errors:
        raise validation_failed_all(errors)
    return values, custom


def _identity_owner(kind: str, value: str) -> int | None:
    return (
        Identity.objects.filter(kind=kind, app_id="", value=value)
        .values_list("contact_id", flat=True)
        .first()
    )


def contact_changes_validate(
    *, contact: Contact, data: dict[str, Any]
) -> tuple[dict[str, Any], dict[str, Any]]:
    """Check profile and custom field changes of `contact` without storing anything; return
    (model attribute values, custom values).

    Every check runs, the values' own and whether a new phone or email already belongs to
    another contact: one ValidationFailed names every problem (see validation_failed_all).
    """
    if not isinstance(data, dict):
        raise ValidationFailed(_("The changes must be an object of field names and values."))
    values, custom, errors = profile_values_check(data=data)
    # Phone and email are identities too: refuse one that already belongs to someone else.
    for kind in (IdentityKind.PHONE, IdentityKind.EMAIL):
        new = values.get(kind)
        if new and new != getattr(contact, kind):
            owner = _identity_owner(kind, new)
            if owner is not None and owner != contact.pk:
                message = (
                    _("This phone belongs to contact %(contact)s; merge the two contacts instead.")
                    if kind == IdentityKind.PHONE
                    else _(
                        "This email belongs to contact %(contact)s; merge the two contacts instead."
                    )
                )
                errors.append(
                    ValidationFailed(
                        message % {"contact": owner},
                        code="identity_taken",
                        details={"field": kind, "contact_id": owner},
                    )
                )
            elif owner is None and identities_suppressed([(kind, "", new)]):
                errors.append(
                    ValidationFailed(
                        erased_identity_message(kind), code="erased", details={"field": kind}
                    )
                )
    if errors:
        raise validation_failed_all(errors)
    return values, custom


@transaction.atomic
def contact_update(
    *,
    contact: Contact,
    data: dict[str, Any],
    actor: AbstractBaseUser | None = None,
    source: str = "manual",
) -> Contact:
    """Validate and apply profile and custom field changes; nothing is stored on any error.

    A merged `contact` (or one whose merge commits meanwhile) is not changed: the contact that
    absorbed it is, and is returned.
    """
    values, custom = contact_changes_validate(contact=contact, data=data)
    # NO KEY UPDATE: it excludes other writers of this contact (and merges, which lock FOR
    # UPDATE) but not the key-share locks of foreign-key checks: events stored for this
    # contact at the same moment need one at their commit, while this update waits on their
    # uncommitted queue row, a deadlock (seen on PostgreSQL under concurrent PATCH + events).
    addressed = contact.pk
    contact = contact_lock_survivor(contact=contact, lock="no_key_update")
    if contact.pk != addressed:
        # Checked against the survivor: the duplicate's phone or email moved to it.
        values, custom = contact_changes_validate(contact=contact, data=data)
    changed: list[str] = []
    for key, value in values.items():
        if getattr(contact, key) != value:
            if key in (IdentityKind.PHONE, IdentityKind.EMAIL):
                try:
                    with transaction.atomic():
                        identity_follow_column(
                            contact=contact, kind=key, old=getattr(contact, key), new=value
                        )
                except IntegrityError:
                    # Another contact attached the value since the check above.
                    raise ValidationFailed(
                        _("This value was just attached to another contact; reload and retry."),
                        code="identity_taken",
                        details={"field": key},
                    ) from None
            setattr(contact, key, value)
            changed.append(key)
    topics = list(changed)
    attributes = dict(contact.attributes)
    for key, value in custom.items():
        if value is None:
            if key in attributes:
                attributes.pop(key)
                changed.append(key)
        elif attributes.get(key) != value:
            attributes[key] = value
            changed.append(key)
    if not changed:
        return contact
    contact.attributes = attributes
    contact.save()
    event_record(
        contact=contact,
        name="profile_updated",
        properties={
            "fields": changed,
            "source": source,
            "actor_id": actor.pk if actor is not None else None,
        },
        source=source,
    )
    if len(changed) > len(topics):
        topics.append("attributes")
    contact_id = contact.pk
    transaction.on_commit(
        lambda: contact_changed.send(sender=Contact, contact_ids=[contact_id], changed=topics),
        robust=True,
    )
    return contact
