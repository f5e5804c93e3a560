"""Identity normalisation and resolution: find or create the contact identities point to."""

import json
from dataclasses import dataclass, field
from typing import Any

import phonenumbers
from django.conf import settings
from django.core.exceptions import ValidationError
from django.core.validators import validate_email
from django.db import IntegrityError, OperationalError, transaction
from django.db.models import Q
from django.utils import timezone
from django.utils.crypto import salted_hmac
from django.utils.translation import gettext as _

from contacts.models import (
    Contact,
    Event,
    Identity,
    IdentityKind,
)
from contacts.selectors import contact_follow_merges
from contacts.services.erasure import identities_suppressed, suppressions_lift
from contacts.services.events import event_record
from contacts.services.merge import MergeRefused, contact_merge, merge_blocked_with
from contacts.services.retry import atomic_attempts, is_deadlock_victim
from contacts.signals import contact_changed
from core.errors import DomainError, ValidationFailed

# Text columns an identify or an import may set, with their length.
COLUMN_TRAITS = {
    name: Contact._meta.get_field(name).max_length
    for name in ("name", "nickname", "province", "city", "source", "channel_code")
}
# Most traits one identify may carry: bounds the work a single call can ask for.
MAX_ATTRIBUTE_KEYS = 100
# Numbers without a country code are read as Chinese (11-digit mobiles, landlines with area code).
DEFAULT_PHONE_REGION = "CN"
# Identity kinds that are also a profile column of the same name.
COLUMN_IDENTITY_KINDS = (IdentityKind.PHONE, IdentityKind.EMAIL)
# Timeline event recording identities that point to contacts identify did not merge.
CONFLICT_EVENT = "identity_conflict"
# Attempts of one identify call: a concurrent call may win an insert it also needed, change the
# contacts this one waited to lock, or (PostgreSQL) have this one aborted to break a deadlock.
# Each failed attempt means another call got through, so a few cover many concurrent calls.
IDENTIFY_ATTEMPTS = 5
# Kinds whose values are per app (openids per AppID, WeCom external ids per corp): the app_id
# is part of the key.
APP_ID_REQUIRED_KINDS = (
    IdentityKind.WECHAT_OPENID,
    IdentityKind.MINIPROGRAM_OPENID,
    IdentityKind.WECOM_EXTERNAL_USERID,
)
# Kinds that take an app_id; any other refuses one, or a phone sent with one and without one
# would key two contacts for one person.
APP_ID_KINDS = (*APP_ID_REQUIRED_KINDS, IdentityKind.EXTERNAL_ID)


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
    # The new contact's identities were an erased person's: they came back by themselves.
    previously_erased: bool = False


class ErasedIdentity(ValidationFailed):
    code = "erased"


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
    # Messages name the kind by its label, as operators know it (邮箱, 微信 unionid); the key
    # travels in the details for API clients.
    kind = IdentityKind(identity.kind).label
    value = str(identity.value).strip()
    if not value:
        raise ValidationFailed(
            _("Identity '%(kind)s' has an empty value.") % {"kind": kind},
            code="invalid_identity",
            details={"kind": identity.kind},
        )
    longest = Identity._meta.get_field("value").max_length
    if len(value) > longest:
        raise ValidationFailed(
            _("Identity '%(kind)s' is longer than %(max)s characters.")
            % {"kind": kind, "max": longest},
            code="invalid_identity",
            details={"kind": identity.kind, "max_length": longest},
        )
    app_id = (identity.app_id or "").strip()
    if identity.kind in APP_ID_REQUIRED_KINDS and not app_id:
        raise ValidationFailed(
            _("Identity '%(kind)s' needs the app_id it belongs to.") % {"kind": kind},
            code="invalid_identity",
            details={"kind": identity.kind},
        )
    if identity.kind not in APP_ID_KINDS and app_id:
        raise ValidationFailed(
            _("Identity '%(kind)s' takes no app_id: send it without one.") % {"kind": kind},
            code="invalid_identity",
            details={"kind": identity.kind, "field": "app_id"},
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
    from contacts.services.profile import profile_values_check, validation_failed_all

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
    values, custom, errors = profile_values_check(data=traits, origin=True)
    if errors:
        # Every bad trait at once, as a PATCH names every bad field.
        raise validation_failed_all([_trait_error(error) for error in errors])
    return values, custom


def _trait_error(exc: ValidationFailed) -> ValidationFailed:
    """A profile error about a trait: the profile's codes name fields, identify's name traits,
    as documented."""
    if exc.code == "unknown_field":
        return ValidationFailed(
            _(
                "Unknown trait '%(trait)s': send a profile field or the key of an active "
                "custom field."
            )
            % {"trait": (exc.details or {}).get("field")},
            code="unknown_trait",
            details=exc.details,
        )
    if exc.code == "invalid_field":
        return ValidationFailed(exc.message, code="invalid_trait", details=exc.details)
    return exc


def _find_identities(identities: list[IdentityInput]) -> list[Identity]:
    # One query for all (identify looks twice: before and after locking the contacts).
    if not identities:
        return []
    match = Q()
    for ident in identities:
        match |= Q(kind=ident.kind, app_id=ident.app_id, value=ident.value)
    return sorted(Identity.objects.select_related("contact").filter(match), key=_key)


def _attach_identities(contact: Contact, identities: list[IdentityInput]) -> None:
    # A plain INSERT, not get_or_create: if a concurrent call attached the same identity to
    # another contact first, the IntegrityError must reach identify's retry loop, which then
    # finds the winner's contact (get_or_create would silently hand back the winner's row).
    # In one global order: two calls inserting some of the same values wait on the first one
    # they share, never each on a value the other inserted first (a deadlock on the unique key).
    for ident in sorted(identities, key=_key):
        Identity.objects.create(
            contact=contact, kind=ident.kind, app_id=ident.app_id, value=ident.value
        )


def identity_follow_column(*, contact: Contact, kind: str, old: str, new: str) -> None:
    """Make a contact's phone or email identity follow the column's change from `old` to `new`.

    A corrected phone replaces the wrong one: the old value stops finding the contact, the new
    one finds it. The caller first makes sure that no other contact holds the new value (a
    PATCH refuses, identify merges); should one have attached it concurrently, the plain INSERT
    raises IntegrityError instead of handing back that contact's row.
    """
    mine = Identity.objects.filter(contact=contact, kind=kind, app_id="")
    if old and old != new:
        mine.filter(value=old).delete()
    if new and not mine.filter(value=new).exists():
        Identity.objects.create(contact=contact, kind=kind, app_id="", value=new)


def strong_identity_kinds() -> set[str]:
    """Identity kinds trusted enough to merge two contacts automatically."""
    return set(settings.SCRM_STRONG_IDENTITY_KINDS)


def identify(
    *,
    identities: list[IdentityInput],
    traits: dict[str, Any] | None = None,
    source: str = "api",
    via: str = "identify",
    ip: str | None = None,
    erased: str = "lift",
) -> IdentifyResult:
    """Find or create the contact the identities point to, then apply traits.

    `via` names the API call (identify, events) in the conflicts recorded for operators; `ip`
    is the caller's address, for the audit entries of the merges the call makes.

    `erased` says what a call that would create a contact for an erased person's identities
    does: "lift" creates it and forgets those tombstones (the person signed in again by
    themselves: a new customer, with no consent yet), "refuse" raises ErasedIdentity (data
    sent about them by a system, such as a replayed event batch, must not bring them back).
    """
    if erased not in ("lift", "refuse"):
        raise ValueError(f"erased must be 'lift' or 'refuse', not {erased!r}")
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
    # exactly one win, and the loser's attempt rolls back to its savepoint (releasing the row
    # locks it took) and runs again, seeing the winner's committed rows.
    try:
        return atomic_attempts(
            lambda last: _identify_once(
                unique, columns, attributes, source, via, ip=ip, last=last, erased=erased
            ),
            attempts=IDENTIFY_ATTEMPTS,
            retry_if=_identify_again,
        )
    except OperationalError as exc:
        if not is_deadlock_victim(exc):
            raise
        # Every attempt was a deadlock victim: the caller may send the call again (nothing of
        # it was kept), which a server error would not tell it.
        raise ContactsContended(
            _("Other calls are changing the contacts these identities point to; try again.")
        ) from exc


def _identify_again(exc: Exception) -> bool:
    if isinstance(exc, IntegrityError | ContactsContended):
        return True
    if isinstance(exc, MergeRefused):
        # The contacts are locked and read again before any merge is decided, so a concurrent
        # merge is seen then; should one still be met, looking again follows it.
        return exc.code == "already_merged"
    return is_deadlock_victim(exc)


class ContactsContended(DomainError):
    """While an identify attempt waited for its row locks, a concurrent call changed which
    contacts its identities point to (raised to the caller only when no attempt is left)."""

    code = "contacts_contended"


def _oldest(contacts: list[Contact]) -> Contact:
    return min(contacts, key=lambda c: (c.created_at, c.pk))


IdentityKey = tuple[str, str, str]


def _key(identity: IdentityInput | Identity) -> IdentityKey:
    return (identity.kind, identity.app_id, identity.value)


def _conflicts_record(
    *,
    contact: Contact,
    others: list[Contact],
    owners: dict[IdentityKey, int],
    reason: str,
    source: str,
    via: str,
) -> None:
    """Put each conflict on both contacts' timelines, once however often a call repeats it."""
    for other in others:
        # The call's identities that point to the contact not chosen: they are what an operator
        # reviews, and (unlike the chosen contact's, which the call may add to) a retry of the
        # call carries exactly the same ones.
        linking = sorted(key for key, owner in owners.items() if owner == other.pk)
        identities = [{"kind": kind, "app_id": app_id} for kind, app_id, _value in linking]
        for on, about in ((contact, other), (other, contact)):
            # The identity values only enter a keyed hash: event ids are shown where a phone
            # number is not.
            digest = salted_hmac(
                "contacts.identity_conflict",
                json.dumps([on.pk, about.pk, reason, linking]),
                algorithm="sha256",
            ).hexdigest()
            event_id = f"conflict-{digest[:48]}"
            if Event.objects.filter(event_id=event_id).exists():
                continue
            try:
                with transaction.atomic():
                    event_record(
                        contact=on,
                        name=CONFLICT_EVENT,
                        event_id=event_id,
                        properties={
                            "other_contact_id": about.pk,
                            "identities": identities,
                            "reason": reason,
                            "source": source,
                            "via": via,
                        },
                    )
            except IntegrityError:
                continue  # a concurrent retry of the same call recorded it first


def _resolve(
    identities: list[IdentityInput],
) -> tuple[dict[int, Contact], dict[IdentityKey, int], set[int]]:
    """The contacts the identities point to, the contact holding each identity found, and the
    contacts a strong identity points to."""
    by_id: dict[int, Contact] = {}
    owners: dict[IdentityKey, int] = {}
    strong_ids: set[int] = set()
    strong = strong_identity_kinds()
    for row in _find_identities(identities):
        # Identities of a merged contact moved to the survivor, but follow the link anyway.
        contact = contact_follow_merges(contact=row.contact)
        by_id[contact.pk] = contact
        owners[_key(row)] = contact.pk
        if row.kind in strong:
            strong_ids.add(contact.pk)
    return by_id, owners, strong_ids


def _lock_involved(
    identities: list[IdentityInput], owners: dict[IdentityKey, int], *, last: bool
) -> tuple[dict[int, Contact], dict[IdentityKey, int], set[int]]:
    """Lock every contact the identities point to, in id order; return _resolve's answer read
    again under the locks.

    Every contact the call may write to (merge, update, put a conflict on) is locked here,
    before any write and in one global order: two calls over overlapping contacts then queue
    on the first contact they share instead of each holding one the other needs, whatever
    order their identities came in. Merges (contact_merge locks its pair again) only take
    locks the call holds already.
    """
    locked = {
        c.pk: c
        for c in Contact.objects.select_for_update()
        .filter(pk__in=set(owners.values()))
        # Rows are locked in the order they are returned (LockRows runs above the sort).
        .order_by("pk")
    }
    # A concurrent call may have merged these contacts or linked the identities elsewhere
    # while this one waited. Start over with what that call left, unless nothing changed;
    # on the last attempt, go on with the new state if this call holds all it needs.
    by_id, now, strong_ids = _resolve(identities)
    if not set(by_id) <= set(locked) or (now != owners and not last):
        raise ContactsContended(
            _("Other calls are changing the contacts these identities point to; try again.")
        )
    return {pk: locked[pk] for pk in by_id}, now, strong_ids


def _identify_once(
    identities: list[IdentityInput],
    columns: dict[str, Any],
    attributes: dict[str, Any],
    source: str,
    via: str,
    *,
    ip: str | None,
    last: bool = True,
    erased: str = "lift",
) -> IdentifyResult:
    by_id, owners, strong_ids = _resolve(identities)
    if owners:
        by_id, owners, strong_ids = _lock_involved(identities, owners, last=last)
    if erased == "refuse":
        # An erased person's identity that no live contact holds is not attached to anyone,
        # not even to a contact the call's other identities find: a replayed batch pairing a
        # visitor's anonymous id with the erased phone must not bring the phone back.
        dropped = identities_suppressed(_key(i) for i in identities if _key(i) not in owners)
        identities = [i for i in identities if _key(i) not in dropped]
        if not identities:
            raise ErasedIdentity(
                _(
                    "These identities belong to a person whose personal data was erased at "
                    "their request; data about them is no longer accepted."
                ),
                details={"kinds": sorted({kind for kind, _app, _value in dropped})},
            )
    created = False
    conflicts: list[int] = []
    merged: list[int] = []
    suppressed: set[IdentityKey] = set()
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
                contact_merge(survivor=survivor, duplicate=by_id[pk], reason="identify", ip=ip)
                merged.append(pk)
        if conflicts:
            # The call's identities and traits belong to one of two people declared distinct,
            # and nothing says which: write none of them rather than link the two again.
            contact = Contact.objects.get(pk=survivor.pk)
            _conflicts_record(
                contact=contact,
                others=[by_id[pk] for pk in conflicts],
                owners=owners,
                reason="not_same_person",
                source=source,
                via=via,
            )
            if merged:
                transaction.on_commit(
                    lambda: contact_changed.send(sender=Contact, contact_ids=[contact.pk]),
                    robust=True,
                )
            return IdentifyResult(
                contact=contact, created=False, merged=merged, conflicts=conflicts
            )
        # Read again: the merges filled its blanks.
        contact = Contact.objects.get(pk=survivor.pk)
    elif by_id:
        # Only weak identities link them: keep the oldest and report the others for review.
        ordered = sorted(by_id)
        contact = by_id[ordered[0]]
        conflicts = ordered[1:]
        _conflicts_record(
            contact=contact,
            others=[by_id[pk] for pk in conflicts],
            owners=owners,
            reason="weak_identity",
            source=source,
            via=via,
        )
    else:
        contact = Contact(source=columns.get("source", "") or source)
        created = True
        if erased == "lift":
            suppressed = identities_suppressed(_key(i) for i in identities)
            if suppressed:
                suppressions_lift(identities=suppressed)
    values = dict(columns)
    # A phone or email sent as an identity (a mini-program's getPhoneNumber) fills an empty
    # column, so that search, messages and exports find it; a trait or a value already there
    # wins, and an identity of a contact kept apart as a conflict is not this contact's.
    own = {contact.pk, *merged}

    def is_own(key: IdentityKey) -> bool:
        return owners.get(key) is None or owners[key] in own

    for kind in COLUMN_IDENTITY_KINDS:
        if kind in values or getattr(contact, kind):
            continue
        carried = [
            i.value for i in identities if i.kind == kind and i.app_id == "" and is_own(_key(i))
        ]
        if carried:
            values[kind] = carried[0]
    old = {kind: getattr(contact, kind) for kind in COLUMN_IDENTITY_KINDS}
    for key, value in values.items():
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
    # As a PATCH does: a new phone or email replaces the old one as an identity.
    # Not when another contact, kept apart as a conflict, holds the value: it is not this
    # contact's to take (only possible when phone or email are not strong kinds).
    followed = [
        kind
        for kind in COLUMN_IDENTITY_KINDS
        if kind in values and is_own((kind, "", values[kind]))
    ]
    for kind in followed:
        if old[kind] and old[kind] != values[kind]:
            Identity.objects.filter(contact=contact, kind=kind, app_id="", value=old[kind]).delete()
    # What identity_follow_column would insert joins the call's new identities: all are
    # inserted in one sorted order. A followed value already found is this contact's (or was a
    # merged one's, moved here), so only values nobody holds are new.
    new = {_key(i): i for i in identities if _key(i) not in owners}
    for kind in followed:
        if values[kind] and (kind, "", values[kind]) not in owners:
            new.setdefault((kind, "", values[kind]), IdentityInput(kind, values[kind]))
    _attach_identities(contact, list(new.values()))
    contact_id = contact.pk
    # A new contact changes everything a rule can read; a known one what the call brought.
    topics = None
    if not created:
        topics = [*values, "last_seen_at", "first_seen_at"]
        topics += ["attributes"] if attributes else []
        topics += ["identities"] if new or followed else []
    transaction.on_commit(
        lambda: contact_changed.send(sender=Contact, contact_ids=[contact_id], changed=topics),
        robust=True,
    )
    return IdentifyResult(
        contact=contact,
        created=created,
        merged=merged,
        conflicts=conflicts,
        previously_erased=created and bool(suppressed),
    )
