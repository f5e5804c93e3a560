"""Contact API inputs that fuzzing turned into 500s or answers the schema did not describe."""

import json

import pytest
import yaml

from contacts.models import ConsentRecord, ContactTag, Event
from tests.factories import ContactFactory, StoreFactory, TagFactory

pytestmark = pytest.mark.django_db

GOOD_EVENT = {"name": "view_product", "occurred_at": "2026-01-02T10:00:00+08:00"}


def _raw(api, method: str, path: str, body: object):
    # json.dumps escapes a lone surrogate as \ud800, the way a JavaScript client sends one.
    return getattr(api, method)(path, json.dumps(body), content_type="application/json")


# --- Lone surrogates (half an emoji): SQLite stored them and then failed to answer -------------


def test_an_event_with_a_lone_surrogate_is_rejected_alone_and_the_timeline_stays_readable(api):
    contact = ContactFactory()
    events = [
        {
            **GOOD_EVENT,
            "event_id": "bad-props",
            "contact_id": contact.pk,
            "properties": {"k": "\ud83d"},
        },
        {
            **GOOD_EVENT,
            "event_id": "bad-key",
            "contact_id": contact.pk,
            "properties": {"\ud83d": 1},
        },
        {**GOOD_EVENT, "event_id": "bad-\udfff", "contact_id": contact.pk},
        {**GOOD_EVENT, "event_id": "good", "contact_id": contact.pk, "properties": {"k": "🎉"}},
    ]

    response = _raw(api, "post", "/api/v1/events", {"events": events})

    assert response.status_code == 200
    body = response.json()
    assert (body["accepted"], body["rejected"]) == (1, 3)
    reasons = [r["reason"] for r in body["results"][:3]]
    assert "properties.k is not valid Unicode" in reasons[0]
    assert "properties.\ufffd is not valid Unicode" in reasons[1]
    assert "event_id is not valid Unicode" in reasons[2]
    # The rejected id is echoed with the half character replaced, so the answer can be encoded.
    assert body["results"][2]["event_id"] == "bad-\ufffd"
    assert list(Event.objects.values_list("event_id", flat=True)) == ["good"]
    timeline = api.get(f"/api/v1/contacts/{contact.pk}/timeline")
    assert timeline.status_code == 200
    assert timeline.json()["events"][0]["properties"] == {"k": "🎉"}


@pytest.mark.parametrize(
    "body,path",
    [
        ({"name": "\ud800"}, ["name"]),
        ({"store": "\ud800"}, ["store"]),
        ({"lifecycle_stage": "\ud800"}, ["lifecycle_stage"]),
        ({"\ud800": "x"}, ["\ufffd"]),
    ],
)
def test_a_patch_with_a_lone_surrogate_is_refused_and_changes_nothing(api, body, path):
    contact = ContactFactory(name="林")

    response = _raw(api, "patch", f"/api/v1/contacts/{contact.pk}", body)

    assert response.status_code == 400
    error = response.json()["error"]
    assert error["code"] == "invalid_unicode"
    assert error["details"] == {"path": path}
    contact.refresh_from_db()
    assert contact.name == "林"


def test_a_tag_reference_with_a_lone_surrogate_is_refused(api):
    contact = ContactFactory()

    response = _raw(api, "post", f"/api/v1/contacts/{contact.pk}/tags", {"tags": ["兴趣/\ud800"]})

    assert response.status_code == 400
    assert response.json()["error"]["details"] == {"path": ["tags", 0]}
    assert not ContactTag.objects.exists()


def test_consent_evidence_with_a_lone_surrogate_is_refused_and_nothing_recorded(api):
    contact = ContactFactory()
    body = {
        "channel": "sms",
        "purpose": "marketing",
        "granted": True,
        "source": "form",
        "evidence": {"page": "\udc00"},
    }

    response = _raw(api, "post", f"/api/v1/contacts/{contact.pk}/consents", body)

    assert response.status_code == 400
    assert response.json()["error"]["code"] == "invalid_unicode"
    assert not ConsentRecord.objects.exists()


def test_an_identity_kind_with_a_lone_surrogate_is_refused_before_its_echo(api):
    # DRF's "is not a valid choice" repeats the input, which could not have been encoded.
    response = _raw(
        api, "post", "/api/v1/identify", {"identities": [{"kind": "\ud800", "value": "x"}]}
    )

    assert response.status_code == 400
    assert response.json()["error"]["details"] == {"path": ["identities", 0, "kind"]}


# --- Events batch edge cases --------------------------------------------------------------------


def test_a_null_event_is_rejected_alone_instead_of_refusing_the_batch(api):
    contact = ContactFactory()

    response = api.post(
        "/api/v1/events",
        {"events": [None, {**GOOD_EVENT, "event_id": "ok", "contact_id": contact.pk}]},
        format="json",
    )

    assert response.status_code == 200
    results = response.json()["results"]
    assert [r["status"] for r in results] == ["rejected", "accepted"]
    assert results[0]["reason"] == "This field may not be null."


def test_events_nested_too_deep_refuse_the_batch_by_name(api):
    contact = ContactFactory()
    properties: dict = {"x": 1}
    for _ in range(100):
        properties = {"a": properties}
    event = {**GOOD_EVENT, "event_id": "deep", "contact_id": contact.pk, "properties": properties}

    response = api.post("/api/v1/events", {"events": [event]}, format="json")

    assert response.status_code == 400
    assert response.json()["error"]["code"] == "too_deep"
    assert not Event.objects.exists()


def test_an_expiry_with_a_trailing_nul_is_not_read_as_a_time(api):
    contact = ContactFactory()
    tag = TagFactory()

    response = api.post(
        f"/api/v1/contacts/{contact.pk}/tags",
        {"tags": [tag.pk], "expires_at": "2030-01-01T00:00:00+08:00\x00"},
        format="json",
    )

    assert response.status_code == 400
    assert response.json()["error"]["message"].startswith("expires_at: Datetime has wrong format")
    assert not ContactTag.objects.exists()


# --- The schema describes what the API answers and accepts -----------------------------------


@pytest.fixture
def schema(client):
    return yaml.safe_load(client.get("/api/schema/").content)


def test_a_contact_without_a_store_answers_null_as_the_schema_says(api, schema):
    with_store = ContactFactory(store=StoreFactory(code="sh-jingan"))
    without = ContactFactory(store=None)

    assert api.get(f"/api/v1/contacts/{with_store.pk}").json()["store"] == "sh-jingan"
    assert api.get(f"/api/v1/contacts/{without.pk}").json()["store"] is None
    assert schema["components"]["schemas"]["ContactOut"]["properties"]["store"]["nullable"]


def test_the_schema_gives_the_list_bounds_the_api_enforces(schema):
    components = schema["components"]["schemas"]
    identities = components["IdentifyInRequest"]["properties"]["identities"]
    events = components["EventsInRequest"]["properties"]["events"]
    tags = components["TagsInRequest"]["properties"]["tags"]

    assert (identities["minItems"], identities["maxItems"]) == (1, 20)
    assert (events["minItems"], events["maxItems"]) == (1, 500)
    assert (tags["minItems"], tags["maxItems"]) == (1, 50)
    assert events["items"] == {"$ref": "#/components/schemas/EventInRequest"}
    assert set(components["EventInRequest"]["required"]) == {"event_id", "name", "occurred_at"}
    assert tags["items"] == {"oneOf": [{"type": "integer"}, {"type": "string"}]}


def test_operations_that_read_a_body_document_the_413(schema):
    paths = schema["paths"]
    for path, method in [
        ("/api/v1/identify", "post"),
        ("/api/v1/events", "post"),
        ("/api/v1/contacts/{contact_id}", "patch"),
        ("/api/v1/contacts/{contact_id}/tags", "post"),
        ("/api/v1/contacts/{contact_id}/consents", "post"),
    ]:
        assert "413" in paths[path][method]["responses"], (path, method)


@pytest.mark.parametrize(
    "sent,answered",
    [
        # Shanghai kept local mean time (+08:05:43) until 1901: no RFC 3339 offset, so UTC.
        ("0715-01-24T01:14:37Z", "0715-01-24T01:14:37Z"),
        ("1900-01-01T00:00:00+08:00", "1899-12-31T16:00:00Z"),
        ("2026-01-02T10:00:00+08:00", "2026-01-02T10:00:00+08:00"),
    ],
)
def test_timeline_times_are_rfc3339_even_before_1901(api, schema, sent, answered):
    contact = ContactFactory()
    event = {**GOOD_EVENT, "event_id": "old", "contact_id": contact.pk, "occurred_at": sent}
    assert api.post("/api/v1/events", {"events": [event]}, format="json").json()["accepted"] == 1

    occurred_at = api.get(f"/api/v1/contacts/{contact.pk}/timeline").json()["events"][0][
        "occurred_at"
    ]

    assert occurred_at == answered
    timeline_event = schema["components"]["schemas"]["TimelineEvent"]
    assert timeline_event["properties"]["occurred_at"]["format"] == "date-time"


def test_the_schema_says_a_patch_needs_at_least_one_field(api, schema):
    contact = ContactFactory()

    response = api.patch(f"/api/v1/contacts/{contact.pk}", {}, format="json")

    assert response.status_code == 400
    assert response.json()["error"]["message"] == "Send at least one field to change."
    assert schema["components"]["schemas"]["PatchedContactPatchRequest"]["minProperties"] == 1


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"store": "\u0000"}, "store"),
        ({"lifecycle_stage": "\u0000"}, "lifecycle_stage"),
        ({"owner": "\u0000"}, "owner"),
        ({"a\u0000": 1}, "a\\0"),
    ],
)
def test_a_nul_character_in_a_looked_up_value_or_key_is_refused_not_a_server_error(
    api, body, field
):
    # PostgreSQL refuses NUL in text parameters: the check comes before any look-up by it.
    contact = ContactFactory(name="林小雨")

    patched = _raw(api, "patch", f"/api/v1/contacts/{contact.pk}", body)
    identified = _raw(
        api,
        "post",
        "/api/v1/identify",
        {"identities": [{"kind": "external_id", "value": "NUL-1"}], "traits": body},
    )

    for response in (patched, identified):
        assert response.status_code == 400, response.content
        assert response.json()["error"]["details"]["field"] == field
    contact.refresh_from_db()
    assert contact.name == "林小雨" and contact.store_id is None
