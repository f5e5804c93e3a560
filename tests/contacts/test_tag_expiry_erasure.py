"""The tag expiry (contact_tags_expire) racing the erasure of a person whose tag is due.

The expiry deletes the due tag rows and writes tag_removed events about their contacts: an
erasure of one of them must wait for the batch (or the batch for it), never deadlock with it.

Real concurrent transactions: PostgreSQL only (SQLite runs one writing transaction at a time).
"""

import datetime as dt

from django.utils import timezone

from contacts.models import Contact, ContactTag, Event
from contacts.services import contact_erase, contact_tags_expire
from contacts.services import tags as tag_services
from tests.contacts.erasing import BackgroundErasure
from tests.contacts.locking import (
    CONCURRENT_TRANSACTIONS,
    deadlocks,
    deadlocks_since,
    in_threads,
)
from tests.factories import ContactFactory, TagFactory

pytestmark = CONCURRENT_TRANSACTIONS


def _due_tags() -> tuple[list[Contact], dt.datetime]:
    tag = TagFactory(name="限时")
    contacts = ContactFactory.create_batch(3)
    past = timezone.now() - dt.timedelta(minutes=1)
    for contact in contacts:
        ContactTag.objects.create(contact=contact, tag=tag, expires_at=past)
    return contacts, timezone.now()


def test_the_expiry_and_an_erasure_of_one_of_its_contacts_do_not_deadlock(monkeypatch):
    # The batch holds the person's (deleted) tag row and records tag_removed about them; an
    # erasure starting then waits for that row, while the event's foreign-key check at the
    # batch's commit would wait for the erasure's lock on the person, unless the batch held
    # the person first.
    contacts, now = _due_tags()
    erased = contacts[1]
    erasure = BackgroundErasure(erased.pk)
    events_append = tag_services.events_append

    def erase_meanwhile(**kwargs):
        if not erasure.thread.is_alive() and not erasure.errors:
            erasure.start_and_let_run()
        return events_append(**kwargs)

    monkeypatch.setattr(tag_services, "events_append", erase_meanwhile)
    before = deadlocks()

    removed = contact_tags_expire(now=now)
    erasure.join()

    assert erasure.errors == []
    assert deadlocks_since(before) == 0
    assert removed == 3
    assert not Contact.objects.filter(pk=erased.pk).exists()
    assert not ContactTag.objects.exists()
    assert set(Event.objects.filter(name="tag_removed").values_list("contact", flat=True)) == {
        contacts[0].pk,
        contacts[2].pk,
    }


def test_a_person_erased_after_the_expiry_read_the_due_tags_is_skipped(monkeypatch):
    contacts, now = _due_tags()
    erased = contacts[0]
    lock = tag_services.contacts_lock_existing

    def erase_first(*, contact_ids):
        assert erased.pk in contact_ids
        if Contact.objects.filter(pk=erased.pk).exists():
            _results, errors = in_threads(
                [lambda: contact_erase(contact=Contact.objects.get(pk=erased.pk), source="api")]
            )
            assert errors == []
        return lock(contact_ids=contact_ids)

    monkeypatch.setattr(tag_services, "contacts_lock_existing", erase_first)

    assert contact_tags_expire(now=now) == 2
    assert not ContactTag.objects.exists()
    assert set(Event.objects.filter(name="tag_removed").values_list("contact", flat=True)) == {
        contacts[1].pk,
        contacts[2].pk,
    }
