"""Exports of what contacts really hold: control characters pasted into a name."""

import openpyxl
import pytest

from contacts import exporters
from core.models import JobStatus
from tests.factories import ContactFactory, UserFactory

pytestmark = pytest.mark.django_db


def test_a_control_character_in_a_name_neither_fails_the_xlsx_export_nor_hides_a_formula(
    media, english, django_capture_on_commit_callbacks
):
    # A vertical tab is Word's line break, pasted along with a name; the API stores it.
    ContactFactory(name="林\x0b小雨", nickname="\x01=HYPERLINK(1)")
    ContactFactory(name="王大山", nickname="😀" * 100)

    with django_capture_on_commit_callbacks(execute=True):
        job = exporters.export_start(user=UserFactory(), filters={}, fmt="xlsx")
    job.refresh_from_db()

    assert job.status == JobStatus.SUCCEEDED, job.error
    sheet = openpyxl.load_workbook(media / job.output_file).active
    rows = list(sheet.iter_rows(min_row=2, values_only=True))
    names = {row[1]: row for row in rows}
    assert set(names) == {"林小雨", "王大山"}
    nickname = sheet.cell(row=[r[1] for r in rows].index("林小雨") + 2, column=3)
    assert nickname.value == "=HYPERLINK(1)" and nickname.data_type == "s"
    assert names["王大山"][2] == "😀" * 100
