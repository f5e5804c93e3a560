"""A row rejected for any reason claims nothing in the file: the next row with its key, phone or
email is not a "duplicate" of it."""

import pandas as pd
import pytest
from django.db import connection

from contacts import importers
from contacts.importers import ImportSpec
from contacts.models import Contact, Identity, IdentityKind
from tests.contacts.importing import (
    reasons,
    run,
)

pytestmark = [pytest.mark.django_db, pytest.mark.usefixtures("media", "english")]

MAPPING = {"会员号": "external_id", "手机号": "phone", "姓名": "name"}


def prepared(rows: list[tuple[str, str]]) -> tuple[list[str], dict[int, str]]:
    """The names of the rows kept and the reasons of the others, by file row."""
    frame = pd.DataFrame(
        [{"会员号": k, "手机号": p, "姓名": f"r{i}"} for i, (k, p) in enumerate(rows)]
    )
    spec = ImportSpec(mapping=MAPPING, key="external_id")
    good, bad = importers.prepare_chunk(frame, spec=spec, state=importers.ChunkState.load())
    return good["name"].tolist(), dict(zip(bad["_row"], bad["_reason"], strict=True))


DUP_KEY = "Duplicate of an earlier row in this file (same key)."
DUP_PHONE = "Duplicate of an earlier row in this file (same Phone)."


def test_a_row_rejected_for_its_phone_does_not_make_the_next_row_with_its_key_a_duplicate(
    media, django_capture_on_commit_callbacks
):
    # The review's case: row 3 loses its phone to row 2, so row 4 is the first valid K1 row.
    rows = [
        {"会员号": "K0", "手机号": "13900139001", "姓名": "first"},
        {"会员号": "K1", "手机号": "13900139001", "姓名": "takes K0's phone"},
        {"会员号": "K1", "手机号": "13900139002", "姓名": "valid"},
    ]

    job = run(rows, django_capture_on_commit_callbacks)

    assert reasons(job, media) == {"3": DUP_PHONE}
    assert (job.result["created"], job.result["rejected"]) == (2, 1)
    k1 = Identity.objects.get(kind=IdentityKind.EXTERNAL_ID, value="K1").contact
    assert (k1.name, k1.phone) == ("valid", "+8613900139002")
    assert Contact.objects.count() == 2


def test_a_row_rejected_as_invalid_claims_nothing(media, django_capture_on_commit_callbacks):
    rows = [
        {"会员号": "K1", "手机号": "123", "姓名": "bad phone"},
        {"会员号": "K1", "手机号": "13900139002", "姓名": "valid"},
    ]

    job = run(rows, django_capture_on_commit_callbacks)

    assert reasons(job, media) == {"2": "Invalid phone number."}
    assert Contact.objects.get().name == "valid"


def test_the_first_kept_row_still_wins_across_chunks(
    monkeypatch, media, django_capture_on_commit_callbacks
):
    monkeypatch.setattr(importers, "CHUNK_ROWS", 2)
    rows = [
        {"会员号": "K0", "手机号": "13900139001", "姓名": "first"},
        {"会员号": "K1", "手机号": "13900139001", "姓名": "takes K0's phone"},
        {"会员号": "K1", "手机号": "13900139002", "姓名": "valid"},
        {"会员号": "K1", "手机号": "13900139003", "姓名": "second K1"},
        {"会员号": "K2", "手机号": "13900139002", "姓名": "takes K1's phone"},
    ]

    job = run(rows, django_capture_on_commit_callbacks)

    assert reasons(job, media) == {"3": DUP_PHONE, "5": DUP_KEY, "6": DUP_PHONE}
    k1 = Identity.objects.get(kind=IdentityKind.EXTERNAL_ID, value="K1").contact
    assert k1.name == "valid"


def chain(length: int) -> list[tuple[str, str]]:
    """Each row blocked by the one before: alternately by phone and by key."""
    rows = [("K0", "13900139000")]
    for i in range(1, length):
        previous_key, previous_phone = rows[-1]
        if i % 2:
            rows.append((f"K{i}", previous_phone))  # duplicate phone of a kept row
        else:
            rows.append((previous_key, f"139001390{i:02d}"))  # its key: the row before lost
    return rows


@pytest.mark.parametrize("passes", [1, importers.DUPLICATE_PASSES])
def test_a_chain_of_rejections_is_settled_in_file_order(monkeypatch, passes):
    # Long enough to need every pass, and, with one pass, the row-by-row finish.
    monkeypatch.setattr(importers, "DUPLICATE_PASSES", passes)
    rows = chain(21)

    kept, rejected = prepared(rows)

    assert kept == [f"r{i}" for i in range(0, 21, 2)]
    assert rejected == {i + 2: DUP_PHONE for i in range(1, 21, 2)}


def test_a_row_duplicating_two_kept_rows_gives_both_reasons():
    kept, rejected = prepared([("K0", "13900139000"), ("K1", "13900139001"), ("K0", "13900139001")])

    assert kept == ["r0", "r1"]
    assert rejected == {4: f"{DUP_KEY.rstrip('.')}; {DUP_PHONE}"}


@pytest.mark.skipif(connection.vendor != "postgresql", reason="xmax is PostgreSQL's")
def test_a_re_import_neither_locks_nor_rewrites_the_identities_contacts_have(
    media, django_capture_on_commit_callbacks
):
    # ON CONFLICT locks every row it reaches even when DO UPDATE's WHERE is false: a locked or
    # rewritten row has a non-zero xmax, an untouched one keeps 0.
    rows = [
        {"会员号": f"K{i}", "手机号": f"1390013900{i}", "邮箱": f"p{i}@example.com", "姓名": "x"}
        for i in range(3)
    ]
    run(rows, django_capture_on_commit_callbacks)
    rows[0]["邮箱"] = "new@example.com"  # one real change among unchanged rows

    job = run(rows, django_capture_on_commit_callbacks)

    assert (job.result["updated"], job.result["unchanged"]) == (1, 2)
    with connection.cursor() as cursor:
        cursor.execute(
            f"SELECT kind, value FROM {Identity._meta.db_table} WHERE xmax::text <> '0' "
            "ORDER BY kind, value"
        )
        touched = cursor.fetchall()
    assert touched == []
    assert set(
        Identity.objects.filter(kind=IdentityKind.EMAIL).values_list("value", flat=True)
    ) == {"new@example.com", "p1@example.com", "p2@example.com"}
