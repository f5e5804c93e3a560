import pytest

from contacts.models import Contact, Event
from tests.factories import ContactFactory, TagFactory

pytestmark = pytest.mark.django_db


def test_identify_creates_then_updates(api):
    body = {
        "identities": [{"kind": "miniprogram_openid", "app_id": "wx1", "value": "o-1"}],
        "traits": {"nickname": "小林", "city": "杭州"},
    }
    first = api.post("/api/v1/identify", body, format="json")
    assert first.status_code == 201
    assert first.json()["created"] is True
    body["traits"] = {"city": "上海"}
    second = api.post("/api/v1/identify", body, format="json")
    assert second.status_code == 200
    assert second.json() == {
        "contact_id": first.json()["contact_id"],
        "created": False,
        "merged": [],
        "conflicts": [],
    }
    contact = Contact.objects.get()
    assert (contact.nickname, contact.city) == ("小林", "上海")


@pytest.mark.parametrize(
    "body,field",
    [
        ({}, "identities"),
        ({"identities": []}, "identities"),
        ({"identities": [{"kind": "fax", "value": "1"}]}, "kind"),
        ({"identities": [{"kind": "phone", "value": "x" * 200}]}, "value"),
        ({"identities": "o-1"}, "identities"),
        ({"identities": [{"kind": "external_id", "value": "e"}], "traits": []}, "traits"),
    ],
)
def test_identify_rejects_malformed_bodies_with_the_field_named(api, body, field):
    response = api.post("/api/v1/identify", body, format="json")
    assert response.status_code == 400
    error = response.json()["error"]
    assert error["code"] == "invalid"
    assert field in error["message"]
    assert not Contact.objects.exists()


def test_identify_reports_domain_errors_with_their_code(api):
    response = api.post(
        "/api/v1/identify",
        {"identities": [{"kind": "phone", "value": "12"}]},
        format="json",
    )
    assert response.status_code == 400
    assert response.json()["error"]["code"] == "invalid_phone"


def test_events_batch_keeps_good_items_and_reports_bad_ones(api):
    contact = ContactFactory()
    body = {
        "events": [
            {
                "event_id": "e-1",
                "name": "view_product",
                "occurred_at": "2026-01-02T10:00:00+08:00",
                "contact_id": contact.pk,
                "properties": {"sku": "A1"},
            },
            {"event_id": "e-2", "name": "page_view", "occurred_at": "yesterday"},
            "not an object",
            {
                "event_id": "e-3",
                "name": "purchase",
                "occurred_at": "2026-01-02T10:00:00Z",
                "identities": [{"kind": "external_id", "value": "crm-9"}],
                "value": "88.50",
            },
            {
                "event_id": "e-1",
                "name": "view_product",
                "occurred_at": "2026-01-02T10:00:00+08:00",
                "contact_id": contact.pk,
            },
        ]
    }
    response = api.post("/api/v1/events", body, format="json")
    assert response.status_code == 200
    data = response.json()
    assert [r["status"] for r in data["results"]] == [
        "accepted",
        "rejected",
        "rejected",
        "accepted",
        "duplicate",
    ]
    assert "occurred_at" in data["results"][1]["reason"]
    assert (data["accepted"], data["duplicates"], data["rejected"]) == (2, 1, 2)
    assert set(Event.objects.values_list("event_id", flat=True)) == {"e-1", "e-3"}
    # Resending the whole batch stores nothing new.
    again = api.post("/api/v1/events", body, format="json").json()
    assert again["accepted"] == 0
    assert Event.objects.count() == 2


def test_events_batch_over_the_limit_is_refused_whole(api):
    events = [
        {"event_id": f"e{i}", "name": "x", "occurred_at": "2026-01-01T00:00:00Z"}
        for i in range(501)
    ]
    response = api.post("/api/v1/events", {"events": events}, format="json")
    assert response.status_code == 400
    assert "500" in response.json()["error"]["message"]
    assert not Event.objects.exists()


def test_contact_detail(api):
    contact = ContactFactory(name="陈静")
    tag = TagFactory(name="护肤")
    contact.contact_tags.create(tag=tag)
    response = api.get(f"/api/v1/contacts/{contact.pk}")
    assert response.status_code == 200
    assert response.json()["name"] == "陈静"
    assert response.json()["tags"] == ["兴趣/护肤"]
    missing = api.get("/api/v1/contacts/999999")
    assert missing.status_code == 404
    assert missing.json()["error"]["code"] == "not_found"
