import datetime as dt

import pytest
from django.urls import reverse
from django.utils import timezone

from channels.models import Delivery, DeliveryStatus
from tests.factories import ChannelFactory, ContactFactory

pytestmark = pytest.mark.django_db

HX = {"HTTP_HX_REQUEST": "true"}


def _delivery(channel, status=DeliveryStatus.SENT, title="双十一预告", **kwargs):
    contact = kwargs.pop("contact", None) or ContactFactory()
    return Delivery.objects.create(
        idempotency_key=f"test:{Delivery.objects.count()}:{contact.pk}",
        contact=contact,
        channel=channel,
        payload={"title": title, "body": "正文"},
        status=status,
        **kwargs,
    )


def test_anonymous_users_are_sent_to_login(client):
    contact = ContactFactory()
    for url in (
        reverse("channels:list"),
        reverse("channels:deliveries"),
        reverse("channels:contact_deliveries", args=[contact.pk]),
    ):
        response = client.get(url)
        assert response.status_code == 302
        assert response["Location"].startswith(reverse("login"))


def test_channel_list_counts_recent_deliveries_by_status(operator_client):
    sms = ChannelFactory(name="短信通道")
    ChannelFactory(name="停用通道", is_active=False)
    _delivery(sms)
    _delivery(sms)
    _delivery(sms, status=DeliveryStatus.FAILED)
    # Outside the window: not counted.
    _delivery(sms, send_at=timezone.now() - dt.timedelta(days=30))

    response = operator_client.get(reverse("channels:list"))

    page = response.content.decode()
    assert response.status_code == 200
    assert "短信通道" in page and "停用通道" in page
    assert '<td class="num">2</td>' in page  # sent
    assert '<td class="num neg">1</td>' in page  # failed
    assert '<td class="num strong">3</td>' in page  # total in the window


def test_delivery_list_filters_by_status(operator_client):
    channel = ChannelFactory()
    _delivery(channel, title="已发送的消息")
    _delivery(channel, status=DeliveryStatus.FAILED, title="失败的消息", error_code="43101")

    page = operator_client.get(reverse("channels:deliveries")).content.decode()
    assert "<html" in page and "已发送的消息" in page and "失败的消息" in page

    response = operator_client.get(reverse("channels:deliveries"), {"status": "failed"}, **HX)
    fragment = response.content.decode()
    assert fragment.lstrip().startswith('<section id="delivery-table"')
    assert "失败的消息" in fragment and "43101" in fragment
    assert "已发送的消息" not in fragment
    assert "HX-Request" in response["Vary"]


def test_delivery_list_is_keyset_paginated(operator_client):
    channel = ChannelFactory()
    deliveries = [_delivery(channel, title=f"msg-{i:03d}") for i in range(51)]

    first = operator_client.get(reverse("channels:deliveries")).content.decode()
    assert "msg-050" in first and "msg-000" not in first
    assert f"after={deliveries[1].pk}" in first

    second = operator_client.get(reverse("channels:deliveries"), {"after": deliveries[1].pk})
    assert "msg-000" in second.content.decode()
    assert "msg-050" not in second.content.decode()


def test_contact_deliveries_panel(operator_client):
    contact = ContactFactory()
    _delivery(ChannelFactory(name="企微"), contact=contact, title="专属关怀")
    _delivery(ChannelFactory(), title="别人的消息")
    url = reverse("channels:contact_deliveries", args=[contact.pk])

    fragment = operator_client.get(url, **HX).content.decode()
    page = operator_client.get(url).content.decode()

    assert fragment.lstrip().startswith('<section id="contact-deliveries"')
    assert "专属关怀" in fragment and "企微" in fragment and "别人的消息" not in fragment
    assert "<html" in page and "专属关怀" in page
