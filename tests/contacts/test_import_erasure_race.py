"""An import chunk racing the erasure of a person it matched (contacts.services.erasure).

A chunk matches its rows to contacts without a lock and then writes their updates, identities,
tags and contact_imported events: a person erased meanwhile must be rejected with the reason
(or wait for the chunk and be erased with what it wrote), never fail the chunk and the import.
"""

import pytest
from django.db import connection

from contacts import importers
from contacts.models import Contact, ContactTag, Event, Identity
from contacts.services import contact_erase, contact_merge
from tests.contacts.erasing import BackgroundErasure
from tests.contacts.importing import counts, existing, reasons, run
from tests.contacts.locking import in_threads
from tests.factories import TagFactory

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.usefixtures("media", "english")]

postgresql_only = pytest.mark.skipif(
    "connection.vendor != 'postgresql'", reason="concurrent transactions: PostgreSQL"
)

ERASED_MEANWHILE = "This contact was erased while the file was being imported."


def _erase(contact_id: int) -> None:
    """Erase the person and commit, while the chunk's transaction is open: in another
    connection on PostgreSQL; on SQLite, whose chunk holds the only write lock, inside the
    chunk's transaction (the chunk meets the same: its contact gone since the match)."""
    erase = lambda: contact_erase(contact=Contact.objects.get(pk=contact_id), source="api")  # noqa: E731
    if connection.vendor != "postgresql":
        erase()
        return
    _results, errors = in_threads([erase])
    assert errors == []


@pytest.mark.parametrize("change", ["profile", "tag"])
def test_a_person_erased_after_the_chunk_matched_them_is_rejected_and_the_rest_imported(
    change, monkeypatch, media, django_capture_on_commit_callbacks
):
    TagFactory(name="老客")
    erased = existing("+8613800138000", name="林小雨")
    kept = existing("+8613900139000", name="王大山")
    apply = importers.import_chunk_apply

    def erase_first(**kwargs):
        # The chunk has matched its rows (the erased person's among them) without a lock.
        if Contact.objects.filter(pk=erased.pk).exists():
            _erase(erased.pk)
        return apply(**kwargs)

    monkeypatch.setattr(importers, "import_chunk_apply", erase_first)
    rows = [
        {"手机号": "13800138000", "姓名": "林小雨" if change == "tag" else "林雨", "标签": "老客"},
        {"手机号": "13900139000", "姓名": "王山", "标签": ""},
        {"手机号": "13700137000", "姓名": "陈一", "标签": ""},
    ]
    if change == "tag":
        # Without the tag the row changes nothing, so writes nothing about the person.
        assert rows[0]["姓名"] == erased.name

    job = run(rows, django_capture_on_commit_callbacks, key="phone")

    assert reasons(job, media) == {"2": ERASED_MEANWHILE}
    assert counts(job) == (1, 1, 0, 1)
    assert not Contact.objects.filter(pk=erased.pk).exists()
    assert Contact.objects.get(pk=kept.pk).name == "王山"
    assert sorted(Contact.objects.values_list("name", flat=True)) == ["王山", "陈一"]
    assert not ContactTag.objects.exists()
    assert list(
        Event.objects.filter(name=importers.IMPORT_EVENT).values_list("contact", flat=True)
    ) == [kept.pk]


@postgresql_only
def test_an_erasure_meeting_a_chunk_in_flight_waits_and_erases_what_it_wrote(
    monkeypatch, media, django_capture_on_commit_callbacks
):
    erased = existing("+8613800138000", name="林小雨")
    kept = existing("+8613900139000", name="王大山")
    erasure = BackgroundErasure(erased.pk)
    record_events = importers._record_events_postgres

    def erase_meanwhile(*args, **kwargs):
        # The chunk has checked its contacts and is about to write about them.
        if not erasure.thread.is_alive() and not erasure.errors:
            erasure.start_and_let_run()
        return record_events(*args, **kwargs)

    monkeypatch.setattr(importers, "_record_events_postgres", erase_meanwhile)
    rows = [
        {"手机号": "13800138000", "姓名": "林雨", "邮箱": "lin@example.com"},
        {"手机号": "13900139000", "姓名": "王山", "邮箱": ""},
    ]

    job = run(rows, django_capture_on_commit_callbacks, key="phone")
    erasure.join()

    assert erasure.errors == []
    assert counts(job) == (0, 2, 0, 0)
    assert not Contact.objects.filter(pk=erased.pk).exists()
    assert not Identity.objects.filter(value="lin@example.com").exists()
    assert Contact.objects.get().name == "王山"
    assert set(Event.objects.values_list("contact", flat=True)) == {kept.pk}


@postgresql_only
def test_a_row_whose_contact_was_merged_away_after_the_match_updates_the_survivor(
    monkeypatch, media, django_capture_on_commit_callbacks
):
    duplicate = existing("+8613800138000", name="林小雨")
    survivor = existing("+8613900139000", name="林雨")
    apply = importers.import_chunk_apply

    def merge_first(**kwargs):
        if not Contact.objects.get(pk=duplicate.pk).merged_into_id:
            _results, errors = in_threads(
                [
                    lambda: contact_merge(
                        survivor=Contact.objects.get(pk=survivor.pk),
                        duplicate=Contact.objects.get(pk=duplicate.pk),
                    )
                ]
            )
            assert errors == []
        return apply(**kwargs)

    monkeypatch.setattr(importers, "import_chunk_apply", merge_first)

    job = run(
        [{"手机号": "13800138000", "姓名": "林小雨", "城市": "杭州"}],
        django_capture_on_commit_callbacks,
        key="phone",
    )

    assert counts(job) == (0, 1, 0, 0)
    assert Contact.objects.get(pk=survivor.pk).city == "杭州"
    assert Contact.objects.get(pk=duplicate.pk).city != "杭州"
