"""Files as Chinese operators produce them: a title above the header, birthdays that lost their
date format, phones Excel wrote in scientific notation."""

import datetime as dt
import io

import openpyxl
import pytest
from django.core.files.uploadedfile import SimpleUploadedFile
from django.urls import reverse

from contacts import importers
from contacts.importers import ImportSpec
from contacts.models import Contact
from core.models import Job
from tests.contacts.importing import finish, reasons

pytestmark = pytest.mark.django_db


def _workbook(rows: list[list], *, merge: str = "") -> bytes:
    workbook = openpyxl.Workbook()
    sheet = workbook.active
    for row in rows:
        sheet.append(row)
    if merge:
        sheet.merge_cells(merge)
    buffer = io.BytesIO()
    workbook.save(buffer)
    return buffer.getvalue()


def _upload(content: bytes, name: str) -> Job:
    return importers.import_upload(file=SimpleUploadedFile(name, content), user=None)


def _run(job: Job, capture) -> Job:
    return finish(job, capture, key="phone")


def _names() -> dict[str, str]:
    return dict(Contact.objects.values_list("phone", "name"))


def test_a_title_merged_above_a_workbooks_header_is_skipped_and_rows_keep_their_number(
    media, english, django_capture_on_commit_callbacks
):
    content = _workbook(
        [
            ["客户名单 2026-11", None, None],
            [None, None, None],
            ["手机号", "姓名", "城市"],
            [13800138000, "林小雨", "上海"],
            ["12345", "王大山", "北京"],
        ],
        merge="A1:C1",
    )

    job = _upload(content, "客户名单.xlsx")

    assert job.params["headers"] == ["手机号", "姓名", "城市"]
    assert job.params["mapping"] == {"手机号": "phone", "姓名": "name", "城市": "city"}
    job = _run(job, django_capture_on_commit_callbacks)
    assert _names() == {"+8613800138000": "林小雨"}
    # The bad row is named by its row in the sheet, title and blank row counted.
    assert reasons(job, media) == {"5": "Invalid phone number."}


@pytest.mark.parametrize(
    "content",
    [
        # Excel pads every line of a CSV to the sheet's width, the title's too.
        "客户名单 2026-11,,\r\n手机号,姓名,城市\r\n13800138000,林小雨,上海\r\n".encode("gbk"),
        # A title line with no separator at all above a tab-separated header.
        "客户名单 2026-11\n导出人：张三\n手机号\t姓名\t城市\n13800138000\t林小雨\t上海\n".encode(),
    ],
    ids=["excel-csv", "tab-separated"],
)
def test_title_lines_above_a_csv_header_are_skipped(
    content, media, english, django_capture_on_commit_callbacks
):
    job = _upload(content, "客户名单.csv")

    assert job.params["mapping"] == {"手机号": "phone", "姓名": "name", "城市": "city"}
    _run(job, django_capture_on_commit_callbacks)
    assert Contact.objects.get().city == "上海"


@pytest.mark.parametrize(
    "rows",
    [
        # One column whose header the import does not know, then a row wider than it.
        [["号码"], ["13800138000", "多余"]],
        # A first row of one cell above a row that names no known column: no header follows.
        [["说明"], ["甲", "乙"], ["13800138000", "林小雨"]],
    ],
)
def test_a_first_row_is_kept_as_the_header_unless_a_known_header_follows_it(rows, media):
    job = _upload(_workbook(rows), "a.xlsx")

    assert job.params["headers"][0] == rows[0][0]


def test_birthdays_that_lost_their_date_format_are_read_as_excels_day_numbers(
    media, english, django_capture_on_commit_callbacks
):
    # 33010 is how Excel holds 1990-05-17: a column set to "General" shows it so.
    content = _workbook(
        [
            ["手机号", "生日"],
            ["13800138000", 33010],
            ["13900139000", "33010"],
            ["13700137000", 1990],
        ]
    )

    job = _run(_upload(content, "a.xlsx"), django_capture_on_commit_callbacks)

    birthdays = dict(Contact.objects.values_list("phone", "birthday"))
    assert birthdays == {
        "+8613800138000": dt.date(1990, 5, 17),
        "+8613900139000": dt.date(1990, 5, 17),
    }
    # A bare year is no day number: refused as before, never a day in 1905.
    assert reasons(job, media) == {"4": "Birthday is not a date like 1990-05-17."}


def test_a_day_number_in_the_future_is_refused_like_any_future_birthday(english):
    spec = ImportSpec(mapping={"手机号": "phone", "生日": "birthday"}, key="phone")
    frame = importers.pd.DataFrame([{"手机号": "13800138000", "生日": "99999"}], dtype=str)

    good, bad = importers.prepare_chunk(frame, spec=spec, state=importers.ChunkState.load())

    assert good.empty
    assert bad["_reason"].tolist() == ["Birthday is in the future."]


def test_a_phone_excel_wrote_in_scientific_notation_is_refused_saying_how_to_fix_it(
    media, english, django_capture_on_commit_callbacks
):
    content = "手机号,姓名\r\n1.38001E+10,林小雨\r\n13900139000,王大山\r\n1380013800x,赵六\r\n"

    job = _run(_upload(content.encode("gbk"), "a.csv"), django_capture_on_commit_callbacks)

    assert _names() == {"+8613900139000": "王大山"}
    why = reasons(job, media)
    assert "scientific notation" in why["2"] and "format the phone column as Text" in why["2"]
    assert why["4"] == "Invalid phone number."


def test_a_hidden_first_sheet_is_skipped_and_the_mapping_page_names_the_sheet_read(
    media, english, admin_client, django_capture_on_commit_callbacks
):
    workbook = openpyxl.Workbook()
    lookup = workbook.active
    lookup.title = "门店编码"
    lookup.append(["编码", "门店"])
    lookup.append(["SH01", "上海静安店"])
    lookup.sheet_state = "hidden"
    customers = workbook.create_sheet("客户")
    customers.append(["手机号", "姓名"])
    customers.append(["13800138000", "林小雨"])
    workbook.create_sheet("说明").append(["请勿修改表头"])
    buffer = io.BytesIO()
    workbook.save(buffer)

    job = _upload(buffer.getvalue(), "客户.xlsx")

    assert job.params["headers"] == ["手机号", "姓名"]
    assert job.params["sheet"] == {"name": "客户", "count": 3}
    page = admin_client.get(reverse("contacts_io:import_mapping", args=[job.pk])).content.decode()
    assert "Reading the sheet “客户”" in page and "it has 3 sheets" in page
    _run(job, django_capture_on_commit_callbacks)
    assert _names() == {"+8613800138000": "林小雨"}


def test_a_workbook_of_one_sheet_says_nothing_about_sheets(media, english, admin_client):
    job = _upload(_workbook([["手机号", "姓名"], ["13800138000", "林小雨"]]), "客户.xlsx")

    assert job.params["sheet"]["count"] == 1
    page = admin_client.get(reverse("contacts_io:import_mapping", args=[job.pk])).content.decode()
    assert "Reading the sheet" not in page
