import datetime as dt
import threading

import pytest
from django.db import connection
from django.utils import timezone

from channels.models import Delivery, DeliveryStatus
from channels.services import (
    channel_create,
    deliveries_claim_due,
    deliveries_dispatch_due,
    deliveries_recover_expired,
    delivery_plan,
    delivery_send_now,
)
from core.errors import ValidationFailed
from tests.factories import ChannelFactory, ContactFactory, IdentityFactory

pytestmark = pytest.mark.django_db


@pytest.fixture
def webhook_channel(webhook_receiver):
    return channel_create(
        name="brand hook",
        kind="webhook",
        config={"url": webhook_receiver.url, "secret": webhook_receiver.secret},
    )


def _plan(channel, contact, key="k1", **kw):
    return delivery_plan(
        idempotency_key=key,
        contact=contact,
        channel=channel,
        payload={"title": "你好", "body": "欢迎加入"},
        **kw,
    )


def test_planning_twice_creates_one_row():
    channel, contact = ChannelFactory(), ContactFactory()
    first, created = _plan(channel, contact)
    second, created_again = _plan(channel, contact)
    assert created and not created_again
    assert first.pk == second.pk
    assert Delivery.objects.count() == 1


def test_webhook_delivery_is_signed_and_recorded(webhook_channel, webhook_receiver):
    contact = ContactFactory(name="王芳")
    IdentityFactory(contact=contact, kind="wechat_unionid", value="u-1")
    delivery, _ = _plan(webhook_channel, contact)
    assert deliveries_dispatch_due() == 1
    delivery.refresh_from_db()
    assert delivery.status == DeliveryStatus.SENT
    assert delivery.provider_message_id == "msg-1"
    [call] = webhook_receiver.calls
    assert webhook_receiver.signature_valid(call)
    assert call.headers["idempotency-key"] == "k1"
    assert call.json["message"] == {"title": "你好", "body": "欢迎加入"}
    assert call.json["recipient"]["identities"] == {"wechat_unionid": "u-1"}
    event = contact.events.get(name="message_sent")
    assert event.properties["delivery_id"] == delivery.pk
    # A second tick finds nothing to send.
    assert deliveries_dispatch_due() == 0
    assert len(webhook_receiver.calls) == 1


def test_transient_failure_is_retried_later_then_permanent_failure_is_final(
    webhook_channel, webhook_receiver
):
    webhook_receiver.statuses = [503, 400]
    delivery, _ = _plan(webhook_channel, ContactFactory())
    deliveries_dispatch_due()
    delivery.refresh_from_db()
    assert delivery.status == DeliveryStatus.PENDING
    assert delivery.error_code == "http_503"
    assert delivery.send_at > timezone.now()
    # Not due yet: nothing happens on the next tick.
    assert deliveries_dispatch_due() == 0
    Delivery.objects.filter(pk=delivery.pk).update(send_at=timezone.now())
    deliveries_dispatch_due()
    delivery.refresh_from_db()
    assert delivery.status == DeliveryStatus.FAILED
    assert delivery.error_code == "http_400"
    assert delivery.attempts == 2
    assert delivery.contact.events.filter(name="message_failed").count() == 1


def test_unreachable_endpoint_is_a_transient_failure():
    channel = channel_create(
        name="down", kind="webhook", config={"url": "http://127.0.0.1:9/hook", "secret": "s"}
    )
    delivery, _ = _plan(channel, ContactFactory())
    deliveries_dispatch_due()
    delivery.refresh_from_db()
    assert delivery.status == DeliveryStatus.PENDING
    assert delivery.error_code == "network"


@pytest.mark.parametrize(
    "kind,config",
    [
        ("sms", {}),
        ("webhook", {"url": "ftp://x", "secret": "s"}),
        ("webhook", {"url": "https://example.com/hook"}),
    ],
)
def test_bad_channel_configuration_is_refused(kind, config):
    with pytest.raises(ValidationFailed):
        channel_create(name="bad", kind=kind, config=config)


def test_future_deliveries_wait_for_their_time():
    delivery, _ = _plan(
        ChannelFactory(), ContactFactory(), send_at=timezone.now() + dt.timedelta(hours=1)
    )
    assert deliveries_claim_due() == []
    assert delivery_send_now(delivery_id=delivery.pk) is None


def test_expired_leases_are_requeued_for_idempotent_adapters():
    delivery, _ = _plan(ChannelFactory(), ContactFactory())
    assert deliveries_claim_due() == [delivery.pk]
    Delivery.objects.filter(pk=delivery.pk).update(
        lease_until=timezone.now() - dt.timedelta(seconds=1)
    )
    assert deliveries_recover_expired() == 1
    delivery.refresh_from_db()
    assert delivery.status == DeliveryStatus.PENDING
    assert delivery.error_code == "lease_expired_retry"


def test_realtime_send_claims_the_row_once():
    delivery, _ = _plan(ChannelFactory(), ContactFactory())
    assert delivery_send_now(delivery_id=delivery.pk).status == DeliveryStatus.SENT
    assert delivery_send_now(delivery_id=delivery.pk) is None


@pytest.mark.django_db(transaction=True)
def test_concurrent_claimers_never_take_the_same_row():
    channel, contact = ChannelFactory(), ContactFactory()
    for i in range(120):
        _plan(channel, contact, key=f"k{i}")
    claimed: list[list[int]] = []
    errors: list[BaseException] = []
    barrier = threading.Barrier(3)

    def claim():
        try:
            barrier.wait()
            while ids := deliveries_claim_due(limit=7):
                claimed.append(ids)
        except BaseException as exc:  # surfaced below
            errors.append(exc)
        finally:
            connection.close()

    threads = [threading.Thread(target=claim) for _ in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    flat = [i for batch in claimed for i in batch]
    assert len(flat) == len(set(flat)) == 120
