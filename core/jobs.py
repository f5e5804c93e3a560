"""Bookkeeping for background jobs (imports, exports, bulk actions) whose progress the UI polls."""

from typing import Any

from django.contrib.auth.models import AbstractBaseUser
from django.db.models import F, QuerySet
from django.utils import timezone

from core.models import Job, JobStatus


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


def job_is_finished(job: Job) -> bool:
    return job.status in (JobStatus.SUCCEEDED, JobStatus.FAILED)


def jobs_visible_to(*, user: AbstractBaseUser) -> QuerySet[Job]:
    """Jobs a user may watch and download from: their own; superusers see all."""
    qs = Job.objects.all()
    return qs if user.is_superuser else qs.filter(created_by=user)
