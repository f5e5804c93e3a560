"""Bookkeeping for background jobs (imports, exports, bulk actions) whose progress the UI polls."""

import datetime as dt
from collections.abc import Callable
from typing import Any, TypeVar

from django.contrib.auth.models import AbstractBaseUser
from django.db import connection, transaction
from django.db.models import F, QuerySet
from django.utils import timezone

from core.ids import parse_id
from core.models import Job, JobStatus

T = TypeVar("T")


def job_create(
    *,
    kind: str,
    created_by: AbstractBaseUser | None = None,
    params: dict[str, Any] | None = None,
    input_file: str = "",
    total: int = 0,
) -> Job:
    """Create a queued job."""
    return Job.objects.create(
        kind=kind,
        created_by=created_by,
        params=params or {},
        input_file=input_file,
        total=total,
    )


def job_start(*, job_id: int, total: int | None = None) -> None:
    """Mark a job running (again, after a redelivery) and reset its progress."""
    values: dict[str, Any] = {
        "status": JobStatus.RUNNING,
        "started_at": timezone.now(),
        "done": 0,
        "error": "",
    }
    if total is not None:
        values["total"] = total
    Job.objects.filter(pk=job_id).update(**values)


def job_progress(*, job_id: int, done: int, total: int | None = None) -> None:
    """Record how far a job got; one UPDATE, no read, so workers can call it per batch."""
    values: dict[str, Any] = {"done": done}
    if total is not None:
        values["total"] = total
    Job.objects.filter(pk=job_id).update(**values)


def job_advance(*, job_id: int, by: int) -> None:
    """Add `by` to a job's done counter."""
    Job.objects.filter(pk=job_id).update(done=F("done") + by)


def job_finish(*, job_id: int, result: dict[str, Any], output_file: str = "") -> None:
    """Mark a job succeeded with its result (counts, file)."""
    values: dict[str, Any] = {
        "status": JobStatus.SUCCEEDED,
        "result": result,
        "finished_at": timezone.now(),
    }
    if output_file:
        values["output_file"] = output_file
    Job.objects.filter(pk=job_id).update(**values)


def job_fail(*, job_id: int, error: str, result: dict[str, Any] | None = None) -> None:
    """Mark a job failed with an error an operator can read."""
    values: dict[str, Any] = {
        "status": JobStatus.FAILED,
        "error": error[:2000],
        "finished_at": timezone.now(),
    }
    if result is not None:
        values["result"] = result
    Job.objects.filter(pk=job_id).update(**values)


def job_resume(*, job_id: int, kind: str) -> tuple[Job, int, int, int] | None:
    """A job of `kind` that advances by batches (re-enqueued after each run, redelivered after
    a crash): the job with its committed progress (cursor, processed, changed), marked running on
    its first run; None when it is gone or finished."""
    job = Job.objects.filter(pk=job_id, kind=kind).select_related("created_by").first()
    if job is None or job_is_finished(job):
        return None
    cursor = int(job.result.get("cursor", 0))
    if cursor == 0:
        job_start(job_id=job.pk)
    return job, cursor, int(job.result.get("processed", 0)), int(job.result.get("changed", 0))


def job_active(*, kind: str, stale_after: dt.timedelta) -> Job | None:
    """The newest job of `kind` queued or running, if any; one created more than `stale_after`
    ago is taken for dead (its worker lost) and no longer counts."""
    return (
        Job.objects.filter(
            kind=kind,
            status__in=(JobStatus.QUEUED, JobStatus.RUNNING),
            created_at__gte=timezone.now() - stale_after,
        )
        .order_by("-created_at", "-pk")
        .first()
    )


def job_of_kind(*, kind: str, job_id: object) -> Job | None:
    """A job of `kind` by id (as a query string gives it); None for a malformed id or a job of
    another kind."""
    pk = parse_id(job_id)
    if pk is None:
        return None
    return Job.objects.filter(kind=kind, pk=pk).first()


# Class key of the transaction-scoped PostgreSQL advisory locks of job_request_once (the second
# key is the kind's hash): two 32-bit keys, a space apart from the single-key locks ("JOBS").
REQUEST_LOCK_CLASS = 0x4A4F_4253


def job_request_once(
    *,
    kind: str,
    actor: AbstractBaseUser | None,
    stale_after: dt.timedelta,
    enqueue: Callable[[int], Any],
) -> Job:
    """The job of `kind` already queued or running, else a new one that `enqueue(job_id)` sends
    to its task after commit: a second click while one is pending would only repeat the work.

    The check and the insert are serialised per kind, or two clicks at once would each find no
    job and queue one. PostgreSQL: a transaction-scoped advisory lock on the kind, taken before
    the check; the check, a statement after it, sees a job the lock's previous holder committed.
    SQLite: the settings open every transaction with BEGIN IMMEDIATE (transaction_mode), which
    takes the database's write lock before the check, so the atomic block alone serialises it.
    """
    with transaction.atomic():
        if connection.vendor == "postgresql":
            with connection.cursor() as cursor:
                cursor.execute(
                    "SELECT pg_advisory_xact_lock(%s, hashtext(%s))", [REQUEST_LOCK_CLASS, kind]
                )
        active = job_active(kind=kind, stale_after=stale_after)
        if active is not None:
            return active
        job = job_create(kind=kind, created_by=actor)
        transaction.on_commit(lambda: enqueue(job.pk))
    return job


def job_run(
    *,
    job_id: int | None,
    work: Callable[[], T],
    result: Callable[[T], dict[str, Any]],
) -> T:
    """Run `work`, recording its start, its `result(...)` or its failure on the job when there is
    one (a scheduled run has none); the failure is raised again for the task to see."""
    if job_id is None:
        return work()
    job_start(job_id=job_id)
    try:
        outcome = work()
    except Exception as exc:
        job_fail(job_id=job_id, error=str(exc) or exc.__class__.__name__)
        raise
    job_finish(job_id=job_id, result=result(outcome))
    return outcome


def job_is_finished(job: Job) -> bool:
    return job.status in (JobStatus.SUCCEEDED, JobStatus.FAILED)


def jobs_visible_to(*, user: AbstractBaseUser) -> QuerySet[Job]:
    """Jobs a user may watch and download from: their own; superusers see all."""
    qs = Job.objects.all()
    return qs if user.is_superuser else qs.filter(created_by=user)
