import datetime as dt
import json
import math
import uuid
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any

import phonenumbers
from django.conf import settings
from django.contrib.auth import get_user_model
from django.contrib.auth.models import AbstractBaseUser
from django.core.exceptions import ValidationError
from django.core.serializers.json import DjangoJSONEncoder
from django.core.validators import validate_email
from django.db import IntegrityError, transaction
from django.utils import timezone

from contacts.models import (
    Consent,
    ConsentChannel,
    ConsentPurpose,
    ConsentRecord,
    Contact,
    ContactTag,
    CustomField,
    CustomFieldKind,
    Event,
    Gender,
    Identity,
    IdentityKind,
    MergeRecord,
    Note,
    Stage,
    Store,
    Tag,
    TagSource,
)
from contacts.selectors import contact_follow_merges
from contacts.signals import contact_changed, contact_merged, contact_unmerged, events_recorded
from core.errors import DomainError, NotFound, ValidationFailed
from core.models import AuditLog

# Traits that map to columns; anything else is kept in Contact.attributes.
COLUMN_TRAITS = {
    "name": 100,
    "nickname": 100,
    "province": 30,
    "city": 30,
    "source": 50,
    "channel_code": 50,
}
MAX_ATTRIBUTE_KEYS = 100
# Numbers without a country code are read as Chinese (11-digit mobiles, landlines with area code).
DEFAULT_PHONE_REGION = "CN"


DEFAULT_STAGE_NAMES = {
    "new": "新客/潜客",
    "interested": "意向",
    "first_purchase": "首购",
    "repeat": "复购",
    "loyal": "忠诚",
    "dormant": "沉睡",
    "churned": "流失",
}


def stages_ensure_defaults() -> None:
    """Create the default lifecycle stages that are missing (brands may rename them later)."""
    for position, (key, name) in enumerate(DEFAULT_STAGE_NAMES.items()):
        Stage.objects.get_or_create(key=key, defaults={"name": name, "position": position})


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


# --- Custom fields -------------------------------------------------------------------------

MAX_CUSTOM_TEXT = 500
TRUE_WORDS = {"true", "1", "yes", "y", "是", "对"}
FALSE_WORDS = {"false", "0", "no", "n", "否", "不"}


def _custom_value(definition: CustomField, raw: Any) -> Any:
    key, kind = definition.key, definition.kind

    def invalid(what: str) -> ValidationFailed:
        return ValidationFailed(
            f"Custom field '{key}' {what}.", code="invalid_custom_field", details={"field": key}
        )

    if raw is None or raw == "":
        return None
    if kind == CustomFieldKind.TEXT:
        if not isinstance(raw, str | int | float) or isinstance(raw, bool):
            raise invalid("must be text")
        value = str(raw).strip()
        if len(value) > MAX_CUSTOM_TEXT:
            raise invalid(f"is longer than {MAX_CUSTOM_TEXT} characters")
        return value
    if kind == CustomFieldKind.NUMBER:
        if isinstance(raw, bool) or not isinstance(raw, int | float | Decimal | str):
            raise invalid("must be a number")
        try:
            number = float(str(raw).strip())
        except ValueError as exc:
            raise invalid("must be a number") from exc
        if not math.isfinite(number):
            raise invalid("must be a finite number")
        return int(number) if number.is_integer() and abs(number) < 2**53 else number
    if kind == CustomFieldKind.DATE:
        if isinstance(raw, dt.datetime):
            raw = raw.date()
        if isinstance(raw, dt.date):
            return raw.isoformat()
        try:
            return dt.date.fromisoformat(str(raw).strip()).isoformat()
        except ValueError as exc:
            raise invalid("must be a date like 2026-05-17") from exc
    if kind == CustomFieldKind.SINGLE_CHOICE:
        value = str(raw).strip() if isinstance(raw, str | int) else None
        if value not in [str(c) for c in definition.choices]:
            raise invalid(f"must be one of: {', '.join(map(str, definition.choices))}")
        return value
    if kind == CustomFieldKind.MULTI_CHOICE:
        # Imports give "a,b"; the API and forms give a list.
        items = raw.split(",") if isinstance(raw, str) else raw
        if not isinstance(items, list | tuple):
            raise invalid("must be a list of choices")
        allowed = [str(c) for c in definition.choices]
        chosen = [str(i).strip() for i in items if str(i).strip()]
        unknown = [i for i in chosen if i not in allowed]
        if unknown or any(not isinstance(i, str | int) for i in items):
            raise invalid(f"has options outside the choices: {', '.join(unknown)}")
        return list(dict.fromkeys(chosen))
    if kind == CustomFieldKind.BOOLEAN:
        if isinstance(raw, bool):
            return raw
        word = str(raw).strip().lower() if isinstance(raw, str | int) else None
        if word in TRUE_WORDS:
            return True
        if word in FALSE_WORDS:
            return False
        raise invalid("must be true or false")
    raise invalid(f"has an unknown type '{kind}'")


def custom_fields_validate(*, values: dict[str, Any]) -> dict[str, Any]:
    """Check values against the active custom field definitions; return the cleaned values."""
    definitions = {d.key: d for d in CustomField.objects.filter(key__in=list(values))}
    cleaned: dict[str, Any] = {}
    for key, raw in values.items():
        definition = definitions.get(key)
        if definition is None or not definition.is_active:
            raise ValidationFailed(
                f"Unknown field '{key}'.", code="unknown_field", details={"field": key}
            )
        cleaned[key] = _custom_value(definition, raw)
    return cleaned


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
        for pk in sorted(by_id):
            if pk != survivor.pk:
                contact_merge(survivor=survivor, duplicate=by_id[pk], reason="identify")
                merged.append(pk)
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
    transaction.on_commit(lambda: contact_changed.send(sender=Contact, contact_ids=[contact_id]))
    return IdentifyResult(contact=contact, created=created, merged=merged, conflicts=conflicts)


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
        return "event_id is required and at most 64 characters."
    if not item.name or len(item.name) > 64:
        return "name is required and at most 64 characters."
    if item.occurred_at > timezone.now() + MAX_CLOCK_SKEW:
        return "occurred_at is in the future."
    return None


def events_record(*, items: list[EventInput]) -> list[EventOutcome]:
    """Store a batch of events; duplicates and bad items are reported, never block the rest."""
    if len(items) > MAX_EVENTS_PER_BATCH:
        raise ValidationFailed(f"At most {MAX_EVENTS_PER_BATCH} events per call.", code="too_many")
    outcomes: list[EventOutcome | None] = [None] * len(items)
    seen: set[str] = set()
    candidates: list[tuple[int, EventInput]] = []
    for index, item in enumerate(items):
        error = _validate_event(item)
        if error:
            outcomes[index] = EventOutcome(index, "rejected", item.event_id, error)
        elif item.event_id in seen:
            outcomes[index] = EventOutcome(index, "duplicate", item.event_id, "repeated in batch")
        else:
            seen.add(item.event_id)
            candidates.append((index, item))

    existing = set(
        Event.objects.filter(event_id__in=[i.event_id for _, i in candidates]).values_list(
            "event_id", flat=True
        )
    )
    # One query for every contact id in the batch instead of one per event.
    known = {
        row["pk"]: row["merged_into_id"]
        for row in Contact.objects.filter(
            pk__in={i.contact_id for _, i in candidates if i.contact_id is not None}
        ).values("pk", "merged_into_id")
    }
    to_store: list[tuple[int, Event]] = []
    for index, item in candidates:
        if item.event_id in existing:
            outcomes[index] = EventOutcome(index, "duplicate", item.event_id)
            continue
        try:
            contact_id = _resolve_event_contact(item, known)
        except ValidationFailed as exc:
            outcomes[index] = EventOutcome(index, "rejected", item.event_id, exc.message)
            continue
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

    stored = _store_events(to_store)
    for index, event in to_store:
        if index in stored:
            outcomes[index] = EventOutcome(index, "accepted", event.event_id)
        else:
            outcomes[index] = EventOutcome(index, "duplicate", event.event_id)
    return [o for o in outcomes if o is not None]


def _resolve_event_contact(item: EventInput, known: dict[int, int | None]) -> int:
    if item.contact_id is not None:
        if item.contact_id not in known:
            raise ValidationFailed(f"Contact {item.contact_id} does not exist.")
        if known[item.contact_id] is None:
            return item.contact_id
        # Events sent for a merged contact land on the contact that absorbed it.
        contact = Contact.objects.get(pk=item.contact_id)
        return contact_follow_merges(contact=contact).pk
    if not item.identities:
        raise ValidationFailed("Either contact_id or identities is required.")
    return identify(identities=item.identities, source=item.source).contact.pk


def _store_events(rows: list[tuple[int, Event]]) -> set[int]:
    """Insert events, returning the batch indexes actually stored (a racing retry may win)."""
    if not rows:
        return set()
    try:
        with transaction.atomic():
            Event.objects.bulk_create([e for _, e in rows])
            events_recorded.send(sender=Event, events=[e for _, e in rows])
        return {i for i, _ in rows}
    except IntegrityError:
        pass
    # A concurrent call stored some of these ids first: fall back to one savepoint per event.
    stored: set[int] = set()
    for index, event in rows:
        try:
            with transaction.atomic():
                event.pk = None
                event.save(force_insert=True)
                events_recorded.send(sender=Event, events=[event])
            stored.add(index)
        except IntegrityError:
            continue
    return stored


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
        event_id=event_id or uuid.uuid4().hex,
        contact=contact,
        name=name,
        properties=properties or {},
        value=value,
        occurred_at=occurred_at or timezone.now(),
        source=source,
    )
    events_recorded.send(sender=Event, events=[event])
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
        batch = [
            Event(
                event_id=uuid.uuid4().hex,
                contact_id=contact_id,
                name=name,
                properties=properties,
                occurred_at=occurred_at,
                source=source,
            )
            for contact_id in contact_ids[start : start + APPEND_BATCH]
        ]
        Event.objects.bulk_create(batch)
        events_recorded.send(sender=Event, events=batch)
        total += len(batch)
    return total


@transaction.atomic
def contact_tag_add(
    *,
    contact: Contact,
    tag: Tag,
    actor: AbstractBaseUser | None = None,
    source: str = TagSource.MANUAL,
) -> bool:
    """Tag a contact; return False when it already had the tag."""
    _, created = ContactTag.objects.get_or_create(
        contact=contact, tag=tag, defaults={"source": source, "actor": actor}
    )
    if created:
        event_record(
            contact=contact,
            name="tag_added",
            properties={"tag_id": tag.pk, "tag": str(tag), "source": source},
        )
        transaction.on_commit(
            lambda: contact_changed.send(sender=Contact, contact_ids=[contact.pk])
        )
    return created


@transaction.atomic
def contact_tag_remove(
    *, contact: Contact, tag: Tag, actor: AbstractBaseUser | None = None
) -> bool:
    """Remove a tag from a contact; return False when it did not have it."""
    deleted, _ = ContactTag.objects.filter(contact=contact, tag=tag).delete()
    if deleted:
        event_record(
            contact=contact,
            name="tag_removed",
            properties={"tag_id": tag.pk, "tag": str(tag)},
        )
        transaction.on_commit(
            lambda: contact_changed.send(sender=Contact, contact_ids=[contact.pk])
        )
    return bool(deleted)


def tags_resolve(*, refs: list[Any]) -> list[Tag]:
    """Find tags by id or by "group/name"; every reference must exist."""
    tags: list[Tag] = []
    for ref in refs:
        tag = None
        if isinstance(ref, int) and not isinstance(ref, bool):
            tag = Tag.objects.select_related("group").filter(pk=ref).first()
        elif isinstance(ref, str) and ref.strip().isdigit():
            tag = Tag.objects.select_related("group").filter(pk=int(ref)).first()
        elif isinstance(ref, str) and "/" in ref:
            group, _, name = ref.strip().partition("/")
            tag = (
                Tag.objects.select_related("group")
                .filter(group__name=group.strip(), name=name.strip())
                .first()
            )
        if tag is None:
            raise ValidationFailed(
                f"Unknown tag '{ref}': give a tag id or \"group/name\" of an existing tag.",
                code="unknown_tag",
                details={"tag": ref},
            )
        tags.append(tag)
    return list(dict.fromkeys(tags))


@transaction.atomic
def contact_tags_add(
    *,
    contact: Contact,
    tags: list[Tag],
    actor: AbstractBaseUser | None = None,
    source: str = TagSource.MANUAL,
) -> list[Tag]:
    """Tag a contact with several tags at once; return the tags it did not have yet."""
    return [
        tag for tag in tags if contact_tag_add(contact=contact, tag=tag, actor=actor, source=source)
    ]


# --- Profile updates -----------------------------------------------------------------------

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
OLDEST_BIRTHDAY = dt.date(1900, 1, 1)


def _field_error(key: str, message: str, code: str = "invalid_field") -> ValidationFailed:
    return ValidationFailed(f"Field '{key}' {message}.", code=code, details={"field": key})


def _profile_value(key: str, raw: Any) -> Any:
    """Validate one profile field; return the value to set on the model attribute."""
    if key in PROFILE_TEXT_FIELDS:
        if raw is None:
            return ""
        if not isinstance(raw, str):
            raise _field_error(key, "must be text")
        value = raw.strip()
        if len(value) > PROFILE_TEXT_FIELDS[key]:
            raise _field_error(key, f"is longer than {PROFILE_TEXT_FIELDS[key]} characters")
        return value
    if key == "gender":
        if raw not in Gender.values:
            raise _field_error(key, f"must be one of {', '.join(Gender.values)}")
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
                raise _field_error(key, "must be a date like 1990-05-17")
        if day > timezone.localdate():
            raise _field_error(key, "is in the future")
        if day < OLDEST_BIRTHDAY:
            raise _field_error(key, "is before 1900")
        return day
    if key == "phone":
        if raw is None or raw == "":
            return ""
        if not isinstance(raw, str | int) or isinstance(raw, bool):
            raise _field_error(key, "must be text", code="invalid_phone")
        try:
            return normalize_phone(str(raw))
        except ValidationFailed as exc:
            raise ValidationFailed(exc.message, code=exc.code, details={"field": key}) from exc
    if key == "email":
        if raw is None or raw == "":
            return ""
        if not isinstance(raw, str) or len(raw) > 254:
            raise ValidationFailed(
                f"'{raw}' is not a valid email.", code="invalid_email", details={"field": key}
            )
        try:
            return normalize_identity(IdentityInput(IdentityKind.EMAIL, raw)).value
        except ValidationFailed as exc:
            raise ValidationFailed(exc.message, code=exc.code, details={"field": key}) from exc
    if key == "lifecycle_stage":
        stage = Stage.objects.filter(key=raw, is_active=True).first() if raw else None
        if not isinstance(raw, str) or stage is None:
            raise _field_error(key, "must be the key of an active lifecycle stage")
        return stage
    if key == "owner":
        if raw is None or raw == "":
            return None
        user = None
        if isinstance(raw, int) and not isinstance(raw, bool):
            user = get_user_model().objects.filter(pk=raw, is_active=True).first()
        if user is None:
            raise _field_error(key, "must be the id of an active user")
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
            raise _field_error(key, "must be the id or code of a store")
        return store
    raise _field_error(key, "is not a profile field", code="unknown_field")


def _identity_owner(kind: str, value: str) -> int | None:
    return (
        Identity.objects.filter(kind=kind, app_id="", value=value)
        .values_list("contact_id", flat=True)
        .first()
    )


@transaction.atomic
def contact_update(
    *,
    contact: Contact,
    data: dict[str, Any],
    actor: AbstractBaseUser | None = None,
    source: str = "manual",
) -> Contact:
    """Validate and apply profile and custom field changes; nothing is stored on any error."""
    if not isinstance(data, dict):
        raise ValidationFailed("The changes must be an object of field names and values.")
    profile = {k: v for k, v in data.items() if k in PROFILE_FIELDS}
    custom = custom_fields_validate(values={k: v for k, v in data.items() if k not in profile})
    values = {key: _profile_value(key, raw) for key, raw in profile.items()}
    # Phone and email are identities too: refuse one that already belongs to someone else.
    for kind in (IdentityKind.PHONE, IdentityKind.EMAIL):
        new = values.get(kind)
        if new and new != getattr(contact, kind):
            owner = _identity_owner(kind, new)
            if owner is not None and owner != contact.pk:
                raise ValidationFailed(
                    f"This {kind} belongs to contact {owner}; merge the two contacts instead.",
                    code="identity_taken",
                    details={"field": kind, "contact_id": owner},
                )
    contact = Contact.objects.select_for_update().get(pk=contact.pk)
    changed: list[str] = []
    for key, value in values.items():
        if getattr(contact, key) != value:
            if key in (IdentityKind.PHONE, IdentityKind.EMAIL):
                old = getattr(contact, key)
                # A corrected phone or email replaces the wrong one as an identity.
                if old:
                    Identity.objects.filter(
                        contact=contact, kind=key, app_id="", value=old
                    ).delete()
                if value:
                    Identity.objects.get_or_create(
                        kind=key, app_id="", value=value, defaults={"contact": contact}
                    )
            setattr(contact, key, value)
            changed.append(key)
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
    contact_id = contact.pk
    transaction.on_commit(lambda: contact_changed.send(sender=Contact, contact_ids=[contact_id]))
    return contact


# --- Notes ---------------------------------------------------------------------------------

MAX_NOTE_LENGTH = 5000


@transaction.atomic
def note_add(
    *,
    contact: Contact,
    author: AbstractBaseUser | None,
    body: str,
    follow_up_at: dt.datetime | None = None,
) -> Note:
    """Leave a note, optionally with a follow-up date, on a contact."""
    body = (body or "").strip()
    if not body:
        raise _field_error("body", "is empty")
    if len(body) > MAX_NOTE_LENGTH:
        raise _field_error("body", f"is longer than {MAX_NOTE_LENGTH} characters")
    note = Note.objects.create(contact=contact, author=author, body=body, follow_up_at=follow_up_at)
    event_record(
        contact=contact,
        name="note_added",
        properties={
            "note_id": note.pk,
            "preview": body[:100],
            "follow_up_at": follow_up_at.isoformat() if follow_up_at else None,
        },
    )
    return note


def note_complete(*, note: Note, actor: AbstractBaseUser | None) -> Note:
    """Mark a note's follow-up as done (once; doing it again changes nothing)."""
    updated = Note.objects.filter(pk=note.pk, done_at__isnull=True).update(done_at=timezone.now())
    note.refresh_from_db(fields=["done_at"])
    if updated:
        event_record(
            contact=note.contact,
            name="follow_up_done",
            properties={"note_id": note.pk, "actor_id": actor.pk if actor is not None else None},
        )
    return note


# --- Consent -------------------------------------------------------------------------------


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
        raise _field_error("channel", f"must be one of {', '.join(ConsentChannel.values)}")
    if purpose not in ConsentPurpose.values:
        raise _field_error("purpose", f"must be one of {', '.join(ConsentPurpose.values)}")
    if not isinstance(granted, bool):
        raise _field_error("granted", "must be true or false")
    source = (source or "").strip()
    if not source or len(source) > 50:
        raise _field_error("source", "is required and at most 50 characters")
    if len(notice_version or "") > 30:
        raise _field_error("notice_version", "is longer than 30 characters")
    if evidence is not None and not isinstance(evidence, dict):
        raise _field_error("evidence", "must be an object")
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
    transaction.on_commit(lambda: contact_changed.send(sender=Contact, contact_ids=[contact_id]))
    return record


# --- Merge and undo ------------------------------------------------------------------------

# Fields the merge never copies from the duplicate (keys, bookkeeping, the merge link itself).
MERGE_SKIP_FIELDS = {"id", "created_at", "updated_at", "merged_into", "attributes"}


class MergeRefused(DomainError):
    code = "merge_refused"


def _contact_fields(contact: Contact) -> dict[str, Any]:
    values = {f.attname: getattr(contact, f.attname) for f in Contact._meta.concrete_fields}
    return json.loads(json.dumps(values, cls=DjangoJSONEncoder))


def _is_blank(value: Any) -> bool:
    return value is None or value == "" or value == Gender.UNKNOWN


def _move(model: type, ids: list[int], contact: Contact) -> None:
    for start in range(0, len(ids), APPEND_BATCH):
        model.objects.filter(pk__in=ids[start : start + APPEND_BATCH]).update(contact=contact)


def _ids(qs) -> list[int]:
    return list(qs.order_by("pk").values_list("pk", flat=True))


def _audit(*, actor: AbstractBaseUser | None, action: str, contact: Contact, details: dict) -> None:
    AuditLog.objects.create(
        actor=actor if actor is not None and actor.is_authenticated else None,
        action=action,
        object_type="contacts.contact",
        object_id=str(contact.pk),
        details=details,
    )


@transaction.atomic
def contact_merge(
    *,
    survivor: Contact,
    duplicate: Contact,
    actor: AbstractBaseUser | None = None,
    reason: str = "manual",
) -> MergeRecord:
    """Merge `duplicate` into `survivor`, recording what moved so that it can be undone."""
    if survivor.pk == duplicate.pk:
        raise MergeRefused("A contact cannot be merged into itself.")
    # Lock both rows in id order so that two merges of the same pair cannot deadlock.
    locked = {
        c.pk: c
        for c in Contact.objects.select_for_update()
        .filter(pk__in=[survivor.pk, duplicate.pk])
        .order_by("pk")
    }
    if len(locked) != 2:
        raise NotFound("Contact not found.")
    survivor, duplicate = locked[survivor.pk], locked[duplicate.pk]
    for contact in (survivor, duplicate):
        if contact.merged_into_id is not None:
            raise MergeRefused(
                f"Contact {contact.pk} was already merged into {contact.merged_into_id}.",
                code="already_merged",
            )
    record = MergeRecord.objects.create(
        survivor=survivor,
        duplicate=duplicate,
        reason=reason[:100],
        actor=actor if actor is not None and actor.is_authenticated else None,
        snapshot={"survivor": _contact_fields(survivor), "duplicate": _contact_fields(duplicate)},
    )

    # The survivor keeps its fields and fills blanks from the duplicate.
    filled: list[str] = []
    for f in Contact._meta.concrete_fields:
        if f.attname in MERGE_SKIP_FIELDS:
            continue
        mine, theirs = getattr(survivor, f.attname), getattr(duplicate, f.attname)
        if f.attname == "first_seen_at" and mine and theirs:
            value = min(mine, theirs)
        elif f.attname in ("last_seen_at", "last_active_at") and mine and theirs:
            value = max(mine, theirs)
        elif _is_blank(mine) and not _is_blank(theirs):
            value = theirs
        else:
            continue
        if value != mine:
            setattr(survivor, f.attname, value)
            filled.append(f.attname)
    added_attributes = [k for k in duplicate.attributes if k not in survivor.attributes]
    survivor.attributes = {**duplicate.attributes, **survivor.attributes}
    survivor.save()
    # What the survivor took from the duplicate, so that undo gives back exactly that.
    record.snapshot = {**record.snapshot, "filled": filled, "added_attributes": added_attributes}

    moved: dict[str, Any] = {}
    for label, qs in (
        ("contacts.identity", Identity.objects.filter(contact=duplicate)),
        ("contacts.event", Event.objects.filter(contact=duplicate)),
        ("contacts.note", Note.objects.filter(contact=duplicate)),
        ("contacts.consentrecord", ConsentRecord.objects.filter(contact=duplicate)),
        # A tag both have stays on the (hidden) duplicate, so the survivor has it once.
        (
            "contacts.contacttag",
            ContactTag.objects.filter(contact=duplicate).exclude(
                tag__in=ContactTag.objects.filter(contact=survivor).values("tag")
            ),
        ),
    ):
        ids = _ids(qs)
        _move(qs.model, ids, survivor)
        moved[label] = ids

    # Current consent: keep the most recent state per channel and purpose.
    moved_consents: list[int] = []
    replaced: list[dict[str, Any]] = []
    mine = {(c.channel, c.purpose): c for c in Consent.objects.filter(contact=survivor)}
    for theirs in Consent.objects.filter(contact=duplicate).order_by("pk"):
        current = mine.get((theirs.channel, theirs.purpose))
        if current is None:
            moved_consents.append(theirs.pk)
        elif theirs.updated_at > current.updated_at:
            replaced.append(
                {
                    "id": current.pk,
                    "granted": current.granted,
                    "updated_at": current.updated_at.isoformat(),
                    "record_id": current.record_id,
                }
            )
            Consent.objects.filter(pk=current.pk).update(
                granted=theirs.granted, updated_at=theirs.updated_at, record_id=theirs.record_id
            )
    _move(Consent, moved_consents, survivor)
    moved["contacts.consent"] = moved_consents
    moved["contacts.consent_replaced"] = replaced

    duplicate.merged_into = survivor
    duplicate.save(update_fields=["merged_into", "updated_at"])
    record.moved = moved
    record.save(update_fields=["moved", "snapshot"])
    # Higher apps move their own rows (points, enrollments, deliveries) and add to record.moved.
    contact_merged.send(sender=Contact, record=record, survivor=survivor, duplicate=duplicate)
    record.refresh_from_db(fields=["moved"])

    event_record(
        contact=survivor,
        name="contact_merged",
        properties={"duplicate_id": duplicate.pk, "merge_id": record.pk, "reason": reason},
    )
    _audit(
        actor=actor,
        action="contact.merge",
        contact=survivor,
        details={"duplicate_id": duplicate.pk, "merge_id": record.pk, "reason": reason},
    )
    return record


def _restore_fields(contact: Contact, saved: dict[str, Any], fields: list[str] | None) -> None:
    for f in Contact._meta.concrete_fields:
        if f.attname in ("id", "created_at", "updated_at", "merged_into_id"):
            continue
        if fields is None or f.attname in fields:
            setattr(contact, f.attname, f.to_python(saved.get(f.attname)))


@transaction.atomic
def contact_merge_undo(*, record: MergeRecord, actor: AbstractBaseUser | None = None) -> Contact:
    """Undo a merge: move every recorded row back and restore both contacts; return the
    restored duplicate."""
    record = MergeRecord.objects.select_for_update().get(pk=record.pk)
    if record.undone_at is not None:
        raise MergeRefused("This merge was already undone.", code="already_undone")
    locked = {
        c.pk: c
        for c in Contact.objects.select_for_update()
        .filter(pk__in=[record.survivor_id, record.duplicate_id])
        .order_by("pk")
    }
    survivor, duplicate = locked[record.survivor_id], locked[record.duplicate_id]
    if survivor.merged_into_id is not None:
        raise MergeRefused(
            f"Contact {survivor.pk} was merged into {survivor.merged_into_id} since; "
            "undo that merge first.",
            code="merged_since",
        )
    # Higher apps first: they undo in the reverse order of the merge.
    contact_unmerged.send(sender=Contact, record=record, survivor=survivor, duplicate=duplicate)
    moved = record.moved
    for label, model in (
        ("contacts.identity", Identity),
        ("contacts.event", Event),
        ("contacts.note", Note),
        ("contacts.consentrecord", ConsentRecord),
        ("contacts.contacttag", ContactTag),
        ("contacts.consent", Consent),
    ):
        _move(model, moved.get(label, []), duplicate)
    for row in moved.get("contacts.consent_replaced", []):
        Consent.objects.filter(pk=row["id"]).update(
            granted=row["granted"],
            updated_at=dt.datetime.fromisoformat(row["updated_at"]),
            record_id=row["record_id"],
        )

    # The survivor gets back only what the merge filled in and nobody changed since.
    before, theirs = record.snapshot["survivor"], record.snapshot["duplicate"]
    survivor_now = _contact_fields(survivor)
    refill = [
        name
        for name in record.snapshot.get("filled", [])
        if survivor_now.get(name) == theirs.get(name)
    ]
    _restore_fields(survivor, before, refill)
    attributes = dict(survivor.attributes)
    for key in record.snapshot.get("added_attributes", []):
        if key in attributes and attributes[key] == theirs["attributes"].get(key):
            attributes.pop(key)
    survivor.attributes = attributes
    survivor.save()
    _restore_fields(duplicate, theirs, None)
    duplicate.merged_into = None
    duplicate.save()

    record.undone_at = timezone.now()
    record.save(update_fields=["undone_at"])
    for contact in (survivor, duplicate):
        event_record(
            contact=contact,
            name="merge_undone",
            properties={
                "survivor_id": survivor.pk,
                "duplicate_id": duplicate.pk,
                "merge_id": record.pk,
            },
        )
    _audit(
        actor=actor,
        action="contact.merge_undo",
        contact=survivor,
        details={"duplicate_id": duplicate.pk, "merge_id": record.pk},
    )
    return duplicate
