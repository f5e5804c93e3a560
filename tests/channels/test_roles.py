import pytest
from django.urls import reverse

from channels.models import Delivery, DeliveryStatus
from contacts import roles
from tests.factories import ChannelFactory, ContactFactory, StoreFactory, user_with_role

pytestmark = pytest.mark.django_db

HX = {"HTTP_HX_REQUEST": "true"}


@pytest.fixture(autouse=True)
def _roles(db):
    roles.roles_sync()


def _delivery(contact, title):
    return Delivery.objects.create(
        idempotency_key=f"test:{title}",
        contact=contact,
        channel=ChannelFactory(),
        payload={"title": title, "body": "正文"},
        status=DeliveryStatus.SENT,
    )


@pytest.fixture
def clerk():
    """A clerk of the 静安 store, with deliveries to their store, their own and elsewhere."""
    jingan, xuhui = StoreFactory(name="静安店"), StoreFactory(name="徐汇店")
    clerk = user_with_role("store_staff", store=jingan)
    _delivery(ContactFactory(name="静安客户", store=jingan), "静安的消息")
    _delivery(ContactFactory(name="自己的客户", owner=clerk), "自己客户的消息")
    _delivery(ContactFactory(name="徐汇客户", store=xuhui), "徐汇的消息")
    _delivery(ContactFactory(name="无店客户"), "无店的消息")
    return clerk


def test_store_staff_see_only_deliveries_to_their_stores_and_their_own_contacts(client, clerk):
    client.force_login(clerk)

    page = client.get(reverse("channels:deliveries")).content.decode()
    fragment = client.get(reverse("channels:deliveries"), {"status": "sent"}, **HX)

    for html in (page, fragment.content.decode()):
        assert "静安客户" in html and "自己的客户" in html
        assert "徐汇客户" not in html and "无店客户" not in html


def test_store_staff_cannot_open_the_messages_of_another_stores_contact(client, clerk):
    elsewhere = Delivery.objects.get(contact__name="徐汇客户").contact
    client.force_login(clerk)

    url = reverse("channels:contact_deliveries", args=[elsewhere.pk])
    assert client.get(url, **HX).status_code == 404


def test_analysts_see_every_delivery(client, clerk):
    client.force_login(user_with_role("analyst"))

    page = client.get(reverse("channels:deliveries")).content.decode()

    assert all(name in page for name in ("静安客户", "自己的客户", "徐汇客户", "无店客户"))
