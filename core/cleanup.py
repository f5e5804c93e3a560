"""Retention of the files background jobs leave under MEDIA_ROOT: import uploads, exports and
rejected-row files are deleted a while after their job ends, and so are leftovers no job names.

A job no worker started within the retention (an upload left at the column-mapping step, or one
whose task was lost) ends there too: it is marked failed with the reason and its files go."""

import datetime as dt
import logging
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from django.conf import settings
from django.core.exceptions import ImproperlyConfigured
from django.db.models import Q
from django.utils import timezone, translation
from django.utils.translation import ngettext

from core.models import Job, JobStatus

logger = logging.getLogger(__name__)

# Folders under MEDIA_ROOT that jobs write to (contacts' imports and exports). Named here rather
# than imported, because core sits below the apps that own them.
JOB_FILE_DIRS = ("imports", "exports")
# Keys of Job.result and Job.params that repeat a file path (the UI links to them).
RESULT_FILE_KEYS = ("file", "rejected_file")
# Jobs updated per query; each job is one small UPDATE, so this only bounds memory.
BATCH_SIZE = 500


@dataclass
class CleanupResult:
    expired_jobs: int = 0
    abandoned_jobs: int = 0
    job_files: int = 0
    orphan_files: int = 0
    bytes_freed: int = 0


def retention_cutoff(*, now: dt.datetime | None = None) -> dt.datetime:
    """Files of jobs that ended before this moment (and orphans last written before it) go."""
    days = settings.SCRM_FILE_RETENTION_DAYS
    if not isinstance(days, int) or days < 1:
        raise ImproperlyConfigured("SCRM_FILE_RETENTION_DAYS must be a whole number of days >= 1.")
    return (now or timezone.now()) - dt.timedelta(days=days)


def _job_paths(*, input_file: str, output_file: str, result: dict, params: dict) -> set[str]:
    paths = {input_file, output_file, params.get("file")}
    if isinstance(result, dict):
        paths.update(result.get(key) for key in RESULT_FILE_KEYS)
    return {p for p in paths if isinstance(p, str) and p}


def _delete(root: Path, relative: str, outcome: CleanupResult) -> bool:
    path = (root / relative).resolve()
    # A path stored on a job must never reach outside MEDIA_ROOT.
    if root not in path.parents or not path.is_file():
        return False
    size = path.stat().st_size
    path.unlink(missing_ok=True)
    outcome.bytes_freed += size
    return True


def _expire_jobs(root: Path, cutoff: dt.datetime, outcome: CleanupResult) -> None:
    finished = Job.objects.filter(
        status__in=[JobStatus.SUCCEEDED, JobStatus.FAILED], finished_at__lt=cutoff
    ).filter(Q(input_file__gt="") | Q(output_file__gt=""))
    while batch := list(
        finished.order_by("pk").only("pk", "input_file", "output_file", "result", "params")[
            :BATCH_SIZE
        ]
    ):
        for job in batch:
            _delete_job_files(root, job, outcome)
            result = dict(job.result) if isinstance(job.result, dict) else {}
            for key in RESULT_FILE_KEYS:
                if key in result:
                    result[key] = ""
            # The job page reads this to say "expired" instead of offering a dead link.
            result["files_expired"] = True
            Job.objects.filter(pk=job.pk).update(input_file="", output_file="", result=result)
            outcome.expired_jobs += 1


def _delete_job_files(root: Path, job: Job, outcome: CleanupResult) -> None:
    for relative in _job_paths(
        input_file=job.input_file, output_file=job.output_file, result=job.result, params=job.params
    ):
        if _delete(root, relative, outcome):
            outcome.job_files += 1


def _abandoned_error(days: int) -> str:
    return ngettext(
        "Not started within %(days)s day; the uploaded file was deleted.",
        "Not started within %(days)s days; the uploaded file was deleted.",
        days,
    ) % {"days": days}


def _abandon_jobs(root: Path, cutoff: dt.datetime, outcome: CleanupResult) -> None:
    # Queued and never picked up by a worker (started_at is set when one starts it).
    stale = Job.objects.filter(
        status=JobStatus.QUEUED, started_at__isnull=True, created_at__lt=cutoff
    ).filter(Q(input_file__gt="") | Q(output_file__gt=""))
    while batch := list(
        stale.order_by("pk").only("pk", "input_file", "output_file", "result", "params")[
            :BATCH_SIZE
        ]
    ):
        for job in batch:
            # In the language of whoever uploaded it (no request is active here).
            params = job.params if isinstance(job.params, dict) else {}
            with translation.override(params.get("language") or settings.LANGUAGE_CODE):
                error = _abandoned_error(settings.SCRM_FILE_RETENTION_DAYS)
            # Only while still queued and unstarted: a worker that starts it meanwhile wins.
            ended = Job.objects.filter(
                pk=job.pk, status=JobStatus.QUEUED, started_at__isnull=True
            ).update(
                status=JobStatus.FAILED,
                error=error,
                finished_at=timezone.now(),
                input_file="",
                output_file="",
                result={"files_expired": True},
            )
            if not ended:
                continue
            _delete_job_files(root, job, outcome)
            outcome.abandoned_jobs += 1


def job_upload_discard(*, job: Job) -> None:
    """Delete a job that was only ever an upload, and its files (a file refused after upload).

    A job a worker has started is kept: it has progress and results an operator may read."""
    root = Path(settings.MEDIA_ROOT).resolve()
    deleted, _ = Job.objects.filter(
        pk=job.pk, status=JobStatus.QUEUED, started_at__isnull=True
    ).delete()
    if not deleted:
        return
    for relative in _job_paths(
        input_file=job.input_file, output_file=job.output_file, result=job.result, params=job.params
    ):
        _delete(root, relative, CleanupResult())


def _referenced_paths() -> set[str]:
    """Files some job still names: unfinished jobs and finished ones within the retention."""
    rows = Job.objects.filter(Q(input_file__gt="") | Q(output_file__gt="")).values_list(
        "input_file", "output_file", "result", "params"
    )
    referenced: set[str] = set()
    for input_file, output_file, result, params in rows.iterator(chunk_size=BATCH_SIZE):
        referenced |= _job_paths(
            input_file=input_file, output_file=output_file, result=result, params=params or {}
        )
    return referenced


def _files_under(root: Path, folders: Iterable[str]) -> Iterable[Path]:
    for folder in folders:
        base = root / folder
        if base.is_dir():
            yield from (p for p in base.rglob("*") if p.is_file() and not p.is_symlink())


def _delete_orphans(root: Path, cutoff: dt.datetime, outcome: CleanupResult) -> None:
    referenced = _referenced_paths()
    oldest = cutoff.timestamp()
    for path in _files_under(root, JOB_FILE_DIRS):
        relative = path.relative_to(root).as_posix()
        # Recent files may belong to an upload whose job row is not committed yet.
        if relative in referenced or path.stat().st_mtime >= oldest:
            continue
        if _delete(root, relative, outcome):
            outcome.orphan_files += 1


def job_files_expire(*, now: dt.datetime | None = None) -> CleanupResult:
    """Delete the files of jobs that ended more than the retention ago, end the jobs no worker
    started within it (with their files), and delete old orphan files."""
    cutoff = retention_cutoff(now=now)
    root = Path(settings.MEDIA_ROOT).resolve()
    outcome = CleanupResult()
    _expire_jobs(root, cutoff, outcome)
    _abandon_jobs(root, cutoff, outcome)
    _delete_orphans(root, cutoff, outcome)
    logger.info(
        "expired files of %s jobs and %s never started: %s job files, %s orphans, %s bytes",
        outcome.expired_jobs,
        outcome.abandoned_jobs,
        outcome.job_files,
        outcome.orphan_files,
        outcome.bytes_freed,
    )
    return outcome
