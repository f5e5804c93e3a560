"""A purchase must name its order: points and revenue are earned once per event_id, and only
the order id shows that two event ids are the same order."""

import pytest

from contacts.models import Event
from membership.models import PointsEntry
from tests.factories import ContactFactory

pytestmark = pytest.mark.django_db

PURCHASE = {
    "event_id": "order-20261126-0001",
    "name": "purchase",
    "occurred_at": "2026-01-02T10:00:00+08:00",
    "value": "299.00",
}
REASON = "A purchase needs properties.order_id: the order's id (text or a number)."


def _post(api, *events):
    response = api.post("/api/v1/events", {"events": list(events)}, format="json")
    assert response.status_code == 200
    return response.json()


@pytest.mark.parametrize(
    "properties",
    [
        {},
        {"sku": "A-30ML"},
        {"order_id": ""},
        {"order_id": "  "},
        {"order_id": None},
        {"order_id": True},
        {"order_id": ["1"]},
        {"order_id": {"id": 1}},
    ],
)
def test_a_purchase_without_an_order_id_is_rejected_alone(api, properties):
    contact = ContactFactory()
    good = {**PURCHASE, "contact_id": contact.pk, "properties": {"order_id": "20261126-0001"}}
    bad = {**PURCHASE, "event_id": "order-x", "contact_id": contact.pk, "properties": properties}
    answer = _post(api, good, bad)
    assert (answer["accepted"], answer["rejected"]) == (1, 1)
    assert answer["results"][1] == {
        "index": 1,
        "event_id": "order-x",
        "status": "rejected",
        "reason": REASON,
    }
    assert list(Event.objects.values_list("event_id", flat=True)) == [PURCHASE["event_id"]]


def test_a_purchase_without_properties_is_rejected(api):
    contact = ContactFactory()
    answer = _post(api, {**PURCHASE, "contact_id": contact.pk})
    assert answer["results"][0]["reason"] == REASON
    assert not Event.objects.exists()
    assert not PointsEntry.objects.exists()


@pytest.mark.parametrize("order_id", ["20261126-0001", 20261126001])
def test_a_purchase_with_an_order_id_is_accepted(api, order_id):
    contact = ContactFactory()
    item = {**PURCHASE, "contact_id": contact.pk, "properties": {"order_id": order_id}}
    answer = _post(api, item)
    assert answer["accepted"] == 1
    assert Event.objects.get().properties == {"order_id": order_id}


def test_other_events_need_no_order_id(api):
    contact = ContactFactory()
    refund = {**PURCHASE, "event_id": "refund-1", "name": "refund", "contact_id": contact.pk}
    view = {**refund, "event_id": "view-1", "name": "view_product", "value": None}
    assert _post(api, refund, view)["accepted"] == 2
