"""Erasing a person deletes the messages planned or sent to them, in flight ones included: a
worker that claimed one before finds nothing to send or to record, and fails on nothing. Their
copy of their data holds the messages as sent."""

import datetime as dt
import logging

import pytest
from django.db import connections
from django.utils import timezone

from channels.models import Delivery, DeliveryStatus
from channels.services import (
    channel_create,
    deliveries_claim_due,
    deliveries_dispatch_due,
    deliveries_recover_expired,
    delivery_plan,
    delivery_send,
)
from contacts.models import Contact, Event
from contacts.services import contact_erase
from contacts.signals import contact_data_requested
from tests.factories import ChannelFactory, ContactFactory


def _plan(channel, contact, key, **kw):
    delivery, _ = delivery_plan(
        idempotency_key=key,
        contact=contact,
        channel=channel,
        payload={"title": "生日快乐", "body": f"{contact.name}，送您一张券"},
        **kw,
    )
    return delivery


def sections(contact_ids: list[int]) -> dict:
    merged: dict = {}
    for _receiver, answer in contact_data_requested.send(sender=Contact, contact_ids=contact_ids):
        merged.update(answer or {})
    return merged


@pytest.mark.django_db
def test_erasure_deletes_pending_leased_and_sent_deliveries_and_the_sweeper_runs_on(caplog):
    channel = ChannelFactory()
    person, other = ContactFactory(), ContactFactory()
    sent = _plan(channel, person, "sent")
    assert deliveries_dispatch_due() == 1
    pending = _plan(channel, person, "pending")
    later = _plan(channel, person, "later", send_at=timezone.now() + dt.timedelta(hours=1))
    leased = _plan(channel, person, "leased")
    Delivery.objects.filter(pk=leased.pk).update(
        status=DeliveryStatus.SENDING, lease_until=timezone.now() + dt.timedelta(minutes=5)
    )
    theirs = _plan(channel, other, "theirs")
    statuses = dict(Delivery.objects.filter(contact=person).values_list("pk", "status"))
    assert statuses == {
        sent.pk: DeliveryStatus.SENT,
        pending.pk: DeliveryStatus.PENDING,
        later.pk: DeliveryStatus.PENDING,
        leased.pk: DeliveryStatus.SENDING,
    }

    erasure = contact_erase(contact=person, source="operator")

    assert erasure.summary["channels.delivery"] == 4
    assert list(Delivery.objects.values_list("pk", flat=True)) == [theirs.pk]
    with caplog.at_level(logging.ERROR):
        # The worker that held the lease comes back to it, and the sweepers run.
        assert delivery_send(delivery_id=leased.pk) is None
        assert deliveries_recover_expired() == 0
        assert deliveries_dispatch_due() == 1
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR]
    assert Delivery.objects.get(pk=theirs.pk).status == DeliveryStatus.SENT
    assert not Event.objects.filter(contact_id=person.pk).exists()


@pytest.mark.django_db
def test_rows_claimed_before_the_erasure_are_skipped_by_the_worker(caplog):
    channel = ChannelFactory()
    person, other = ContactFactory(), ContactFactory()
    mine, theirs = _plan(channel, person, "mine"), _plan(channel, other, "theirs")
    claimed = deliveries_claim_due()
    assert sorted(claimed) == sorted([mine.pk, theirs.pk])

    contact_erase(contact=person, source="operator")

    with caplog.at_level(logging.ERROR):
        results = {pk: delivery_send(delivery_id=pk) for pk in claimed}
    assert results[mine.pk] is None
    assert results[theirs.pk].status == DeliveryStatus.SENT
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR]


class _ErasingCalls(list):
    """The provider's record of calls, erasing the recipient while their message is out (in
    the provider's thread, with its own database connection, as another request would)."""

    def __init__(self, contact: Contact) -> None:
        super().__init__()
        self.contact = contact
        self.errors: list[BaseException] = []

    def append(self, call) -> None:
        super().append(call)
        try:
            contact_erase(contact=self.contact, source="api")
        except BaseException as exc:  # reported by the test
            self.errors.append(exc)
        finally:
            connections.close_all()


@pytest.mark.django_db(transaction=True)
def test_a_person_erased_while_their_message_is_out_gets_no_outcome_recorded(
    webhook_receiver, caplog
):
    channel = channel_create(
        name="brand hook",
        kind="webhook",
        config={"url": webhook_receiver.url, "secret": webhook_receiver.secret},
    )
    person = ContactFactory()
    delivery = _plan(channel, person, "out")
    webhook_receiver.calls = _ErasingCalls(person)

    with caplog.at_level(logging.ERROR):
        assert deliveries_dispatch_due() == 1

    assert webhook_receiver.calls.errors == []
    assert len(webhook_receiver.calls) == 1
    assert not Contact.objects.filter(pk=person.pk).exists()
    assert not Delivery.objects.filter(pk=delivery.pk).exists()
    # No "message sent" event about someone who is gone (nor an error trying to write one).
    assert not Event.objects.filter(contact_id=person.pk).exists()
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR]


@pytest.mark.django_db
def test_the_copy_of_a_persons_data_holds_their_messages_as_sent():
    channel = ChannelFactory(name="短信")
    person = ContactFactory(name="李雷")
    delivery = _plan(channel, person, "birthday")
    deliveries_dispatch_due()
    delivery.refresh_from_db()

    [row] = sections([person.pk])["channels.deliveries"]

    assert row == {
        "contact_id": person.pk,
        "channel": "短信",
        "status": "sent",
        "message": {"title": "生日快乐", "body": "李雷，送您一张券"},
        "created_at": delivery.created_at.isoformat(),
        "send_at": delivery.send_at.isoformat(),
        "sent_at": delivery.sent_at.isoformat(),
    }
