from celery import shared_task

from core import cleanup


@shared_task(name="core.expire_job_files")
def expire_job_files() -> dict[str, int]:
    outcome = cleanup.job_files_expire()
    return {
        "expired_jobs": outcome.expired_jobs,
        "job_files": outcome.job_files,
        "orphan_files": outcome.orphan_files,
        "bytes_freed": outcome.bytes_freed,
    }
