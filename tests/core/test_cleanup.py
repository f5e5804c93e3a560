import datetime as dt
import os

import pandas as pd
import pytest
from django.core.exceptions import ImproperlyConfigured
from django.core.files.uploadedfile import SimpleUploadedFile
from django.urls import reverse
from django.utils import timezone, translation

from contacts import exporters, importers
from contacts.importers import ImportSpec
from core import cleanup, jobs
from core.models import Job, JobStatus
from core.periodic import periodic_tasks_sync
from core.tasks import expire_job_files

pytestmark = pytest.mark.django_db

DAY = dt.timedelta(days=1)


@pytest.fixture(autouse=True)
def media(settings, tmp_path):
    settings.MEDIA_ROOT = tmp_path
    settings.SCRM_FILE_RETENTION_DAYS = 7
    settings.LANGUAGE_CODE = "en"
    with translation.override("en"):
        yield tmp_path


def _file(media, relative: str, *, age: dt.timedelta = dt.timedelta(0)) -> str:
    path = media / relative
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("phone,name\n")
    stamp = (timezone.now() - age).timestamp()
    os.utime(path, (stamp, stamp))
    return relative


def _finished(*, ago: dt.timedelta, input_file="", output_file="", result=None, failed=False):
    job = jobs.job_create(kind="contacts.import", input_file=input_file)
    if failed:
        jobs.job_fail(job_id=job.pk, error="boom", result=result)
    else:
        jobs.job_finish(job_id=job.pk, result=result or {}, output_file=output_file)
    Job.objects.filter(pk=job.pk).update(finished_at=timezone.now() - ago)
    return Job.objects.get(pk=job.pk)


def test_files_of_jobs_finished_before_the_retention_are_deleted_and_the_job_says_so(media):
    old = _finished(
        ago=8 * DAY,
        input_file=_file(media, "imports/a.csv", age=9 * DAY),
        output_file=_file(media, "imports/job-1-rejected.csv", age=8 * DAY),
        result={"created": 3, "rejected": 1, "rejected_file": "imports/job-1-rejected.csv"},
    )
    recent = _finished(
        ago=6 * DAY,
        input_file=_file(media, "imports/b.csv", age=6 * DAY),
        output_file=_file(media, "exports/contacts-2.csv", age=6 * DAY),
        result={"rows": 5, "file": "exports/contacts-2.csv"},
    )

    outcome = cleanup.job_files_expire()

    assert (outcome.expired_jobs, outcome.job_files, outcome.orphan_files) == (1, 2, 0)
    assert outcome.bytes_freed == 2 * len("phone,name\n")
    assert not (media / "imports/a.csv").exists()
    assert not (media / "imports/job-1-rejected.csv").exists()
    old.refresh_from_db()
    assert (old.input_file, old.output_file) == ("", "")
    assert old.result == {
        "created": 3,
        "rejected": 1,
        "rejected_file": "",
        "files_expired": True,
    }
    # Within the retention: untouched.
    assert (media / "imports/b.csv").exists() and (media / "exports/contacts-2.csv").exists()
    recent.refresh_from_db()
    assert recent.output_file == "exports/contacts-2.csv"
    assert "files_expired" not in recent.result

    # Idempotent: a second run finds nothing more to do.
    again = cleanup.job_files_expire()
    assert (again.expired_jobs, again.job_files, again.orphan_files) == (0, 0, 0)


def test_a_failed_jobs_partial_rejected_file_goes_with_it(media):
    job = _finished(
        ago=10 * DAY,
        input_file=_file(media, "imports/c.csv", age=10 * DAY),
        result={"rejected": 2, "rejected_file": _file(media, "imports/job-9-rejected.csv")},
        failed=True,
    )
    assert cleanup.job_files_expire().job_files == 2
    assert list((media / "imports").iterdir()) == []
    job.refresh_from_db()
    assert job.status == JobStatus.FAILED and job.result["files_expired"] is True


def test_old_orphans_are_deleted_but_files_of_unfinished_jobs_and_recent_ones_stay(media):
    _file(media, "imports/orphan-upload.csv", age=8 * DAY)
    _file(media, "exports/nested/orphan-export.xlsx", age=30 * DAY)
    _file(media, "imports/fresh-upload.csv", age=DAY)  # its job row may not be committed yet
    # Files older than that of an upload waiting at the mapping step (its job is recent; one
    # left longer than the retention is ended, see test_import_upload_states) and of an
    # import still running.
    jobs.job_create(kind="contacts.import", input_file=_file(media, "imports/q.csv", age=20 * DAY))
    running = jobs.job_create(
        kind="contacts.import", input_file=_file(media, "imports/r.csv", age=20 * DAY)
    )
    jobs.job_start(job_id=running.pk)
    _file(media, "imports/job-77-rejected.csv", age=20 * DAY)
    Job.objects.filter(pk=running.pk).update(
        result={"rejected_file": "imports/job-77-rejected.csv"}
    )
    # Outside the job folders: not ours to delete.
    _file(media, "avatars/old.png", age=400 * DAY)

    outcome = cleanup.job_files_expire()

    assert outcome.orphan_files == 2
    remaining = sorted(p.relative_to(media).as_posix() for p in media.rglob("*") if p.is_file())
    assert remaining == [
        "avatars/old.png",
        "imports/fresh-upload.csv",
        "imports/job-77-rejected.csv",
        "imports/q.csv",
        "imports/r.csv",
    ]


def test_a_path_on_a_job_never_reaches_outside_media_root(media, tmp_path_factory):
    outside = tmp_path_factory.mktemp("outside") / "secret.txt"
    outside.write_text("keep me")
    relative = os.path.relpath(outside, media)
    _finished(ago=30 * DAY, input_file=relative)
    assert cleanup.job_files_expire().job_files == 0
    assert outside.read_text() == "keep me"


def test_retention_is_a_setting_and_must_be_at_least_a_day(media, settings):
    job = _finished(ago=2 * DAY, output_file=_file(media, "exports/x.csv", age=2 * DAY))
    assert cleanup.job_files_expire().expired_jobs == 0
    settings.SCRM_FILE_RETENTION_DAYS = 1
    assert cleanup.job_files_expire().expired_jobs == 1
    assert Job.objects.get(pk=job.pk).output_file == ""
    settings.SCRM_FILE_RETENTION_DAYS = 0
    with pytest.raises(ImproperlyConfigured):
        cleanup.job_files_expire()


def test_the_task_is_scheduled_and_reports_what_it_freed(media):
    _finished(ago=8 * DAY, output_file=_file(media, "exports/y.csv", age=8 * DAY))
    assert "scrm: core: expire job files" in periodic_tasks_sync()
    assert expire_job_files() == {
        "expired_jobs": 1,
        "job_files": 1,
        "orphan_files": 0,
        "bytes_freed": len("phone,name\n"),
    }


def test_expired_import_and_export_pages_say_expired_instead_of_linking(
    media, admin_client, admin_user, django_capture_on_commit_callbacks
):
    rows = pd.DataFrame(
        [{"手机号": "13800138000", "姓名": "林小雨"}, {"手机号": "12", "姓名": "x"}]
    )
    upload = SimpleUploadedFile("客户.csv", rows.to_csv(index=False).encode())
    imported = importers.import_upload(file=upload, user=admin_user)
    spec = ImportSpec(mapping=imported.params["mapping"], key="phone", tag_ids=[])
    with django_capture_on_commit_callbacks(execute=True):
        importers.import_start(job=imported, spec=spec)
        exported = exporters.export_start(user=admin_user, filters={}, fmt="csv")
    imported.refresh_from_db()
    exported.refresh_from_db()
    assert imported.result["rejected"] == 1
    download = {
        j.pk: reverse("contacts_io:job_download", args=[j.pk]) for j in (imported, exported)
    }
    for job in (imported, exported):
        assert (
            download[job.pk]
            in admin_client.get(reverse("contacts_io:job", args=[job.pk])).content.decode()
        )

    Job.objects.filter(pk__in=[imported.pk, exported.pk]).update(
        finished_at=timezone.now() - 8 * DAY
    )
    assert cleanup.job_files_expire().job_files == 3  # upload, rejected rows, export
    assert [p for p in media.rglob("*") if p.is_file()] == []

    page = admin_client.get(reverse("contacts_io:job", args=[imported.pk])).content.decode()
    assert download[imported.pk] not in page
    assert "The file of rejected rows has expired" in page
    page = admin_client.get(reverse("contacts_io:job", args=[exported.pk])).content.decode()
    assert download[exported.pk] not in page
    assert "The export file has expired" in page
    assert admin_client.get(download[exported.pk]).status_code == 404


@pytest.mark.django_db
def test_daily_tasks_get_a_clock_time_and_bad_times_are_refused(settings):
    from django_celery_beat.models import PeriodicTask

    settings.SCRM_PERIODIC_TASKS = {
        "nightly": {"task": "segments.influence_compute", "daily_at": "4:05"},
        "often": {"task": "segments.tick", "every_seconds": 60},
    }
    periodic_tasks_sync()
    nightly = PeriodicTask.objects.get(name="scrm: nightly")
    assert (nightly.crontab.hour, nightly.crontab.minute, nightly.interval) == ("4", "5", None)
    often = PeriodicTask.objects.get(name="scrm: often")
    assert often.crontab is None and often.interval.every == 60
    # Switching a task from a clock time to an interval rewrites the same row.
    settings.SCRM_PERIODIC_TASKS = {"nightly": {"task": "segments.tick", "every_seconds": 30}}
    periodic_tasks_sync()
    nightly = PeriodicTask.objects.get(name="scrm: nightly")
    assert nightly.crontab is None and nightly.interval.every == 30
    assert not PeriodicTask.objects.filter(name="scrm: often").exists()
    settings.SCRM_PERIODIC_TASKS = {"bad": {"task": "segments.tick", "daily_at": "25:00"}}
    with pytest.raises(ValueError, match="daily_at"):
        periodic_tasks_sync()
