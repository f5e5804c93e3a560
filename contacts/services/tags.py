"""Tagging contacts."""

import datetime as dt
from typing import Any

from django.contrib.auth.models import AbstractBaseUser
from django.db import transaction
from django.utils import timezone

from contacts.models import (
    Contact,
    ContactTag,
    Tag,
    TagSource,
)
from contacts.services.events import event_record, events_append
from contacts.signals import contact_changed
from core.errors import ValidationFailed


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
            lambda: contact_changed.send(sender=Contact, contact_ids=[contact.pk], changed=["tags"])
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
            lambda: contact_changed.send(sender=Contact, contact_ids=[contact.pk], changed=["tags"])
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


EXPIRE_BATCH = 1000


def contact_tags_expire(*, now: dt.datetime | None = None) -> int:
    """Remove tag assignments whose expiry has passed; return how many were removed.

    Each removal is written to the timeline (reason "expired") and the contacts are signalled
    as changed, like any other untagging. Batched, one transaction per batch.
    """
    now = now or timezone.now()
    total = 0
    while True:
        with transaction.atomic():
            due = list(
                ContactTag.objects.select_for_update(skip_locked=True)
                .filter(expires_at__lte=now)
                .select_related("tag__group")
                .order_by("pk")[:EXPIRE_BATCH]
            )
            if not due:
                return total
            ContactTag.objects.filter(pk__in=[row.pk for row in due]).delete()
            by_tag: dict[int, tuple[Tag, list[int]]] = {}
            for row in due:
                by_tag.setdefault(row.tag_id, (row.tag, []))[1].append(row.contact_id)
            for tag, contact_ids in by_tag.values():
                events_append(
                    contact_ids=contact_ids,
                    name="tag_removed",
                    properties={"tag_id": tag.pk, "tag": str(tag), "reason": "expired"},
                    occurred_at=now,
                )
            changed = sorted({row.contact_id for row in due})
            transaction.on_commit(
                lambda ids=changed: contact_changed.send(
                    sender=Contact, contact_ids=ids, changed=["tags"]
                )
            )
        total += len(due)
