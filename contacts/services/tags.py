"""Tagging contacts."""

import datetime as dt
from typing import Any

from django.contrib.auth.models import AbstractBaseUser
from django.db import transaction
from django.utils import timezone
from django.utils.translation import gettext as _

from contacts.models import (
    Contact,
    ContactTag,
    Tag,
    TagSource,
)
from contacts.services.events import event_record, events_append
from contacts.services.locking import contact_lock_survivor, contacts_lock_existing
from contacts.signals import contact_changed
from core.errors import ValidationFailed
from core.ids import parse_id
from core.sql import contains_nul, insert_new


def tag_expiry_check(*, expires_at: dt.datetime | None) -> dt.datetime | None:
    """Return an aware expiry, refusing one that is not in the future."""
    if expires_at is None:
        return None
    if timezone.is_naive(expires_at):
        expires_at = timezone.make_aware(expires_at)
    if expires_at <= timezone.now():
        raise ValidationFailed(
            _("The tag's expiry must be in the future."),
            code="invalid_expiry",
            details={"field": "expires_at"},
        )
    return expires_at


def _tag_assign(
    *,
    contact: Contact,
    tag: Tag,
    actor: AbstractBaseUser | None,
    source: str,
    expires_at: dt.datetime | None,
) -> bool:
    """Give `contact` the tag, or set the expiry of the one it has; True when it is new.

    Never a read then a write: the expiry task may be deleting the row read (its batch locks
    and deletes, then commits after its events), and an update of it would then change nothing
    and answer "already had it" for a tag gone. The insert skips a row another transaction
    holds (ON CONFLICT DO NOTHING), and waits for one being deleted: gone at its commit, the
    tag is inserted anew (a new tag, as the expiry wrote tag_removed). A row found is locked
    before its expiry changes, and if the expiry task deleted it in between, inserted again.
    """
    while True:
        if insert_new(
            ContactTag,
            [
                {
                    "contact_id": contact.pk,
                    "tag_id": tag.pk,
                    "source": source,
                    "actor_id": actor.pk if actor is not None else None,
                    "expires_at": expires_at,
                }
            ],
            returning="id",
        ):
            return True
        row = (
            ContactTag.objects.select_for_update(of=("self",))
            .filter(contact=contact, tag=tag)
            .values("pk", "expires_at", "source")
            .first()
        )
        if row is None:
            continue  # deleted (by the expiry task, an untagging) since the insert looked
        # A tag an auto-tag rule keeps belongs to its segment: an expiry would take it off a
        # member that the rule (which tags on entry only) would never give back.
        if (
            expires_at is not None
            and row["expires_at"] != expires_at
            and row["source"] != TagSource.RULE
        ):
            ContactTag.objects.filter(pk=row["pk"]).update(expires_at=expires_at)
        return False


@transaction.atomic
def contact_tag_add(
    *,
    contact: Contact,
    tag: Tag,
    actor: AbstractBaseUser | None = None,
    source: str = TagSource.MANUAL,
    expires_at: dt.datetime | None = None,
) -> bool:
    """Tag a contact; return False when it already had the tag.

    With `expires_at` the tag is removed then (by the expiry task); re-adding a tag the contact
    has sets its expiry to the new one. Without it an existing tag's expiry is left as it is.
    A merged contact's tag goes to the contact that absorbed it.
    """
    expires_at = tag_expiry_check(expires_at=expires_at)
    # KEY SHARE, what the assignment's foreign-key check takes anyway: it waits for a merge of
    # the contact (a tag put on the hidden duplicate would be lost), not for other writers.
    contact = contact_lock_survivor(contact=contact, lock="key_share")
    created = _tag_assign(
        contact=contact, tag=tag, actor=actor, source=source, expires_at=expires_at
    )
    if created:
        properties = {"tag_id": tag.pk, "tag": str(tag), "source": source}
        if expires_at is not None:
            properties["expires_at"] = expires_at.isoformat()
        event_record(contact=contact, name="tag_added", properties=properties)
        contact_id = contact.pk
        transaction.on_commit(
            lambda: contact_changed.send(
                sender=Contact, contact_ids=[contact_id], changed=["tags"]
            ),
            robust=True,
        )
    return created


@transaction.atomic
def contact_tag_remove(
    *, contact: Contact, tag: Tag, actor: AbstractBaseUser | None = None
) -> bool:
    """Remove a tag from a contact; return False when it did not have it.

    A merged contact's tag comes off the contact that absorbed it (where the merge moved it).
    """
    contact = contact_lock_survivor(contact=contact, lock="key_share")
    deleted, _by_model = ContactTag.objects.filter(contact=contact, tag=tag).delete()
    if deleted:
        event_record(
            contact=contact,
            name="tag_removed",
            properties={"tag_id": tag.pk, "tag": str(tag)},
        )
        contact_id = contact.pk
        transaction.on_commit(
            lambda: contact_changed.send(
                sender=Contact, contact_ids=[contact_id], changed=["tags"]
            ),
            robust=True,
        )
    return bool(deleted)


@transaction.atomic
def tag_delete(*, tag: Tag) -> int:
    """Delete a tag; return how many contacts lost it.

    Its assignments go with it like any untagging: written to each contact's timeline (reason
    "tag_deleted") and signalled as a tag change. A tag that another app protects (a segment
    rule reads it, an auto-tag rule keeps it) raises ProtectedError and nothing changes.
    """
    label, tag_id = str(tag), tag.pk
    contact_ids = list(ContactTag.objects.filter(tag=tag).values_list("contact_id", flat=True))
    tag.delete()
    events_append(
        contact_ids=contact_ids,
        name="tag_removed",
        properties={"tag_id": tag_id, "tag": label, "reason": "tag_deleted"},
        occurred_at=timezone.now(),
    )
    if contact_ids:
        transaction.on_commit(
            lambda: contact_changed.send(sender=Contact, contact_ids=contact_ids, changed=["tags"]),
            robust=True,
        )
    return len(contact_ids)


def tag_ref_split(ref: str) -> tuple[str, str] | None:
    """The (group, name) a "group/name" reference names; None for a plain name (no "/").

    Split at the first "/": "导入/a/b" is the tag "a/b" of the group 导入.
    """
    if "/" not in ref:
        return None
    group, _slash, name = ref.strip().partition("/")
    return group.strip(), name.strip()


def tags_resolve(*, refs: list[Any]) -> list[Tag]:
    """Find tags by id or by "group/name"; every reference must exist."""
    tags: list[Tag] = []
    for ref in refs:
        if contains_nul(ref):
            raise ValidationFailed(
                _("A tag must not contain the NUL character."),
                code="invalid_tag",
                details={"tag": ref},
            )
        tag = None
        tag_id = parse_id(ref)
        if tag_id is not None:
            tag = Tag.objects.select_related("group").filter(pk=tag_id).first()
        elif isinstance(ref, str) and (path := tag_ref_split(ref)) is not None:
            group, name = path
            tag = Tag.objects.select_related("group").filter(group__name=group, name=name).first()
        if tag is None:
            raise ValidationFailed(
                _("Unknown tag '%(tag)s': give a tag id or \"group/name\" of an existing tag.")
                % {"tag": ref},
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
    expires_at: dt.datetime | None = None,
) -> list[Tag]:
    """Tag a contact with several tags at once; return the tags it did not have yet."""
    return [
        tag
        for tag in tags
        if contact_tag_add(
            contact=contact, tag=tag, actor=actor, source=source, expires_at=expires_at
        )
    ]


EXPIRE_BATCH = 1000


def contact_tags_expire(*, now: dt.datetime | None = None) -> int:
    """Remove tag assignments whose expiry has passed; return how many were removed.

    Each removal is written to the timeline (reason "expired") and the contacts are signalled
    as changed, like any other untagging. Batched, one transaction per batch.
    """
    now = now or timezone.now()
    total = 0
    after = 0
    while True:
        with transaction.atomic():
            seen = list(
                ContactTag.objects.filter(expires_at__lte=now, pk__gt=after)
                .order_by("pk")
                .values_list("pk", "contact_id")[:EXPIRE_BATCH]
            )
            if not seen:
                return total
            # Past this batch whatever happens to it: a row skipped below (held by a tagging,
            # its contact being erased) is not read again until the next run.
            after = seen[-1][0]
            # The contacts before their tag rows, as an erasure and contact_tag_add lock them:
            # holding the rows, the batch's tag_removed events would wait at commit (their
            # foreign-key checks) for an erasure of one of those contacts, which waits for the
            # rows. A contact erased meanwhile is gone, and its tags with it.
            there = set(contacts_lock_existing(contact_ids={c for _pk, c in seen}))
            due = list(
                # Only the assignments: locking their tags too would block every tagging with
                # those tags for the length of the batch.
                ContactTag.objects.select_for_update(skip_locked=True, of=("self",))
                # A row a merge moved since to a contact not locked here waits for the next run.
                .filter(
                    pk__in=[pk for pk, c in seen if c in there],
                    contact_id__in=there,
                    expires_at__lte=now,
                )
                .select_related("tag__group")
                .order_by("pk")
            )
            if not due:
                continue
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
                ),
                robust=True,
            )
        total += len(due)
