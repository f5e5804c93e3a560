"""An import never brings back a person whose data was erased at their request: a row that
would create a contact for one of their identities is rejected with the reason, on SQLite and
PostgreSQL alike. A row that matches a live contact (the person came back by themselves) is
that contact's update. With no tombstone at all, no row is digested."""

import pytest
from django.db import connection
from django.test.utils import CaptureQueriesContext

from contacts import importers
from contacts.importers import ImportSpec
from contacts.models import Contact, Identity, IdentityKind, SuppressedIdentity
from contacts.services import IdentityInput, contact_erase, identify
from tests.contacts.importing import counts, existing, finish, reasons, run, upload
from tests.factories import ContactFactory, IdentityFactory

pytestmark = [pytest.mark.django_db, pytest.mark.usefixtures("media", "english")]

ERASED = "This person asked for their personal data to be erased; they cannot be imported again."
PHONE = "+8613800138000"


def erase(contact: Contact) -> None:
    contact_erase(contact=contact, source="operator", reference="工单 42")


def by_phone(phone: str) -> Contact:
    return Contact.objects.get(phone=phone)


@pytest.mark.parametrize("chunk_rows", [20_000, 1], ids=["one chunk", "a chunk per row"])
def test_a_row_with_an_erased_persons_phone_is_rejected_and_the_others_are_imported(
    chunk_rows, monkeypatch, media, django_capture_on_commit_callbacks
):
    monkeypatch.setattr(importers, "CHUNK_ROWS", chunk_rows)
    erase(existing(PHONE, name="林小雨"))
    rows = [
        {"手机号": "13900139000", "姓名": "王大山"},
        {"手机号": "138 0013 8000", "姓名": "林小雨"},
        {"手机号": "13700137000", "姓名": "陈一"},
        # The same person again: refused rows claim nothing, so it is judged (and refused)
        # on its own rather than reported as a duplicate.
        {"手机号": "13800138000", "姓名": "林小雨"},
    ]

    job = run(rows, django_capture_on_commit_callbacks, key="phone")

    assert reasons(job, media) == {"3": ERASED, "5": ERASED}
    assert counts(job) == (2, 0, 0, 2)
    assert sorted(Contact.objects.values_list("name", flat=True)) == ["王大山", "陈一"]
    assert not Identity.objects.filter(value=PHONE).exists()


def test_the_rejected_rows_file_lists_the_erased_persons_row_as_it_was_read(
    media, django_capture_on_commit_callbacks
):
    erase(identify(identities=[IdentityInput("phone", "13800138000")]).contact)

    job = run(
        [{"手机号": "13800138000", "姓名": "林小雨"}, {"手机号": "13900139000", "姓名": "王大山"}],
        django_capture_on_commit_callbacks,
        key="phone",
    )

    text = (media / job.result["rejected_file"]).read_bytes().decode("utf-8-sig")
    assert text.splitlines() == ["Row,手机号,姓名,Reason", f"2,13800138000,林小雨,{ERASED}"]


def test_an_email_only_import_rejects_an_erased_persons_email(
    media, django_capture_on_commit_callbacks
):
    # The email column is the person's identity even where no identity row says so.
    erase(ContactFactory(phone="", email="lin@example.com"))
    rows = [{"邮箱": "Lin@Example.com", "姓名": "林小雨"}, {"邮箱": "wang@example.com"}]

    job = run(rows, django_capture_on_commit_callbacks, key="email")

    assert reasons(job, media) == {"2": ERASED}
    assert counts(job) == (1, 0, 0, 1)
    assert list(Contact.objects.values_list("email", flat=True)) == ["wang@example.com"]


def test_an_import_keyed_by_member_number_rejects_an_erased_persons_number(
    media, django_capture_on_commit_callbacks
):
    erase(IdentityFactory(kind=IdentityKind.EXTERNAL_ID, value="M-1").contact)
    rows = [{"会员号": "M-1", "姓名": "林小雨"}, {"会员号": "M-2", "姓名": "王大山"}]

    job = run(rows, django_capture_on_commit_callbacks, key="external_id")

    assert reasons(job, media) == {"2": ERASED}
    assert counts(job) == (1, 0, 0, 1)
    assert list(Identity.objects.values_list("value", flat=True)) == ["M-2"]


def test_a_new_row_is_rejected_for_an_erased_persons_phone_beside_its_key(
    media, django_capture_on_commit_callbacks
):
    # Keyed by a member number nobody has: the row would create the erased person again.
    erase(existing(PHONE))
    rows = [{"会员号": "NEW-1", "手机号": "13800138000"}, {"会员号": "NEW-2", "手机号": ""}]

    job = run(rows, django_capture_on_commit_callbacks, key="external_id")

    assert reasons(job, media) == {"2": ERASED}
    assert counts(job) == (1, 0, 0, 1)


def test_a_person_who_came_back_is_updated_by_the_import(media, django_capture_on_commit_callbacks):
    lin = identify(
        identities=[IdentityInput("phone", "13800138000")],
        traits={"name": "林小雨", "email": "lin@example.com"},
    ).contact
    erase(lin)
    # They sign in again with their phone: identify lifts that tombstone, not the email's.
    back = identify(identities=[IdentityInput("phone", "13800138000")]).contact
    assert SuppressedIdentity.objects.filter(kind=IdentityKind.EMAIL).exists()
    rows = [{"手机号": "13800138000", "邮箱": "lin@example.com", "姓名": "林小雨", "城市": "杭州"}]

    job = run(rows, django_capture_on_commit_callbacks, key="phone")

    # Matched by the phone: the contact's update, though its email still has a tombstone.
    assert counts(job) == (0, 1, 0, 0)
    assert reasons(job, media) == {}
    back.refresh_from_db()
    assert (back.name, back.city, back.email) == ("林小雨", "杭州", "lin@example.com")


def test_an_erased_person_is_imported_again_once_their_tombstone_is_gone(
    media, django_capture_on_commit_callbacks
):
    # As an operator restoring a person by hand would: the tombstone deleted, no contact yet.
    erase(existing(PHONE))
    SuppressedIdentity.objects.all().delete()

    job = run([{"手机号": "13800138000"}], django_capture_on_commit_callbacks, key="phone")

    assert counts(job) == (1, 0, 0, 0)
    assert by_phone(PHONE)


def test_tombstones_made_with_a_rotated_key_still_reject_the_row(
    settings, media, django_capture_on_commit_callbacks
):
    erase(existing(PHONE))
    settings.SECRET_KEY_FALLBACKS = [settings.SECRET_KEY]
    settings.SECRET_KEY = "a new key, rotated in after the erasure"

    job = run([{"手机号": "13800138000"}], django_capture_on_commit_callbacks, key="phone")

    assert reasons(job, media) == {"2": ERASED}
    assert not Contact.objects.exists()


def suppression_queries(queries: CaptureQueriesContext) -> int:
    table = SuppressedIdentity._meta.db_table
    return sum(table in query["sql"] for query in queries.captured_queries)


@pytest.mark.parametrize("tombstones", [False, True], ids=["no tombstone", "a tombstone"])
def test_each_chunk_looks_for_tombstones_and_digests_nothing_when_there_are_none(
    tombstones, monkeypatch, django_capture_on_commit_callbacks
):
    monkeypatch.setattr(importers, "CHUNK_ROWS", 2)
    if tombstones:
        erase(existing("+8613600136000"))
    rows = [{"手机号": f"1390013900{i}", "邮箱": f"p{i}@example.com"} for i in range(6)]
    job = upload(rows)

    with CaptureQueriesContext(connection) as queries:
        job = finish(job, django_capture_on_commit_callbacks, key="phone")

    assert counts(job) == (6, 0, 0, 0)
    if tombstones:
        # Three chunks, each asking whether anyone was erased, then looking its digests up.
        assert suppression_queries(queries) == 3 + 3
    else:
        assert suppression_queries(queries) == 3


def test_the_preview_shows_the_erased_persons_row_with_the_reason():
    erase(existing(PHONE))
    job = upload([{"手机号": "13800138000"}, {"手机号": "13900139000"}])
    spec = ImportSpec(mapping=job.params["mapping"], key="phone")

    preview = importers.import_preview(job=job, spec=spec)

    assert [(row["rn"], row["error"]) for row in preview.rows] == [(2, ERASED), (3, "")]


def test_with_debug_on_the_job_does_not_keep_every_statement(
    settings, monkeypatch, django_capture_on_commit_callbacks
):
    # DEBUG (the demo) logs each statement with its parameters; a request's log is reset per
    # request, and the job resets it per chunk: a chunk's arrays of digests are megabytes.
    settings.DEBUG = True
    monkeypatch.setattr(importers, "CHUNK_ROWS", 2)
    erase(existing("+8613600136000"))
    job = upload([{"手机号": f"1390013900{i}"} for i in range(6)])
    executed = []

    def count(execute, sql, params, many, context):
        executed.append(sql)
        return execute(sql, params, many, context)

    with connection.execute_wrapper(count):
        job = finish(job, django_capture_on_commit_callbacks, key="phone")

    assert counts(job) == (6, 0, 0, 0)
    assert 0 < len(connection.queries_log) < len(executed) / 2
