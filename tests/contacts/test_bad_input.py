"""Bad input on the write paths of the API: refused with a precise reason, nothing stored."""

import datetime as dt

import pytest
import yaml
from django.contrib.auth import get_user_model
from django.utils import timezone

from contacts.models import Contact, CustomField, Event, Identity, Store
from contacts.services import IdentityInput, identify
from core.errors import ValidationFailed
from tests.factories import ContactFactory, UserFactory

pytestmark = pytest.mark.django_db

GOOD_EVENT = {
    "event_id": "good-1",
    "name": "view_product",
    "occurred_at": "2026-01-02T10:00:00+08:00",
    "properties": {"sku": "A-30ML"},
}


def _event(contact: Contact, **changes) -> dict:
    return {**GOOD_EVENT, "event_id": "bad-1", "contact_id": contact.pk, **changes}


def _post_events(api, *events):
    response = api.post("/api/v1/events", {"events": list(events)}, format="json")
    assert response.status_code == 200
    return response.json()


# --- POST /api/v1/events ----------------------------------------------------------------------


@pytest.mark.parametrize(
    "changes,reason",
    [
        ({"event_id": "e" * 65}, "event_id: Ensure this field has no more than 64 characters."),
        ({"name": "n" * 65}, "name: Ensure this field has no more than 64 characters."),
        ({"value": "abc"}, "value: A valid number is required."),
        ({"value": {"amount": 1}}, "value: A valid number is required."),
        ({"value": True}, "value: A valid number is required."),
        ({"value": "NaN"}, "value: A valid number is required."),
        ({"value": "1e20"}, "value: Ensure that there are no more than 14 digits in total."),
        (
            {"properties": ["sku"]},
            'properties: Expected a dictionary of items but got type "list".',
        ),
        ({"properties": "sku=A"}, 'properties: Expected a dictionary of items but got type "str".'),
        ({"occurred_at": "2099-01-01T00:00:00+08:00"}, "occurred_at is in the future."),
        ({"occurred_at": "yesterday"}, "occurred_at: Datetime has wrong format."),
        # PostgreSQL's text and jsonb cannot hold U+0000: refused by name, not a server error.
        ({"event_id": "e\x00"}, "event_id: Null characters are not allowed."),
        ({"properties": {"title": "a\x00b"}}, "properties must not contain the NUL character"),
        ({"properties": {"k\x00": 1}}, "properties must not contain the NUL character"),
        ({"properties": {"l": [{"x": "\x00"}]}}, "properties must not contain the NUL character"),
    ],
)
def test_events_reject_a_bad_item_with_its_reason_and_keep_the_good_one(api, changes, reason):
    contact = ContactFactory()
    answer = _post_events(api, {**GOOD_EVENT, "contact_id": contact.pk}, _event(contact, **changes))
    assert (answer["accepted"], answer["rejected"]) == (1, 1)
    bad = answer["results"][1]
    assert bad["status"] == "rejected"
    assert bad["reason"].startswith(reason)
    assert list(Event.objects.filter(contact=contact).values_list("event_id", flat=True)) == [
        "good-1"
    ]


def test_events_reject_an_item_whose_identities_hold_an_invalid_phone(api):
    item = {**GOOD_EVENT, "event_id": "bad-phone", "identities": [{"kind": "phone", "value": "12"}]}
    answer = _post_events(api, item)
    assert answer["results"] == [
        {
            "index": 0,
            "event_id": "bad-phone",
            "status": "rejected",
            "reason": "'12' is not a valid phone number.",
        }
    ]
    assert not Contact.objects.exists()
    assert not Event.objects.exists()


def test_events_accept_a_time_within_the_allowed_clock_skew(api):
    contact = ContactFactory()
    soon = (timezone.now() + dt.timedelta(minutes=1)).isoformat()
    answer = _post_events(api, _event(contact, occurred_at=soon))
    assert answer["accepted"] == 1


@pytest.mark.parametrize(
    "body",
    [
        b'{"events": [',
        b'{"events": [{"event_id": "e-1", "value": NaN}]}',
        b"events=1",
    ],
)
def test_events_answer_malformed_json_with_a_parse_error(api, body):
    response = api.generic("POST", "/api/v1/events", body, content_type="application/json")
    assert response.status_code == 400
    assert response.json()["error"]["code"] == "parse_error"
    assert not Event.objects.exists()


# --- POST /api/v1/identify: the body ----------------------------------------------------------


@pytest.mark.parametrize(
    "body",
    [
        b'{"identities": [{"kind": "external_id", "value": "\xff\xfe"}]}',
        # Chinese text in GBK, not UTF-8.
        '{"identities": [{"kind": "external_id", "value": "中文"}]}'.encode("gbk"),
    ],
)
def test_identify_refuses_a_body_that_is_not_utf8(api, body):
    response = api.generic("POST", "/api/v1/identify", body, content_type="application/json")
    assert response.status_code == 400
    error = response.json()["error"]
    assert error["code"] == "parse_error"
    assert "utf-8" in error["message"]
    assert not Contact.objects.exists()


# --- identify: traits -------------------------------------------------------------------------


def _identify(api, traits, value="crm-1"):
    body = {"identities": [{"kind": "external_id", "value": value}], "traits": traits}
    return api.post("/api/v1/identify", body, format="json")


@pytest.fixture
def custom_fields():
    return [
        CustomField.objects.create(
            key="skin_type", label="肤质", kind="single_choice", choices=["dry", "oily"]
        ),
        CustomField.objects.create(key="remark", label="备注", kind="text"),
        CustomField.objects.create(key="budget", label="预算", kind="number"),
        CustomField.objects.create(key="retired", label="停用", kind="text", is_active=False),
    ]


@pytest.mark.parametrize(
    "traits,code,field",
    [
        ({"name": {"a": 1}}, "invalid_trait", "name"),
        ({"city": 123}, "invalid_trait", "city"),
        ({"nickname": ["小林"]}, "invalid_trait", "nickname"),
        ({"name": "长" * 101}, "invalid_trait", "name"),
        ({"utm_source": "u" * 101}, "invalid_trait", "utm_source"),
        ({"source": "s" * 51}, "invalid_trait", "source"),
        ({"channel_code": 7}, "invalid_trait", "channel_code"),
        ({"gender": "robot"}, "invalid_trait", "gender"),
        ({"birthday": "2999-01-01"}, "invalid_trait", "birthday"),
        ({"birthday": 19900517}, "invalid_trait", "birthday"),
        ({"lifecycle_stage": "no_such_stage"}, "invalid_trait", "lifecycle_stage"),
        ({"owner": 999999}, "invalid_trait", "owner"),
        ({"owner": "boss"}, "invalid_trait", "owner"),
        ({"store": "no-such-store"}, "invalid_trait", "store"),
        ({"phone": "12"}, "invalid_phone", "phone"),
        ({"phone": True}, "invalid_phone", "phone"),
        ({"email": 42}, "invalid_email", "email"),
        ({"vip_level": 3}, "unknown_trait", "vip_level"),
        ({"notes": "x" * 100_000}, "unknown_trait", "notes"),
        ({"retired": "x"}, "unknown_trait", "retired"),
        ({"skin_type": "normal"}, "invalid_custom_field", "skin_type"),
        ({"remark": "字" * 501}, "invalid_custom_field", "remark"),
        ({"remark": {"a": 1}}, "invalid_custom_field", "remark"),
        ({"budget": "lots"}, "invalid_custom_field", "budget"),
        ({"remark": "a\x00b"}, "invalid_custom_field", "remark"),
        ({"nickname": "小\x00林"}, "invalid_trait", "nickname"),
    ],
)
def test_identify_refuses_a_bad_trait_with_its_code_and_stores_nothing(
    api, custom_fields, traits, code, field
):
    response = _identify(api, {"nickname": "小林", **traits})
    assert response.status_code == 400
    error = response.json()["error"]
    assert error["code"] == code
    assert error["details"]["field"] == field
    assert not Contact.objects.exists()
    assert not Identity.objects.exists()


def test_identify_with_a_bad_trait_leaves_a_known_contact_untouched(api):
    created = _identify(api, {"nickname": "小林", "city": "杭州"}).json()["contact_id"]
    before = Contact.objects.get(pk=created)
    body = {
        "identities": [
            {"kind": "external_id", "value": "crm-1"},
            {"kind": "wechat_unionid", "value": "u-new"},
        ],
        "traits": {"nickname": "林林", "city": 123},
    }
    response = api.post("/api/v1/identify", body, format="json")
    assert response.status_code == 400
    after = Contact.objects.get(pk=created)
    assert (after.nickname, after.city, after.last_seen_at) == ("小林", "杭州", before.last_seen_at)
    assert not Identity.objects.filter(kind="wechat_unionid").exists()


def test_identify_puts_profile_traits_in_their_columns_and_custom_fields_in_attributes(
    api, custom_fields
):
    owner = UserFactory(username="store-manager")
    store = Store.objects.create(code="sh-01", name="上海一店")
    traits = {
        "name": " 林小雨 ",
        "province": "上海",
        "city": "上海",
        "source": "miniprogram",
        "channel_code": "qr-123",
        "utm_source": "wechat",
        "utm_medium": "article",
        "utm_campaign": "double11",
        "utm_content": "banner",
        "utm_term": "面霜",
        "lifecycle_stage": "first_purchase",
        "owner": owner.pk,
        "store": "sh-01",
        "gender": "female",
        "birthday": "1992-03-04",
        "skin_type": "dry",
        "budget": 1200,
    }
    response = _identify(api, traits)
    assert response.status_code == 201
    contact = Contact.objects.get()
    assert contact.name == "林小雨"
    assert (contact.source, contact.channel_code) == ("miniprogram", "qr-123")
    assert (contact.utm_source, contact.utm_campaign, contact.utm_term) == (
        "wechat",
        "double11",
        "面霜",
    )
    assert contact.lifecycle_stage_id == "first_purchase"
    assert (contact.owner_id, contact.store_id) == (owner.pk, store.pk)
    assert contact.birthday == dt.date(1992, 3, 4)
    assert contact.attributes == {"skin_type": "dry", "budget": 1200}


def test_identify_clears_a_custom_field_sent_as_null(api, custom_fields):
    _identify(api, {"skin_type": "dry", "remark": "老客户"})
    response = _identify(api, {"remark": None})
    assert response.status_code == 200
    assert Contact.objects.get().attributes == {"skin_type": "dry"}


def test_identify_refuses_too_many_traits_and_overlong_trait_names():
    identities = [IdentityInput("external_id", "crm-1")]
    too_many = {f"k{i}": i for i in range(101)}
    for traits in (too_many, {"k" * 65: 1}, {"": 1}):
        with pytest.raises(ValidationFailed) as exc:
            identify(identities=identities, traits=traits)
        assert exc.value.code == "invalid_trait"
        assert len(exc.value.message) < 200
    assert not Contact.objects.exists()


def test_identify_refuses_traits_that_are_not_an_object():
    with pytest.raises(ValidationFailed) as exc:
        identify(identities=[IdentityInput("external_id", "crm-1")], traits=["name", "林"])
    assert exc.value.code == "invalid_trait"
    assert not Contact.objects.exists()


def test_identify_refuses_an_inactive_owner(api):
    inactive = get_user_model().objects.create(username="gone", is_active=False)
    response = _identify(api, {"owner": inactive.pk})
    assert response.status_code == 400
    assert response.json()["error"]["code"] == "invalid_trait"


# --- The OpenAPI schema shows the answers -----------------------------------------------------


def _examples(operation: dict, status: str) -> dict:
    return operation["responses"][status]["content"]["application/json"]["examples"]


def test_schema_shows_the_events_answer_the_patch_answer_and_the_unknown_trait(client):
    paths = yaml.safe_load(client.get("/api/schema/").content)["paths"]
    (events,) = _examples(paths["/api/v1/events"]["post"], "200").values()
    statuses = {item["status"] for item in events["value"]["results"]}
    assert statuses == {"accepted", "duplicate", "rejected"}
    (patched,) = _examples(paths["/api/v1/contacts/{contact_id}"]["patch"], "200").values()
    assert {"id", "name", "attributes", "tags"} <= set(patched["value"])
    identify_errors = _examples(paths["/api/v1/identify"]["post"], "400").values()
    assert [e["value"]["error"]["code"] for e in identify_errors] == ["unknown_trait"]
