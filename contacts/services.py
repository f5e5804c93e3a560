import datetime as dt
import re
import uuid
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any

from django.contrib.auth.models import AbstractBaseUser
from django.core.exceptions import ValidationError
from django.core.validators import validate_email
from django.db import IntegrityError, transaction
from django.utils import timezone

from contacts.models import (
    Contact,
    ContactTag,
    Event,
    Gender,
    Identity,
    IdentityKind,
    Stage,
    Tag,
    TagSource,
)
from contacts.signals import contact_changed, events_recorded
from core.errors import ValidationFailed

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
PHONE_RE = re.compile(r"^\+?\d{6,15}$")
CN_MOBILE_RE = re.compile(r"^1[3-9]\d{9}$")


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
    """Return a phone as E.164; bare 11-digit Chinese mobiles get +86."""
    value = re.sub(r"[\s\-()]", "", str(raw))
    if CN_MOBILE_RE.match(value):
        return f"+86{value}"
    if value.startswith("0086"):
        value = "+" + value[2:]
    if not PHONE_RE.match(value) or not value.startswith("+"):
        raise ValidationFailed(f"'{raw}' is not a valid phone number.", code="invalid_phone")
    return value


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
    for ident in identities:
        Identity.objects.get_or_create(
            kind=ident.kind, app_id=ident.app_id, value=ident.value, defaults={"contact": contact}
        )


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
    # exactly one win, and the loser retries and finds the winner's contact.
    for attempt in range(3):
        try:
            with transaction.atomic():
                return _identify_once(unique, columns, attributes, source)
        except IntegrityError:
            if attempt == 2:
                raise
    raise AssertionError("unreachable")


def _identify_once(
    identities: list[IdentityInput],
    columns: dict[str, Any],
    attributes: dict[str, Any],
    source: str,
) -> IdentifyResult:
    found = _find_identities(identities)
    contact_ids = sorted({row.contact_id for row in found})
    created = False
    conflicts: list[int] = []
    if contact_ids:
        # Several contacts: keep the oldest; merging them is a separate, reviewable step.
        contact = Contact.objects.select_for_update().get(pk=contact_ids[0])
        conflicts = contact_ids[1:]
    else:
        contact = Contact(source=columns.get("source", "") or source)
        created = True
    known = {(r.kind, r.app_id, r.value) for r in found}
    new = [i for i in identities if (i.kind, i.app_id, i.value) not in known]
    for key, value in columns.items():
        setattr(contact, key, value)
    if attributes:
        contact.attributes = {**contact.attributes, **attributes}
    contact.last_seen_at = timezone.now()
    contact.save()
    _attach_identities(contact, new)
    contact_id = contact.pk
    transaction.on_commit(lambda: contact_changed.send(sender=Contact, contact_ids=[contact_id]))
    return IdentifyResult(contact=contact, created=created, conflicts=conflicts)


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
    to_store: list[tuple[int, Event]] = []
    for index, item in candidates:
        if item.event_id in existing:
            outcomes[index] = EventOutcome(index, "duplicate", item.event_id)
            continue
        try:
            contact_id = _resolve_event_contact(item)
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


def _resolve_event_contact(item: EventInput) -> int:
    if item.contact_id is not None:
        if not Contact.objects.filter(pk=item.contact_id).exists():
            raise ValidationFailed(f"Contact {item.contact_id} does not exist.")
        return item.contact_id
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
