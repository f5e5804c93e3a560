import datetime as dt
from urllib.parse import quote

import pytest
from django.utils import timezone

from contacts.models import (
    Consent,
    ConsentRecord,
    Contact,
    ContactTag,
    CustomField,
    Event,
    MergeRecord,
)
from contacts.services import contact_merge_undo
from core.models import AuditLog
from tests.factories import ContactFactory, EventFactory, IdentityFactory, TagFactory

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
        "previously_erased": False,
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
                "properties": {"order_id": "20260102-9"},
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


def test_events_keep_every_character_and_value_exactly(api):
    """The batch insert binds each column as one array literal on PostgreSQL: quotes,
    backslashes, braces, commas, NULL-like text, emoji and nested JSON come back unchanged, with
    the exact time, value and id the API reported."""
    contact = ContactFactory()
    awkward = 'a "quoted" \\ back\\slash, {brace} NULL 😀 \n'
    properties = {
        "title": awkward,
        "nested": {"list": [1, 2.5, None, True, awkward], "empty": {}},
        "NULL": None,
    }
    body = {
        "events": [
            {
                "event_id": 'ev,"1"\\{x}',
                "name": "view_product",
                "occurred_at": "2026-01-02T10:00:00.123456+08:00",
                "contact_id": contact.pk,
                "properties": properties,
                "value": "1234.50",
            },
            {
                "event_id": "NULL",
                "name": "page_view",
                "occurred_at": "2026-01-02T10:00:01Z",
                "contact_id": contact.pk,
            },
        ]
    }
    response = api.post("/api/v1/events", body, format="json")
    assert [r["status"] for r in response.json()["results"]] == ["accepted", "accepted"]
    first = Event.objects.get(event_id='ev,"1"\\{x}')
    assert first.properties == properties
    assert str(first.value) == "1234.50"
    assert first.occurred_at == dt.datetime(2026, 1, 2, 2, 0, 0, 123456, tzinfo=dt.UTC)
    assert first.contact_id == contact.pk
    second = Event.objects.get(event_id="NULL")
    assert (second.properties, second.value, second.name) == ({}, None, "page_view")
    contact.refresh_from_db()
    assert contact.last_active_at == dt.datetime(2026, 1, 2, 10, 0, 1, tzinfo=dt.UTC)


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


# --- identify merges -----------------------------------------------------------------------


def test_identify_answer_names_the_contacts_it_merged(api):
    def identify(*identities):
        return api.post("/api/v1/identify", {"identities": list(identities)}, format="json")

    known = identify({"kind": "wechat_unionid", "value": "u-1"}).json()["contact_id"]
    anonymous = identify({"kind": "anonymous_id", "value": "dev-1"}).json()["contact_id"]
    response = identify(
        {"kind": "anonymous_id", "value": "dev-1"}, {"kind": "wechat_unionid", "value": "u-1"}
    )
    assert response.status_code == 200
    assert response.json() == {
        "contact_id": known,
        "created": False,
        "merged": [anonymous],
        "conflicts": [],
        "previously_erased": False,
    }
    # The merged-away id still answers, with the survivor.
    assert api.get(f"/api/v1/contacts/{anonymous}").json()["id"] == known


def test_merges_made_by_an_api_call_are_audited_with_the_callers_address(api):
    known = ContactFactory()
    IdentityFactory(contact=known, kind="wechat_unionid", value="u-9")
    by_phone, by_email = ContactFactory(), ContactFactory()
    IdentityFactory(contact=by_phone, kind="phone", value="+8613800138009")
    IdentityFactory(contact=by_email, kind="email", value="lin@example.cn")
    unionid = {"kind": "wechat_unionid", "value": "u-9"}

    api.post(
        "/api/v1/identify",
        {"identities": [unionid, {"kind": "phone", "value": "13800138009"}]},
        format="json",
        REMOTE_ADDR="10.1.2.3",
    )
    event = {
        "event_id": "ev-audit-1",
        "name": "page_view",
        "occurred_at": "2026-11-01T10:00:00+08:00",
        "identities": [unionid, {"kind": "email", "value": "lin@example.cn"}],
    }
    api.post("/api/v1/events", {"events": [event]}, format="json", REMOTE_ADDR="10.1.2.4")

    audits = AuditLog.objects.filter(action="contact.merge").order_by("pk")
    assert [(a.details["duplicate_id"], a.ip) for a in audits] == [
        (by_phone.pk, "10.1.2.3"),
        (by_email.pk, "10.1.2.4"),
    ]


def test_identify_after_an_undone_merge_reports_the_conflict_and_stores_nothing(api):
    def identify(*identities, traits=None):
        body = {"identities": list(identities), "traits": traits or {}}
        return api.post("/api/v1/identify", body, format="json")

    unionid, phone = (
        {"kind": "wechat_unionid", "value": "u-2"},
        {"kind": "phone", "value": "13800138002"},
    )
    known = identify(unionid).json()["contact_id"]
    other = identify(phone).json()["contact_id"]
    assert identify(unionid, phone).json()["merged"] == [other]
    contact_merge_undo(record=MergeRecord.objects.get())

    response = identify(unionid, phone, traits={"nickname": "小林"})

    assert response.status_code == 200
    assert response.json() == {
        "contact_id": known,
        "created": False,
        "merged": [],
        "conflicts": [other],
        "previously_erased": False,
    }
    assert set(Contact.objects.values_list("nickname", flat=True)) == {""}
    assert api.get(f"/api/v1/contacts/{other}").json()["id"] == other


# --- lookup --------------------------------------------------------------------------------


def test_lookup_finds_a_contact_by_a_normalised_identity(api):
    contact = ContactFactory()
    IdentityFactory(contact=contact, kind="phone", value="+8613800138000")
    IdentityFactory(contact=contact, kind="miniprogram_openid", app_id="wx1", value="o-1")
    response = api.get("/api/v1/contacts/lookup", {"kind": "phone", "value": "138 0013 8000"})
    assert response.status_code == 200
    assert response.json()["id"] == contact.pk
    by_openid = api.get(
        "/api/v1/contacts/lookup", {"kind": "miniprogram_openid", "app_id": "wx1", "value": "o-1"}
    )
    assert by_openid.json()["id"] == contact.pk


@pytest.mark.parametrize(
    "params, status, code",
    [
        ({"kind": "phone", "value": "13900139000"}, 404, "not_found"),
        ({"kind": "fax", "value": "1"}, 400, "invalid"),
        ({"kind": "phone"}, 400, "invalid"),
        ({"kind": "phone", "value": "12"}, 400, "invalid_phone"),
        ({"kind": "email", "value": "nope"}, 400, "invalid_email"),
        ({"kind": "miniprogram_openid", "value": "o-1"}, 400, "invalid_identity"),
        ({"kind": "external_id", "value": "x" * 192}, 400, "invalid"),
    ],
)
def test_lookup_errors(api, params, status, code):
    response = api.get("/api/v1/contacts/lookup", params)
    assert response.status_code == status
    assert response.json()["error"]["code"] == code


# --- PATCH ---------------------------------------------------------------------------------


@pytest.fixture
def skin_type(db):
    return CustomField.objects.create(
        key="skin_type", label="肤质", kind="single_choice", choices=["dry", "oily"]
    )


def test_patch_changes_listed_fields_and_custom_fields(api, skin_type):
    contact = ContactFactory(name="旧名")
    response = api.patch(
        f"/api/v1/contacts/{contact.pk}",
        {"name": "林小雨", "birthday": "1992-03-04", "phone": "13800138001", "skin_type": "dry"},
        format="json",
    )
    assert response.status_code == 200
    body = response.json()
    assert (body["name"], body["birthday"], body["phone"]) == (
        "林小雨",
        "1992-03-04",
        "+8613800138001",
    )
    assert body["attributes"] == {"skin_type": "dry"}
    assert contact.events.get(name="profile_updated").properties["source"] == "api"


def _future() -> str:
    return (timezone.localdate() + dt.timedelta(days=1)).isoformat()


@pytest.mark.parametrize(
    "body, code, field",
    [
        ({"shoe_size": 42}, "unknown_field", "shoe_size"),
        ({"name": 42}, "invalid_field", "name"),
        ({"name": ["a"]}, "invalid_field", "name"),
        ({"name": "长" * 101}, "invalid_field", "name"),
        ({"city": "城" * 31}, "invalid_field", "city"),
        ({"phone": "12345"}, "invalid_phone", "phone"),
        ({"email": "lin@"}, "invalid_email", "email"),
        ({"birthday": "tomorrow"}, "invalid_field", "birthday"),
        ("future-birthday", "invalid_field", "birthday"),
        ({"gender": "x"}, "invalid_field", "gender"),
        ({"owner": "admin"}, "invalid_field", "owner"),
        ({"skin_type": "normal"}, "invalid_custom_field", "skin_type"),
        ({"skin_type": ["dry"]}, "invalid_custom_field", "skin_type"),
        ({}, "invalid", None),
        (["name", "x"], "invalid", None),
    ],
)
def test_patch_rejects_bad_input_with_a_specific_error_and_stores_nothing(
    api, skin_type, body, code, field
):
    if body == "future-birthday":
        body = {"birthday": _future()}
    contact = ContactFactory(name="原名", city="上海")
    payload = {"city": "北京", **body} if isinstance(body, dict) and body else body
    response = api.patch(f"/api/v1/contacts/{contact.pk}", payload, format="json")
    assert response.status_code == 400, response.json()
    error = response.json()["error"]
    assert error["code"] == code
    if field:
        assert error["details"]["field"] == field
    contact.refresh_from_db()
    assert (contact.name, contact.city, contact.attributes) == ("原名", "上海", {})
    assert not Event.objects.exists()


@pytest.mark.parametrize(
    "path, method",
    [
        ("", "patch"),
        ("/tags", "post"),
        ("/consents", "post"),
    ],
)
def test_malformed_json_is_refused_with_parse_error(api, path, method):
    contact = ContactFactory()
    response = getattr(api, method)(
        f"/api/v1/contacts/{contact.pk}{path}", '{"name": "x",', content_type="application/json"
    )
    assert response.status_code == 400
    assert response.json()["error"]["code"] == "parse_error"
    assert not Event.objects.exists()


def test_unknown_contact_answers_404_everywhere(api):
    for method, path in [
        ("patch", ""),
        ("post", "/tags"),
        ("post", "/consents"),
        ("get", "/timeline"),
        ("delete", "/tags/1"),
    ]:
        response = getattr(api, method)(f"/api/v1/contacts/999999{path}", {}, format="json")
        assert response.status_code == 404, (method, path)
        assert response.json()["error"]["code"] == "not_found"


# --- tags ----------------------------------------------------------------------------------


def test_tags_are_added_by_id_or_group_name_and_removed(api):
    contact = ContactFactory()
    skin, makeup = TagFactory(name="护肤"), TagFactory(name="彩妆")
    response = api.post(
        f"/api/v1/contacts/{contact.pk}/tags", {"tags": [skin.pk, "兴趣/彩妆"]}, format="json"
    )
    assert response.status_code == 200
    assert sorted(response.json()["added"]) == ["兴趣/彩妆", "兴趣/护肤"]
    assert set(ContactTag.objects.values_list("source", flat=True)) == {"api"}
    again = api.post(f"/api/v1/contacts/{contact.pk}/tags", {"tags": ["兴趣/护肤"]}, format="json")
    assert again.json()["added"] == []

    removed = api.delete(f"/api/v1/contacts/{contact.pk}/tags/{makeup.pk}")
    assert removed.status_code == 204
    by_name = api.delete(f"/api/v1/contacts/{contact.pk}/tags/{quote('兴趣/护肤')}")
    assert by_name.status_code == 204
    assert not ContactTag.objects.exists()
    assert api.delete(f"/api/v1/contacts/{contact.pk}/tags/{makeup.pk}").status_code == 204


@pytest.mark.parametrize(
    "body, code",
    [
        ({"tags": [1, "兴趣/没有这个"]}, "unknown_tag"),
        ({"tags": [{"id": 1}]}, "unknown_tag"),
        ({"tags": []}, "invalid"),
        ({"tags": "兴趣/护肤"}, "invalid"),
        ({"tags": list(range(51))}, "invalid"),
    ],
)
def test_tagging_with_a_bad_tag_adds_none(api, body, code):
    contact = ContactFactory()
    tag = TagFactory(name="护肤")
    if body["tags"] and isinstance(body["tags"], list) and body["tags"][0] == 1:
        body = {"tags": [tag.pk, *body["tags"][1:]]}
    response = api.post(f"/api/v1/contacts/{contact.pk}/tags", body, format="json")
    assert response.status_code == 400
    assert response.json()["error"]["code"] == code
    assert not ContactTag.objects.exists()


def test_removing_an_unknown_tag_is_a_specific_error(api):
    contact = ContactFactory()
    response = api.delete(f"/api/v1/contacts/{contact.pk}/tags/{quote('兴趣/没有')}")
    assert response.status_code == 400
    assert response.json()["error"]["code"] == "unknown_tag"


# --- consents ------------------------------------------------------------------------------


def test_consent_is_recorded_and_becomes_the_current_state(api):
    contact = ContactFactory()
    body = {
        "channel": "sms",
        "purpose": "marketing",
        "granted": True,
        "source": "miniprogram_register",
        "notice_version": "2026-01",
        "evidence": {"checkbox": "agree_sms"},
    }
    response = api.post(f"/api/v1/contacts/{contact.pk}/consents", body, format="json")
    assert response.status_code == 201
    assert response.json()["granted"] is True
    withdrawn = api.post(
        f"/api/v1/contacts/{contact.pk}/consents",
        {**body, "granted": False, "source": "sms_reply"},
        format="json",
    )
    assert withdrawn.status_code == 201
    assert ConsentRecord.objects.filter(contact=contact).count() == 2
    assert Consent.objects.get(contact=contact).granted is False


@pytest.mark.parametrize(
    "changes, field",
    [
        ({"channel": "fax"}, "channel"),
        ({"purpose": None}, "purpose"),
        ({"granted": "yes"}, "granted"),
        ({"granted": 1}, "granted"),
        ({"source": "s" * 51}, "source"),
        ({"notice_version": "v" * 31}, "notice_version"),
        ({"evidence": "a photo"}, "evidence"),
    ],
)
def test_bad_consents_are_refused_and_nothing_is_stored(api, changes, field):
    contact = ContactFactory()
    body = {"channel": "sms", "purpose": "marketing", "granted": True, "source": "form"}
    response = api.post(
        f"/api/v1/contacts/{contact.pk}/consents", {**body, **changes}, format="json"
    )
    assert response.status_code == 400
    error = response.json()["error"]
    assert error["code"] == "invalid"
    assert field in error["details"]
    assert not ConsentRecord.objects.exists()


# --- timeline ------------------------------------------------------------------------------


def test_timeline_pages_with_a_keyset_cursor(api):
    contact = ContactFactory()
    now = timezone.now()
    for minutes in range(5):
        EventFactory(contact=contact, occurred_at=now - dt.timedelta(minutes=minutes))
    url = f"/api/v1/contacts/{contact.pk}/timeline"
    first = api.get(url, {"limit": 2}).json()
    assert len(first["events"]) == 2 and first["next_before"] == first["events"][-1]["id"]
    seen = [e["id"] for e in first["events"]]
    cursor = first["next_before"]
    while cursor:
        page = api.get(url, {"limit": 2, "before": cursor}).json()
        seen += [e["id"] for e in page["events"]]
        cursor = page["next_before"]
    expected = list(contact.events.order_by("-occurred_at", "-pk").values_list("pk", flat=True))
    assert seen == expected


@pytest.mark.parametrize("params", [{"limit": 0}, {"limit": 101}, {"before": "x"}, {"before": -1}])
def test_timeline_rejects_bad_paging(api, params):
    contact = ContactFactory()
    response = api.get(f"/api/v1/contacts/{contact.pk}/timeline", params)
    assert response.status_code == 400
    assert response.json()["error"]["code"] == "invalid"
