"""Writes addressed to a contact while a merge of it commits, and a tag re-added while the expiry
task removes it: real concurrent transactions on PostgreSQL.

A caller (an API call, a form) resolves the contact before a merge of it commits, so it still
sees the duplicate. Its write waits for the merge's lock on that contact and, once the merge
committed, must go to the contact that absorbed it: a consent withdrawal, a profile change, an
event (and its points) or a tag left on the hidden duplicate is lost to everyone who reads the
survivor.

SQLite runs one writing transaction at a time (IMMEDIATE): the write starts after the merge
committed and sees it, so these tests skip it.
"""

import datetime as dt
import threading
import time

import pytest
from django.db import connection, transaction
from django.test import Client
from django.urls import reverse
from django.utils import timezone

from contacts.models import Consent, Contact, ContactTag, Event, Note
from contacts.services import (
    EventInput,
    consent_record,
    contact_merge,
    contact_tag_add,
    contact_tag_remove,
    contact_tags_expire,
    contact_update,
    events_record,
)
from membership.models import Member
from tests.contacts.locking import in_threads, wait_until_another_backend_waits
from tests.factories import ContactFactory, TagFactory, TierFactory, UserFactory

pytestmark = [
    pytest.mark.django_db(transaction=True),
    pytest.mark.skipif(
        connection.vendor != "postgresql",
        reason="SQLite runs one writing transaction at a time",
    ),
]

TIMEOUT = 20


def _during(hold, write) -> tuple[list, list]:
    """Run `write` while `hold` runs in an open transaction of another connection; that
    transaction commits only once `write` waits for one of its locks (or after TIMEOUT)."""
    held = threading.Event()
    waited: list[bool] = []

    def holder():
        with transaction.atomic(), connection.cursor() as cursor:
            result = hold()
            held.set()
            waited.append(wait_until_another_backend_waits(cursor, timeout=TIMEOUT))
        return result

    def writer():
        assert held.wait(timeout=TIMEOUT)
        return write()

    results, errors = in_threads([holder, writer])
    assert errors == []
    assert waited == [True], "the write never waited for the other transaction"
    return results


def _merging(survivor: Contact, duplicate: Contact):
    return lambda: contact_merge(
        survivor=Contact.objects.get(pk=survivor.pk),
        duplicate=Contact.objects.get(pk=duplicate.pk),
    )


def _as_seen_before_the_merge(contact: Contact) -> Contact:
    # What the caller resolved (the API follows merges, but this one has not committed yet).
    found = Contact.objects.get(pk=contact.pk)
    assert found.merged_into_id is None
    return found


# --- Writes racing a merge ------------------------------------------------------------------


def test_a_consent_withdrawal_racing_a_merge_withdraws_the_survivors_consent():
    survivor, duplicate = ContactFactory(name="survivor"), ContactFactory(name="duplicate")
    consent_record(
        contact=survivor, channel="sms", purpose="marketing", granted=True, source="form"
    )

    def withdraw():
        return consent_record(
            contact=_as_seen_before_the_merge(duplicate),
            channel="sms",
            purpose="marketing",
            granted=False,
            source="miniapp",
        )

    _merge, record = _during(_merging(survivor, duplicate), withdraw)

    assert record.contact_id == survivor.pk
    state = Consent.objects.get(contact=survivor, channel="sms", purpose="marketing")
    assert state.granted is False
    assert not Consent.objects.filter(contact=duplicate).exists()


def test_a_write_follows_every_merge_of_a_chain_to_the_last_survivor():
    first, middle, last = ContactFactory(), ContactFactory(), ContactFactory()
    contact_merge(survivor=middle, duplicate=first)
    # The caller holds `first` as it was before any merge (a page opened long ago).
    stale = Contact.objects.get(pk=first.pk)
    stale.merged_into_id = None

    def withdraw():
        return consent_record(
            contact=stale, channel="email", purpose="marketing", granted=False, source="form"
        )

    _merge, record = _during(_merging(last, middle), withdraw)

    assert record.contact_id == last.pk
    assert Consent.objects.get(contact=last, channel="email").granted is False


def test_a_profile_change_racing_a_merge_changes_the_survivor():
    survivor, duplicate = ContactFactory(city=""), ContactFactory(city="")

    def patch():
        return contact_update(contact=_as_seen_before_the_merge(duplicate), data={"city": "杭州"})

    _merge, updated = _during(_merging(survivor, duplicate), patch)

    assert updated.pk == survivor.pk
    survivor.refresh_from_db()
    assert survivor.city == "杭州"
    assert Event.objects.filter(contact=survivor, name="profile_updated").exists()


def test_a_purchase_racing_a_merge_lands_with_its_points_on_the_survivor():
    TierFactory()
    survivor, duplicate = ContactFactory(), ContactFactory()

    def send():
        return events_record(
            items=[
                EventInput(
                    name="purchase",
                    occurred_at=timezone.now(),
                    event_id="order-1",
                    contact_id=duplicate.pk,
                    properties={"order_id": "o1"},
                    value=100,
                ),
                EventInput(
                    name="page_view",
                    occurred_at=timezone.now(),
                    event_id="view-1",
                    contact_id=survivor.pk,
                ),
            ]
        )

    _merge, outcomes = _during(_merging(survivor, duplicate), send)

    assert [o.status for o in outcomes] == ["accepted", "accepted"]
    assert set(
        Event.objects.filter(event_id__in=["order-1", "view-1"]).values_list(
            "contact_id", flat=True
        )
    ) == {survivor.pk}
    assert Member.objects.get(contact=survivor).points_balance == 100
    assert not Member.objects.filter(contact=duplicate).exists()


@pytest.mark.parametrize("htmx", [True, False])
def test_a_note_saved_while_a_merge_commits_sends_the_page_to_the_survivor(htmx):
    survivor, duplicate = ContactFactory(name="survivor"), ContactFactory(name="duplicate")
    client = Client()
    client.force_login(UserFactory())
    headers = {"HX-Request": "true", "HX-Target": "contact-notes"} if htmx else {}

    def post():
        return client.post(
            reverse("contacts:note_add", args=[duplicate.pk]),
            {"body": "回访：喜欢保湿"},
            headers=headers,
        )

    _merge, response = _during(_merging(survivor, duplicate), post)

    assert Note.objects.get().contact_id == survivor.pk
    # Not the hidden duplicate's (empty) notes: the browser goes to the page of the note's
    # contact, through the duplicate's address, which leads on to the survivor.
    to = reverse("contacts:detail", args=[duplicate.pk]) + "#contact-notes"
    if htmx:
        assert (response.status_code, response["HX-Redirect"]) == (204, to)
    else:
        assert (response.status_code, response["Location"]) == (302, to)
    followed = client.get(to)
    assert followed["Location"] == reverse("contacts:detail", args=[survivor.pk])


def test_a_tag_added_while_a_merge_commits_goes_to_the_survivor():
    survivor, duplicate, tag = ContactFactory(), ContactFactory(), TagFactory()

    def tag_it():
        return contact_tag_add(contact=_as_seen_before_the_merge(duplicate), tag=tag)

    _merge, created = _during(_merging(survivor, duplicate), tag_it)

    assert created is True
    assert list(ContactTag.objects.filter(tag=tag).values_list("contact_id", flat=True)) == [
        survivor.pk
    ]


def test_a_tag_removed_while_a_merge_commits_comes_off_the_survivor():
    survivor, duplicate, tag = ContactFactory(), ContactFactory(), TagFactory()
    contact_tag_add(contact=duplicate, tag=tag)  # the merge moves it to the survivor

    def untag():
        return contact_tag_remove(contact=_as_seen_before_the_merge(duplicate), tag=tag)

    _merge, removed = _during(_merging(survivor, duplicate), untag)

    assert removed is True
    assert not ContactTag.objects.filter(tag=tag).exists()
    assert Event.objects.filter(contact=survivor, name="tag_removed").count() == 1


# --- A tag re-added while the expiry task removes it ----------------------------------------


@pytest.mark.parametrize("longer", [True, False], ids=["extended", "re-added-without-expiry"])
def test_a_tag_re_added_while_its_expiry_is_removing_it_stays(longer):
    contact, tag = ContactFactory(), TagFactory()
    contact_tag_add(contact=contact, tag=tag, expires_at=timezone.now() + dt.timedelta(seconds=1))
    time.sleep(1.1)  # expired; the expiry task has not run yet
    expires_at = timezone.now() + dt.timedelta(days=30) if longer else None

    def add_again():
        return contact_tag_add(contact=contact, tag=tag, expires_at=expires_at)

    expired, added = _during(contact_tags_expire, add_again)

    assert expired == 1
    # The expiry removed the tag (and said so on the timeline): adding it again is a new tag.
    assert added is True
    row = ContactTag.objects.get(contact=contact, tag=tag)
    assert row.expires_at == expires_at
    names = list(
        Event.objects.filter(contact=contact, name__in=["tag_added", "tag_removed"])
        .order_by("pk")
        .values_list("name", flat=True)
    )
    assert names == ["tag_added", "tag_removed", "tag_added"]
