"""Identity normalisation and resolution: find or create the contact identities point to."""

from dataclasses import dataclass, field
from typing import Any

import phonenumbers
from django.conf import settings
from django.core.exceptions import ValidationError
from django.core.validators import validate_email
from django.db import IntegrityError, transaction
from django.utils import timezone
from django.utils.translation import gettext as _

from contacts.models import (
    Contact,
    Identity,
    IdentityKind,
)
from contacts.selectors import contact_follow_merges
from contacts.services.merge import contact_merge, merge_blocked_with
from contacts.signals import contact_changed
from core.errors import ValidationFailed

# Text columns an identify or an import may set, with their length.
COLUMN_TRAITS = {
    name: Contact._meta.get_field(name).max_length
    for name in ("name", "nickname", "province", "city", "source", "channel_code")
}
# Most traits one identify may carry: bounds the work a single call can ask for.
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


def _invalid_phone(raw: str) -> str:
    return _("'%(value)s' is not a valid phone number.") % {"value": raw}


def normalize_phone(raw: str) -> str:
    """Return a phone as E.164; numbers without a country code are read as Chinese."""
    value = str(raw).strip()
    try:
        parsed = phonenumbers.parse(value, DEFAULT_PHONE_REGION)
    except phonenumbers.NumberParseException as exc:
        raise ValidationFailed(_invalid_phone(raw), code="invalid_phone") from exc
    if len(value) > 30 or not phonenumbers.is_valid_number(parsed):
        raise ValidationFailed(_invalid_phone(raw), code="invalid_phone")
    return phonenumbers.format_number(parsed, phonenumbers.PhoneNumberFormat.E164)


def normalize_identity(identity: IdentityInput) -> IdentityInput:
    """Validate and canonicalise one identity so equal people get equal keys."""
    if identity.kind not in IdentityKind.values:
        raise ValidationFailed(
            _("Unknown identity kind '%(kind)s'.") % {"kind": identity.kind},
            code="invalid_identity",
            details={"allowed": IdentityKind.values},
        )
    value = str(identity.value).strip()
    if not value:
        raise ValidationFailed(
            _("Identity '%(kind)s' has an empty value.") % {"kind": identity.kind},
            code="invalid_identity",
        )
    if len(value) > 191:
        raise ValidationFailed(
            _("Identity '%(kind)s' is too long.") % {"kind": identity.kind},
            code="invalid_identity",
        )
    app_id = (identity.app_id or "").strip()
    if (
        identity.kind in (IdentityKind.WECHAT_OPENID, IdentityKind.MINIPROGRAM_OPENID)
        and not app_id
    ):
        raise ValidationFailed(
            _("Identity '%(kind)s' needs the app_id it belongs to.") % {"kind": identity.kind},
            code="invalid_identity",
        )
    if identity.kind == IdentityKind.PHONE:
        value = normalize_phone(value)
    elif identity.kind == IdentityKind.EMAIL:
        value = value.lower()
        try:
            validate_email(value)
        except ValidationError as exc:
            raise ValidationFailed(
                _("'%(value)s' is not a valid email.") % {"value": value}, code="invalid_email"
            ) from exc
    return IdentityInput(kind=identity.kind, value=value, app_id=app_id)


def _clean_traits(traits: Any) -> tuple[dict[str, Any], dict[str, Any]]:
    """Validate traits like a PATCH of the profile; return (column values, custom field values).

    Profile fields (and `source`, `channel_code`) go to their columns, active custom fields to
    `attributes`; any other key is refused, so nothing arrives unchecked.
    """
    # profile imports this module, so it is imported here rather than at the top.
    from contacts.services.profile import profile_values_validate

    if not isinstance(traits, dict):
        raise ValidationFailed(
            _("Traits must be an object of field names and values."), code="invalid_trait"
        )
    for key in traits:
        if not isinstance(key, str) or not key or len(key) > 64:
            raise ValidationFailed(
                _("Invalid trait name '%(name)s'.") % {"name": str(key)[:64]},
                code="invalid_trait",
            )
    if len(traits) > MAX_ATTRIBUTE_KEYS:
        raise ValidationFailed(_("Too many traits."), code="invalid_trait")
    try:
        return profile_values_validate(data=traits, origin=True)
    except ValidationFailed as exc:
        # The profile's codes name fields; identify's name traits, as documented.
        if exc.code == "unknown_field":
            raise ValidationFailed(
                _(
                    "Unknown trait '%(trait)s': send a profile field or the key of an active "
                    "custom field."
                )
                % {"trait": (exc.details or {}).get("field")},
                code="unknown_trait",
                details=exc.details,
            ) from exc
        if exc.code == "invalid_field":
            raise ValidationFailed(exc.message, code="invalid_trait", details=exc.details) from exc
        raise


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
        raise ValidationFailed(_("At least one identity is required."), code="invalid_identity")
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
        # A custom field sent as null or "" is cleared, as in a PATCH.
        merged_attributes = {**contact.attributes, **attributes}
        contact.attributes = {k: v for k, v in merged_attributes.items() if v is not None}
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
