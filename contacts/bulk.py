"""Bulk tag and untag of many contacts: inline for small sets, a background job for large ones."""

import datetime as dt
import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from django.contrib.auth.models import AbstractBaseUser
from django.db import transaction
from django.db.models import QuerySet
from django.http import QueryDict
from django.utils import timezone
from django.utils.dateparse import parse_datetime
from django.utils.translation import gettext as _

from contacts.filters import contact_filter_checked
from contacts.models import Contact, ContactTag, Tag, TagSource
from contacts.selectors import contact_visible_to
from contacts.services import events_append
from contacts.services.locking import contacts_lock_live
from contacts.services.tags import tag_expiry_check
from contacts.signals import contact_changed
from core import jobs
from core.models import Job
from core.sql import delete_returning, insert_new

logger = logging.getLogger(__name__)

JOB_KIND = "contacts.bulk_tag"
# Up to this many contacts the request does the work itself (well under a second on SQLite).
INLINE_LIMIT = 500
# Contacts per transaction: 1,000 keeps each batch (insert or delete returning who changed, append
# events) around 0.1 s on SQLite and PostgreSQL and well under SQLite's parameter limit.
BATCH_SIZE = 1000
# Batches per task run before the task re-enqueues itself, so a worker restart loses little.
BATCHES_PER_RUN = 50


@dataclass
class BulkTagResult:
    processed: int = 0
    changed: int = 0  # contacts that gained (or lost) the tag
    # Contacts that had the tag already and whose expiry was replaced by the one given: not
    # "changed" (no event, no segment re-evaluation), yet the operator must hear of them.
    expiry_moved: int = 0
    cursor: int = 0
    finished: bool = False


@dataclass
class BulkTagStart:
    """What `contacts_bulk_tag_start` did: ran inline (`result`) or queued a job (`job`)."""

    result: BulkTagResult | None = None
    job: Job | None = None


def _query_dict(params: dict[str, list[str]] | None) -> QueryDict:
    query = QueryDict(mutable=True)
    for key, values in (params or {}).items():
        query.setlist(key, [str(v) for v in values])
    return query


def bulk_target(
    *,
    actor: AbstractBaseUser,
    contact_ids: list[int] | None = None,
    filter_params: dict[str, list[str]] | None = None,
) -> QuerySet[Contact]:
    """The contacts a bulk action touches: chosen ids or the list filter, within visibility."""
    visible = contact_visible_to(user=actor)
    if contact_ids is not None:
        return visible.filter(pk__in=contact_ids)
    # Checked again for every batch: a tag deleted since the action started must fail the job,
    # not widen it to every visible contact.
    return contact_filter_checked(data=_query_dict(filter_params), queryset=visible, user=actor).qs


def _tag_batch(
    *,
    ids: list[int],
    tag: Tag,
    add: bool,
    actor: AbstractBaseUser | None,
    expires_at: dt.datetime | None = None,
) -> tuple[list[int], int]:
    """Add or remove `tag` for one batch of contact ids; return the ids that gained or lost it
    and how many rows already there had their expiry moved.

    With `expires_at` (adding only) new rows get that expiry and rows already there have theirs
    replaced, as contact_tag_add does; an expiry change alone does not count as a change.
    """
    now = timezone.now()
    moved = 0
    with transaction.atomic():
        # The batch's ids were read without a lock: a contact erased since is skipped here
        # rather than failing the batch (and the job) at commit, and one being erased waits
        # for the batch or the batch for it. Untagging locks too: it writes tag_removed events,
        # whose foreign-key checks at commit would otherwise wait on an erasure that waits on
        # the tag rows this batch deleted (a deadlock).
        ids = contacts_lock_live(contact_ids=ids)
        # Who changed is what this transaction's own statement inserted or deleted: a read
        # before it would be stale once a concurrent copy of the same action (a double submit,
        # a retry) or a single tag add committed first, and both would count and record every
        # contact. The statements wait for each other's rows, and each row goes to one of them.
        if add:
            changed = insert_new(
                ContactTag,
                [
                    {
                        "contact_id": pk,
                        "tag": tag,
                        "source": TagSource.MANUAL,
                        "actor": actor,
                        "created_at": now,
                        "expires_at": expires_at,
                    }
                    # In id order, as every batch: two never wait for each other's rows crosswise.
                    for pk in sorted(ids)
                ],
                returning="contact",
            )
            if expires_at is not None:
                # Rows already there (or won by a concurrent add) take the new expiry too.
                # Except rule-kept tags: see contact_tag_add.
                moved = (
                    ContactTag.objects.filter(tag=tag, contact_id__in=ids)
                    .exclude(expires_at=expires_at)
                    .exclude(source=TagSource.RULE)
                    .update(expires_at=expires_at)
                )
        else:
            changed = delete_returning(
                ContactTag.objects.filter(tag=tag, contact_id__in=ids), returning="contact"
            )
        changed = sorted(changed)
        if changed:
            properties: dict[str, Any] = {
                "tag_id": tag.pk,
                "tag": str(tag),
                "source": TagSource.MANUAL,
                "bulk": True,
            }
            if add and expires_at is not None:
                properties["expires_at"] = expires_at.isoformat()
            events_append(
                contact_ids=changed,
                name="tag_added" if add else "tag_removed",
                properties=properties,
                occurred_at=now,
            )
            transaction.on_commit(
                lambda: contact_changed.send(
                    sender=Contact, contact_ids=list(changed), changed=["tags"]
                ),
                robust=True,
            )
    return changed, moved


def contacts_bulk_tag(
    *,
    tag: Tag,
    add: bool,
    actor: AbstractBaseUser,
    contact_ids: list[int] | None = None,
    filter_params: dict[str, list[str]] | None = None,
    after: int = 0,
    max_batches: int | None = None,
    on_batch: Callable[[BulkTagResult], None] | None = None,
    expires_at: dt.datetime | None = None,
) -> BulkTagResult:
    """Add (or remove) `tag` on the chosen contacts in id batches; safe to run again.

    `expires_at` (adding only; ignored when removing) is taken as given: contacts_bulk_tag_start
    checks that it is in the future, and a resumed job must not refuse it later.
    """
    if not add:
        expires_at = None
    qs = bulk_target(actor=actor, contact_ids=contact_ids, filter_params=filter_params)
    result = BulkTagResult(cursor=after)
    batches = 0
    while max_batches is None or batches < max_batches:
        ids = list(
            qs.filter(pk__gt=result.cursor)
            .order_by("pk")
            .values_list("pk", flat=True)
            .distinct()[:BATCH_SIZE]
        )
        if not ids:
            result.finished = True
            break
        changed, moved = _tag_batch(ids=ids, tag=tag, add=add, actor=actor, expires_at=expires_at)
        result.processed += len(ids)
        result.changed += len(changed)
        result.expiry_moved += moved
        result.cursor = ids[-1]
        batches += 1
        if on_batch:
            on_batch(result)
        if len(ids) < BATCH_SIZE:
            result.finished = True
            break
    return result


def contacts_bulk_tag_start(
    *,
    tag: Tag,
    add: bool,
    actor: AbstractBaseUser,
    contact_ids: list[int] | None = None,
    filter_params: dict[str, list[str]] | None = None,
    expires_at: dt.datetime | None = None,
    list_filter: dict[str, list[str]] | None = None,
) -> BulkTagStart:
    """Tag or untag now when the set is small, else queue a background job and return it.

    `expires_at` gives added tags an expiry (it must be in the future); untagging ignores it.
    `list_filter` is the contact list's filter the action was started from, kept with a job
    only for the job page's way back to that list (ticked ids ignore it).
    """
    expires_at = tag_expiry_check(expires_at=expires_at) if add else None
    qs = bulk_target(actor=actor, contact_ids=contact_ids, filter_params=filter_params)
    if qs[: INLINE_LIMIT + 1].count() <= INLINE_LIMIT:
        return BulkTagStart(
            result=contacts_bulk_tag(
                tag=tag,
                add=add,
                actor=actor,
                contact_ids=contact_ids,
                filter_params=filter_params,
                expires_at=expires_at,
            )
        )
    params: dict[str, Any] = {
        "tag_id": tag.pk,
        "tag": str(tag),
        "add": add,
        "contact_ids": contact_ids,
        "filter_params": filter_params,
        "expires_at": expires_at.isoformat() if expires_at is not None else None,
        "list_filter": list_filter or {},
    }
    job = jobs.job_create(kind=JOB_KIND, created_by=actor, params=params, total=qs.count())
    transaction.on_commit(lambda: _enqueue(job.pk))
    return BulkTagStart(job=job)


def _enqueue(job_id: int) -> None:
    from contacts import tasks  # tasks imports this module

    tasks.bulk_tag.delay(job_id)


def bulk_tag_job_run(*, job_id: int) -> None:
    """Advance a bulk-tag job by up to BATCHES_PER_RUN batches, then re-enqueue it; idempotent."""
    resumed = jobs.job_resume(job_id=job_id, kind=JOB_KIND)
    if resumed is None:
        return
    job, cursor, done_before, changed_before = resumed
    moved_before = int(job.result.get("expiry_moved", 0))
    params = job.params
    tag = Tag.objects.filter(pk=params.get("tag_id")).first()
    actor = job.created_by
    expires_at = parse_datetime(params["expires_at"]) if params.get("expires_at") else None
    if tag is None or actor is None:
        jobs.job_fail(job_id=job.pk, error=_("The tag or the user who started the job is gone."))
        return
    try:
        result = contacts_bulk_tag(
            tag=tag,
            add=bool(params.get("add")),
            actor=actor,
            contact_ids=params.get("contact_ids"),
            filter_params=params.get("filter_params"),
            after=cursor,
            max_batches=BATCHES_PER_RUN,
            expires_at=expires_at,
            on_batch=lambda r: jobs.job_progress(job_id=job.pk, done=done_before + r.processed),
        )
    except Exception as exc:
        logger.exception("bulk tag job %s failed", job.pk)
        jobs.job_fail(job_id=job.pk, error=str(exc) or exc.__class__.__name__)
        return
    summary = {
        "cursor": result.cursor,
        "processed": done_before + result.processed,
        "changed": changed_before + result.changed,
        "expiry_moved": moved_before + result.expiry_moved,
    }
    if result.finished:
        jobs.job_finish(job_id=job.pk, result=summary)
    else:
        Job.objects.filter(pk=job.pk).update(result=summary)
        _enqueue(job.pk)
