"""Times sent to the API carry their UTC offset, as docs/api.md says; a bare local time is
refused where it is given instead of being read in the server's zone. The two DELETE
operations document their inputs with examples, like every other operation."""

import datetime as dt

import pytest
import yaml
from django.utils import timezone, translation

from contacts.models import ContactTag, Event
from contacts.services import contact_tag_add
from tests.factories import ContactFactory, TagFactory

pytestmark = pytest.mark.django_db

NO_OFFSET = (
    "occurred_at: Give the time with its UTC offset, like 2026-11-26T10:15:00+08:00 (or Z for "
    "UTC); a time without one is ambiguous."
)


def _event(event_id: str, occurred_at: str, contact_id: int) -> dict:
    return {
        "event_id": event_id,
        "name": "page_view",
        "occurred_at": occurred_at,
        "contact_id": contact_id,
    }


def test_an_event_without_an_offset_is_rejected_alone_with_its_reason(api):
    contact = ContactFactory()
    body = {
        "events": [
            _event("with-offset", "2026-11-26T10:15:00+08:00", contact.pk),
            _event("no-offset", "2026-11-26T10:15:00", contact.pk),
            _event("utc", "2026-11-26T02:15:00Z", contact.pk),
            _event("date-only", "2026-11-26", contact.pk),
            _event("space", "2026-11-26 10:15:00", contact.pk),
            _event("space-offset", "2026-11-26 10:15:00+08:00", contact.pk),
        ]
    }

    answer = api.post("/api/v1/events", body, format="json").json()

    assert [(r["event_id"], r["status"]) for r in answer["results"]] == [
        ("with-offset", "accepted"),
        ("no-offset", "rejected"),
        ("utc", "accepted"),
        ("date-only", "rejected"),
        ("space", "rejected"),
        ("space-offset", "accepted"),
    ]
    assert {r["reason"] for r in answer["results"] if r["status"] == "rejected"} == {NO_OFFSET}
    assert (answer["accepted"], answer["rejected"]) == (3, 3)
    moment = dt.datetime(2026, 11, 26, 2, 15, tzinfo=dt.UTC)
    assert set(Event.objects.values_list("event_id", "occurred_at")) == {
        ("with-offset", moment),
        ("utc", moment),
        ("space-offset", moment),
    }


def test_the_service_refuses_a_naive_time_from_any_caller():
    from contacts.services import EventInput, events_record

    contact = ContactFactory()
    # Reasons are written in the active language; outside a request that is LANGUAGE_CODE.
    with translation.override("en"):
        (outcome,) = events_record(
            items=[
                EventInput(
                    event_id="naive",
                    name="page_view",
                    occurred_at=dt.datetime(2026, 11, 26, 10, 15),
                    contact_id=contact.pk,
                )
            ]
        )
    assert (outcome.status, outcome.reason) == (
        "rejected",
        "occurred_at needs a UTC offset (like +08:00, or Z for UTC).",
    )
    assert not Event.objects.exists()


def test_a_tag_expiry_without_an_offset_is_refused_and_adds_no_tag(api):
    contact = ContactFactory()
    tag = TagFactory()
    later = timezone.localtime() + dt.timedelta(days=3)
    url = f"/api/v1/contacts/{contact.pk}/tags"

    naive = api.post(
        url, {"tags": [tag.pk], "expires_at": later.strftime("%Y-%m-%dT%H:%M:%S")}, format="json"
    )

    assert naive.status_code == 400
    error = naive.json()["error"]
    assert error["code"] == "invalid"
    assert "UTC offset" in str(error["details"]["expires_at"])
    assert not ContactTag.objects.exists()
    aware = api.post(url, {"tags": [tag.pk], "expires_at": later.isoformat()}, format="json")
    assert aware.status_code == 200
    assert ContactTag.objects.get().expires_at == later


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"birthday": "1992-03-04T00:00:00"}, "birthday"),
        ({"birthday": "1992-03-04T00:00:00+08:00"}, "birthday"),
    ],
)
def test_patch_and_identify_take_dates_not_times(api, body, field):
    contact = ContactFactory()

    patched = api.patch(f"/api/v1/contacts/{contact.pk}", body, format="json")
    identified = api.post(
        "/api/v1/identify",
        {"identities": [{"kind": "external_id", "value": "crm-1"}], "traits": body},
        format="json",
    )

    assert patched.status_code == 400 and field in str(patched.json()["error"])
    assert identified.status_code == 400
    assert identified.json()["error"]["details"] == {"field": field}
    ok = api.patch(f"/api/v1/contacts/{contact.pk}", {"birthday": "1992-03-04"}, format="json")
    assert ok.status_code == 200 and ok.json()["birthday"] == "1992-03-04"


def _operation(schema: dict, method: str, path: str) -> dict:
    return schema["paths"][path][method]


def test_the_two_delete_operations_document_their_inputs_with_examples(client):
    schema = yaml.safe_load(client.get("/api/schema/").content)

    tag_remove = _operation(schema, "delete", "/api/v1/contacts/{contact_id}/tags/{tag_id}")
    (tag_param,) = [p for p in tag_remove["parameters"] if p["name"] == "tag_id"]
    assert {e["value"] for e in tag_param["examples"].values()} == {"7", "兴趣/护肤"}
    unknown = tag_remove["responses"]["400"]["content"]["application/json"]["examples"]
    assert [e["value"]["error"]["code"] for e in unknown.values()] == ["unknown_tag"]

    members_remove = _operation(schema, "delete", "/api/v1/segments/{segment_id}/members")
    (ids_param,) = [p for p in members_remove["parameters"] if p["name"] == "contact_ids"]
    assert [e["value"] for e in ids_param["examples"].values()] == [[42, 57]]
    assert '{"contact_ids": [42, 57]}' in members_remove["description"]
    answers = members_remove["responses"]["200"]["content"]["application/json"]["examples"]
    assert answers


def test_the_documented_tag_removal_error_is_the_one_the_api_answers(api):
    contact = ContactFactory()
    tag = TagFactory()
    contact_tag_add(contact=contact, tag=tag, source="api")

    unknown = api.delete(
        f"/api/v1/contacts/{contact.pk}/tags/%E5%85%B4%E8%B6%A3/%E9%A6%99%E6%B0%B4"
    )
    removed = api.delete(f"/api/v1/contacts/{contact.pk}/tags/{tag.pk}")

    assert unknown.status_code == 400
    assert unknown.json()["error"]["code"] == "unknown_tag"
    assert unknown.json()["error"]["details"] == {"tag": "兴趣/香水"}
    assert removed.status_code == 204
    assert not ContactTag.objects.exists()
    gone = api.delete(f"/api/v1/contacts/{contact.pk + 1000}/tags/{tag.pk}")
    assert gone.status_code == 404
    assert gone.json()["error"] == {
        "code": "not_found",
        "message": "No Contact matches the given query.",
        "details": None,
    }
