"""A profile update and an events batch for the same contact at the same moment, on PostgreSQL.

The update locks the contact, then records its profile_updated event, which queues the contact
for segment re-evaluation: that queue row waits for the batch's own uncommitted queue row of the
same contact. The batch, at commit, checks its events' foreign key, which takes a key-share lock
on the contact. Were the update's lock a plain FOR UPDATE, each would wait for the other (a
deadlock, seen under an API fuzzer's concurrent PATCH and events); FOR NO KEY UPDATE lets the
check through.
"""

import datetime as dt
import threading

import pytest
from django.db import connection, transaction
from django.utils import timezone

from contacts.models import Contact, Event
from contacts.services import contact_update, events_append
from tests.contacts.locking import in_threads, try_set, wait_until_another_backend_waits
from tests.factories import ContactFactory

pytestmark = [
    pytest.mark.django_db(transaction=True),
    pytest.mark.skipif(
        connection.vendor != "postgresql",
        reason="SQLite runs one writing transaction at a time",
    ),
]

TIMEOUT = 20


def test_a_profile_update_and_an_events_batch_for_one_contact_both_go_through():
    contact = ContactFactory(name="林小雨", city="杭州")
    # The batch's event is older than the contact's last activity: it does not touch the
    # contact's row, so the update can take its lock while the batch is still open.
    Contact.objects.filter(pk=contact.pk).update(last_active_at=timezone.now())
    queued = threading.Event()

    def batch() -> None:
        with transaction.atomic(), connection.cursor() as cursor:
            try_set(cursor, "SET LOCAL deadlock_timeout = '30s'")
            events_append(
                contact_ids=[contact.pk],
                name="view_product",
                properties={"sku": "A-1"},
                occurred_at=timezone.now() - dt.timedelta(days=1),
            )
            queued.set()
            # Committed (and its foreign key checked) once the update waits for its queue row.
            assert wait_until_another_backend_waits(cursor, timeout=TIMEOUT)

    def update() -> None:
        with connection.cursor() as cursor:
            try_set(cursor, "SET deadlock_timeout = '2s'")
        assert queued.wait(timeout=TIMEOUT)
        contact_update(contact=Contact.objects.get(pk=contact.pk), data={"city": "上海"})

    _results, errors = in_threads([batch, update])

    assert errors == []
    contact.refresh_from_db()
    assert contact.city == "上海"
    assert Event.objects.filter(contact=contact, name="view_product").count() == 1
