"""Erasure and data-copy requests through the API: what a mini-program backend calls when a
person deletes their account (注销账号) or asks for a copy of their data."""

import json
import re
from pathlib import Path

import pytest
from django.urls import reverse
from django.utils import timezone
from rest_framework.test import APIClient

from contacts.models import (
    ConsentRecord,
    Contact,
    ErasedContact,
    Erasure,
    Event,
    Identity,
    SuppressedIdentity,
)
from contacts.services import (
    IdentityInput,
    consent_record,
    contact_erase,
    contact_merge,
    identify,
)
from core.models import ApiKey, AuditLog
from core.services import api_key_create
from tests.factories import ContactFactory, EventFactory

pytestmark = pytest.mark.django_db

OPENID = {"kind": "miniprogram_openid", "app_id": "wx1234", "value": "oAbc123"}


@pytest.fixture
def api(api):
    """The mini-program backend's key, granted personal data requests in the admin."""
    ApiKey.objects.update(personal_data_requests=True)
    return api


@pytest.fixture
def plain_api(db):
    """A key as created by default: identify, events, profiles; no personal data requests."""
    _, raw = api_key_create(name="order system")
    client = APIClient()
    client.credentials(HTTP_AUTHORIZATION=f"Api-Key {raw}")
    return client


def _person() -> tuple[Contact, Contact]:
    """A customer known by unionid and phone, with a mini-program visitor merged into them."""
    known = identify(
        identities=[IdentityInput("wechat_unionid", "union-1")],
        traits={"name": "林小雨", "phone": "13800138000"},
    ).contact
    visitor = identify(identities=[IdentityInput(**OPENID)]).contact
    EventFactory(contact=visitor, name="view_product")
    contact_merge(survivor=known, duplicate=visitor)
    consent_record(contact=known, channel="sms", purpose="marketing", granted=True, source="form")
    return Contact.objects.get(pk=known.pk), Contact.objects.get(pk=visitor.pk)


def _erase(api, body):
    return api.post("/api/v1/erasures", body, format="json")


def test_erasing_by_contact_id_deletes_the_person_and_a_retry_answers_the_same_erasure(api):
    known, visitor = _person()
    bystander = ContactFactory()

    first = _erase(api, {"contact_id": known.pk, "reference": "mp-cancel-8812"})

    assert first.status_code == 201
    body = first.json()
    assert body["contact_ids"] == sorted([known.pk, visitor.pk])
    assert body["reference"] == "mp-cancel-8812"
    erasure = Erasure.objects.get(pk=body["erasure_id"])
    assert erasure.source == "api"
    assert body["erased_at"].startswith(timezone.localtime(erasure.created_at).date().isoformat())
    assert not Contact.objects.filter(pk__in=[known.pk, visitor.pk]).exists()
    assert Contact.objects.filter(pk=bystander.pk).exists()
    assert not Event.objects.filter(contact_id__in=[known.pk, visitor.pk]).exists()
    assert not ConsentRecord.objects.exists()
    assert SuppressedIdentity.objects.filter(erasure=erasure, kind="phone").exists()

    # The backend did not get the answer and sends the call again, or names the merged-away id.
    for contact_id in (known.pk, visitor.pk):
        retry = _erase(api, {"contact_id": contact_id, "reference": "other"})
        assert retry.status_code == 200
        assert retry.json() == body
    assert Erasure.objects.count() == 1


def test_the_erasure_is_audited_with_the_key_and_address_of_the_caller(api):
    known, _visitor = _person()

    response = _erase(api, {"contact_id": known.pk})

    entry = AuditLog.objects.get(action="contact.erase")
    assert entry.details["erasure"] == response.json()["erasure_id"]
    assert entry.details["source"] == "api"
    assert entry.details["api_key"] == ApiKey.objects.get().pk
    assert entry.ip == "127.0.0.1"
    assert entry.actor is None
    assert "13800138000" not in str(entry.details) and "林小雨" not in str(entry.details)


def test_erasing_by_identities_normalises_them_and_follows_merges(api):
    known, visitor = _person()

    # The openid was the visitor's, merged into the customer; the phone as a user types it.
    response = _erase(
        api,
        {"identities": [OPENID, {"kind": "phone", "value": "138 0013 8000"}]},
    )

    assert response.status_code == 201
    assert response.json()["contact_ids"] == sorted([known.pk, visitor.pk])
    assert not Contact.objects.exists()

    retry = _erase(api, {"identities": [OPENID, {"kind": "phone", "value": "13800138000"}]})
    assert retry.status_code == 200
    assert retry.json()["erasure_id"] == response.json()["erasure_id"]


def test_a_retry_naming_an_identity_never_known_still_answers_the_erasure(api):
    _person()
    unknown = {"kind": "external_id", "value": "crm-77"}

    first = _erase(api, {"identities": [{"kind": "wechat_unionid", "value": "union-1"}, unknown]})
    retry = _erase(api, {"identities": [{"kind": "wechat_unionid", "value": "union-1"}, unknown]})

    assert (first.status_code, retry.status_code) == (201, 200)
    assert retry.json()["erasure_id"] == first.json()["erasure_id"]


@pytest.mark.parametrize(
    "column,identity",
    [
        ({"phone": "+8613900139000"}, {"kind": "phone", "value": "13900139000"}),
        ({"email": "Wang.Li@Example.cn"}, {"kind": "email", "value": "wang.li@example.CN"}),
    ],
)
def test_a_phone_or_email_held_only_in_the_column_finds_its_contact(api, column, identity):
    # An old import stored it without an identity row (and the email with its capitals).
    contact = ContactFactory(**column)
    assert not Identity.objects.filter(contact=contact).exists()

    response = _erase(api, {"identities": [identity]})

    assert response.status_code == 201
    assert response.json()["contact_ids"] == [contact.pk]


@pytest.mark.parametrize("first_identified", [True, False])
def test_duplicates_never_merged_that_share_a_phone_are_two_people(api, first_identified):
    # One customer identified by phone (an identity row and the column), and a duplicate an
    # old import made with the same phone in its column only; or two such duplicates.
    if first_identified:
        first = identify(identities=[IdentityInput("phone", "13900139000")]).contact
    else:
        first = ContactFactory(phone="+8613900139000")
    duplicate = ContactFactory(phone="+8613900139000")

    response = _erase(api, {"identities": [{"kind": "phone", "value": "13900139000"}]})

    assert response.status_code == 400
    error = response.json()["error"]
    assert error["code"] == "different_people"
    assert error["details"] == {"contact_ids": sorted([first.pk, duplicate.pk])}
    assert Contact.objects.filter(pk__in=[first.pk, duplicate.pk]).count() == 2
    assert not Erasure.objects.exists()


def test_a_duplicate_merged_into_the_person_is_the_same_person(api):
    known = identify(identities=[IdentityInput("phone", "13900139000")]).contact
    duplicate = ContactFactory(phone="+8613900139000")
    contact_merge(survivor=known, duplicate=duplicate)

    response = _erase(api, {"identities": [{"kind": "phone", "value": "13900139000"}]})

    assert response.status_code == 201
    assert response.json()["contact_ids"] == sorted([known.pk, duplicate.pk])


def test_identities_of_two_different_people_erase_nothing(api):
    known, _visitor = _person()
    other = identify(identities=[IdentityInput("phone", "13900139000")]).contact

    response = _erase(
        api,
        {
            "identities": [
                {"kind": "wechat_unionid", "value": "union-1"},
                {"kind": "phone", "value": "13900139000"},
            ]
        },
    )

    assert response.status_code == 400
    error = response.json()["error"]
    assert error["code"] == "different_people"
    assert error["details"] == {"contact_ids": sorted([known.pk, other.pk])}
    assert Contact.objects.filter(pk__in=[known.pk, other.pk]).count() == 2
    assert not Erasure.objects.exists()
    assert not SuppressedIdentity.objects.exists()


def test_a_retry_by_reference_after_the_person_came_back_erases_nothing(api):
    # The first call erased the person, but its answer was lost; meanwhile the person signed
    # in to the mini-program again (a new customer, the tombstones lifted). The backend's
    # retry, with the same reference, must not erase the new customer.
    _person()
    body = {"identities": [OPENID], "reference": "mp-cancel-8812"}
    first = _erase(api, body)
    assert first.status_code == 201
    back = api.post("/api/v1/identify", {"identities": [OPENID]}, format="json").json()

    retry = _erase(api, body)

    assert retry.status_code == 200
    assert retry.json() == first.json()
    assert Contact.objects.filter(pk=back["contact_id"]).exists()
    assert Erasure.objects.count() == 1
    # A new request (its own reference) for the new customer erases them.
    again = _erase(api, {"identities": [OPENID], "reference": "mp-cancel-9001"})
    assert again.status_code == 201
    assert again.json()["contact_ids"] == [back["contact_id"]]


def test_a_reference_of_another_source_or_an_empty_one_is_no_retry(api):
    known, _visitor = _person()
    other = ContactFactory()
    contact_erase(contact=other, source="operator", reference="ticket-1")

    response = _erase(api, {"contact_id": known.pk, "reference": "ticket-1"})

    assert response.status_code == 201
    assert response.json()["contact_ids"] != [other.pk]
    contact_erase(contact=ContactFactory(), source="api", reference="")
    assert _erase(api, {"contact_id": ContactFactory().pk, "reference": ""}).status_code == 201


@pytest.mark.parametrize(
    "body",
    [
        {"contact_id": 987654},
        {"identities": [{"kind": "phone", "value": "13700137000"}]},
    ],
)
def test_a_person_never_known_is_not_found(api, english, body):
    ContactFactory()

    response = _erase(api, body)

    assert response.status_code == 404
    error = response.json()["error"]
    assert error["code"] == "not_found"
    assert "no erased" in error["message"]
    assert not Erasure.objects.exists()


@pytest.mark.parametrize(
    "body,expected",
    [
        ({}, "Send contact_id or identities"),
        ({"reference": "r-1"}, "Send contact_id or identities"),
        ({"contact_id": 1, "identities": [OPENID]}, "not both"),
        ({"contact_id": 1, "reference": "x" * 101}, "reference"),
        ({"contact_id": "1"}, "contact_id"),
        ({"contact_id": 0}, "contact_id"),
        ({"identities": []}, "identities"),
        ({"identities": [{"kind": "fax", "value": "1"}]}, "kind"),
        ({"identities": [{"kind": "phone"}]}, "value"),
        ({"identities": {"kind": "phone", "value": "13800138000"}}, "identities"),
        ({"contact_id": 1, "reference": 5}, "reference"),
    ],
)
def test_a_malformed_request_is_refused_and_names_the_problem(api, english, body, expected):
    contact = ContactFactory(pk=1)

    response = _erase(api, body)

    assert response.status_code == 400
    error = response.json()["error"]
    assert error["code"] == "invalid"
    assert expected in error["message"]
    assert Contact.objects.filter(pk=contact.pk).exists()


@pytest.mark.parametrize(
    "identity,code",
    [
        ({"kind": "phone", "value": "12"}, "invalid_phone"),
        ({"kind": "miniprogram_openid", "value": "o-1"}, "invalid_identity"),
        ({"kind": "phone", "app_id": "wx1", "value": "13800138000"}, "invalid_identity"),
    ],
)
def test_an_identity_that_does_not_normalise_is_refused_with_its_code(api, identity, code):
    known, _visitor = _person()

    response = _erase(api, {"identities": [identity]})

    assert response.status_code == 400
    assert response.json()["error"]["code"] == code
    assert Contact.objects.filter(pk=known.pk).exists()


def test_the_personal_data_copy_is_unmasked_follows_merges_and_is_audited(api):
    known, visitor = _person()

    response = api.get(f"/api/v1/contacts/{visitor.pk}/personal-data")

    assert response.status_code == 200
    data = response.json()
    assert data["contact_id"] == known.pk
    assert data["contact_ids"] == sorted([known.pk, visitor.pk])
    (profile,) = [p for p in data["sections"]["contacts.profile"] if p["id"] == known.pk]
    assert profile["phone"] == "+8613800138000"
    assert {i["value"] for i in data["sections"]["contacts.identities"]} >= {
        "+8613800138000",
        "oAbc123",
        "union-1",
    }
    entry = AuditLog.objects.get(action="contact.data_copy")
    assert entry.object_id == str(known.pk)
    assert entry.details["api_key"] == ApiKey.objects.get().pk
    assert entry.details["contacts"] == sorted([known.pk, visitor.pk])
    assert entry.ip == "127.0.0.1"


def test_after_the_erasure_the_copy_is_gone_and_so_is_the_timeline(api, english):
    known, visitor = _person()
    erasure_id = _erase(api, {"contact_id": known.pk}).json()["erasure_id"]

    for contact_id in (known.pk, visitor.pk):
        response = api.get(f"/api/v1/contacts/{contact_id}/personal-data")
        assert response.status_code == 410
        error = response.json()["error"]
        assert error["code"] == "erased"
        assert error["details"]["erasure_id"] == erasure_id
        assert error["details"]["erased_at"]
        assert str(erasure_id) in error["message"]
    assert api.get(f"/api/v1/contacts/{known.pk}/timeline").status_code == 404
    assert api.get(f"/api/v1/contacts/{known.pk}").status_code == 404
    assert not AuditLog.objects.filter(action="contact.data_copy").exists()


@pytest.mark.parametrize("contact_id", [987654, 2**63, 10**30])
def test_the_copy_of_an_unknown_contact_is_not_found(api, contact_id):
    assert api.get(f"/api/v1/contacts/{contact_id}/personal-data").status_code == 404


def test_the_erasure_endpoints_need_an_api_key(client):
    contact = ContactFactory()
    assert client.post(
        "/api/v1/erasures", {"contact_id": contact.pk}, content_type="application/json"
    ).status_code in (401, 403)
    assert client.get(f"/api/v1/contacts/{contact.pk}/personal-data").status_code in (401, 403)
    assert Contact.objects.filter(pk=contact.pk).exists()
    assert not ErasedContact.objects.exists()


def test_a_key_without_the_permission_can_neither_erase_nor_copy(plain_api, english):
    known, _visitor = _person()
    erased = ContactFactory()
    contact_erase(contact=erased, source="operator")

    for response in (
        _erase(plain_api, {"contact_id": known.pk}),
        _erase(plain_api, {"identities": [OPENID], "reference": "mp-cancel-8812"}),
        plain_api.get(f"/api/v1/contacts/{known.pk}/personal-data"),
        # Nor does it learn who was erased (410) or never known (404).
        plain_api.get(f"/api/v1/contacts/{erased.pk}/personal-data"),
        plain_api.get("/api/v1/contacts/987654/personal-data"),
    ):
        assert response.status_code == 403
        error = response.json()["error"]
        assert error["code"] == "forbidden"
        assert error["details"] == {"permission": "personal_data_requests"}
        assert "may not make personal data requests" in error["message"]
        assert "API keys (API 密钥)" in error["message"]
    assert Contact.objects.filter(pk=known.pk).exists()
    assert Erasure.objects.count() == 1
    assert not AuditLog.objects.filter(action="contact.data_copy").exists()
    assert AuditLog.objects.filter(action="contact.erase").count() == 1  # the operator's
    # The other endpoints ask for no permission.
    assert plain_api.get(f"/api/v1/contacts/{known.pk}").status_code == 200
    # The guide quotes the answer as the server gives it.
    guide = (Path(__file__).resolve().parents[2] / "docs" / "api.md").read_text()
    assert json.dumps(response.json(), ensure_ascii=False) in guide


def test_the_permission_is_granted_and_withdrawn_on_the_key_in_the_admin(admin_client):
    known, _visitor = _person()
    created = admin_client.post(
        reverse("admin:core_apikey_add"),
        {
            "name": "会员中心",
            "throttle_rate": "",
            "is_active": "on",
            "personal_data_requests": "on",
        },
        follow=True,
    )
    raw = re.search(r"([A-Za-z0-9_\-]{40,})", str(list(created.context["messages"]))).group(1)
    key = ApiKey.objects.get(name="会员中心")
    assert key.personal_data_requests
    client = APIClient()
    client.credentials(HTTP_AUTHORIZATION=f"Api-Key {raw}")
    assert client.get(f"/api/v1/contacts/{known.pk}/personal-data").status_code == 200

    change = reverse("admin:core_apikey_change", args=[key.pk])
    assert 'name="personal_data_requests"' in admin_client.get(change).content.decode()
    admin_client.post(change, {"name": "会员中心", "throttle_rate": "", "is_active": "on"})

    key.refresh_from_db()
    assert not key.personal_data_requests
    assert client.get(f"/api/v1/contacts/{known.pk}/personal-data").status_code == 403
    assert client.post("/api/v1/erasures", {"contact_id": known.pk}, format="json").status_code == (
        403
    )


def test_both_operations_are_documented_with_examples(client):
    import yaml

    schema = yaml.safe_load(client.get("/api/schema/").content)
    erase = schema["paths"]["/api/v1/erasures"]["post"]
    assert {"200", "201", "400", "403", "404"} <= set(erase["responses"])
    assert erase["responses"]["403"]["content"]["application/json"]["examples"]
    assert erase["requestBody"]["content"]["application/json"]["examples"]
    copy = schema["paths"]["/api/v1/contacts/{contact_id}/personal-data"]["get"]
    assert {"200", "403", "404", "410"} <= set(copy["responses"])
    assert copy["responses"]["410"]["content"]["application/json"]["examples"]


def test_a_person_who_signs_in_again_is_told_apart_and_replayed_events_are_rejected(api):
    # The mini-program's account deletion, then the same WeChat user signing in again.
    _person()
    assert _erase(api, {"identities": [OPENID]}).status_code == 201
    replay = api.post(
        "/api/v1/events",
        {
            "events": [
                {
                    "event_id": "late-1",
                    "name": "page_view",
                    "occurred_at": "2026-11-01T10:00:00+08:00",
                    "identities": [{"kind": "wechat_unionid", "value": "union-1"}],
                }
            ]
        },
        format="json",
    )
    assert replay.status_code == 200
    assert replay.json()["results"][0]["status"] == "rejected"
    assert not Contact.objects.exists()

    back = api.post("/api/v1/identify", {"identities": [OPENID]}, format="json")

    assert back.status_code == 201
    assert back.json()["created"] is True and back.json()["previously_erased"] is True
    again = api.post("/api/v1/identify", {"identities": [OPENID]}, format="json")
    assert again.json()["previously_erased"] is False
