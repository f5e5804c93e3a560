"""What an upload becomes before its import starts: refused when it has no data rows, shown as
waiting for its columns in the list of recent jobs, and ended by the file clean-up when nobody
comes back to it."""

import datetime as dt
import io

import openpyxl
import pandas as pd
import pytest
from django.core.files.uploadedfile import SimpleUploadedFile
from django.urls import reverse
from django.utils import timezone, translation

from contacts import importers
from contacts.importers import ImportSpec
from core import cleanup, jobs
from core.models import Job, JobStatus

pytestmark = pytest.mark.django_db

DAY = dt.timedelta(days=1)
ROWS = [
    {"手机号": "13800138000", "姓名": "林小雨", "性别": "女"},
    {"手机号": "13900139000", "姓名": "王大山", "性别": "男"},
    {"手机号": "12", "姓名": "坏号码", "性别": "男"},
]


@pytest.fixture(autouse=True)
def media(settings, tmp_path):
    settings.MEDIA_ROOT = tmp_path
    settings.SCRM_FILE_RETENTION_DAYS = 7
    return tmp_path


@pytest.fixture
def english(settings):
    settings.LANGUAGE_CODE = "en"
    with translation.override("en"):
        yield


def _csv(rows: list[dict]) -> bytes:
    return pd.DataFrame(rows).to_csv(index=False).encode()


def _upload(client, name: str, content: bytes):
    return client.post(reverse("contacts_io:import"), {"file": SimpleUploadedFile(name, content)})


def _stored_files(media) -> list[str]:
    return sorted(p.relative_to(media).as_posix() for p in media.rglob("*") if p.is_file())


def _row(page: str, job: Job) -> str:
    """The recent-jobs table row of the job."""
    return next(row for row in page.split("<tr") if f"#{job.pk}</a>" in row)


def _xlsx_header_only() -> bytes:
    book = openpyxl.Workbook()
    book.active.append(["手机号", "姓名"])
    book.active.append([None, None])  # a formatted but empty row is no data either
    buffer = io.BytesIO()
    book.save(buffer)
    return buffer.getvalue()


@pytest.mark.parametrize(
    ("name", "content"),
    [
        ("header.csv", b"name,phone\n"),
        ("header-no-newline.csv", b"name,phone"),
        ("blank-lines.csv", b"name,phone\n\n\n\n"),
        ("empty-cells.csv", b"name,phone\n,\n , \n"),
        ("gbk.csv", "姓名,手机号\r\n".encode("gbk")),
        ("header.xlsx", _xlsx_header_only()),
    ],
)
def test_a_file_with_only_a_header_is_refused_at_upload_and_leaves_nothing(
    admin_client, media, english, name, content
):
    response = _upload(admin_client, name, content)

    assert response.status_code == 400
    assert "The file has column names but no data rows" in response.content.decode()
    assert not Job.objects.exists()
    assert _stored_files(media) == []


def test_a_file_with_data_goes_on_to_the_mapping_step(admin_client, media):
    response = _upload(admin_client, "客户.csv", _csv(ROWS))

    job = Job.objects.get()
    assert response.status_code == 302
    assert response["Location"] == reverse("contacts_io:import_mapping", args=[job.pk])
    assert _stored_files(media) == [job.input_file]


def test_an_upload_left_at_the_mapping_step_shows_as_awaiting_its_columns(
    admin_client, english, django_capture_on_commit_callbacks
):
    _upload(admin_client, "left.csv", _csv(ROWS))
    left = Job.objects.get()
    mapping_url = reverse("contacts_io:import_mapping", args=[left.pk])

    page = admin_client.get(reverse("contacts_io:import")).content.decode()
    row = _row(page, left)
    assert "Awaiting column mapping" in row
    assert f'href="{mapping_url}"' in row
    assert "Queued" not in row

    # Once its import has run, the row says how it ended and links to the job.
    spec = ImportSpec(mapping=left.params["mapping"], key="phone", tag_ids=[])
    with django_capture_on_commit_callbacks(execute=True):
        importers.import_start(job=left, spec=spec)
    assert Job.objects.get(pk=left.pk).status == JobStatus.SUCCEEDED
    page = admin_client.get(reverse("contacts_io:import")).content.decode()
    row = _row(page, left)
    assert "Awaiting column mapping" not in row
    # One of ROWS has a bad phone: a plain "Succeeded" would hide it.
    assert "Finished with 1 rejected row" in row and "Succeeded" not in row
    assert reverse("contacts_io:job", args=[left.pk]) in row


def _age(job: Job, age: dt.timedelta) -> None:
    Job.objects.filter(pk=job.pk).update(created_at=timezone.now() - age)


def test_the_clean_up_ends_uploads_nobody_mapped_within_the_retention_and_deletes_their_file(
    admin_client, admin_user, media, english
):
    abandoned = importers.import_upload(
        file=SimpleUploadedFile("old.csv", _csv(ROWS)), user=admin_user
    )
    recent = importers.import_upload(
        file=SimpleUploadedFile("new.csv", _csv(ROWS)), user=admin_user
    )
    # Started by a worker long ago and still running: its file is in use.
    running = importers.import_upload(
        file=SimpleUploadedFile("running.csv", _csv(ROWS)), user=admin_user
    )
    jobs.job_start(job_id=running.pk)
    _age(abandoned, 8 * DAY)
    _age(recent, 6 * DAY)
    _age(running, 8 * DAY)

    outcome = cleanup.job_files_expire()

    assert (outcome.abandoned_jobs, outcome.job_files) == (1, 1)
    assert _stored_files(media) == sorted([recent.input_file, running.input_file])
    abandoned.refresh_from_db()
    assert abandoned.status == JobStatus.FAILED
    assert abandoned.error == "Not started within 7 days; the uploaded file was deleted."
    assert abandoned.input_file == "" and abandoned.finished_at is not None
    assert Job.objects.get(pk=recent.pk).status == JobStatus.QUEUED
    assert Job.objects.get(pk=running.pk).status == JobStatus.RUNNING

    # The list and the mapping link now lead to the job page, which says what happened.
    page = admin_client.get(reverse("contacts_io:import")).content.decode()
    row = _row(page, abandoned)
    assert "Failed" in row and "Awaiting column mapping" not in row
    response = admin_client.get(reverse("contacts_io:import_mapping", args=[abandoned.pk]))
    assert response["Location"] == reverse("contacts_io:job", args=[abandoned.pk])
    page = admin_client.get(response["Location"]).content.decode()
    assert "Not started within 7 days; the uploaded file was deleted." in page

    # Idempotent, and a job that has ended is not started by its late task either.
    again = cleanup.job_files_expire()
    assert (again.abandoned_jobs, again.job_files, again.orphan_files) == (0, 0, 0)
    assert importers.import_run(job_id=abandoned.pk) is None


def test_the_upload_page_says_how_long_an_unstarted_upload_is_kept(admin_client, english):
    page = admin_client.get(reverse("contacts_io:import")).content.decode()
    assert "Uploads not started within 7 days are deleted." in page


def test_the_preview_shows_gender_labels_in_the_operators_language(admin_client, settings):
    settings.LANGUAGE_CODE = "zh-hans"
    _upload(admin_client, "客户.csv", _csv(ROWS))
    job = Job.objects.get()

    page = admin_client.get(
        reverse("contacts_io:import_mapping", args=[job.pk]), HTTP_ACCEPT_LANGUAGE="zh-hans"
    ).content.decode()

    preview = page[page.index('id="import-preview"') :]
    # Two good rows (stored as female / male) and one refused for its phone, shown as written.
    assert "<td>female</td>" not in preview and "<td>male</td>" not in preview
    assert (preview.count("<td>女</td>"), preview.count("<td>男</td>")) == (1, 2)


def test_an_expired_upload_says_so_in_the_uploaders_language(admin_user):
    from django.utils import translation

    with translation.override("zh-hans"):
        upload = importers.import_upload(
            file=SimpleUploadedFile("客户.csv", _csv(ROWS)), user=admin_user
        )
    _age(upload, 8 * DAY)

    with translation.override("en"):  # whatever the cleanup's own language
        cleanup.job_files_expire()

    upload.refresh_from_db()
    assert upload.error == "7 天内未开始，已删除上传的文件。"
