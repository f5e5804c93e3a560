"""Fixes from an audit of the server-to-server API: identities keep one key per person, numbers
too large for a float are refused by name (and alone, in an events batch), custom fields are
not converted, an unexpected error answers the API's JSON shape, and the schema and the guide
say what the server does."""

import json
import logging
from decimal import Decimal
from pathlib import Path

import pytest
import yaml
from django.forms import modelform_factory
from django.test import Client, RequestFactory
from django.urls import reverse

from config import views as config_views
from contacts import services
from contacts.admin import IdentityAdminForm
from contacts.models import (
    ConsentRecord,
    Contact,
    CustomField,
    Event,
    Identity,
    IdentityKind,
)
from contacts.services import custom_fields_validate
from core.errors import ValidationFailed
from tests.contacts import importing
from tests.factories import ContactFactory, StoreFactory

pytestmark = pytest.mark.django_db

DOCS = Path(__file__).resolve().parents[2] / "docs"
OCCURRED = "2026-01-02T10:00:00+08:00"


def _json(api, method: str, url: str, body: str, **headers):
    """Send `body` as it is written: the test client would encode 1e400 as Infinity."""
    return getattr(api, method)(url, data=body, content_type="application/json", **headers)


def _events(api, *events) -> dict:
    response = api.post("/api/v1/events", {"events": list(events)}, format="json")
    assert response.status_code == 200, response.content
    return response.json()


def _event(event_id: str, **fields) -> dict:
    return {"event_id": event_id, "name": "page_view", "occurred_at": OCCURRED, **fields}


def _schema(client) -> dict:
    return yaml.safe_load(client.get("/api/schema/").content)


# --- 1. An app_id only where the kind takes one ------------------------------------------------


@pytest.mark.parametrize(
    "kind, value",
    [
        ("phone", "13700137001"),
        ("email", "lin@example.cn"),
        ("wechat_unionid", "uXyz789"),
        ("anonymous_id", "device-1"),
    ],
)
def test_identify_refuses_an_app_id_on_a_kind_that_takes_none(api, kind, value):
    response = api.post(
        "/api/v1/identify",
        {"identities": [{"kind": kind, "app_id": "wxA", "value": value}]},
        format="json",
    )

    assert response.status_code == 400
    error = response.json()["error"]
    assert error["code"] == "invalid_identity"
    assert error["details"] == {"kind": kind, "field": "app_id"}
    assert "app_id" in error["message"]
    assert not Contact.objects.exists() and not Identity.objects.exists()


def test_a_phone_sent_with_and_without_an_app_id_no_longer_makes_two_contacts(api):
    with_app = {"identities": [{"kind": "phone", "app_id": "wxA", "value": "13700137001"}]}
    without = {"identities": [{"kind": "phone", "value": "13700137001"}]}

    assert api.post("/api/v1/identify", with_app, format="json").status_code == 400
    assert api.post("/api/v1/identify", without, format="json").status_code == 201
    assert api.post("/api/v1/identify", without, format="json").status_code == 200

    contact = Contact.objects.get()
    assert contact.phone == "+8613700137001"
    assert list(contact.identities.values_list("kind", "app_id", "value")) == [
        ("phone", "", "+8613700137001")
    ]


def test_a_wecom_external_userid_needs_its_corp_id_and_an_external_id_may_name_its_system(api):
    wecom = {"kind": "wecom_external_userid", "value": "wmAbc"}
    refused = api.post("/api/v1/identify", {"identities": [wecom]}, format="json")
    assert refused.status_code == 400
    assert refused.json()["error"]["code"] == "invalid_identity"

    with_corp = {"identities": [{**wecom, "app_id": "ww-corp"}]}
    assert api.post("/api/v1/identify", with_corp, format="json").status_code == 201
    for external in ({"app_id": "erp"}, {}):
        body = {"identities": [{"kind": "external_id", "value": "c-1", **external}]}
        assert api.post("/api/v1/identify", body, format="json").status_code == 201
    assert set(Identity.objects.values_list("kind", "app_id")) == {
        ("wecom_external_userid", "ww-corp"),
        ("external_id", "erp"),
        ("external_id", ""),
    }


def test_an_event_whose_identity_carries_an_app_id_it_takes_none_is_rejected_alone(api):
    answer = _events(
        api,
        _event("good", identities=[{"kind": "phone", "value": "13700137001"}]),
        _event("bad", identities=[{"kind": "phone", "app_id": "wxA", "value": "13700137002"}]),
    )

    assert [r["status"] for r in answer["results"]] == ["accepted", "rejected"]
    assert "app_id" in answer["results"][1]["reason"]
    assert list(Identity.objects.values_list("app_id", "value")) == [("", "+8613700137001")]


def test_lookup_refuses_an_app_id_on_a_phone(api):
    ContactFactory(phone="+8613700137001")
    response = api.get(
        "/api/v1/contacts/lookup", {"kind": "phone", "value": "13700137001", "app_id": "wxA"}
    )
    assert response.status_code == 400
    assert response.json()["error"]["code"] == "invalid_identity"


def test_the_admin_refuses_an_app_id_on_a_phone_identity():
    contact = ContactFactory()
    form_class = modelform_factory(
        Identity, form=IdentityAdminForm, fields=["contact", "kind", "app_id", "value"]
    )

    refused = form_class(
        data={"contact": contact.pk, "kind": "phone", "app_id": "wxA", "value": "13700137001"}
    )
    accepted = form_class(
        data={"contact": contact.pk, "kind": "phone", "app_id": "", "value": "13700137001"}
    )

    assert not refused.is_valid()
    assert "app_id" in str(refused.errors)
    assert accepted.is_valid(), accepted.errors


def test_the_service_refuses_an_app_id_on_a_unionid_from_any_caller():
    with pytest.raises(ValidationFailed) as exc:
        services.normalize_identity(
            services.IdentityInput(kind=IdentityKind.WECHAT_UNIONID, value="u1", app_id="wxA")
        )
    assert exc.value.code == "invalid_identity"


# --- 2. Numbers too large for a float; unexpected errors --------------------------------------


def test_consent_evidence_with_a_number_too_large_for_a_float_is_a_400_not_a_500(api):
    contact = ContactFactory()
    body = (
        '{"channel": "sms", "purpose": "marketing", "granted": true, "source": "form", '
        '"evidence": {"checkbox": "agree", "amount": 1e400}}'
    )

    response = _json(api, "post", f"/api/v1/contacts/{contact.pk}/consents", body)

    assert response.status_code == 400
    error = response.json()["error"]
    assert error["code"] == "invalid_number"
    assert error["details"] == {"path": ["evidence", "amount"]}
    assert "evidence.amount" in error["message"]
    assert not ConsentRecord.objects.exists()


@pytest.mark.parametrize(
    "url, method, body",
    [
        ("/api/v1/identify", "post", '{"identities": [{"kind": "anonymous_id", "value": -1e400}]}'),
        ("/api/v1/contacts/{id}", "patch", '{"name": "x", "score": [1, 2e999]}'),
        ("/api/v1/contacts/{id}/tags", "post", '{"tags": [1e400]}'),
    ],
)
def test_a_number_too_large_for_a_float_is_refused_by_name_anywhere(api, url, method, body):
    contact = ContactFactory()
    response = _json(api, method, url.format(id=contact.pk), body)
    assert response.status_code == 400
    assert response.json()["error"]["code"] == "invalid_number"


@pytest.fixture
def failing_identify(monkeypatch):
    def boom(**kwargs):
        raise RuntimeError("a bug")

    monkeypatch.setattr(services, "identify", boom)


def test_an_unexpected_error_under_the_api_answers_its_json_error_and_is_logged(
    api, failing_identify, caplog
):
    api.raise_request_exception = False
    body = {"identities": [{"kind": "anonymous_id", "value": "d-1"}]}

    with caplog.at_level(logging.ERROR, logger="django.request"):
        response = api.post("/api/v1/identify", body, format="json")

    assert response.status_code == 500
    assert response["Content-Type"] == "application/json"
    assert response["Content-Language"] == "en"
    assert response.json() == {
        "error": {"code": "server_error", "message": "A server error occurred.", "details": None}
    }
    (record,) = [r for r in caplog.records if r.name == "django.request"]
    assert record.levelno == logging.ERROR and record.exc_info[0] is RuntimeError


def test_the_operator_ui_keeps_its_html_server_error_page():
    ui = config_views.server_error(RequestFactory().get("/contacts/"))
    api = config_views.server_error(RequestFactory().get("/api/v1/contacts/1"))

    assert ui.status_code == api.status_code == 500
    assert 'data-error="500"' in ui.content.decode()
    assert json.loads(api.content)["error"]["code"] == "server_error"


# --- 3. One overflowing event is rejected alone -----------------------------------------------


@pytest.mark.parametrize(
    "bad, path",
    [
        ('"properties": {"price": 1e400}', "properties.price"),
        ('"properties": {"items": [{"qty": -1e400}]}', "properties.items[0].qty"),
        ('"value": 1e400', "value"),
    ],
)
def test_an_event_holding_a_number_too_large_for_a_float_is_rejected_alone(api, bad, path):
    contact = ContactFactory()
    good = json.dumps(_event("good", contact_id=contact.pk))
    body = (
        f'{{"events": [{good}, {{"event_id": "bad", "name": "page_view", '
        f'"occurred_at": "{OCCURRED}", "contact_id": {contact.pk}, {bad}}}]}}'
    )

    response = _json(api, "post", "/api/v1/events", body)

    assert response.status_code == 200, response.content
    answer = response.json()
    assert (answer["accepted"], answer["rejected"]) == (1, 1)
    rejected = answer["results"][1]
    assert (rejected["event_id"], rejected["status"]) == ("bad", "rejected")
    assert path in rejected["reason"] and "out of range" in rejected["reason"]
    assert list(Event.objects.values_list("event_id", flat=True)) == ["good"]


def test_an_event_id_too_large_for_a_float_is_rejected_alone(api):
    contact = ContactFactory()
    good = json.dumps(_event("good", contact_id=contact.pk))
    bad = f'{{"event_id": 1e400, "name": "x", "occurred_at": "{OCCURRED}", "contact_id": 1}}'

    response = _json(api, "post", "/api/v1/events", f'{{"events": [{good}, {bad}]}}')

    assert response.status_code == 200
    results = response.json()["results"]
    assert [r["status"] for r in results] == ["accepted", "rejected"]
    assert results[1]["event_id"] == "inf" and "event_id" in results[1]["reason"]


# --- 4. Custom fields and identities are not converted ----------------------------------------


@pytest.fixture
def fields():
    CustomField.objects.create(key="preferred_store", label="常去门店", kind="text")
    CustomField.objects.create(key="vip", label="贵宾", kind="boolean")
    CustomField.objects.create(key="budget", label="预算", kind="number")
    CustomField.objects.create(key="anniversary", label="纪念日", kind="date")
    CustomField.objects.create(
        key="skin", label="肤质", kind="single_choice", choices=["干性", "1"]
    )
    CustomField.objects.create(
        key="hobbies", label="爱好", kind="multi_choice", choices=["跑步", "瑜伽"]
    )


@pytest.mark.parametrize(
    "key, value",
    [
        ("preferred_store", 123),
        ("preferred_store", 1.5),
        ("vip", 1),
        ("vip", "true"),
        ("vip", "yes"),
        ("budget", "5"),
        ("budget", 123456789012345678901234567890),
        ("budget", 9007199254740992),
        ("budget", -1e300),
        ("anniversary", "20200101"),
        ("anniversary", 20200101),
        ("anniversary", "2020-W01-1"),
        ("skin", 1),
        ("hobbies", "跑步,瑜伽"),
        ("hobbies", ["跑步", 1]),
    ],
)
def test_patch_refuses_a_custom_value_of_the_wrong_json_type(api, fields, key, value):
    contact = ContactFactory(attributes={"preferred_store": "静安店"})

    response = api.patch(f"/api/v1/contacts/{contact.pk}", {key: value}, format="json")

    assert response.status_code == 400, response.json()
    error = response.json()["error"]
    assert (error["code"], error["details"]) == ("invalid_custom_field", {"field": key})
    contact.refresh_from_db()
    assert contact.attributes == {"preferred_store": "静安店"}


def test_patch_stores_custom_values_of_the_right_type_as_sent(api, fields):
    contact = ContactFactory()
    body = {
        "preferred_store": "静安店",
        "vip": True,
        "budget": 9007199254740991,
        "anniversary": "2020-01-01",
        "skin": "1",
        "hobbies": ["跑步"],
    }

    response = api.patch(f"/api/v1/contacts/{contact.pk}", body, format="json")

    assert response.status_code == 200, response.json()
    contact.refresh_from_db()
    assert contact.attributes == body
    assert (
        api.patch(f"/api/v1/contacts/{contact.pk}", {"budget": 1200.5}, format="json").json()[
            "attributes"
        ]["budget"]
        == 1200.5
    )


def test_identify_checks_custom_traits_as_strictly(api, fields):
    body = {"identities": [{"kind": "anonymous_id", "value": "d-1"}], "traits": {"vip": "yes"}}
    response = api.post("/api/v1/identify", body, format="json")
    assert response.status_code == 400
    assert response.json()["error"]["details"] == {"field": "vip"}
    assert not Contact.objects.exists()


def test_the_csv_import_still_reads_custom_values_from_text(
    fields, media, english, django_capture_on_commit_callbacks
):
    rows = [
        {
            "手机号": "13800138000",
            "常去门店": "123",
            "贵宾": "是",
            "预算": "1200.50",
            "纪念日": "20200101",
            "爱好": "跑步,瑜伽",
        }
    ]

    job = importing.run(rows, django_capture_on_commit_callbacks, key="phone")

    assert importing.counts(job) == (1, 0, 0, 0)
    assert Contact.objects.get().attributes == {
        "preferred_store": "123",
        "vip": True,
        "budget": 1200.5,
        "anniversary": "2020-01-01",
        "hobbies": ["跑步", "瑜伽"],
    }


def test_the_import_refuses_a_number_it_could_only_store_rounded(
    fields, media, english, django_capture_on_commit_callbacks
):
    rows = [{"手机号": "13800138000", "预算": "123456789012345678901234567890"}]

    job = importing.run(rows, django_capture_on_commit_callbacks, key="phone")

    assert importing.counts(job) == (0, 0, 0, 1)
    assert "预算" in importing.reasons(job, media)["2"]


def test_the_contact_form_still_saves_its_typed_custom_values(operator_client, fields):
    contact = ContactFactory(name="林小雨")
    data = {
        "name": contact.name,
        "nickname": "",
        "gender": contact.gender,
        "birthday": "",
        "phone": "",
        "email": "",
        "province": "",
        "city": "",
        "lifecycle_stage": contact.lifecycle_stage_id,
        "owner": "",
        "store": "",
        "cf__preferred_store": "123",
        "cf__vip": "true",
        "cf__budget": "38.5",
        "cf__anniversary": "2020-01-01",
        "cf__skin": "1",
        "cf__hobbies": ["瑜伽"],
    }

    response = operator_client.post(reverse("contacts:edit", args=[contact.pk]), data)

    assert response.status_code == 302, response.context["form"].errors
    contact.refresh_from_db()
    assert contact.attributes == {
        "preferred_store": "123",
        "vip": True,
        "budget": 38.5,
        "anniversary": "2020-01-01",
        "skin": "1",
        "hobbies": ["瑜伽"],
    }


def test_the_service_reads_text_only_when_told_it_is_text(fields):
    assert custom_fields_validate(values={"budget": "5", "vip": "是"}, from_text=True) == {
        "budget": 5,
        "vip": True,
    }
    assert custom_fields_validate(values={"budget": Decimal("5.0")}) == {"budget": 5}
    with pytest.raises(ValidationFailed):
        custom_fields_validate(values={"budget": "5"})


@pytest.mark.parametrize(
    "identity",
    [
        {"kind": "wechat_unionid", "value": 12345},
        {"kind": "phone", "value": 13800138000},
        {"kind": "miniprogram_openid", "app_id": 0, "value": "oAbc"},
        {"kind": "anonymous_id", "value": True},
    ],
)
def test_identity_values_and_app_ids_must_be_text(api, identity):
    response = api.post("/api/v1/identify", {"identities": [identity]}, format="json")

    assert response.status_code == 400
    error = response.json()["error"]
    assert error["code"] == "invalid"
    field = "app_id" if "app_id" in identity else "value"
    assert error["details"] == {"identities": {"0": {field: ["Not a valid string."]}}}
    assert error["message"] == f"identities: 0: {field}: Not a valid string."
    assert not Contact.objects.exists()


def test_an_event_whose_identity_value_is_a_number_is_rejected_alone(api):
    answer = _events(
        api,
        _event("good", identities=[{"kind": "wechat_unionid", "value": "u1"}]),
        _event("bad", identities=[{"kind": "wechat_unionid", "value": 1e300}]),
    )
    assert [r["status"] for r in answer["results"]] == ["accepted", "rejected"]
    assert answer["results"][1]["reason"] == "identities: 0: value: Not a valid string."
    assert list(Identity.objects.values_list("value", flat=True)) == ["u1"]


# --- 5. The schema and the guide say what the server does ---------------------------------------


def test_the_contact_segments_example_fits_its_schema(client):
    operation = _schema(client)["paths"]["/api/v1/contacts/{contact_id}/segments"]["get"]
    content = operation["responses"]["200"]["content"]["application/json"]

    (example,) = content["examples"].values()
    assert content["schema"]["type"] == "array"
    assert [type(item) for item in example["value"]] == [dict]
    assert set(example["value"][0]) == {"id", "name", "kind", "entered_at"}


@pytest.mark.parametrize(
    "path, method",
    [("/api/v1/identify", "post"), ("/api/v1/contacts/{contact_id}/segments", "get")],
)
def test_every_operation_has_its_own_description(client, path, method):
    schema = _schema(client)
    for operations in schema["paths"].values():
        for operation in operations.values():
            assert "Base for every endpoint" not in operation.get("description", "")
    assert schema["paths"][path][method]["description"]


def test_more_than_500_events_answer_the_documented_too_many(api):
    events = [_event(f"e-{i}", contact_id=1) for i in range(501)]

    response = api.post("/api/v1/events", {"events": events}, format="json")

    assert response.status_code == 400
    error = response.json()["error"]
    assert error["code"] == "too_many"
    assert error["message"] == "At most 500 events per call."
    assert "`too_many` | more than 500 events" in (DOCS / "api.md").read_text()


def test_the_guides_quote_the_purchase_reason_the_server_gives(api):
    contact = ContactFactory()
    answer = _events(api, {**_event("order-1", contact_id=contact.pk), "name": "purchase"})
    reason = answer["results"][0]["reason"]

    assert reason.startswith("A purchase needs properties.order_id")
    assert f"(`{reason}`)" in " ".join((DOCS / "api.md").read_text().split())
    assert f"`{reason}`" in " ".join((DOCS / "events.md").read_text().split())


def test_the_guides_400_example_has_the_details_the_server_sends(api):
    response = api.post("/api/v1/identify", {"identities": []}, format="json")
    error = response.json()["error"]

    assert error["details"] == {"identities": ["This list may not be empty."]}
    guide = (DOCS / "api.md").read_text()
    assert '"details": {"identities": ["This list may not be empty."]}' in guide
    assert "non_field_errors" not in guide.split("### 400 Bad Request")[1].split("###")[0]


def test_the_schema_types_what_the_server_accepts(client):
    schema = _schema(client)
    components = schema["components"]["schemas"]
    event = components["EventInRequest"]["properties"]
    patch = components["PatchedContactPatchRequest"]["properties"]
    kind = next(
        p for p in schema["paths"]["/api/v1/segments"]["get"]["parameters"] if p["name"] == "kind"
    )

    assert {"type": "number"} in event["value"]["oneOf"] and event["value"]["nullable"]
    assert event["identities"]["maxItems"] == 20
    for name in ("name", "nickname", "province", "city", "utm_source", "utm_term", "phone"):
        assert patch[name]["nullable"] is True, name
    assert patch["store"]["nullable"] is True and "minLength" not in json.dumps(patch["store"])
    assert {"type": "integer", "minimum": 1} in patch["store"]["oneOf"]
    assert "" in kind["schema"]["enum"] and "minLength" not in kind["schema"]
    assert components["ConsentOut"]["properties"]["request_id"]["type"] == "string"


def test_the_schema_declares_406_everywhere_and_415_where_a_body_is_read(client):
    for path, operations in _schema(client)["paths"].items():
        for method, operation in operations.items():
            responses = operation["responses"]
            assert "406" in responses, (method, path)
            reads_body = method in ("post", "patch") or path.endswith("/members")
            assert ("415" in responses) == reads_body, (method, path)


def test_the_documented_nullable_and_empty_values_clear_fields(api):
    store = StoreFactory()
    contact = ContactFactory(name="林", city="上海", utm_source="wechat", store=store)

    response = api.patch(
        f"/api/v1/contacts/{contact.pk}",
        {"name": None, "city": None, "utm_source": None, "store": ""},
        format="json",
    )

    assert response.status_code == 200
    contact.refresh_from_db()
    assert (contact.name, contact.city, contact.utm_source, contact.store) == ("", "", "", None)
    assert api.get("/api/v1/segments", {"kind": ""}).status_code == 200


def test_406_and_415_answer_the_error_shape(api):
    body = {"identities": [{"kind": "anonymous_id", "value": "d-1"}]}
    html_only = api.post("/api/v1/identify", body, format="json", HTTP_ACCEPT="text/html")
    not_json = api.post("/api/v1/identify", data="d-1", content_type="text/plain")

    assert html_only.status_code == 406
    assert html_only.json()["error"]["code"] == "not_acceptable"
    assert not_json.status_code == 415
    assert not_json.json()["error"]["code"] == "unsupported_media_type"


def test_a_method_the_path_does_not_have_answers_405_in_the_error_shape(api):
    response = api.put("/api/v1/identify", {}, format="json")
    assert response.status_code == 405
    assert response.json()["error"]["code"] == "method_not_allowed"
    assert "405" in (DOCS / "api.md").read_text()


# --- 6. Smaller fixes ---------------------------------------------------------------------------


def test_an_event_with_both_contact_id_and_identities_is_rejected_with_its_reason(api):
    contact = ContactFactory()
    answer = _events(
        api,
        _event("good", contact_id=contact.pk),
        _event(
            "both",
            contact_id=contact.pk,
            identities=[{"kind": "wechat_unionid", "value": "u-other"}],
        ),
    )

    assert [r["status"] for r in answer["results"]] == ["accepted", "rejected"]
    reason = answer["results"][1]["reason"]
    assert reason == "Send either contact_id or identities, not both."
    assert reason in (DOCS / "api.md").read_text()
    assert not Identity.objects.exists()


@pytest.mark.parametrize(
    "value, status", [("-5", "rejected"), (-0.01, "rejected"), ("0", "accepted")]
)
def test_a_purchase_value_must_not_be_negative(api, value, status):
    contact = ContactFactory()
    purchase = {
        **_event("order-1", contact_id=contact.pk),
        "name": "purchase",
        "properties": {"order_id": "1"},
        "value": value,
    }
    refund = {**purchase, "event_id": "refund-1", "name": "refund", "value": "5"}

    answer = _events(api, purchase, refund)

    assert [r["status"] for r in answer["results"]] == [status, "accepted"]
    if status == "rejected":
        assert "refund" in answer["results"][0]["reason"]


def test_the_guides_say_an_order_id_is_text_or_a_whole_number(api):
    contact = ContactFactory()
    purchase = {**_event("order-1", contact_id=contact.pk), "name": "purchase", "value": "1"}
    answer = _events(
        api,
        {**purchase, "properties": {"order_id": 1.5e300}},
        {**purchase, "event_id": "order-2", "properties": {"order_id": 20261126}},
    )
    assert [r["status"] for r in answer["results"]] == ["rejected", "accepted"]
    for guide in ("api.md", "events.md"):
        assert "non-empty text or a whole number" in " ".join((DOCS / guide).read_text().split())


CONSENT = {"channel": "sms", "purpose": "marketing", "granted": True, "source": "form"}


def test_the_consent_answer_names_the_records_request_id(api):
    contact = ContactFactory()
    url = f"/api/v1/contacts/{contact.pk}/consents"

    keyed = api.post(url, {**CONSENT, "request_id": "reg-1"}, format="json").json()
    repeated_without_key = api.post(url, CONSENT, format="json").json()
    other = ContactFactory()
    unkeyed = api.post(f"/api/v1/contacts/{other.pk}/consents", CONSENT, format="json").json()

    assert keyed["request_id"] == "reg-1"
    # The same consent again without a key answers the record that call made, with its key.
    assert repeated_without_key == keyed
    assert unkeyed["request_id"] == ""


def test_with_debug_on_an_api_path_that_names_nothing_answers_the_json_404(settings):
    settings.DEBUG = True
    client = Client(enforce_csrf_checks=True)

    for method, path in [
        ("get", "/api/v1/contacts/abc"),
        ("get", "/api/v1/no-such-endpoint"),
        ("post", "/api/v1/contacts/abc/tags"),
        ("delete", "/api/v1/segments/x/members"),
    ]:
        response = getattr(client, method)(path)
        assert response.status_code == 404, (method, path)
        assert response["Content-Type"] == "application/json"
        assert response.json() == {
            "error": {"code": "not_found", "message": "Not found.", "details": None}
        }
    # Paths outside the API keep Django's pages.
    assert "text/html" in client.get("/no-such-page/")["Content-Type"]
    assert client.get("/api/docs").status_code == 301
