"""A line whose every cell is empty (the rows Excel leaves below a table, an empty line in the
middle) is no row of the file: not rejected, not counted. Rows after it keep their number."""

import io

import openpyxl
import pytest
from django.core.files.uploadedfile import SimpleUploadedFile
from django.urls import reverse

from contacts import importers
from contacts.import_views import job_outcome
from contacts.importers import ImportSpec
from contacts.models import Contact
from core.models import Job, JobStatus
from tests.contacts.importing import counts, finish, reasons

pytestmark = [pytest.mark.django_db, pytest.mark.usefixtures("media", "english")]

HEADER = "会员号,姓名,城市\r\n"


def run_file(content: bytes, name: str, capture) -> Job:
    job = importers.import_upload(file=SimpleUploadedFile(name, content), user=None)
    return finish(job, capture)


def xlsx(rows: list[list[str | None]], *, formatted_down_to: int = 0) -> bytes:
    workbook = openpyxl.Workbook()
    sheet = workbook.active
    for row in rows:
        sheet.append(row)
    if formatted_down_to:
        # A formatted, empty cell far below: the sheet reports empty rows down to it.
        sheet.cell(row=formatted_down_to, column=2).number_format = "0.00"
    buffer = io.BytesIO()
    workbook.save(buffer)
    return buffer.getvalue()


def test_trailing_empty_lines_of_an_excel_csv_are_not_rows(django_capture_on_commit_callbacks):
    content = (HEADER + "K1,林,上海\r\nK2,王,北京\r\n" + ",,\r\n" * 3 + "\r\n\r\n").encode()

    job = run_file(content, "客户.csv", django_capture_on_commit_callbacks)

    assert counts(job) == (2, 0, 0, 0)
    assert job.result["rows"] == 2
    assert job.result["rejected_file"] == ""
    assert job_outcome(job).state == JobStatus.SUCCEEDED  # not "finished with rejected rows"


def test_rows_after_blank_lines_keep_their_number_and_partly_empty_rows_are_judged(
    media, django_capture_on_commit_callbacks
):
    lines = [
        "K1,林,上海",  # row 2
        ",,",  # 3: blank
        "",  # 4: an empty line
        " , ,  ",  # 5: spaces only, blank too
        ",赵,",  # 6: a name without its key is a row, rejected as before
        "K2,,",  # 7: only the key
        ",,广州",  # 8: rejected
        ",,",  # 9: blank
    ]
    content = (HEADER + "\r\n".join(lines) + "\r\n").encode()

    job = run_file(content, "客户.csv", django_capture_on_commit_callbacks)

    assert counts(job) == (2, 0, 0, 2)
    assert job.result["rows"] == 4
    assert reasons(job, media) == {
        "6": "The key column “External id” is empty.",
        "8": "The key column “External id” is empty.",
    }
    assert job_outcome(job).state == "partial"
    assert job_outcome(job).rows == 4


def test_blank_rows_of_a_workbook_are_skipped_too(media, django_capture_on_commit_callbacks):
    rows = [
        ["会员号", "姓名", "城市"],
        ["K1", "林", "上海"],  # row 2
        [None, None, None],  # 3
        ["", "  ", None],  # 4: spaces only
        [None, "赵", None],  # 5: rejected
        ["K2", "王", None],  # 6
    ]

    job = run_file(
        xlsx(rows, formatted_down_to=500), "客户.xlsx", django_capture_on_commit_callbacks
    )

    assert counts(job) == (2, 0, 0, 1)
    assert job.result["rows"] == 3
    assert reasons(job, media) == {"5": "The key column “External id” is empty."}
    assert set(Contact.objects.values_list("name", flat=True)) == {"林", "王"}


def test_chunks_of_nothing_but_blank_lines_are_skipped(
    monkeypatch, django_capture_on_commit_callbacks
):
    # More blank lines than a chunk holds: whole chunks without a row.
    monkeypatch.setattr(importers, "CHUNK_ROWS", 8)
    content = (HEADER + "K1,林,上海\r\n" + ",,\r\n" * 30 + "K2,王,北京\r\n" + ",,\r\n" * 9).encode()

    job = run_file(content, "客户.csv", django_capture_on_commit_callbacks)

    assert counts(job) == (2, 0, 0, 0)
    assert job.result["rows"] == 2
    assert (job.done, job.total) == (2, 2)  # the progress bar ends full


def test_the_preview_leaves_blank_rows_out(media):
    content = (HEADER + "K1,林,上海\r\n,,\r\n,赵,\r\n").encode()
    job = importers.import_upload(file=SimpleUploadedFile("客户.csv", content), user=None)
    spec = ImportSpec(mapping=job.params["mapping"], key="external_id")

    preview = importers.import_preview(job=job, spec=spec)

    assert [(row["rn"], row["error"]) for row in preview.rows] == [
        (2, ""),
        (4, "The key column “External id” is empty."),
    ]


def test_blank_lines_above_the_header_are_skipped_and_rows_keep_the_file_line_number(
    media, admin_client, django_capture_on_commit_callbacks
):
    # An empty line, a line of separators (Excel's empty row) and one of spaces above it.
    content = ("\r\n,,\r\n  \r\n" + HEADER + "K1,林,上海\r\n,,\r\n,赵,\r\nK2,王,北京\r\n").encode()

    # The upload page finds the data rows below the header (it once took line 1 for it).
    response = admin_client.post(
        reverse("contacts_io:import"), {"file": SimpleUploadedFile("客户.csv", content)}
    )
    assert response.status_code == 302, response.content.decode()
    job = Job.objects.get()
    assert job.params["headers"] == ["会员号", "姓名", "城市"]
    spec = ImportSpec(mapping=job.params["mapping"], key="external_id")
    preview = importers.import_preview(job=job, spec=spec)
    assert [(row["rn"], row["error"]) for row in preview.rows] == [
        (5, ""),
        (7, "The key column “External id” is empty."),
        (8, ""),
    ]

    with django_capture_on_commit_callbacks(execute=True):
        importers.import_start(job=job, spec=spec)
    job.refresh_from_db()

    assert job.status == JobStatus.SUCCEEDED, job.error
    assert counts(job) == (2, 0, 0, 1)
    assert job.result["rows"] == 3
    assert reasons(job, media) == {"7": "The key column “External id” is empty."}
    assert set(Contact.objects.values_list("name", flat=True)) == {"林", "王"}


def test_a_blank_first_line_does_not_hide_the_tab_separator(django_capture_on_commit_callbacks):
    content = "\n会员号\t姓名\nK1\t林\n".encode()

    job = run_file(content, "客户.txt", django_capture_on_commit_callbacks)

    assert job.params["delimiter"] == "\t"
    assert counts(job) == (1, 0, 0, 0)
    assert Contact.objects.get().name == "林"


def test_empty_rows_above_a_workbook_header_are_skipped(media, django_capture_on_commit_callbacks):
    rows = [
        [None, None, None],  # 1
        ["", " ", None],  # 2: spaces only
        ["会员号", "姓名", "城市"],  # 3: the header
        ["K1", "林", "上海"],  # 4
        [None, "赵", None],  # 5: rejected
        ["K2", "王", None],  # 6
    ]

    job = run_file(xlsx(rows), "客户.xlsx", django_capture_on_commit_callbacks)

    assert job.params["headers"] == ["会员号", "姓名", "城市"]
    assert counts(job) == (2, 0, 0, 1)
    assert job.result["rows"] == 3
    assert reasons(job, media) == {"5": "The key column “External id” is empty."}
    assert (job.done, job.total) == (3, 3)
