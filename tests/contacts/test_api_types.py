"""Values of the wrong JSON type are refused by name, as `identify` and `PATCH` already refuse
them: a consent's `request_id: 0` or `source: 5` was stored as "0" / "5", an event's
`event_id: 12345` as "12345", and `contact_id: "5"` or `5.0` was read as 5. The timeline's
paging parameters are refused when empty instead of answering the first page. The schema of a
PATCH allows the "" that clears `birthday` and `owner`, as the API does."""

import copy

import pytest
import yaml
from jsonschema import Draft4Validator, FormatChecker

from contacts.models import ConsentRecord, Event
from tests.factories import ContactFactory, EventFactory, UserFactory

pytestmark = pytest.mark.django_db

OCCURRED = "2026-11-26T10:15:00+08:00"
CONSENT = {
    "channel": "sms",
    "purpose": "marketing",
    "granted": True,
    "source": "miniprogram_register",
    "notice_version": "2026-01",
    "request_id": "register-1",
}


# --- consents ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("source", 5),
        ("source", 5.5),
        ("source", True),
        ("source", ["form"]),
        ("notice_version", 2026),
        ("request_id", 0),
        ("request_id", 12345),
    ],
)
def test_a_consent_with_a_number_where_text_belongs_is_refused_by_name(api, field, value):
    contact = ContactFactory()

    response = api.post(
        f"/api/v1/contacts/{contact.pk}/consents", {**CONSENT, field: value}, format="json"
    )

    assert response.status_code == 400
    error = response.json()["error"]
    assert error["code"] == "invalid"
    assert error["message"] == f"{field}: Not a valid string."
    assert error["details"] == {field: ["Not a valid string."]}
    assert not ConsentRecord.objects.exists()


def test_a_consent_with_text_is_recorded_as_sent(api):
    contact = ContactFactory()

    response = api.post(f"/api/v1/contacts/{contact.pk}/consents", CONSENT, format="json")

    assert response.status_code == 201
    body = response.json()
    assert (body["source"], body["notice_version"], body["request_id"]) == (
        "miniprogram_register",
        "2026-01",
        "register-1",
    )


# --- events --------------------------------------------------------------------------------


def _event(event_id="e-1", **changes) -> dict:
    return {"event_id": event_id, "name": "page_view", "occurred_at": OCCURRED, **changes}


@pytest.mark.parametrize(
    ("changes", "reason"),
    [
        ({"event_id": 12345}, "event_id: Not a valid string."),
        ({"event_id": 1.5}, "event_id: Not a valid string."),
        ({"name": 5}, "name: Not a valid string."),
        ({"name": False}, "name: Not a valid string."),
        ({"contact_id": "{pk}"}, "contact_id: A valid integer is required."),
        ({"contact_id": "{pk}.0"}, "contact_id: A valid integer is required."),
        ({"contact_id": "float"}, "contact_id: A valid integer is required."),
        ({"contact_id": True}, "contact_id: A valid integer is required."),
    ],
)
def test_an_event_with_a_value_of_the_wrong_type_is_rejected_alone_naming_it(api, changes, reason):
    contact = ContactFactory()
    bad = _event("bad", contact_id=contact.pk)
    for key, value in changes.items():
        if value == "float":
            value = float(contact.pk)
        elif isinstance(value, str) and "{pk}" in value:
            value = value.format(pk=contact.pk)
        bad[key] = value
    good = _event("good", contact_id=contact.pk)

    answer = api.post("/api/v1/events", {"events": [bad, good]}, format="json").json()

    assert [(r["status"], r["reason"]) for r in answer["results"]] == [
        ("rejected", reason),
        ("accepted", ""),
    ]
    assert list(Event.objects.filter(contact=contact).values_list("event_id", flat=True)) == [
        "good"
    ]


def test_an_event_whose_id_is_text_of_digits_is_stored_as_sent(api):
    contact = ContactFactory()

    answer = api.post(
        "/api/v1/events", {"events": [_event("12345", contact_id=contact.pk)]}, format="json"
    ).json()

    assert answer["accepted"] == 1
    assert Event.objects.get(contact=contact).event_id == "12345"


# --- timeline paging ------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("query", "field", "message"),
    [
        ("before=", "before", "before: A valid integer is required."),
        ("limit=", "limit", "limit: A valid integer is required."),
        ("before=&limit=", "before", "before: A valid integer is required."),
        ("before=5.0", "before", "before: A valid integer is required."),
        ("before=%2B5", "before", "before: A valid integer is required."),
        ("before=1_000", "before", "before: A valid integer is required."),
        ("before=%D9%A5", "before", "before: A valid integer is required."),
        ("before=%205", "before", "before: A valid integer is required."),
        ("limit=2.0", "limit", "limit: A valid integer is required."),
        ("limit=0", "limit", "limit: Ensure this value is greater than or equal to 1."),
        ("before=-1", "before", "before: Ensure this value is greater than or equal to 1."),
    ],
)
def test_an_empty_or_malformed_paging_parameter_is_refused_naming_it(api, query, field, message):
    contact = ContactFactory()
    EventFactory(contact=contact)

    response = api.get(f"/api/v1/contacts/{contact.pk}/timeline?{query}")

    assert response.status_code == 400
    error = response.json()["error"]
    assert (error["code"], error["message"]) == ("invalid", message)
    assert field in error["details"]


def test_paging_with_plain_digits_still_works(api):
    contact = ContactFactory()
    events = [EventFactory(contact=contact) for _ in range(3)]
    url = f"/api/v1/contacts/{contact.pk}/timeline"

    first = api.get(f"{url}?limit=2").json()
    rest = api.get(f"{url}?limit=2&before={first['next_before']}").json()

    assert len(first["events"]) == 2
    assert len(rest["events"]) == 1 and rest["next_before"] is None
    seen = {e["id"] for e in first["events"] + rest["events"]}
    assert seen == {e.pk for e in events}


# --- PATCH: the schema allows the "" that clears a field -------------------------------------


def _json_schema(node):
    """An OpenAPI 3.0 schema as JSON Schema: `nullable: true` becomes "or null"."""
    if isinstance(node, list):
        return [_json_schema(item) for item in node]
    if not isinstance(node, dict):
        return node
    node = {key: _json_schema(value) for key, value in node.items()}
    if node.pop("nullable", False):
        return {"anyOf": [node, {"type": "null"}]}
    return node


@pytest.fixture
def patch_schema(client):
    schema = yaml.safe_load(client.get("/api/schema/").content)
    body = copy.deepcopy(schema["components"]["schemas"]["PatchedContactPatchRequest"])
    return Draft4Validator(_json_schema(body), format_checker=FormatChecker())


@pytest.mark.parametrize("field", ["birthday", "owner", "email", "store", "name"])
def test_the_schema_and_the_api_both_take_an_empty_value_that_clears_the_field(
    api, patch_schema, field
):
    owner = UserFactory()
    contact = ContactFactory(birthday="1992-03-04", owner=owner, email="lin@example.cn")

    response = api.patch(f"/api/v1/contacts/{contact.pk}", {field: ""}, format="json")

    assert list(patch_schema.iter_errors({field: ""})) == []
    assert response.status_code == 200
    assert response.json()[field] in (None, "")


@pytest.mark.parametrize(
    ("body", "valid"),
    [
        ({"birthday": "1992-03-04"}, True),
        ({"birthday": None}, True),
        ({"birthday": "1992-13-04"}, False),
        ({"birthday": "x"}, False),
        ({"owner": "{owner}"}, True),
        ({"owner": None}, True),
        ({"owner": "3"}, False),
        ({"owner": 0}, False),
    ],
)
def test_the_schema_agrees_with_the_api_on_birthday_and_owner(api, patch_schema, body, valid):
    owner = UserFactory()
    contact = ContactFactory()
    if body == {"owner": "{owner}"}:
        body = {"owner": owner.pk}

    response = api.patch(f"/api/v1/contacts/{contact.pk}", body, format="json")

    assert (list(patch_schema.iter_errors(body)) == []) is valid
    assert (response.status_code == 200) is valid
