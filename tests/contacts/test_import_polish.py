"""Four rough edges of the contact import, smoothed: a finished import says how many rows it
rejected, a rejected row names every invalid value, multiple-choice cells split on the
separators Chinese spreadsheets use, and a file that is no table is refused at upload."""

import io
import zipfile

import openpyxl
import pandas as pd
import pytest
from django.core.files.uploadedfile import SimpleUploadedFile
from django.urls import reverse
from django.utils import translation

from contacts import importers
from contacts.import_views import job_outcome
from contacts.importers import ImportSpec
from contacts.models import Contact, CustomField
from core.models import Job, JobStatus
from tests.contacts.importing import counts, reasons, run, upload

pytestmark = pytest.mark.django_db

HX = {"HTTP_HX_REQUEST": "true"}


def _page(client, job: Job, **headers) -> str:
    return client.get(reverse("contacts_io:job", args=[job.pk]), **headers).content.decode()


def _recent_row(client, job: Job) -> str:
    page = client.get(reverse("contacts_io:import")).content.decode()
    return next(row for row in page.split("<tr") if f"#{job.pk}</a>" in row)


def _badge(html: str) -> str:
    """The first status badge of `html`, with its classes."""
    start = html.index('<span class="badge ')
    return html[start : html.index("</span>", start) + len("</span>")]


# --- 1. A finished import says how many rows it rejected ---------------------------------------


def test_an_import_that_rejected_some_rows_finishes_with_a_warning_not_succeeded(
    admin_client, media, english, django_capture_on_commit_callbacks
):
    rows = [
        {"手机号": "13800138000", "姓名": "林"},
        {"手机号": "12", "姓名": "坏号码"},
        {"手机号": "13900139000", "姓名": "王"},
        {"手机号": "not a phone", "姓名": "也坏"},
    ]
    job = run(rows, django_capture_on_commit_callbacks, key="phone")
    assert job.status == JobStatus.SUCCEEDED and counts(job) == (2, 0, 0, 2)

    full = _page(admin_client, job)
    badge = _badge(full[full.index('id="job-progress"') :])
    assert "Finished with 2 rejected rows" in badge and "badge-status-paused" in badge
    assert "Succeeded" not in full
    assert '<div class="alert alert-warning" role="status">' in full
    assert "2 of 4 rows were rejected and not imported." in full
    assert reverse("contacts_io:job_download", args=[job.pk]) in full

    # The fragment the progress bar polls says the same, and stops polling.
    fragment = _page(admin_client, job, HTTP_HX_TARGET="job-progress", **HX)
    assert "<html" not in fragment and "hx-trigger" not in fragment
    assert "Finished with 2 rejected rows" in _badge(fragment)
    assert "2 of 4 rows were rejected" in fragment

    row = _recent_row(admin_client, job)
    assert "Finished with 2 rejected rows" in _badge(row) and "Succeeded" not in row


def test_one_rejected_row_reads_in_the_singular(
    admin_client, media, english, django_capture_on_commit_callbacks
):
    rows = [{"手机号": "13800138000"}, {"手机号": "13900139000"}, {"手机号": "12"}]
    job = run(rows, django_capture_on_commit_callbacks, key="phone")

    full = _page(admin_client, job)
    assert "Finished with 1 rejected row<" in full
    assert "1 of 3 rows was rejected and not imported." in full


def test_an_import_whose_every_row_was_rejected_looks_failed_and_offers_the_reasons(
    admin_client, media, english, django_capture_on_commit_callbacks
):
    rows = [{"手机号": "12", "姓名": "坏"}, {"手机号": "", "姓名": "空"}]
    job = run(rows, django_capture_on_commit_callbacks, key="phone")
    assert counts(job) == (0, 0, 0, 2) and not Contact.objects.exists()

    full = _page(admin_client, job)
    badge = _badge(full[full.index('id="job-progress"') :])
    assert "All rows rejected" in badge and "badge-delivery-failed" in badge
    assert "Succeeded" not in full
    assert '<div class="alert alert-error" role="alert">' in full
    assert "Nothing was imported: every row of the file was rejected." in full
    assert "the last column gives the reason for each row" in full
    download = reverse("contacts_io:job_download", args=[job.pk])
    # The download is the page's main action.
    assert f'<a class="btn btn-primary" href="{download}">' in full

    response = admin_client.get(download)
    assert response.status_code == 200
    assert set(reasons(job, media).values()) == {
        "Invalid phone number.",
        "The key column “Phone” is empty.",
    }

    row = _recent_row(admin_client, job)
    assert "All rows rejected" in _badge(row) and "badge-delivery-failed" in _badge(row)


def test_an_import_without_rejections_still_reads_succeeded(
    admin_client, media, english, django_capture_on_commit_callbacks
):
    job = run([{"手机号": "13800138000"}], django_capture_on_commit_callbacks, key="phone")

    full = _page(admin_client, job)
    badge = _badge(full[full.index('id="job-progress"') :])
    assert "Succeeded" in badge and "badge-ok" in badge
    assert "alert-warning" not in full and "alert-error" not in full
    assert "Succeeded" in _badge(_recent_row(admin_client, job))


def test_a_running_import_keeps_polling_with_its_status(admin_client, english, admin_user):
    job = Job.objects.create(
        kind=importers.JOB_KIND,
        status=JobStatus.RUNNING,
        total=10,
        done=4,
        created_by=admin_user,
        params={"started": True},
    )

    fragment = _page(admin_client, job, HTTP_HX_TARGET="job-progress", **HX)

    assert 'hx-trigger="every 1s"' in fragment and 'value="40"' in fragment
    assert "Running" in _badge(fragment)


def test_a_failed_import_says_failed_and_shows_what_it_did_before(
    admin_client, english, admin_user
):
    job = Job.objects.create(
        kind=importers.JOB_KIND,
        status=JobStatus.FAILED,
        created_by=admin_user,
        params={"started": True},
        error="Stopped after 3 rows: disk full",
        result={"created": 2, "updated": 0, "unchanged": 0, "rejected": 1, "rows": 3},
    )

    full = _page(admin_client, job)

    badge = _badge(full[full.index('id="job-progress"') :])
    assert "Failed" in badge and "badge-delivery-failed" in badge
    assert "Stopped after 3 rows: disk full" in full and "Before the import stopped" in full
    # The counts of a job that stopped are not a finished import's.
    assert "Finished with" not in full and "were rejected and not imported" not in full


@pytest.mark.parametrize(
    ("result", "state", "rows", "rejected"),
    [
        ({"created": 5, "updated": 0, "unchanged": 0, "rejected": 0, "rows": 5}, "succeeded", 0, 0),
        ({"created": 3, "updated": 1, "unchanged": 0, "rejected": 1, "rows": 5}, "partial", 5, 1),
        ({"created": 0, "updated": 0, "unchanged": 0, "rejected": 4, "rows": 4}, "rejected", 4, 4),
        # Finished before "rows" and "unchanged" were counted: the rows add up.
        ({"created": 2, "updated": 1, "rejected": 3}, "partial", 6, 3),
        ({"created": 0, "updated": 0, "rejected": 3}, "rejected", 3, 3),
    ],
)
def test_the_outcome_of_a_finished_import_follows_its_counts(
    english, result, state, rows, rejected
):
    job = Job(kind=importers.JOB_KIND, status=JobStatus.SUCCEEDED, result=result)

    outcome = job_outcome(job)

    assert (outcome.state, outcome.rows, outcome.rejected) == (state, rows, rejected)


def test_a_finished_export_is_a_plain_success(english):
    job = Job(kind="contact_export", status=JobStatus.SUCCEEDED, result={"rows": 3})

    outcome = job_outcome(job)

    assert (outcome.state, outcome.label, outcome.badge) == ("succeeded", "Succeeded", "badge-ok")


def test_large_counts_are_grouped_in_the_label(english):
    job = Job(
        kind=importers.JOB_KIND,
        status=JobStatus.SUCCEEDED,
        result={"created": 998_766, "updated": 0, "unchanged": 0, "rejected": 1_234},
    )

    assert job_outcome(job).label == "Finished with 1,234 rejected rows"


# --- 2. A rejected row names every invalid value -----------------------------------------------


@pytest.fixture
def fields():
    """Custom fields in the order of the contact form (their position), which is not the
    order of their keys."""
    return [
        CustomField.objects.create(key="shoe_size", label="鞋码", kind="number", position=1),
        CustomField.objects.create(
            key="size", label="尺码", kind="single_choice", choices=["S", "M", "L"], position=2
        ),
        CustomField.objects.create(key="vip", label="是否会员", kind="boolean", position=3),
        CustomField.objects.create(
            key="colours",
            label="喜欢的颜色",
            kind="multi_choice",
            choices=["红色", "蓝色"],
            position=4,
        ),
    ]


def test_every_invalid_value_of_a_row_is_in_its_reason_by_field_label(
    media, english, fields, django_capture_on_commit_callbacks
):
    rows = [
        {
            "手机号": "13800138000",
            "邮箱": "not-an-email",
            "性别": "不详",
            "鞋码": "大号",
            "尺码": "XL",
            "是否会员": "也许",
            "喜欢的颜色": "红色，紫色",
        },
        # The same bad custom values again: validated once, reported in full for both rows.
        {
            "手机号": "13900139000",
            "邮箱": "",
            "性别": "",
            "鞋码": "大号",
            "尺码": "XL",
            "是否会员": "也许",
            "喜欢的颜色": "红色，紫色",
        },
        # One bad custom value among good ones: only that one.
        {
            "手机号": "13700137000",
            "邮箱": "",
            "性别": "女",
            "鞋码": "38",
            "尺码": "M",
            "是否会员": "maybe",
            "喜欢的颜色": "蓝色",
        },
        {
            "手机号": "13600136000",
            "邮箱": "",
            "性别": "",
            "鞋码": "39",
            "尺码": "S",
            "是否会员": "是",
            "喜欢的颜色": "蓝色、红色",
        },
    ]

    job = run(rows, django_capture_on_commit_callbacks, key="phone")

    custom = (
        "Custom field '鞋码' must be a number; "
        "Custom field '尺码' must be one of: S, M, L; "
        "Custom field '是否会员' must be yes or no (是/否, yes/no, true/false or 1/0); "
        "Custom field '喜欢的颜色' has options outside the choices: 紫色."
    )
    assert reasons(job, media) == {
        "2": f"Invalid email; Gender must be 男/女 or male/female; {custom}",
        "3": custom,
        "4": "Custom field '是否会员' must be yes or no (是/否, yes/no, true/false or 1/0).",
    }
    assert counts(job) == (1, 0, 0, 3)
    good = Contact.objects.get(phone="+8613600136000")
    assert good.attributes == {
        "shoe_size": 39,
        "size": "S",
        "vip": True,
        "colours": ["蓝色", "红色"],
    }


def test_the_reasons_read_in_the_operators_language(
    media, settings, fields, django_capture_on_commit_callbacks
):
    settings.LANGUAGE_CODE = "zh-hans"
    rows = [{"手机号": "13800138000", "邮箱": "坏", "尺码": "XL", "是否会员": "也许"}]

    with translation.override("zh-hans"):
        job = run(rows, django_capture_on_commit_callbacks, key="phone")

    assert reasons(job, media) == {
        "2": "邮箱无效; 自定义字段“尺码”须为以下之一：S、M、L; "
        "自定义字段“是否会员”须为是或否（是/否、yes/no、true/false 或 1/0）。"
    }


def test_the_preview_shows_every_invalid_value_too(admin_client, media, english, fields):
    job = upload([{"手机号": "13800138000", "鞋码": "大号", "尺码": "XL"}])

    page = admin_client.get(reverse("contacts_io:import_mapping", args=[job.pk])).content.decode()

    preview = page[page.index('id="import-preview"') :]
    assert (
        "Custom field &#x27;鞋码&#x27; must be a number; "
        "Custom field &#x27;尺码&#x27; must be one of: S, M, L." in preview
    )


def test_a_nul_in_a_custom_field_is_named_by_its_label(english, fields):
    spec = ImportSpec(mapping={"手机号": "phone", "鞋码": "cf:shoe_size"}, key="phone")
    frame = pd.DataFrame({"手机号": ["13800138000"], "鞋码": ["4\x002"]}, dtype=str)

    good, bad = importers.prepare_chunk(frame, spec=spec, state=importers.ChunkState.load())

    assert good.empty
    assert list(bad["_reason"]) == ["鞋码 contains the NUL character (U+0000)."]


# --- 3. Multiple-choice cells split on the separators Chinese spreadsheets use -----------------


@pytest.mark.parametrize(
    "cell",
    [
        "红色,蓝色",
        "红色，蓝色",
        "红色、蓝色",
        "红色;蓝色",
        "红色；蓝色",
        "红色|蓝色",  # as the export writes it
        " 红色 ， 蓝色 ",
        "红色、、蓝色、",
        "红色；蓝色，红色",  # repeated: kept once
    ],
)
def test_multiple_choice_cells_split_on_every_separator(
    media, english, fields, cell, django_capture_on_commit_callbacks
):
    job = run(
        [{"手机号": "13800138000", "喜欢的颜色": cell}],
        django_capture_on_commit_callbacks,
        key="phone",
    )

    assert counts(job) == (1, 0, 0, 0), reasons(job, media)
    assert Contact.objects.get().attributes == {"colours": ["红色", "蓝色"]}


def test_a_choice_that_contains_a_separator_is_read_whole(
    media, english, django_capture_on_commit_callbacks
):
    CustomField.objects.create(key="plan", label="套餐", kind="multi_choice", choices=["A;B", "C"])
    rows = [{"手机号": "13800138000", "套餐": "A;B"}, {"手机号": "13900139000", "套餐": "A;B，C"}]

    job = run(rows, django_capture_on_commit_callbacks, key="phone")

    assert Contact.objects.get(phone="+8613800138000").attributes == {"plan": ["A;B"]}
    # Mixed with another option it is split like any cell: say which options are unknown.
    assert reasons(job, media) == {
        "3": "Custom field '套餐' has options outside the choices: A, B."
    }


# --- 4. A file that is no table is refused at upload -------------------------------------------


def _png() -> bytes:
    return bytes.fromhex(
        "89504e470d0a1a0a0000000d4948445200000001000000010806000000"
        "1f15c4890000000d49444154789c6300010000050001"
    )


def _zip(parts: dict[str, bytes], *, compression=zipfile.ZIP_DEFLATED) -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", compression=compression) as archive:
        for name, data in parts.items():
            archive.writestr(name, data)
    return buffer.getvalue()


def _xlsx(rows: list[list] | None = None) -> bytes:
    book = openpyxl.Workbook()
    for row in rows or [["手机号", "姓名"], ["13800138000", "林"], ["13900139000", "王"]]:
        book.active.append(row)
    buffer = io.BytesIO()
    book.save(buffer)
    return buffer.getvalue()


def _xlsx_with_part(name: str, data: bytes) -> bytes:
    """A workbook whose part `name` is replaced by `data` (a zip intact, its content not)."""
    source = zipfile.ZipFile(io.BytesIO(_xlsx()))
    return _zip({n: (data if n == name else source.read(n)) for n in source.namelist()})


def _xlsx_with_corrupt_data() -> bytes:
    """A workbook whose first sheet's stored bytes no longer match their checksum."""
    content = bytearray(
        _zip(
            {
                n: zipfile.ZipFile(io.BytesIO(_xlsx())).read(n)
                for n in zipfile.ZipFile(io.BytesIO(_xlsx())).namelist()
            },
            compression=zipfile.ZIP_STORED,
        )
    )
    info = zipfile.ZipFile(io.BytesIO(bytes(content))).getinfo("xl/worksheets/sheet1.xml")
    # Past the local header (30 bytes, the name, no extra field): a digit of the sheet's XML.
    start = info.header_offset + 30 + len(info.filename)
    data = content[start : start + info.compress_size]
    at = start + data.index(b"13800138000")
    content[at] = ord("9")
    return bytes(content)


def _upload_page(client, name: str, content: bytes):
    return client.post(reverse("contacts_io:import"), {"file": SimpleUploadedFile(name, content)})


def _stored(media) -> list[str]:
    return [p.name for p in media.rglob("*") if p.is_file()]


DAMAGED = "The Excel workbook is damaged and cannot be read."


@pytest.mark.parametrize(
    ("name", "content", "error"),
    [
        ("客户.csv", _png(), "The file is a PNG image, not a table of contacts."),
        ("客户.csv", b"\xff\xd8\xff\xe0\x00\x10JFIF", "The file is a JPEG image"),
        ("客户.csv", b"GIF89a\x01\x00\x01\x00", "The file is a GIF image"),
        ("客户.csv", b"RIFF\x10\x00\x00\x00WEBPVP8 ", "The file is a WebP image"),
        ("客户.csv", b"\x00\x00\x00\x18ftypheic", "The file is a video or a phone photo (HEIC)"),
        # A PDF has no NUL in its first bytes and decodes as GB18030: it used to reach the
        # mapping step with "%PDF-1.4" as its only column.
        (
            "客户.csv",
            b"%PDF-1.4\n%\xe2\xe3\xcf\xd3\n1 0 obj\n<< /Type /Catalog >>\nendobj\n%%EOF\n",
            "The file is a PDF document, not a table of contacts.",
        ),
        ("客户.csv", b"{\\rtf1\\ansi 13800138000}", "The file is an RTF document"),
        ("客户.csv", b"\x1f\x8b\x08\x00" + b"\x00" * 20, "The file is a gzip archive"),
        ("客户.csv", b"Rar!\x1a\x07\x01\x00", "The file is a RAR archive"),
        ("客户.csv", b"7z\xbc\xaf\x27\x1c\x00\x04", "The file is a 7-Zip archive"),
        (
            "客户.csv",
            _zip({"客户.csv": "手机号\n13800138000\n".encode()}),
            "The file is a ZIP archive, not an Excel workbook. Unzip it",
        ),
        (
            "客户.xlsx",
            _zip({"客户.csv": "手机号\n13800138000\n".encode()}),
            "The file is a ZIP archive, not an Excel workbook. Unzip it",
        ),
        (
            "客户.xlsx",
            _zip({"[Content_Types].xml": b"<Types/>", "word/document.xml": b"<w:document/>"}),
            "The file is a Word document, not a table of contacts.",
        ),
        (
            "客户.xlsx",
            _zip({"mimetype": b"application/vnd.oasis.opendocument.spreadsheet"}),
            "OpenDocument spreadsheets (.ods) are not supported",
        ),
        (
            "客户.xlsx",
            b"\xd0\xcf\x11\xe0\xa1\xb1\x1a\xe1" + b"\x00" * 512,
            "The workbook is protected with a password or saved in the old .xls format.",
        ),
        (
            "客户.csv",
            b"\xd0\xcf\x11\xe0\xa1\xb1\x1a\xe1" + b"\x00" * 512,
            "Old .xls workbooks are not supported",
        ),
        (
            "客户.csv",
            "手机号,姓名\r\n13800138000,林\r\n".encode("utf-16"),
            "The file is UTF-16 text (Excel’s “Unicode Text”).",
        ),
        (
            "客户.xlsx",
            "手机号,姓名\n13800138000,林\n".encode(),
            "The file is named .xlsx but holds text, not an Excel workbook.",
        ),
        ("客户.xlsx", _xlsx()[:-200], DAMAGED),  # a download cut short
        ("客户.xlsx", _xlsx_with_corrupt_data(), DAMAGED),
        (
            "客户.xlsx",
            _xlsx_with_part("xl/worksheets/sheet1.xml", b"<worksheet><sheetData"),
            DAMAGED,
        ),
        ("客户.xlsx", _xlsx_with_part("xl/workbook.xml", b"not xml"), DAMAGED),
    ],
    ids=lambda value: value if isinstance(value, str) and len(value) < 12 else None,
)
def test_a_file_that_is_no_table_gets_a_specific_error_on_the_upload_form(
    admin_client, media, english, name, content, error
):
    response = _upload_page(admin_client, name, content)

    assert response.status_code == 400
    page = response.content.decode().replace("&#x27;", "'").replace("&quot;", '"')
    field = page[page.index('<div class="field has-error">') :]
    assert '<div class="field-error">' + error in field, field[:600]
    assert "could not be read as CSV or Excel" not in page
    assert not Job.objects.exists()
    assert _stored(media) == []


def test_a_workbook_named_csv_is_still_read_as_a_workbook(admin_client, media):
    response = _upload_page(admin_client, "客户.csv", _xlsx())

    job = Job.objects.get()
    assert response.status_code == 302
    assert (job.params["format"], job.params["headers"], job.total) == (
        "xlsx",
        ["手机号", "姓名"],
        2,
    )


def test_sniffing_leaves_a_good_upload_whole(media, english, django_capture_on_commit_callbacks):
    from tests.contacts.importing import csv_bytes

    rows = [{"手机号": f"1380013800{i}", "姓名": f"客户{i}"} for i in range(5)]
    job = importers.import_upload(file=SimpleUploadedFile("客户.csv", csv_bytes(rows)), user=None)

    assert (media / job.input_file).read_bytes() == csv_bytes(rows)
    spec = ImportSpec(mapping=job.params["mapping"], key="phone")
    with django_capture_on_commit_callbacks(execute=True):
        importers.import_start(job=job, spec=spec)
    job.refresh_from_db()
    assert counts(job) == (5, 0, 0, 0)


def test_a_workbook_that_unpacks_to_far_more_than_its_size_is_refused_at_once(
    admin_client, media, english
):
    # 64 MB of zeros pack into about 64 KB: the upload is refused on the archive's table of
    # contents, before anything is inflated or stored.
    bomb = _xlsx_with_part("xl/worksheets/sheet1.xml", bytes(64 * 1024 * 1024))
    assert len(bomb) < 1024 * 1024

    response = _upload_page(admin_client, "客户.xlsx", bomb)

    assert response.status_code == 400
    assert "unpacks to far more data than a spreadsheet of its size holds" in (
        response.content.decode()
    )
    assert _stored(media) == [] and not Job.objects.exists()


def test_the_rejected_rows_file_is_in_the_uploaders_language(
    media, django_capture_on_commit_callbacks
):
    # Chunks are read and checked in a thread of their own, which starts in the default
    # language: the reasons came out in Chinese under English headers.
    rows = [{"会员号": "K1", "手机号": "12345"}, {"会员号": "K2", "手机号": "13800138000"}]
    with translation.override("en"):
        job = run(rows, django_capture_on_commit_callbacks)

    assert job.params["language"] == "en"
    (reason,) = reasons(job, media).values()
    assert reason == "Invalid phone number."
