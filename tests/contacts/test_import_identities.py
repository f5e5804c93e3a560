"""An import never gives a contact a phone, email, unionid or external id of another contact, and
a changed phone or email replaces the old identity the way a PATCH of the profile does."""

import pandas as pd
import pytest
from django.core.files.uploadedfile import SimpleUploadedFile
from django.db import connection

from contacts import importers, services
from contacts.importers import ImportSpec
from contacts.models import Contact, ContactTag, Identity, IdentityKind, Tag
from core.errors import ValidationFailed
from tests.contacts.importing import (
    counts,
    csv_bytes,
    reasons,
    run,
)
from tests.factories import ContactFactory, IdentityFactory

pytestmark = [pytest.mark.django_db, pytest.mark.usefixtures("media", "english")]


def person(*, external_id: str, phone: str = "", email: str = "", name: str = "") -> Contact:
    contact = ContactFactory(phone=phone, email=email, name=name or external_id)
    IdentityFactory(contact=contact, kind=IdentityKind.EXTERNAL_ID, value=external_id)
    if phone:
        IdentityFactory(contact=contact, kind=IdentityKind.PHONE, value=phone)
    if email:
        IdentityFactory(contact=contact, kind=IdentityKind.EMAIL, value=email)
    return contact


def identities(contact: Contact, kind: str) -> set[str]:
    return set(contact.identities.filter(kind=kind).values_list("value", flat=True))


def test_a_phone_of_another_contact_is_refused_and_nobody_changes(
    media, django_capture_on_commit_callbacks
):
    # The audit's case: by external id, A takes B's phone and a new row claims it too. Row 2
    # is never written, so row 3 is no duplicate of it: it is refused for the same reason.
    b = person(external_id="B-1", phone="+8613900139001", name="B")
    a = person(external_id="A-1", phone="+8613900139002", name="A")
    rows = [
        {"会员号": "A-1", "手机号": "13900139001", "姓名": "A2"},
        {"会员号": "N-1", "手机号": "13900139001", "姓名": "N"},
    ]

    job = run(rows, django_capture_on_commit_callbacks, key="external_id")

    assert reasons(job, media) == {
        "2": f"Phone belongs to another contact (ID {b.pk}).",
        "3": f"Phone belongs to another contact (ID {b.pk}).",
    }
    a.refresh_from_db()
    assert (a.name, a.phone) == ("A", "+8613900139002")  # nothing of the row was written
    assert identities(a, IdentityKind.PHONE) == {"+8613900139002"}
    assert identities(b, IdentityKind.PHONE) == {"+8613900139001"}
    assert Contact.objects.count() == 2
    assert not Identity.objects.filter(value="N-1").exists()
    assert counts(job) == (0, 0, 0, 2)


@pytest.mark.parametrize(
    ("key", "key_column", "column", "kind", "cell", "stored"),
    [
        ("external_id", "会员号", "手机号", IdentityKind.PHONE, "13800138000", "+8613800138000"),
        ("external_id", "会员号", "邮箱", IdentityKind.EMAIL, "Lin@Example.com", "lin@example.com"),
        ("external_id", "会员号", "unionid", IdentityKind.WECHAT_UNIONID, "oU-1", "oU-1"),
        ("phone", "手机号", "会员号", IdentityKind.EXTERNAL_ID, "VIP-1", "VIP-1"),
    ],
)
def test_a_new_row_with_a_taken_identity_creates_nothing(
    key, key_column, column, kind, cell, stored, media, django_capture_on_commit_callbacks
):
    owner = ContactFactory(phone="", name="owner")
    IdentityFactory(contact=owner, kind=kind, value=stored)
    new_keys = {"会员号": ["N-1", "N-2"], "手机号": ["13900139000", "13700137000"]}[key_column]
    rows = [
        {key_column: new_keys[0], column: cell, "姓名": "taken"},
        {key_column: new_keys[1], column: "", "姓名": "fine"},
    ]

    job = run(rows, django_capture_on_commit_callbacks, key=key)

    label = str(importers.TARGETS[_target(kind)])
    assert reasons(job, media) == {"2": f"{label} belongs to another contact (ID {owner.pk})."}
    assert set(Contact.objects.values_list("name", flat=True)) == {"owner", "fine"}
    # The refused row's key was claimed before the check: it must not be left pointing nowhere.
    key_kind = importers.UPSERT_KEYS[key]
    claimed = Identity.objects.filter(kind=key_kind).values_list("contact__name", flat=True)
    assert list(claimed) == ["fine"]
    assert list(Identity.objects.filter(kind=kind).values_list("contact_id", flat=True)) == [
        owner.pk
    ]
    assert counts(job) == (1, 0, 0, 1)


def _target(kind: str) -> str:
    return next(c for c, k in importers.IDENTITY_COLUMNS.items() if k == kind)


def test_a_changed_phone_or_email_replaces_the_old_identity_like_a_patch(
    django_capture_on_commit_callbacks,
):
    imported = person(external_id="A-1", phone="+8613900139002", email="old@example.com")
    patched = person(external_id="P-1", phone="+8613700137002", email="old2@example.com")
    rows = [{"会员号": "A-1", "手机号": "13900139003", "邮箱": "New@Example.com"}]

    job = run(rows, django_capture_on_commit_callbacks, key="external_id")
    services.contact_update(
        contact=patched, data={"phone": "13700137003", "email": "new2@example.com"}
    )

    imported.refresh_from_db()
    assert (imported.phone, imported.email) == ("+8613900139003", "new@example.com")
    assert identities(imported, IdentityKind.PHONE) == {"+8613900139003"}
    assert identities(imported, IdentityKind.EMAIL) == {"new@example.com"}
    assert identities(imported, IdentityKind.EXTERNAL_ID) == {"A-1"}
    # The same rule as the PATCH: the old values are free again, the new ones find the contact.
    assert identities(patched, IdentityKind.PHONE) == {"+8613700137003"}
    assert identities(patched, IdentityKind.EMAIL) == {"new2@example.com"}
    assert not Identity.objects.filter(value__in=["+8613900139002", "old@example.com"]).exists()
    assert counts(job) == (0, 1, 0, 0)


def test_a_value_the_matched_contact_already_owns_is_not_a_conflict(
    media, django_capture_on_commit_callbacks
):
    lin = person(external_id="A-1", phone="+8613800138000", email="lin@example.com")
    rows = [{"会员号": "A-1", "手机号": "13800138000", "邮箱": "lin@example.com", "姓名": "林"}]

    job = run(rows, django_capture_on_commit_callbacks, key="external_id")

    lin.refresh_from_db()
    assert lin.name == "林"
    assert identities(lin, IdentityKind.PHONE) == {"+8613800138000"}
    assert counts(job) == (0, 1, 0, 0)


def test_two_rows_claiming_one_email_in_different_chunks_keep_the_first(
    monkeypatch, media, django_capture_on_commit_callbacks
):
    monkeypatch.setattr(importers, "CHUNK_ROWS", 2)
    rows = [
        {"会员号": "K-1", "邮箱": "same@example.com"},
        {"会员号": "K-2", "邮箱": "other@example.com"},
        {"会员号": "K-3", "邮箱": "SAME@example.com"},
    ]

    job = run(rows, django_capture_on_commit_callbacks, key="external_id")

    assert reasons(job, media) == {"4": "Duplicate of an earlier row in this file (same Email)."}
    owner = Identity.objects.get(kind=IdentityKind.EMAIL, value="same@example.com").contact
    assert identities(owner, IdentityKind.EXTERNAL_ID) == {"K-1"}
    assert counts(job) == (2, 0, 0, 1)


def test_the_preview_shows_a_taken_identity(django_capture_on_commit_callbacks):
    b = person(external_id="B-1", phone="+8613900139001")
    person(external_id="A-1", phone="+8613900139002")
    rows = [
        {"会员号": "A-1", "手机号": "13900139001"},
        {"会员号": "A-1x", "手机号": "13900139005"},
    ]
    job = importers.import_upload(file=SimpleUploadedFile("客户.csv", csv_bytes(rows)), user=None)

    preview = importers.import_preview(
        job=job, spec=ImportSpec(mapping=job.params["mapping"], key="external_id")
    )

    assert [row["error"] for row in preview.rows] == [
        f"Phone belongs to another contact (ID {b.pk}).",
        "",
    ]
    assert Contact.objects.count() == 2


# --- A value taken by another transaction while the chunk is written (PostgreSQL) ------------


def _take_email_on_contact_insert(owner: Contact, times: int) -> None:
    """Have the database itself give `race@example.com` to `owner` right after the chunk
    inserts its contacts (after its checks): what a concurrent identify would do. A sequence is
    not rolled back with the chunk, so the take happens on the first `times` attempts only."""
    contact = Contact._meta.db_table
    identity = Identity._meta.db_table
    with connection.cursor() as cursor:
        cursor.execute("CREATE TEMP SEQUENCE import_race_attempt")
        cursor.execute(
            f"""
            CREATE FUNCTION pg_temp.take_email() RETURNS trigger LANGUAGE plpgsql AS $$
            BEGIN
                IF nextval('import_race_attempt') <= {int(times)} THEN
                    INSERT INTO {identity} (contact_id, kind, app_id, value, created_at)
                    VALUES ({int(owner.pk)}, 'email', '', 'race@example.com', now());
                END IF;
                RETURN NULL;
            END $$
            """
        )
        cursor.execute(
            f"CREATE TRIGGER import_race AFTER INSERT ON {contact} "
            "FOR EACH STATEMENT EXECUTE FUNCTION pg_temp.take_email()"
        )


postgresql_only = pytest.mark.skipif(
    connection.vendor != "postgresql",
    reason="SQLite's IMMEDIATE transactions hold the write lock: nothing can race",
)


def _race_chunk() -> tuple[pd.DataFrame, ImportSpec]:
    spec = ImportSpec(
        mapping={"会员号": "external_id", "邮箱": "email", "标签": "tags"}, key="external_id"
    )
    frame = pd.DataFrame([{"会员号": "N-1", "邮箱": "race@example.com", "标签": "抢注"}])
    good, bad = importers.prepare_chunk(frame, spec=spec, state=importers.ChunkState.load())
    assert bad.empty
    return good, spec


@postgresql_only
def test_a_chunk_that_loses_a_value_mid_write_is_rolled_back_and_written_again():
    owner = ContactFactory(name="owner")
    _take_email_on_contact_insert(owner, times=1)
    good, spec = _race_chunk()

    result = importers.import_chunk_write(
        good=good, spec=spec, resolver=importers.TagResolver(), collect=True
    )

    # The second attempt ran on a clean slate: the raced value is free again (the other write
    # was rolled back with the first attempt here), and the tag the first attempt had created
    # was created again rather than remembered.
    assert (result.created, result.rejected) == (1, [])
    new = Contact.objects.get(pk__in=result.contact_ids)
    assert identities(new, IdentityKind.EMAIL) == {"race@example.com"}
    assert list(ContactTag.objects.filter(contact=new).values_list("tag__name", flat=True)) == [
        "抢注"
    ]
    assert Tag.objects.filter(name="抢注").count() == 1
    with connection.cursor() as cursor:
        cursor.execute("SET CONSTRAINTS ALL IMMEDIATE")  # no row points at a rolled-back one


@postgresql_only
def test_a_chunk_that_keeps_losing_values_fails_without_writing_anything():
    owner = ContactFactory(name="owner")
    _take_email_on_contact_insert(owner, times=importers.CHUNK_ATTEMPTS)
    good, spec = _race_chunk()

    with pytest.raises(importers.IdentityRaced, match="run the import again"):
        importers.import_chunk_write(
            good=good, spec=spec, resolver=importers.TagResolver(), collect=True
        )

    assert list(Contact.objects.values_list("name", flat=True)) == ["owner"]
    assert not Identity.objects.filter(value__in=["N-1", "race@example.com"]).exists()
    assert not Tag.objects.filter(name="抢注").exists()


def test_the_api_refuses_what_the_import_refuses():
    # The rule the import follows: a PATCH that gives A the phone of B is refused by name.
    b = person(external_id="B-1", phone="+8613900139001")
    a = person(external_id="A-1", phone="+8613900139002")

    with pytest.raises(ValidationFailed) as refused:
        services.contact_update(contact=a, data={"phone": "13900139001"})

    assert refused.value.code == "identity_taken"
    assert refused.value.details == {"field": "phone", "contact_id": b.pk}


def test_the_preview_keeps_the_files_column_order():
    # The mapping is stored in a JSON column; PostgreSQL's jsonb gives its keys back sorted by
    # length ("City" before "Mobile" before "Birthday"), not in the file's order.
    rows = [
        {
            "Name": "林",
            "Mobile": "13900139001",
            "Email": "l@example.cn",
            "Birthday": "",
            "City": "上海",
        }
    ]
    job = importers.import_upload(
        file=SimpleUploadedFile("customers.csv", csv_bytes(rows)), user=None
    )
    job.refresh_from_db()

    preview = importers.import_preview(
        job=job, spec=ImportSpec(mapping=job.params["mapping"], key="phone")
    )

    assert [target for target, _label in preview.columns] == [
        "name",
        "phone",
        "email",
        "birthday",
        "city",
    ]
