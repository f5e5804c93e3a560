"""Reads for a person's data-subject requests (PIPL): a copy of everything stored about them
(art. 45), and the log of the erasures done at their request (art. 47).

The copy is for the person themselves, so nothing is masked. It covers the contact the request
names (followed to the contact it was merged into), every contact merged into that one (their
rows are kept for undo, so they are the same person's data), and the sections the higher apps
return through `contacts.signals.contact_data_requested`.

Staff members named on the rows (the owner, who tagged, wrote a note, recorded a consent) are
left out: that is the staff member's data, not the person's; the store is kept.
"""

import datetime as dt
import decimal
import json
import uuid
from collections.abc import Iterator
from typing import Any

from django.db.models import Q, QuerySet
from django.utils import timezone
from django.utils.translation import gettext as _

from contacts.models import (
    Consent,
    ConsentRecord,
    Contact,
    ContactTag,
    CustomField,
    Erasure,
    Event,
    Identity,
    MergeBlock,
    MergeRecord,
    Note,
)
from contacts.selectors import contact_family_ids, contact_follow_merges
from contacts.signals import contact_data_requested
from core.errors import NotFound

FORMAT = "scrm.personal_data"
FORMAT_VERSION = 1
# Events read per round trip: a person has at most some thousands, each a few hundred bytes.
EVENT_CHUNK = 2000
# Columns shown by a readable value rather than the id the row stores.
_RELATED_COLUMNS = {"owner", "store", "lifecycle_stage", "merged_into"}
Section = list[dict[str, Any]]


def contact_family(*, contact: Contact) -> list[int]:
    """The ids of `contact` (followed through merges) and of every contact merged into it,
    directly or through another merged contact, in id order."""
    return contact_family_ids(contact_id=_survivor(contact).pk)


def contact_personal_data(*, contact: Contact) -> dict:
    """Everything stored about the person `contact` is, as JSON-serialisable data.

    Raises NotFound when the contact is gone (erased since it was loaded)."""
    survivor = _survivor(contact)
    family = contact_family_ids(contact_id=survivor.pk)
    sections: dict[str, Section] = {
        "contacts.profile": _profiles(family),
        "contacts.custom_fields": _custom_fields(family),
        "contacts.identities": _identities(family),
        "contacts.tags": _tags(family),
        "contacts.events": list(_events(family)),
        "contacts.notes": _notes(family),
        "contacts.consents": _consents(family),
        "contacts.consent_records": _consent_records(family),
        "contacts.merges": _merges(family),
        "contacts.merge_blocks": _merge_blocks(family),
    }
    for _receiver, answer in contact_data_requested.send(sender=Contact, contact_ids=family):
        for name, rows in (answer or {}).items():
            # Two receivers naming the same section both keep their rows.
            sections.setdefault(name, []).extend(rows)
    return _plain(
        {
            "format": FORMAT,
            "version": FORMAT_VERSION,
            "generated_at": timezone.now(),
            "contact_id": survivor.pk,
            "contact_ids": family,
            "sections": dict(sorted(sections.items())),
        }
    )


def personal_data_file(data: dict) -> bytes:
    """`data` (from contact_personal_data) as the body of a downloadable JSON file."""
    return json.dumps(data, ensure_ascii=False, indent=2).encode("utf-8")


def personal_data_filename(data: dict) -> str:
    """A file name for `data` that names the contact and the day, not the person."""
    day = str(data["generated_at"])[:10]
    return f"personal-data-{data['contact_id']}-{day}.json"


def erasures_recorded() -> QuerySet[Erasure]:
    """The erasures done so far, for the log (no personal data in them)."""
    return Erasure.objects.select_related("actor").prefetch_related("contacts")


def _survivor(contact: Contact) -> Contact:
    # From the row as it is now: the instance may predate a merge of it.
    current = Contact.objects.filter(pk=contact.pk).first()
    if current is None:
        raise NotFound(_("Contact not found."))
    return contact_follow_merges(contact=current)


def _profiles(family: list[int]) -> Section:
    fields = [f for f in Contact._meta.concrete_fields if f.name not in _RELATED_COLUMNS]
    rows = []
    for contact in Contact.objects.filter(pk__in=family).select_related("store").order_by("pk"):
        row = {field.name: field.value_from_object(contact) for field in fields}
        row.pop("attributes")  # in contacts.custom_fields, with the fields' labels
        row["lifecycle_stage"] = contact.lifecycle_stage_id
        row["store"] = contact.store.name if contact.store else None
        row["merged_into"] = contact.merged_into_id
        rows.append(row)
    return rows


def _custom_fields(family: list[int]) -> Section:
    fields = {f.key: f for f in CustomField.objects.all()}
    rows = []
    for contact_id, attributes in (
        Contact.objects.filter(pk__in=family).order_by("pk").values_list("pk", "attributes")
    ):
        if not isinstance(attributes, dict):
            continue
        for key in sorted(attributes):
            field = fields.get(key)
            rows.append(
                {
                    "contact_id": contact_id,
                    "key": key,
                    # Traits without a defined field (sent by the mini-program) have no label.
                    "label": field.label if field else key,
                    "type": field.kind if field else None,
                    "value": attributes[key],
                }
            )
    return rows


def _identities(family: list[int]) -> Section:
    return list(
        Identity.objects.filter(contact_id__in=family)
        .order_by("contact_id", "kind", "pk")
        .values("contact_id", "kind", "app_id", "value", "created_at")
    )


def _tags(family: list[int]) -> Section:
    return [
        {
            "contact_id": ct.contact_id,
            "group": ct.tag.group.name,
            "name": ct.tag.name,
            "source": ct.source,
            "tagged_at": ct.created_at,
            "expires_at": ct.expires_at,
        }
        for ct in ContactTag.objects.filter(contact_id__in=family)
        .select_related("tag__group")
        .order_by("contact_id", "tag__group__name", "tag__name")
    ]


def _events(family: list[int]) -> Iterator[dict]:
    rows = (
        Event.objects.filter(contact_id__in=family)
        .order_by("occurred_at", "pk")
        .values(
            "contact_id",
            "event_id",
            "name",
            "occurred_at",
            "received_at",
            "properties",
            "value",
            "source",
        )
    )
    yield from rows.iterator(chunk_size=EVENT_CHUNK)


def _notes(family: list[int]) -> Section:
    return list(
        Note.objects.filter(contact_id__in=family)
        .order_by("created_at", "pk")
        .values("contact_id", "body", "created_at", "follow_up_at", "done_at")
    )


def _consents(family: list[int]) -> Section:
    return list(
        Consent.objects.filter(contact_id__in=family)
        .order_by("contact_id", "channel", "purpose")
        .values("contact_id", "channel", "purpose", "granted", "updated_at")
    )


def _consent_records(family: list[int]) -> Section:
    return list(
        ConsentRecord.objects.filter(contact_id__in=family)
        .order_by("recorded_at", "pk")
        .values(
            "contact_id",
            "channel",
            "purpose",
            "granted",
            "source",
            "notice_version",
            "evidence",
            "recorded_at",
        )
    )


def _merges(family: list[int]) -> Section:
    # Ids only, not the snapshots: a merge that was undone joined someone else, whose values
    # its snapshot holds as well.
    return list(
        MergeRecord.objects.filter(Q(survivor_id__in=family) | Q(duplicate_id__in=family))
        .order_by("created_at", "pk")
        .values("survivor_id", "duplicate_id", "reason", "created_at", "undone_at")
    )


def _merge_blocks(family: list[int]) -> Section:
    return list(
        MergeBlock.objects.filter(Q(low_id__in=family) | Q(high_id__in=family))
        .order_by("created_at", "pk")
        .values("low_id", "high_id", "reason", "created_at")
    )


def _plain(value: Any) -> Any:
    """`value` with datetimes as ISO 8601 text and decimals and UUIDs as text, recursively."""
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if isinstance(value, (dt.datetime, dt.date, dt.time)):
        return value.isoformat()
    if isinstance(value, (decimal.Decimal, uuid.UUID)):
        return str(value)
    if isinstance(value, dt.timedelta):
        return value.total_seconds()
    return value
