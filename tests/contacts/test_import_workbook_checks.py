"""Workbooks written by programs rather than saved in Excel or WPS: formulas without a saved
result are refused at upload, naming the cells (their values would import as empty; formulas
with saved results import as their results), and a sheet that records no dimension still gets
its rows counted."""

import io
import re
import zipfile

import openpyxl
import pytest
from django.core.files.uploadedfile import SimpleUploadedFile
from django.urls import reverse

from contacts import importers
from contacts.models import Contact
from core.models import Job
from tests.contacts.importing import finish

pytestmark = pytest.mark.django_db

SHEET = "xl/worksheets/sheet1.xml"


def _workbook(rows: list[list]) -> bytes:
    """As openpyxl (or a report generator) writes it: formulas without results."""
    book = openpyxl.Workbook()
    for row in rows:
        book.active.append(row)
    buffer = io.BytesIO()
    book.save(buffer)
    return buffer.getvalue()


def _rewrite_sheet(content: bytes, rewrite) -> bytes:
    """The workbook with its sheet's XML passed through `rewrite` (bytes → bytes)."""
    source = zipfile.ZipFile(io.BytesIO(content))
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as archive:
        for name in source.namelist():
            data = source.read(name)
            archive.writestr(name, rewrite(data) if name == SHEET else data)
    return buffer.getvalue()


def _saved_by_excel(content: bytes, results: dict[str, str]) -> bytes:
    """Each formula cell of `results` (A1 → its text) given a saved result, as Excel saves it."""

    def rewrite(xml: bytes) -> bytes:
        for ref, value in results.items():
            xml = re.sub(
                rf'(<c r="{ref}")([^>]*>)(<f>.*?</f>)<v\s*/>'.encode(),
                lambda m, v=value: (
                    m.group(1) + b' t="str"' + m.group(2) + m.group(3) + f"<v>{v}</v>".encode()
                ),
                xml,
            )
        return xml

    return _rewrite_sheet(content, rewrite)


def _upload(client, content: bytes):
    return client.post(
        reverse("contacts_io:import"), {"file": SimpleUploadedFile("会员.xlsx", content)}
    )


def _error(response) -> str:
    page = response.content.decode().replace("&#x27;", "'").replace("&quot;", '"')
    field = page[page.index('<div class="field-error">') :]
    return field[len('<div class="field-error">') : field.index("</div>")]


ROWS = [
    ["手机号", "姓名", "城市"],
    ["13800138000", "林", '=IF(1=1,"上海","北京")'],
    ["13900139000", "王", '=IF(1=1,"上海","北京")'],
]


def test_formulas_without_saved_results_are_refused_naming_their_cells(
    admin_client, media, english
):
    response = _upload(admin_client, _workbook(ROWS))

    assert response.status_code == 400
    assert _error(response) == (
        "Cells C2, C3 hold formulas without a saved result (the workbook was written by a "
        "program, not saved in Excel or WPS), so their values cannot be read and would import "
        "as empty. Open the file in Excel or WPS, save it and upload it again."
    )
    assert not Job.objects.exists()
    assert not [p for p in media.rglob("*") if p.is_file()]


def test_more_cells_than_shown_end_with_an_ellipsis(english, tmp_path):
    rows = [["手机号", "积分"], *([f"1380013800{i}", f"=A{i + 2}*0"] for i in range(8))]
    path = tmp_path / "会员.xlsx"
    path.write_bytes(_workbook(rows))

    with pytest.raises(importers.ImportFileError) as caught:
        importers.import_upload(file=SimpleUploadedFile("会员.xlsx", path.read_bytes()), user=None)

    assert caught.value.message.startswith("Cells B2, B3, B4, B5, B6 … hold formulas")
    assert caught.value.details == {"cells": ["B2", "B3", "B4", "B5", "B6"]}


def test_formulas_saved_with_their_results_import_as_their_results(
    admin_client, media, django_capture_on_commit_callbacks
):
    content = _saved_by_excel(_workbook(ROWS), {"C2": "上海", "C3": "北京"})

    response = _upload(admin_client, content)

    assert response.status_code == 302
    job = Job.objects.get()
    finish(job, django_capture_on_commit_callbacks, key="phone")
    assert dict(Contact.objects.values_list("name", "city")) == {"林": "上海", "王": "北京"}


def test_a_text_formula_whose_saved_result_is_empty_is_read_as_empty(admin_client, media):
    """Excel saves ="" as an empty text result: a result, not a missing one."""
    content = _saved_by_excel(_workbook(ROWS), {"C2": "", "C3": "北京"})

    assert _upload(admin_client, content).status_code == 302


def test_a_formula_in_another_sheet_than_the_one_imported_is_no_concern(tmp_path):
    book = openpyxl.Workbook()
    book.active.append(["手机号", "姓名"])
    book.active.append(["13800138000", "林"])
    book.create_sheet("汇总").append(["=COUNTA(Sheet!A:A)"])
    path = tmp_path / "会员.xlsx"
    book.save(path)

    assert importers.formula_cells_without_results(path) == []


def test_a_formula_written_with_a_namespace_prefix_is_found(tmp_path):
    path = tmp_path / "会员.xlsx"
    path.write_bytes(
        _rewrite_sheet(
            _workbook(ROWS),
            lambda xml: (
                xml.replace(b"<worksheet", b"<x:worksheet")
                .replace(b"</worksheet>", b"</x:worksheet>")
                .replace(b'xmlns="', b'xmlns:x="')
                .replace(b"<f>", b"<x:f>")
                .replace(b"</f>", b"</x:f>")
            ),
        )
    )

    assert importers.formula_cells_without_results(path) == ["C2", "C3"]


def test_the_sheet_checked_is_the_one_imported_the_first_visible_one(tmp_path):
    book = openpyxl.Workbook()
    notes = book.active
    notes.title = "说明"
    notes.append(["=TODAY()"])
    notes.sheet_state = "hidden"
    data = book.create_sheet("会员")
    data.append(["手机号", "积分"])
    data.append(["13800138000", "=1+1"])
    path = tmp_path / "会员.xlsx"
    book.save(path)

    assert importers.formula_cells_without_results(path) == ["B2"]


def test_a_workbook_that_records_no_dimension_still_gets_its_rows_counted(admin_client, media):
    """openpyxl's write-only mode (and other programs) write no <dimension>: the progress bar
    had a total of 0 rows. The rows are counted in the sheet instead."""
    book = openpyxl.Workbook(write_only=True)
    sheet = book.create_sheet("会员")
    sheet.append(["客户名单"])  # a title row above the header
    sheet.append(["手机号", "姓名"])
    for n in range(3):
        sheet.append([f"1380013800{n}", f"客户{n}"])
    buffer = io.BytesIO()
    book.save(buffer)
    assert b"<dimension" not in zipfile.ZipFile(buffer).read("xl/worksheets/sheet1.xml")

    response = _upload(admin_client, buffer.getvalue())

    assert response.status_code == 302
    job = Job.objects.get()
    assert job.total == 3
    assert job.params["headers"] == ["手机号", "姓名"]
    assert job.params["sheet"] == {"name": "会员", "count": 1}
