"""Bulk tag and untag (contacts.bulk) racing the erasure of a person in the batch.

A batch reads its contacts without a lock and writes tag rows and events about them: a person
erased meanwhile must be left out of the batch (or wait for it and be erased with what it
wrote), never fail the batch, and never fail the job.
"""

import pytest
from django.db import connection  # noqa: F401  (read by the skipif conditions)

from contacts import bulk
from contacts.models import Contact, ContactTag, Event
from core import jobs
from core.models import JobStatus
from tests.contacts.erasing import BackgroundErasure, erase_now
from tests.contacts.locking import (
    deadlocks,
    deadlocks_since,
)
from tests.factories import ContactFactory, TagFactory, UserFactory

pytestmark = pytest.mark.django_db(transaction=True)

postgresql_only = pytest.mark.skipif(
    "connection.vendor != 'postgresql'", reason="concurrent transactions: PostgreSQL"
)


def _tagged(tag) -> set[int]:
    return set(ContactTag.objects.filter(tag=tag).values_list("contact_id", flat=True))


def test_a_bulk_tag_job_completes_with_the_rest_when_a_person_is_erased_meanwhile(monkeypatch):
    tag = TagFactory(name="VIP")
    contacts = ContactFactory.create_batch(3)
    erased, kept = contacts[1], {contacts[0].pk, contacts[2].pk}
    job = jobs.job_create(
        kind=bulk.JOB_KIND,
        created_by=UserFactory(is_superuser=True),
        params={"tag_id": tag.pk, "add": True, "contact_ids": [c.pk for c in contacts]},
    )
    tag_batch = bulk._tag_batch

    def erase_first(*, ids, **kwargs):
        # The batch has read its ids (the erased person's among them) without a lock.
        assert erased.pk in ids
        erase_now(erased.pk)
        return tag_batch(ids=ids, **kwargs)

    monkeypatch.setattr(bulk, "_tag_batch", erase_first)

    bulk.bulk_tag_job_run(job_id=job.pk)

    job.refresh_from_db()
    assert job.status == JobStatus.SUCCEEDED, job.error
    assert job.result["processed"] == 3 and job.result["changed"] == 2
    assert _tagged(tag) == kept
    assert set(Event.objects.filter(name="tag_added").values_list("contact_id", flat=True)) == kept
    assert not Contact.objects.filter(pk=erased.pk).exists()


@postgresql_only
def test_an_erasure_meeting_a_bulk_tag_batch_in_flight_waits_and_erases_what_it_wrote(
    monkeypatch,
):
    tag = TagFactory(name="VIP")
    contacts = ContactFactory.create_batch(3)
    erased = contacts[1]
    erasure = BackgroundErasure(erased.pk)
    insert_new = bulk.insert_new

    def erase_meanwhile(model, rows, **kwargs):
        if not erasure.thread.is_alive() and not erasure.errors:
            erasure.start_and_let_run()
        return insert_new(model, rows, **kwargs)

    monkeypatch.setattr(bulk, "insert_new", erase_meanwhile)

    result = bulk.contacts_bulk_tag(
        tag=tag,
        add=True,
        actor=UserFactory(is_superuser=True),
        contact_ids=[c.pk for c in contacts],
    )
    erasure.join()

    assert erasure.errors == []
    assert result.changed == 3
    assert not Contact.objects.filter(pk=erased.pk).exists()
    assert _tagged(tag) == {contacts[0].pk, contacts[2].pk}


@postgresql_only
def test_a_bulk_untag_batch_and_an_erasure_of_one_of_its_contacts_do_not_deadlock(monkeypatch):
    # The batch deletes the person's tag row, then records tag_removed about them; an erasure
    # starting then waits for that row, while the event's foreign-key check at the batch's
    # commit would wait for the erasure's lock on the person, unless the batch held it first.
    tag = TagFactory(name="VIP")
    contacts = ContactFactory.create_batch(3)
    for contact in contacts:
        ContactTag.objects.create(contact=contact, tag=tag)
    erased = contacts[1]
    erasure = BackgroundErasure(erased.pk)
    events_append = bulk.events_append

    def erase_meanwhile(**kwargs):
        if not erasure.thread.is_alive() and not erasure.errors:
            erasure.start_and_let_run()
        return events_append(**kwargs)

    monkeypatch.setattr(bulk, "events_append", erase_meanwhile)
    before = deadlocks()

    result = bulk.contacts_bulk_tag(
        tag=tag,
        add=False,
        actor=UserFactory(is_superuser=True),
        contact_ids=[c.pk for c in contacts],
    )
    erasure.join()

    assert erasure.errors == []
    assert deadlocks_since(before) == 0
    assert result.changed == 3
    assert not Contact.objects.filter(pk=erased.pk).exists()
    assert _tagged(tag) == set()
