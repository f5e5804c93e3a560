"""Merging two contacts into one, and undoing it."""

import datetime as dt
import json
from typing import Any

from django.contrib.auth.models import AbstractBaseUser
from django.core.serializers.json import DjangoJSONEncoder
from django.db import transaction
from django.db.models import Q
from django.utils import timezone
from django.utils.translation import gettext as _

from contacts.models import (
    Consent,
    ConsentRecord,
    Contact,
    ContactTag,
    Event,
    Gender,
    Identity,
    MergeBlock,
    MergeRecord,
    Note,
)
from contacts.services.events import APPEND_BATCH, event_record
from contacts.services.retry import atomic_retrying_deadlocks
from contacts.signals import contact_merged, contact_unmerged
from core.errors import DomainError, NotFound
from core.models import AuditLog

# Fields the merge never copies from the duplicate (keys, bookkeeping, the merge link itself).
MERGE_SKIP_FIELDS = {"id", "created_at", "updated_at", "merged_into", "attributes"}
# Attempts of a merge or an undo that PostgreSQL keeps aborting as a deadlock victim. Both lock
# the two contacts, then (through contact_merged / contact_unmerged) the segments they are in,
# while a segment refresh holds its segment and takes a key-share lock on a contact with each
# membership or event it inserts: the cycle is broken by aborting one side, and once the
# merge's rollback lets the refresh finish, the next attempt waits for it instead.
MERGE_ATTEMPTS = 3


class MergeRefused(DomainError):
    code = "merge_refused"


class MergeContended(DomainError):
    """PostgreSQL aborted every attempt of a merge or an undo to break a deadlock with
    concurrent work on the same contacts; nothing was changed."""

    code = "merge_contended"


class _SnapshotEncoder(DjangoJSONEncoder):
    # DjangoJSONEncoder cuts datetimes to milliseconds; an undo must restore them exactly.
    def default(self, o: Any) -> Any:
        if isinstance(o, dt.datetime):
            return o.isoformat()
        return super().default(o)


def _contact_fields(contact: Contact) -> dict[str, Any]:
    values = {f.attname: getattr(contact, f.attname) for f in Contact._meta.concrete_fields}
    return json.loads(json.dumps(values, cls=_SnapshotEncoder))


def _is_blank(value: Any) -> bool:
    return value is None or value == "" or value == Gender.UNKNOWN


def merged_field_value(attname: str, mine: Any, theirs: Any) -> Any:
    """The value a merge leaves in the survivor's column `attname` (the merge preview shows the
    same): the first sighting is the earlier one, the last sightings the later ones, and an
    empty column takes the duplicate's value; otherwise the survivor keeps its own."""
    if attname == "first_seen_at" and mine and theirs:
        return min(mine, theirs)
    if attname in ("last_seen_at", "last_active_at") and mine and theirs:
        return max(mine, theirs)
    if _is_blank(mine) and not _is_blank(theirs):
        return theirs
    return mine


def _attribute_blank(value: Any) -> bool:
    # False and 0 are answers; an empty text, an empty choice list or null is not.
    return value is None or value == "" or value == []


def merged_attributes(mine: Any, theirs: Any) -> tuple[dict[str, Any], list[str]]:
    """The survivor's custom fields after a merge (the preview shows the same), and the keys it
    took from the duplicate: those it has no value for, as with the columns."""
    mine = mine if isinstance(mine, dict) else {}
    theirs = theirs if isinstance(theirs, dict) else {}
    taken = [
        key
        for key, value in theirs.items()
        if not _attribute_blank(value) and _attribute_blank(mine.get(key))
    ]
    return {**mine, **{key: theirs[key] for key in taken}}, taken


def _move(model: type, ids: list[int], contact: Contact) -> None:
    for start in range(0, len(ids), APPEND_BATCH):
        model.objects.filter(pk__in=ids[start : start + APPEND_BATCH]).update(contact=contact)


def _ids(qs) -> list[int]:
    return list(qs.order_by("pk").values_list("pk", flat=True))


def _audit(
    *,
    actor: AbstractBaseUser | None,
    action: str,
    contact: Contact,
    details: dict,
    ip: str | None = None,
) -> None:
    AuditLog.objects.create(
        actor=actor if actor is not None and actor.is_authenticated else None,
        action=action,
        object_type="contacts.contact",
        object_id=str(contact.pk),
        details=details,
        ip=ip,
    )


def contact_merge(
    *,
    survivor: Contact,
    duplicate: Contact,
    actor: AbstractBaseUser | None = None,
    reason: str = "manual",
    ip: str | None = None,
) -> MergeRecord:
    """Merge `duplicate` into `survivor`, recording what moved so that it can be undone.

    `ip` is the address an operator asked from (core.audit.request_ip), for the audit log."""
    return atomic_retrying_deadlocks(
        lambda: _merge(survivor=survivor, duplicate=duplicate, actor=actor, reason=reason, ip=ip),
        attempts=MERGE_ATTEMPTS,
        exhausted=lambda: MergeContended(
            _(
                "Other work on these contacts (a segment refresh, an import) kept getting in "
                "the way of the merge, so nothing was merged; try again in a moment."
            )
        ),
    )


def _merge(
    *,
    survivor: Contact,
    duplicate: Contact,
    actor: AbstractBaseUser | None,
    reason: str,
    ip: str | None,
) -> MergeRecord:
    if survivor.pk == duplicate.pk:
        raise MergeRefused(_("A contact cannot be merged into itself."))
    # Lock both rows in id order so that two merges of the same pair cannot deadlock.
    locked = {
        c.pk: c
        for c in Contact.objects.select_for_update()
        .filter(pk__in=[survivor.pk, duplicate.pk])
        .order_by("pk")
    }
    if len(locked) != 2:
        raise NotFound(_("Contact not found."))
    survivor, duplicate = locked[survivor.pk], locked[duplicate.pk]
    for contact in (survivor, duplicate):
        if contact.merged_into_id is not None:
            raise MergeRefused(
                _("Contact %(contact)s was already merged into %(into)s.")
                % {"contact": contact.pk, "into": contact.merged_into_id},
                code="already_merged",
            )
    if merge_blocked_with(contact_id=survivor.pk, others=[duplicate.pk]):
        raise MergeRefused(
            _(
                "Contacts %(survivor)s and %(duplicate)s are marked as not the same person; "
                "remove that mark before merging them."
            )
            % {"survivor": survivor.pk, "duplicate": duplicate.pk},
            code="merge_blocked",
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
        mine = getattr(survivor, f.attname)
        value = merged_field_value(f.attname, mine, getattr(duplicate, f.attname))
        if value != mine:
            setattr(survivor, f.attname, value)
            filled.append(f.attname)
    survivor.attributes, added_attributes = merged_attributes(
        survivor.attributes, duplicate.attributes
    )
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
        ip=ip,
    )
    return record


def _reference_exists(field: Any, value: Any) -> bool:
    # Locked (FOR NO KEY UPDATE: foreign key checks elsewhere still pass) so that the row cannot
    # be deleted between this check and the commit that points at it again.
    target = field.related_model._base_manager.select_for_update(no_key=True)
    return target.filter(**{field.target_field.attname: value}).exists()


def _restore_fields(contact: Contact, saved: dict[str, Any], fields: list[str] | None) -> list[str]:
    """Set the saved values back; return the references that could not be, their row gone.

    A store or owner deleted since the merge cannot be pointed at again: a nullable reference
    comes back empty, any other keeps the contact's current value.
    """
    missing: list[str] = []
    for f in Contact._meta.concrete_fields:
        if f.attname in ("id", "created_at", "updated_at", "merged_into_id"):
            continue
        if fields is not None and f.attname not in fields:
            continue
        value = f.to_python(saved.get(f.attname))
        if value is not None and f.many_to_one and not _reference_exists(f, value):
            missing.append(f.name)
            if not f.null:
                continue
            value = None
        setattr(contact, f.attname, value)
    return missing


def _consent_follow_records(contact: Contact) -> None:
    """Make each current consent state of `contact` that of its own latest record.

    After an undo each contact holds its own records again, plus those made on it since the
    merge: its state must follow them, never a snapshot from before a later withdrawal.
    """
    latest: dict[tuple[str, str], ConsentRecord] = {}
    for row in ConsentRecord.objects.filter(contact=contact).order_by("recorded_at", "pk"):
        latest[(row.channel, row.purpose)] = row
    for state in Consent.objects.filter(contact=contact):
        row = latest.pop((state.channel, state.purpose), None)
        if row is None:
            # A state that came with the other contact's records, which went back with them.
            state.delete()
        elif (state.record_id, state.granted, state.updated_at) != (
            row.pk,
            row.granted,
            row.recorded_at,
        ):
            Consent.objects.filter(pk=state.pk).update(
                granted=row.granted, updated_at=row.recorded_at, record=row
            )
    for (channel, purpose), row in latest.items():
        Consent.objects.create(
            contact=contact,
            channel=channel,
            purpose=purpose,
            granted=row.granted,
            updated_at=row.recorded_at,
            record=row,
        )


def contact_merge_undo(
    *, record: MergeRecord, actor: AbstractBaseUser | None = None, ip: str | None = None
) -> Contact:
    """Undo a merge: move every recorded row back and restore both contacts; return the
    restored duplicate."""
    return atomic_retrying_deadlocks(
        lambda: _merge_undo(record=record, actor=actor, ip=ip),
        attempts=MERGE_ATTEMPTS,
        exhausted=lambda: MergeContended(
            _(
                "Other work on these contacts (a segment refresh, an import) kept getting in "
                "the way of the undo, so the merge was not undone; try again in a moment."
            )
        ),
    )


def _merge_undo(*, record: MergeRecord, actor: AbstractBaseUser | None, ip: str | None) -> Contact:
    record = MergeRecord.objects.select_for_update().get(pk=record.pk)
    if record.undone_at is not None:
        raise MergeRefused(_("This merge was already undone."), code="already_undone")
    locked = {
        c.pk: c
        for c in Contact.objects.select_for_update()
        .filter(pk__in=[record.survivor_id, record.duplicate_id])
        .order_by("pk")
    }
    survivor, duplicate = locked[record.survivor_id], locked[record.duplicate_id]
    if survivor.merged_into_id is not None:
        raise MergeRefused(
            _("Contact %(contact)s was merged into %(into)s since; undo that merge first.")
            % {"contact": survivor.pk, "into": survivor.merged_into_id},
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
    # Not the replaced states from the merge's record ("contacts.consent_replaced"): a consent
    # withdrawn since the merge would be granted again.
    for contact in (survivor, duplicate):
        _consent_follow_records(contact)

    # The survivor gets back only what the merge filled in and nobody changed since.
    before, theirs = record.snapshot["survivor"], record.snapshot["duplicate"]
    survivor_now = _contact_fields(survivor)
    refill = [
        name
        for name in record.snapshot.get("filled", [])
        if survivor_now.get(name) == theirs.get(name)
    ]
    missing = _restore_fields(survivor, before, refill)
    attributes, had = dict(survivor.attributes), before.get("attributes") or {}
    for key in record.snapshot.get("added_attributes", []):
        if key in attributes and attributes[key] == theirs["attributes"].get(key):
            # Back to what the survivor had: no key, or its empty value.
            if key in had:
                attributes[key] = had[key]
            else:
                attributes.pop(key)
    survivor.attributes = attributes
    survivor.save()
    missing_on_duplicate = _restore_fields(duplicate, theirs, None)
    duplicate.merged_into = None
    duplicate.save()

    record.undone_at = timezone.now()
    record.save(update_fields=["undone_at"])
    # Otherwise the next identify carrying the same strong identities merges them again.
    merge_block_add(contact=survivor, other=duplicate, actor=actor, reason="merge undone", ip=ip)
    # References whose row was deleted since the merge (a store, an owner), per contact.
    not_restored = {
        str(contact.pk): fields
        for contact, fields in ((survivor, missing), (duplicate, missing_on_duplicate))
        if fields
    }
    for contact in (survivor, duplicate):
        properties = {
            "survivor_id": survivor.pk,
            "duplicate_id": duplicate.pk,
            "merge_id": record.pk,
        }
        if not_restored.get(str(contact.pk)):
            properties["not_restored"] = not_restored[str(contact.pk)]
        event_record(contact=contact, name="merge_undone", properties=properties)
    details: dict[str, Any] = {"duplicate_id": duplicate.pk, "merge_id": record.pk}
    if not_restored:
        details["not_restored"] = not_restored
    _audit(actor=actor, action="contact.merge_undo", contact=survivor, details=details, ip=ip)
    return duplicate


# --- Never-merge pairs -----------------------------------------------------------------------


def _pair(a: int, b: int) -> tuple[int, int]:
    return (a, b) if a < b else (b, a)


def merge_blocked_with(*, contact_id: int, others: list[int]) -> set[int]:
    """The contacts among `others` declared distinct from `contact_id`."""
    others = [pk for pk in others if pk != contact_id]
    if not others:
        return set()
    rows = MergeBlock.objects.filter(
        Q(low_id=contact_id, high_id__in=others) | Q(high_id=contact_id, low_id__in=others)
    ).values_list("low_id", "high_id")
    return {high if low == contact_id else low for low, high in rows}


@transaction.atomic
def merge_block_add(
    *,
    contact: Contact,
    other: Contact,
    actor: AbstractBaseUser | None = None,
    reason: str = "manual",
    ip: str | None = None,
) -> MergeBlock:
    """Declare two contacts different people, so that nothing merges them (idempotent)."""
    if contact.pk == other.pk:
        raise MergeRefused(_("A contact is always the same person as itself."), code="same_contact")
    low, high = _pair(contact.pk, other.pk)
    block, created = MergeBlock.objects.get_or_create(
        low_id=low,
        high_id=high,
        defaults={
            "reason": reason[:100],
            "actor": actor if actor is not None and actor.is_authenticated else None,
        },
    )
    if created:
        _audit(
            actor=actor,
            action="contact.merge_block",
            contact=contact,
            details={"other_id": other.pk, "reason": block.reason},
            ip=ip,
        )
    return block


@transaction.atomic
def merge_block_remove(
    *,
    contact: Contact,
    other: Contact,
    actor: AbstractBaseUser | None = None,
    ip: str | None = None,
) -> bool:
    """Allow two contacts declared distinct to be merged again; False when they were not."""
    low, high = _pair(contact.pk, other.pk)
    deleted, _by_model = MergeBlock.objects.filter(low_id=low, high_id=high).delete()
    if deleted:
        _audit(
            actor=actor,
            action="contact.merge_unblock",
            contact=contact,
            details={"other_id": other.pk},
            ip=ip,
        )
    return bool(deleted)
