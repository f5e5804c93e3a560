"""Fixes from a second audit of the server-to-server API.

- A consent call and an events batch for the same contact at the same moment both go through:
  the consent's lock on the contact no longer blocks the key-share lock of the batch's
  foreign-key checks at its commit (a deadlock answered 500 under concurrent API calls).
- An event id repeated in a batch is judged on its own copy when the first copy was rejected:
  it is stored, not answered "duplicate" for an event never stored.
- A consent retried with evidence holding a float such as 1e23 finds its first answer: the
  evidence is compared as the database stores it (jsonb keeps 1e23 as the integer 10^23).
- A note left while a merge of its contact commits goes to the survivor.

The tests of real concurrent transactions run on PostgreSQL only: SQLite runs one writing
transaction at a time.
"""

import datetime as dt
import random
import threading
import time

import pytest
from django.db import connection, transaction
from django.utils import timezone

from contacts.models import Consent, ConsentRecord, Contact, ContactTag, Event, Note
from contacts.services import (
    EventInput,
    consent_record,
    contact_merge,
    contact_tag_add,
    contact_tag_remove,
    contact_tags_expire,
    contact_update,
    events_record,
    note_add,
)
from tests.contacts.locking import in_threads, try_set, wait_until_another_backend_waits
from tests.factories import ContactFactory, TagFactory, UserFactory

TIMEOUT = 20
OCCURRED = "2026-01-02T10:00:00+08:00"

postgresql_only = pytest.mark.skipif(
    connection.vendor != "postgresql", reason="SQLite runs one writing transaction at a time"
)


# --- 1. Consent and events for one contact at once -------------------------------------------


@postgresql_only
@pytest.mark.django_db(transaction=True)
def test_a_consent_and_an_uncommitted_tag_expiry_of_its_contact_both_go_through():
    """The expiry task's batch queues the contact for segment re-evaluation (an uncommitted
    queue row) without locking the contact; the consent call locks the contact, then waits for
    that queue row with its own. At its commit the batch checks its events' foreign key, which
    takes a key-share lock on the contact: a plain FOR UPDATE held by the consent blocked it,
    and each waited for the other until PostgreSQL broke the deadlock."""
    contact, tag = ContactFactory(), TagFactory()
    contact_tag_add(contact=contact, tag=tag)
    ContactTag.objects.filter(contact=contact).update(
        expires_at=timezone.now() - dt.timedelta(minutes=1)
    )
    queued = threading.Event()

    def expire() -> int:
        with transaction.atomic(), connection.cursor() as cursor:
            # The consent, which waits second, is the side checked for a deadlock first.
            try_set(cursor, "SET LOCAL deadlock_timeout = '30s'")
            expired = contact_tags_expire()
            queued.set()
            # Committed (and its foreign keys checked) once the consent waits for its queue row.
            assert wait_until_another_backend_waits(cursor, timeout=TIMEOUT)
        return expired

    def consent() -> ConsentRecord:
        with connection.cursor() as cursor:
            try_set(cursor, "SET deadlock_timeout = '2s'")
        assert queued.wait(timeout=TIMEOUT)
        return consent_record(
            contact=Contact.objects.get(pk=contact.pk),
            channel="sms",
            purpose="marketing",
            granted=False,
            source="miniapp",
        )

    (expired, record), errors = in_threads([expire, consent])

    assert errors == []
    assert expired == 1
    assert record.contact_id == contact.pk
    assert Consent.objects.get(contact=contact, channel="sms").granted is False
    assert not ContactTag.objects.filter(contact=contact).exists()
    assert Event.objects.filter(contact=contact, name="tag_removed").count() == 1


STRESS_SECONDS = 4


@postgresql_only
@pytest.mark.django_db(transaction=True)
def test_consents_tags_events_and_profile_changes_on_a_few_contacts_at_once_all_go_through():
    """What the audit's load test did through the API (6 clients on 5 contacts; 15 of 856
    calls failed with a deadlock), through the services for a few seconds, with the tag expiry
    task running too: like a segment refresh, it queues contacts without locking them."""
    contacts = [ContactFactory() for _ in range(2)]
    tags = [TagFactory() for _ in range(4)]
    deadline = time.monotonic() + STRESS_SECONDS
    calls: list[int] = []

    def client(seed: int):
        def run() -> None:
            rnd = random.Random(seed)
            n = 0
            while time.monotonic() < deadline:
                contact = Contact.objects.get(pk=rnd.choice(contacts).pk)
                op = rnd.randrange(6)
                if op == 0:
                    consent_record(
                        contact=contact,
                        channel=rnd.choice(["sms", "email"]),
                        purpose="marketing",
                        granted=rnd.random() < 0.5,
                        source="stress",
                    )
                elif op == 1:
                    # Some expire at once, for the expiry task (the last op) to remove.
                    soon = timezone.now() + dt.timedelta(milliseconds=rnd.randrange(100, 400))
                    expires_at = soon if rnd.random() < 0.5 else None
                    contact_tag_add(contact=contact, tag=rnd.choice(tags), expires_at=expires_at)
                elif op == 2:
                    contact_tag_remove(contact=contact, tag=rnd.choice(tags))
                elif op == 3:
                    contact_update(contact=contact, data={"city": rnd.choice(["上海", "北京"])})
                elif op == 4:
                    n += 1
                    events_record(
                        items=[
                            EventInput(
                                name="view_product",
                                occurred_at=timezone.now(),
                                event_id=f"stress-{seed}-{n}",
                                contact_id=contact.pk,
                            )
                        ]
                    )
                else:
                    contact_tags_expire()
                calls.append(op)

        return run

    _results, errors = in_threads([client(seed) for seed in range(6)])

    assert errors == []
    assert len(calls) > 50  # the clients really ran at once for a while
    assert Event.objects.filter(name="view_product").count() == calls.count(4)


# --- 2. An event id repeated after a rejected copy ------------------------------------------


def _event(event_id: str, **fields) -> EventInput:
    return EventInput(
        name="page_view",
        occurred_at=timezone.now() - dt.timedelta(minutes=1),
        event_id=event_id,
        **fields,
    )


@pytest.mark.django_db
def test_a_copy_of_a_rejected_event_is_judged_on_its_own_and_stored():
    contact = ContactFactory()

    outcomes = events_record(
        items=[
            _event("X", contact_id=999_999_999),
            _event("X", contact_id=contact.pk),
            _event("X", contact_id=contact.pk),
        ]
    )

    assert [(o.index, o.status) for o in outcomes] == [
        (0, "rejected"),
        (1, "accepted"),
        (2, "duplicate"),
    ]
    assert "999999999" in outcomes[0].reason
    assert list(Event.objects.filter(event_id="X").values_list("contact_id", flat=True)) == [
        contact.pk
    ]


@pytest.mark.django_db
def test_a_copy_after_an_invalid_one_is_stored_and_two_rejected_copies_store_nothing():
    contact = ContactFactory()

    outcomes = events_record(
        items=[
            _event("Y"),
            _event("Y", contact_id=contact.pk),
            _event("Z", contact_id=999_999_998),
            _event("Z", contact_id=999_999_997),
        ]
    )

    # The first copy names nobody; the second, a contact.
    assert [o.status for o in outcomes] == ["rejected", "accepted", "rejected", "rejected"]
    assert set(Event.objects.values_list("event_id", flat=True)) == {"Y"}


@pytest.mark.django_db
def test_the_api_stores_a_copy_of_a_rejected_event(api):
    contact = ContactFactory()
    item = {"event_id": "X", "name": "page_view", "occurred_at": OCCURRED}
    body = {"events": [{**item, "contact_id": 999999999}, {**item, "contact_id": contact.pk}]}

    data = api.post("/api/v1/events", body, format="json").json()

    assert [r["status"] for r in data["results"]] == ["rejected", "accepted"]
    assert (data["accepted"], data["duplicates"], data["rejected"]) == (1, 0, 1)
    assert Event.objects.get(event_id="X").contact_id == contact.pk
    # Sent again, both copies name the stored event: duplicates, nothing new stored.
    again = api.post("/api/v1/events", body, format="json").json()
    assert [r["status"] for r in again["results"]] == ["duplicate", "duplicate"]
    assert Event.objects.filter(event_id="X").count() == 1


# --- 6. A consent retried with an exponent-form float in its evidence -----------------------


CONSENT = {"channel": "sms", "purpose": "marketing", "granted": True, "source": "form"}


@pytest.mark.django_db
@pytest.mark.parametrize(
    "evidence",
    [{"score": 1e23}, {"score": 1.5e300, "list": [1e22, 0.1, 2.50]}, {"nested": {"x": 1e-7}}],
    ids=["1e23", "list", "small"],
)
def test_a_consent_retried_with_float_evidence_answers_the_first_record(evidence):
    contact = ContactFactory()
    first = consent_record(contact=contact, evidence=evidence, request_id="r-float", **CONSENT)

    again = consent_record(
        contact=Contact.objects.get(pk=contact.pk),
        evidence=evidence,
        request_id="r-float",
        **CONSENT,
    )
    # Without a request_id, repeating the current record records nothing either.
    same = consent_record(contact=contact, evidence=evidence, **CONSENT)

    assert again.pk == first.pk == same.pk
    assert ConsentRecord.objects.count() == 1
    assert Event.objects.filter(contact=contact, name="consent_granted").count() == 1


@pytest.mark.django_db
def test_the_api_answers_a_consent_retry_with_float_evidence(api):
    contact = ContactFactory()
    # Written out: the test client would encode the float as 1e+23, which is the same number.
    body = (
        '{"channel": "sms", "purpose": "marketing", "granted": true, "source": "form", '
        '"evidence": {"score": 1e23}, "request_id": "r-api-float"}'
    )
    url = f"/api/v1/contacts/{contact.pk}/consents"

    first = api.post(url, data=body, content_type="application/json")
    again = api.post(url, data=body, content_type="application/json")

    assert first.status_code in (200, 201), first.content
    assert again.status_code == first.status_code, again.content
    assert again.json() == first.json()
    assert ConsentRecord.objects.count() == 1


@pytest.mark.django_db
def test_other_evidence_under_the_same_request_id_is_still_refused():
    from core.errors import ValidationFailed

    contact = ContactFactory()
    consent_record(contact=contact, evidence={"score": 1e23}, request_id="r-x", **CONSENT)

    with pytest.raises(ValidationFailed) as refused:
        consent_record(contact=contact, evidence={"score": 2e23}, request_id="r-x", **CONSENT)

    assert refused.value.code == "request_id_reused"


# --- 7. A note racing a merge ---------------------------------------------------------------


@postgresql_only
@pytest.mark.django_db(transaction=True)
def test_a_note_left_while_a_merge_commits_goes_to_the_survivor():
    survivor, duplicate = ContactFactory(), ContactFactory()
    author = UserFactory()
    held = threading.Event()
    waited: list[bool] = []

    def merge():
        with transaction.atomic(), connection.cursor() as cursor:
            contact_merge(
                survivor=Contact.objects.get(pk=survivor.pk),
                duplicate=Contact.objects.get(pk=duplicate.pk),
            )
            held.set()
            waited.append(wait_until_another_backend_waits(cursor, timeout=TIMEOUT))

    def leave_note() -> Note:
        # What the page resolved before the merge committed.
        seen = Contact.objects.get(pk=duplicate.pk)
        assert seen.merged_into_id is None
        assert held.wait(timeout=TIMEOUT)
        return note_add(contact=seen, author=author, body="回访：想要试用装")

    (_merged, note), errors = in_threads([merge, leave_note])

    assert errors == []
    assert waited == [True], "the note never waited for the merge"
    assert note.contact_id == survivor.pk
    assert list(Note.objects.values_list("contact_id", flat=True)) == [survivor.pk]
    added = Event.objects.get(name="note_added")
    assert added.contact_id == survivor.pk
    assert added.properties["note_id"] == note.pk


@pytest.mark.django_db
def test_a_note_on_a_merged_contact_goes_to_the_survivor():
    survivor, duplicate = ContactFactory(), ContactFactory()
    contact_merge(survivor=survivor, duplicate=duplicate)

    note = note_add(contact=duplicate, author=None, body="到店")

    assert note.contact_id == survivor.pk
    assert Event.objects.filter(contact=survivor, name="note_added").count() == 1
