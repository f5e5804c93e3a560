"""A row refused when it is written (its phone, email or id belongs to another contact) is never
written, so it claims nothing in the file: the next row with its key or values is judged on its
own, in the same chunk or a later one, on SQLite and PostgreSQL alike."""

import pytest

from contacts import importers
from contacts.importers import ImportSpec
from contacts.models import Contact, Identity, IdentityKind
from tests.contacts.importing import (
    counts,
    reasons,
    run,
    upload,
)
from tests.factories import ContactFactory, IdentityFactory

pytestmark = [pytest.mark.django_db, pytest.mark.usefixtures("media", "english")]

DUP_KEY = "Duplicate of an earlier row in this file (same key)."
DUP_PHONE = "Duplicate of an earlier row in this file (same Phone)."


def by_member_number(value: str) -> Contact:
    return Identity.objects.get(kind=IdentityKind.EXTERNAL_ID, value=value).contact


@pytest.fixture
def bea():
    """Another contact, who owns the phone 13900139001."""
    contact = ContactFactory(name="Bea", phone="+8613900139001")
    IdentityFactory(contact=contact, kind=IdentityKind.PHONE, value="+8613900139001")
    return contact


@pytest.mark.parametrize("chunk_rows", [20_000, 1], ids=["same chunk", "next chunk"])
def test_the_next_row_with_the_key_of_a_refused_row_is_written(
    chunk_rows, bea, monkeypatch, media, django_capture_on_commit_callbacks
):
    monkeypatch.setattr(importers, "CHUNK_ROWS", chunk_rows)
    rows = [
        {"会员号": "K1", "手机号": "13900139001", "姓名": "has Bea's phone"},
        {"会员号": "K1", "手机号": "13900139002", "姓名": "valid"},
    ]

    job = run(rows, django_capture_on_commit_callbacks)

    assert reasons(job, media) == {"2": f"Phone belongs to another contact (ID {bea.pk})."}
    k1 = by_member_number("K1")
    assert (k1.name, k1.phone) == ("valid", "+8613900139002")
    assert counts(job) == (1, 0, 0, 1)


@pytest.mark.parametrize("chunk_rows", [20_000, 1], ids=["same chunk", "next chunk"])
def test_a_matched_contact_is_updated_by_the_row_after_a_refused_one(
    chunk_rows, bea, monkeypatch, media, django_capture_on_commit_callbacks
):
    monkeypatch.setattr(importers, "CHUNK_ROWS", chunk_rows)
    lin = ContactFactory(name="Lin", phone="")
    IdentityFactory(contact=lin, kind=IdentityKind.EXTERNAL_ID, value="A-1")
    rows = [
        {"会员号": "A-1", "手机号": "13900139001", "姓名": "Lin with Bea's phone"},
        {"会员号": "A-1", "手机号": "", "姓名": "Lin Xiaoyu"},
    ]

    job = run(rows, django_capture_on_commit_callbacks)

    assert reasons(job, media) == {"2": f"Phone belongs to another contact (ID {bea.pk})."}
    lin.refresh_from_db()
    assert (lin.name, lin.phone) == ("Lin Xiaoyu", "")
    assert counts(job) == (0, 1, 0, 1)


def test_a_refused_row_leaves_its_other_values_to_the_rows_after_it(
    bea, media, django_capture_on_commit_callbacks
):
    # Row 2 is refused for its phone, so its email was never claimed: row 3 may have it. And
    # each row is judged in file order: row 4 is the first K1 row kept, so row 5, which comes
    # later with row 4's phone, is the duplicate.
    rows = [
        {"会员号": "K1", "手机号": "13900139001", "邮箱": "k@example.com"},
        {"会员号": "K2", "手机号": "", "邮箱": "k@example.com"},
        {"会员号": "K1", "手机号": "13900139002", "邮箱": ""},
        {"会员号": "K3", "手机号": "13900139002", "邮箱": ""},
    ]

    job = run(rows, django_capture_on_commit_callbacks)

    assert reasons(job, media) == {
        "2": f"Phone belongs to another contact (ID {bea.pk}).",
        "5": DUP_PHONE,
    }
    assert by_member_number("K2").email == "k@example.com"
    assert by_member_number("K1").phone == "+8613900139002"
    assert not Identity.objects.filter(value="K3").exists()
    assert counts(job) == (2, 0, 0, 2)


@pytest.mark.parametrize("chunk_rows", [20_000, 1], ids=["same chunk", "next chunk"])
def test_a_row_repeating_a_written_row_is_a_duplicate_even_with_another_contacts_value(
    chunk_rows, bea, monkeypatch, media, django_capture_on_commit_callbacks
):
    # Row 3 repeats row 2's key and has Bea's phone: the duplicate is the reason, whether row
    # 2 was written in the same chunk or before; so is row 5's email, which row 4 took.
    monkeypatch.setattr(importers, "CHUNK_ROWS", chunk_rows)
    rows = [
        {"会员号": "K1", "手机号": "13900139002", "邮箱": "", "姓名": "first"},
        {"会员号": "K1", "手机号": "13900139001", "邮箱": "", "姓名": "has Bea's phone"},
        {"会员号": "K2", "手机号": "", "邮箱": "k@example.com", "姓名": "K2"},
        {"会员号": "K3", "手机号": "13900139001", "邮箱": "k@example.com", "姓名": "both"},
    ]

    job = run(rows, django_capture_on_commit_callbacks)

    assert reasons(job, media) == {
        "3": DUP_KEY,
        "5": "Duplicate of an earlier row in this file (same Email).",
    }
    assert by_member_number("K1").name == "first"
    assert counts(job) == (2, 0, 0, 2)


def test_the_preview_judges_the_row_after_a_refused_one_on_its_own(bea):
    rows = [
        {"会员号": "K1", "手机号": "13900139001", "姓名": "has Bea's phone"},
        {"会员号": "K1", "手机号": "13900139002", "姓名": "valid"},
        {"会员号": "K1", "手机号": "13900139003", "姓名": "second"},
    ]
    job = upload(rows)

    preview = importers.import_preview(
        job=job, spec=ImportSpec(mapping=job.params["mapping"], key="external_id")
    )

    assert [row["error"] for row in preview.rows] == [
        f"Phone belongs to another contact (ID {bea.pk}).",
        "",
        DUP_KEY,
    ]
    assert Contact.objects.count() == 1
