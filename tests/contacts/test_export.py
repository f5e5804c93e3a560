import csv
import io

import openpyxl
import pytest
from django.contrib.auth.models import Permission
from django.urls import reverse
from django.utils import translation

from contacts import exporters
from contacts.models import ContactTag
from core.errors import ValidationFailed
from core.models import AuditLog, Job, JobStatus
from segments.models import SegmentMembership
from tests.factories import ContactFactory, SegmentFactory, TagFactory, UserFactory

pytestmark = pytest.mark.django_db


@pytest.fixture(autouse=True)
def media(settings, tmp_path):
    settings.MEDIA_ROOT = tmp_path
    return tmp_path


@pytest.fixture(autouse=True)
def english(settings):
    settings.LANGUAGE_CODE = "en"
    with translation.override("en"):
        yield


def user_with(*codenames: str, username: str = "exporter"):
    user = UserFactory(username=username, is_superuser=False, is_staff=False)
    user.user_permissions.add(
        *Permission.objects.filter(content_type__app_label="contacts", codename__in=codenames)
    )
    return type(user).objects.get(pk=user.pk)  # fresh permission cache


def export(user, capture, *, filters=None, fmt="csv") -> Job:
    with capture(execute=True):
        job = exporters.export_start(user=user, filters=filters or {}, fmt=fmt)
    job.refresh_from_db()
    return job


def read_csv(media, job: Job) -> list[list[str]]:
    raw = (media / job.output_file).read_bytes()
    assert raw.startswith(b"\xef\xbb\xbf")
    return list(csv.reader(io.StringIO(raw.decode("utf-8-sig"))))


def test_csv_has_bom_and_masks_personal_data_without_permission(
    media, django_capture_on_commit_callbacks
):
    contact = ContactFactory(name="林小雨", phone="+8613800138000", email="lin@example.com")
    ContactTag.objects.create(contact=contact, tag=TagFactory(name="VIP"))
    user = user_with("export_contact", "view_contact")

    job = export(user, django_capture_on_commit_callbacks)

    assert job.status == JobStatus.SUCCEEDED, job.error
    header, row = read_csv(media, job)
    assert header[:3] == ["ID", "Name", "Nickname"]
    values = dict(zip(header, row, strict=True))
    assert values["Name"] == "林小雨"
    assert values["Phone"] == "+86138****8000"
    assert values["Email"] == "l***@example.com"
    assert values["Tags"] == "VIP"
    log = AuditLog.objects.get(action="contacts_export")
    assert log.actor == user and log.details["rows"] == 1 and log.details["masked"] is True


def test_users_with_personal_data_permission_get_clear_values(
    media, django_capture_on_commit_callbacks
):
    ContactFactory(phone="+8613800138000", email="lin@example.com")
    user = user_with("export_contact", "view_contact", "view_personal_data")

    job = export(user, django_capture_on_commit_callbacks)

    header, row = read_csv(media, job)
    values = dict(zip(header, row, strict=True))
    assert (values["Phone"], values["Email"]) == ("+8613800138000", "lin@example.com")


def test_export_needs_the_export_permission():
    with pytest.raises(ValidationFailed):
        exporters.export_start(user=user_with("view_contact"), filters={})
    assert not Job.objects.exists()


def test_filters_and_segment_narrow_the_export(media, django_capture_on_commit_callbacks):
    ContactFactory(name="上海客户", city="上海")
    beijing = ContactFactory(name="北京客户", city="北京")
    other = ContactFactory(name="北京另一位", city="北京")
    segment = SegmentFactory()
    SegmentMembership.objects.create(segment=segment, contact=beijing)
    admin = UserFactory(username="boss")

    by_city = export(admin, django_capture_on_commit_callbacks, filters={"city": "北京"})
    by_segment = export(admin, django_capture_on_commit_callbacks, filters={"segment": segment.pk})

    assert sorted(r[1] for r in read_csv(media, by_city)[1:]) == sorted([beijing.name, other.name])
    assert [r[1] for r in read_csv(media, by_segment)[1:]] == [beijing.name]
    assert AuditLog.objects.filter(action="contacts_export").count() == 2
    assert AuditLog.objects.filter(details__segment=segment.pk).exists()


def test_keyset_batches_export_every_row_once(
    monkeypatch, media, django_capture_on_commit_callbacks
):
    monkeypatch.setattr(exporters, "BATCH", 2)
    contacts = [ContactFactory() for _ in range(5)]

    job = export(UserFactory(username="boss"), django_capture_on_commit_callbacks)

    ids = [int(r[0]) for r in read_csv(media, job)[1:]]
    assert ids == sorted(c.pk for c in contacts)
    assert (job.done, job.total, job.result["rows"]) == (5, 5, 5)


def test_xlsx_export(media, django_capture_on_commit_callbacks):
    ContactFactory(name="林小雨", phone="+8613800138000")

    job = export(UserFactory(username="boss"), django_capture_on_commit_callbacks, fmt="xlsx")

    sheet = openpyxl.load_workbook(media / job.output_file, read_only=True).worksheets[0]
    rows = list(sheet.iter_rows(values_only=True))
    assert rows[0][:2] == ("ID", "Name") and rows[1][1] == "林小雨"


def test_export_views_start_poll_and_download(client, django_capture_on_commit_callbacks):
    ContactFactory(city="北京", name="北京客户")
    ContactFactory(city="上海")
    user = user_with("export_contact", "view_contact")
    client.force_login(user)
    url = reverse("contacts_io:export") + "?city=北京"

    page = client.get(url)
    assert page.status_code == 200 and "1 contact matches" in page.content.decode()
    with django_capture_on_commit_callbacks(execute=True):
        started = client.post(url, {"format": "csv"})
    job = Job.objects.get(kind=exporters.JOB_KIND)
    assert started.status_code == 302 and started["Location"] == reverse(
        "contacts_io:job", args=[job.pk]
    )
    assert job.params["filters"] == {"city": "北京"}

    fragment = client.get(started["Location"], HTTP_HX_REQUEST="true").content.decode()
    assert "<html" not in fragment and 'id="job-progress"' in fragment
    download = client.get(reverse("contacts_io:job_download", args=[job.pk]))
    body = b"".join(download.streaming_content)
    assert download.status_code == 200 and body.startswith(b"\xef\xbb\xbf")
    assert "北京客户" in body.decode("utf-8-sig")
    assert AuditLog.objects.filter(action="contacts_export_download", actor=user).exists()


def test_others_cannot_download_and_exports_need_permission(
    client, django_capture_on_commit_callbacks
):
    ContactFactory()
    job = export(UserFactory(username="boss"), django_capture_on_commit_callbacks)
    client.force_login(user_with("view_contact", username="viewer"))

    assert client.get(reverse("contacts_io:job_download", args=[job.pk])).status_code == 404
    assert client.get(reverse("contacts_io:export")).status_code == 403
    assert client.post(reverse("contacts_io:export"), {"format": "csv"}).status_code == 403
