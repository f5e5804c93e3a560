"""Identity normalisation and resolution: find or create the contact identities point to."""

import datetime as dt
from dataclasses import dataclass, field
from typing import Any

import phonenumbers
from django.conf import settings
from django.core.exceptions import ValidationError
from django.core.validators import validate_email
from django.db import IntegrityError, transaction
from django.utils import timezone

from contacts.models import (
    Contact,
    CustomField,
    Gender,
    Identity,
    IdentityKind,
)
from contacts.selectors import contact_follow_merges
from contacts.services.custom_fields import custom_fields_validate
from contacts.services.merge import contact_merge, merge_blocked_with
from contacts.signals import contact_changed
from core.errors import ValidationFailed

# Traits that map to columns; anything else is kept in Contact.attributes.
COLUMN_TRAITS = {
    name: Contact._meta.get_field(name).max_length
    for name in ("name", "nickname", "province", "city", "source", "channel_code")
}
MAX_ATTRIBUTE_KEYS = 100
# Numbers without a country code are read as Chinese (11-digit mobiles, landlines with area code).
DEFAULT_PHONE_REGION = "CN"


@dataclass
class IdentityInput:
    kind: str
    value: str
    app_id: str = ""


@dataclass
class IdentifyResult:
    contact: Contact
    created: bool
    merged: list[int] = field(default_factory=list)
    conflicts: list[int] = field(default_factory=list)


def normalize_phone(raw: str) -> str:
    """Return a phone as E.164; numbers without a country code are read as Chinese."""
    value = str(raw).strip()
    try:
        parsed = phonenumbers.parse(value, DEFAULT_PHONE_REGION)
    except phonenumbers.NumberParseException as exc:
        raise ValidationFailed(
            f"'{raw}' is not a valid phone number.", code="invalid_phone"
        ) from exc
    if len(value) > 30 or not phonenumbers.is_valid_number(parsed):
        raise ValidationFailed(f"'{raw}' is not a valid phone number.", code="invalid_phone")
    return phonenumbers.format_number(parsed, phonenumbers.PhoneNumberFormat.E164)


def normalize_identity(identity: IdentityInput) -> IdentityInput:
    """Validate and canonicalise one identity so equal people get equal keys."""
    if identity.kind not in IdentityKind.values:
        raise ValidationFailed(
            f"Unknown identity kind '{identity.kind}'.",
            code="invalid_identity",
            details={"allowed": IdentityKind.values},
        )
    value = str(identity.value).strip()
    if not value:
        raise ValidationFailed(
            f"Identity '{identity.kind}' has an empty value.", code="invalid_identity"
        )
    if len(value) > 191:
        raise ValidationFailed(f"Identity '{identity.kind}' is too long.", code="invalid_identity")
    app_id = (identity.app_id or "").strip()
    if (
        identity.kind in (IdentityKind.WECHAT_OPENID, IdentityKind.MINIPROGRAM_OPENID)
        and not app_id
    ):
        raise ValidationFailed(
            f"Identity '{identity.kind}' needs the app_id it belongs to.", code="invalid_identity"
        )
    if identity.kind == IdentityKind.PHONE:
        value = normalize_phone(value)
    elif identity.kind == IdentityKind.EMAIL:
        value = value.lower()
        try:
            validate_email(value)
        except ValidationError as exc:
            raise ValidationFailed(
                f"'{value}' is not a valid email.", code="invalid_email"
            ) from exc
    return IdentityInput(kind=identity.kind, value=value, app_id=app_id)


def _clean_traits(traits: dict[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
    columns: dict[str, Any] = {}
    attributes: dict[str, Any] = {}
    for key, raw in traits.items():
        if key in COLUMN_TRAITS:
            value = "" if raw is None else str(raw).strip()
            if len(value) > COLUMN_TRAITS[key]:
                raise ValidationFailed(
                    f"Trait '{key}' is longer than {COLUMN_TRAITS[key]} characters.",
                    code="invalid_trait",
                )
            columns[key] = value
        elif key == "gender":
            if raw not in Gender.values:
                raise ValidationFailed(
                    f"Trait 'gender' must be one of {', '.join(Gender.values)}.",
                    code="invalid_trait",
                )
            columns[key] = raw
        elif key == "birthday":
            try:
                day = dt.date.fromisoformat(str(raw))
            except ValueError as exc:
                raise ValidationFailed(
                    "Trait 'birthday' must be a date like 1990-05-17.", code="invalid_trait"
                ) from exc
            if day > timezone.localdate():
                raise ValidationFailed("Trait 'birthday' is in the future.", code="invalid_trait")
            columns[key] = day
        elif key == "phone":
            columns[key] = normalize_phone(raw) if raw else ""
        elif key == "email":
            columns[key] = normalize_identity(IdentityInput("email", raw)).value if raw else ""
        else:
            if not isinstance(key, str) or not key or len(key) > 64:
                raise ValidationFailed(f"Invalid trait name '{key}'.", code="invalid_trait")
            attributes[key] = raw
    if len(attributes) > MAX_ATTRIBUTE_KEYS:
        raise ValidationFailed("Too many custom traits.", code="invalid_trait")
    # Traits named like an operator-defined custom field must hold a valid value for it; other
    # free-form traits are kept as they come.
    defined = set(
        CustomField.objects.filter(key__in=list(attributes), is_active=True).values_list(
            "key", flat=True
        )
    )
    if defined:
        attributes.update(
            custom_fields_validate(values={k: v for k, v in attributes.items() if k in defined})
        )
    return columns, attributes


def _find_identities(identities: list[IdentityInput]) -> list[Identity]:
    found: list[Identity] = []
    for ident in identities:
        row = (
            Identity.objects.select_related("contact")
            .filter(kind=ident.kind, app_id=ident.app_id, value=ident.value)
            .first()
        )
        if row:
            found.append(row)
    return found


def _attach_identities(contact: Contact, identities: list[IdentityInput]) -> None:
    # A plain INSERT, not get_or_create: if a concurrent call attached the same identity to
    # another contact first, the IntegrityError must reach identify's retry loop, which then
    # finds the winner's contact (get_or_create would silently hand back the winner's row).
    for ident in identities:
        Identity.objects.create(
            contact=contact, kind=ident.kind, app_id=ident.app_id, value=ident.value
        )


def strong_identity_kinds() -> set[str]:
    """Identity kinds trusted enough to merge two contacts automatically."""
    return set(settings.SCRM_STRONG_IDENTITY_KINDS)


def identify(
    *, identities: list[IdentityInput], traits: dict[str, Any] | None = None, source: str = "api"
) -> IdentifyResult:
    """Find or create the contact the identities point to, then apply traits."""
    if not identities:
        raise ValidationFailed("At least one identity is required.", code="invalid_identity")
    normalized = [normalize_identity(i) for i in identities]
    columns, attributes = _clean_traits(traits or {})
    # Phone and email traits are identities too, so later look-ups by them find this contact.
    if columns.get("phone"):
        normalized.append(IdentityInput(IdentityKind.PHONE, columns["phone"]))
    if columns.get("email"):
        normalized.append(IdentityInput(IdentityKind.EMAIL, columns["email"]))
    unique = list({(i.kind, i.app_id, i.value): i for i in normalized}.values())
    # Two concurrent calls may race to create the same identity: the unique constraint lets
    # exactly one win, and the loser's attempt rolls back to its savepoint and runs again. Each
    # attempt's queries are new statements, so (READ COMMITTED on PostgreSQL, serialised
    # IMMEDIATE transactions on SQLite) the retry sees the winner's committed rows.
    for attempt in range(3):
        try:
            with transaction.atomic():
                return _identify_once(unique, columns, attributes, source)
        except IntegrityError:
            if attempt == 2:
                raise
    raise AssertionError("unreachable")


def _oldest(contacts: list[Contact]) -> Contact:
    return min(contacts, key=lambda c: (c.created_at, c.pk))


def _identify_once(
    identities: list[IdentityInput],
    columns: dict[str, Any],
    attributes: dict[str, Any],
    source: str,
) -> IdentifyResult:
    found = _find_identities(identities)
    # Identities of a merged contact moved to the survivor, but follow the link anyway.
    by_id: dict[int, Contact] = {}
    strong_ids: set[int] = set()
    strong = strong_identity_kinds()
    for row in found:
        contact = contact_follow_merges(contact=row.contact)
        by_id[contact.pk] = contact
        if row.kind in strong:
            strong_ids.add(contact.pk)
    created = False
    conflicts: list[int] = []
    merged: list[int] = []
    if len(by_id) > 1 and strong_ids:
        # A strong identity (unionid, phone, …) links the contacts: they are one person. The
        # oldest contact a strong identity points to survives, so an anonymous visitor's
        # contact joins the known customer rather than the other way round.
        survivor = _oldest([by_id[pk] for pk in strong_ids])
        # Unless an operator declared them distinct (e.g. by undoing this very merge): then the
        # call is ambiguous and is reported instead of undoing the operator's decision.
        blocked = merge_blocked_with(contact_id=survivor.pk, others=list(by_id))
        for pk in sorted(by_id):
            if pk in blocked:
                conflicts.append(pk)
            elif pk != survivor.pk:
                contact_merge(survivor=survivor, duplicate=by_id[pk], reason="identify")
                merged.append(pk)
        if conflicts:
            # The call's identities and traits belong to one of two people declared distinct,
            # and nothing says which: write none of them rather than link the two again.
            contact = Contact.objects.get(pk=survivor.pk)
            if merged:
                transaction.on_commit(
                    lambda: contact_changed.send(sender=Contact, contact_ids=[contact.pk])
                )
            return IdentifyResult(
                contact=contact, created=False, merged=merged, conflicts=conflicts
            )
        contact = Contact.objects.select_for_update().get(pk=survivor.pk)
    elif by_id:
        # Only weak identities link them: keep the oldest and report the others for review.
        ordered = sorted(by_id)
        contact = Contact.objects.select_for_update().get(pk=ordered[0])
        conflicts = ordered[1:]
    else:
        contact = Contact(source=columns.get("source", "") or source)
        created = True
    known = {(r.kind, r.app_id, r.value) for r in found}
    new = [i for i in identities if (i.kind, i.app_id, i.value) not in known]
    for key, value in columns.items():
        setattr(contact, key, value)
    if attributes:
        contact.attributes = {**contact.attributes, **attributes}
    now = timezone.now()
    contact.last_seen_at = now
    if contact.first_seen_at is None:
        contact.first_seen_at = now
    contact.save()
    _attach_identities(contact, new)
    contact_id = contact.pk
    # A new contact changes everything a rule can read; a known one what the call brought.
    topics = None
    if not created:
        topics = [*columns, "last_seen_at", "first_seen_at"]
        topics += ["attributes"] if attributes else []
        topics += ["identities"] if new else []
    transaction.on_commit(
        lambda: contact_changed.send(sender=Contact, contact_ids=[contact_id], changed=topics)
    )
    return IdentifyResult(contact=contact, created=created, merged=merged, conflicts=conflicts)
