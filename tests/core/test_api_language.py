"""The language of API answers (docs/api.md, "Language"): English unless the client's
Accept-Language names a language the site has, and `Content-Language` always names the language
the text is written in, whatever went wrong."""

import re
from collections.abc import Callable
from urllib.parse import quote

import pytest
from django.test import override_settings
from rest_framework.test import APIClient

from contacts.models import CustomField
from core.services import api_key_create
from segments.models import SegmentKind
from segments.services import segment_create
from tests.factories import ContactFactory, TagFactory

pytestmark = pytest.mark.django_db

CHINESE = re.compile(r"[\u4e00-\u9fff]")
# Three English words in a row: a sentence left untranslated, not a quoted field name or value.
ENGLISH_PHRASE = re.compile(r"\b[A-Za-z]+ [a-z]+ [a-z]+\b")
# Python's JSON decoder explains a bad body in English; the API quotes it as it is.
DECODER_REASON = {"not json", "not utf-8"}
CITY_RULE = {
    "op": "and",
    "conditions": [{"type": "attribute", "field": "city", "operator": "eq", "value": "Shanghai"}],
}


@pytest.fixture
def world(db):
    """Rows the failing calls below point at; every name is ASCII, so that any Chinese in an
    English answer can only come from the answer's own words."""
    CustomField.objects.create(
        key="skin_type", label="Skin type", kind="single_choice", choices=["dry", "oily"]
    )
    TagFactory(name="skincare")
    return {
        "contact": ContactFactory(city="Shanghai").pk,
        "segment": segment_create(name="Shanghai", rule=CITY_RULE).pk,
        "list": segment_create(name="VIP", kind=SegmentKind.STATIC).pk,
    }


def _anonymous(path: str, authorization: str | None = None):
    def call(api: APIClient, ids: dict, headers: dict):
        client = APIClient()
        if authorization:
            headers = {**headers, "HTTP_AUTHORIZATION": authorization}
        return client.get(path, **headers)

    return call


def _json(method: str, path: str, body):
    """`body` may be a function of the ids of the `world` rows."""

    def call(api: APIClient, ids: dict, headers: dict):
        data = body(ids) if callable(body) else body
        return getattr(api, method)(path.format(**ids), data, format="json", **headers)

    return call


def _raw(method: str, path: str, body: bytes, content_type: str = "application/json"):
    def call(api: APIClient, ids: dict, headers: dict):
        return getattr(api, method)(path.format(**ids), body, content_type=content_type, **headers)

    return call


def _get(path: str, params: dict | None = None):
    def call(api: APIClient, ids: dict, headers: dict):
        return api.get(path.format(**ids), params or {}, **headers)

    return call


# One failing call per way an API answer can go wrong: auth, routing, parsing, field validation,
# business rules, each app's endpoints. Each must read in the language its header names.
FAILURES: dict[str, Callable] = {
    "no key": _anonymous("/api/v1/contacts/1"),
    "unknown key": _anonymous("/api/v1/contacts/1", "Api-Key nope"),
    "malformed key": _anonymous("/api/v1/contacts/1", "Api-Key a b"),
    "unknown path": _get("/api/v1/nothing-here"),
    "unknown contact": _get("/api/v1/contacts/999999"),
    "unknown segment": _get("/api/v1/segments/999999/members/{contact}"),
    "identity not found": _get(
        "/api/v1/contacts/lookup", {"kind": "phone", "value": "13900139000"}
    ),
    "bad choice": _get("/api/v1/contacts/lookup", {"kind": "fax", "value": "1"}),
    "bad phone": _get("/api/v1/contacts/lookup", {"kind": "phone", "value": "12"}),
    "openid without app": _get(
        "/api/v1/contacts/lookup", {"kind": "miniprogram_openid", "value": "o-1"}
    ),
    "missing field": _json("post", "/api/v1/identify", {}),
    "unknown trait": _json(
        "post",
        "/api/v1/identify",
        {"identities": [{"kind": "external_id", "value": "e-1"}], "traits": {"shoe": 42}},
    ),
    "not json": _raw("post", "/api/v1/identify", b"{not json"),
    "not utf-8": _raw("post", "/api/v1/identify", b'{"a": "\xff"}'),
    "bad charset": _raw(
        "post", "/api/v1/identify", b"{}", content_type="application/json; charset=bz2_codec"
    ),
    "too deep": _raw("post", "/api/v1/identify", b"[" * 100 + b"]" * 100),
    "lone surrogate": _raw("post", "/api/v1/identify", b'{"a": "\\ud83d"}'),
    "not a json body": _raw("post", "/api/v1/identify", b"x", content_type="text/plain"),
    "wrong method": _json("put", "/api/v1/identify", {}),
    "too many events": _json("post", "/api/v1/events", {"events": [{}] * 501}),
    "patch nothing": _json("patch", "/api/v1/contacts/{contact}", {}),
    "patch a list": _json("patch", "/api/v1/contacts/{contact}", ["name"]),
    "patch unknown field": _json("patch", "/api/v1/contacts/{contact}", {"shoe": 42}),
    "patch wrong type": _json("patch", "/api/v1/contacts/{contact}", {"name": 42}),
    "patch bad choice": _json("patch", "/api/v1/contacts/{contact}", {"skin_type": "normal"}),
    "unknown tag": _json("post", "/api/v1/contacts/{contact}/tags", {"tags": ["interest/none"]}),
    "past expiry": _json(
        "post",
        "/api/v1/contacts/{contact}/tags",
        {"tags": ["skincare"], "expires_at": "2000-01-01T00:00:00+08:00"},
    ),
    "unknown tag removed": lambda api, ids, headers: api.delete(
        f"/api/v1/contacts/{ids['contact']}/tags/{quote('interest/none')}", **headers
    ),
    "consent not a bool": _json(
        "post",
        "/api/v1/contacts/{contact}/consents",
        {"channel": "sms", "purpose": "marketing", "granted": "yes", "source": "form"},
    ),
    "bad paging": _get("/api/v1/contacts/{contact}/timeline", {"limit": 0}),
    "bad segment kind": _get("/api/v1/segments", {"kind": "x"}),
    "not a static list": _json(
        "post", "/api/v1/segments/{segment}/members", lambda ids: {"contact_ids": [ids["contact"]]}
    ),
    "unknown member": _json("post", "/api/v1/segments/{list}/members", {"contact_ids": [999999]}),
}


def _error(response) -> str:
    return response.json()["error"]["message"]


@pytest.mark.parametrize("name", FAILURES)
def test_every_error_reads_in_the_language_its_content_language_names(api, world, name):
    call = FAILURES[name]
    plain = call(api, world, {})
    english = call(api, world, {"HTTP_ACCEPT_LANGUAGE": "en"})
    chinese = call(api, world, {"HTTP_ACCEPT_LANGUAGE": "zh-CN"})

    assert plain.status_code == english.status_code == chinese.status_code >= 400
    codes = {r.json()["error"]["code"] for r in (plain, english, chinese)}
    assert len(codes) == 1, codes
    assert plain["Content-Language"] == english["Content-Language"] == "en"
    assert _error(plain) == _error(english)
    assert not CHINESE.search(_error(english)), _error(english)
    assert chinese["Content-Language"] == "zh-hans"
    assert CHINESE.search(_error(chinese)), _error(chinese)
    if name not in DECODER_REASON:
        assert not ENGLISH_PHRASE.search(_error(chinese)), _error(chinese)
    # The details name fields and values, never sentences in another language than the header's.
    details = str(chinese.json()["error"]["details"])
    english_details = str(english.json()["error"]["details"])
    assert not CHINESE.search(english_details), english_details
    assert details == english_details or CHINESE.search(details), details


def test_the_documented_english_messages_are_unchanged(api, world):
    assert api.get("/api/v1/contacts/999999").json()["error"]["message"] == (
        "No Contact matches the given query."
    )
    assert api.get("/api/v1/nothing-here").json()["error"]["message"] == "Not found."
    assert api.post("/api/v1/identify", "{not json", content_type="application/json").json()[
        "error"
    ]["message"] == (
        "JSON parse error - Expecting property name enclosed in double quotes: "
        "line 1 column 2 (char 1)"
    )
    assert APIClient().get("/api/v1/contacts/1").json()["error"]["message"] == (
        "An API key is required: send 'Authorization: Api-Key <key>'."
    )


@pytest.mark.parametrize(
    "accept, language",
    [
        ("en", "en"),
        ("EN-us", "en"),
        ("en-US,en;q=0.9,zh-CN;q=0.8", "en"),
        ("zh-CN", "zh-hans"),
        ("zh-Hans", "zh-hans"),
        ("zh", "zh-hans"),
        ("zh-CN,zh;q=0.9,en;q=0.8", "zh-hans"),
        # The first language the site has wins; one it does not have is skipped.
        ("fr, zh-CN;q=0.5", "zh-hans"),
        ("fr", "en"),
        ("*", "en"),
        # q=0 means "not this one".
        ("zh-CN;q=0, en;q=0.5", "en"),
        ("", "en"),
    ],
)
def test_accept_language_picks_the_language_and_the_answer_names_it(api, accept, language):
    contact = ContactFactory()
    ok = api.get(f"/api/v1/contacts/{contact.pk}", HTTP_ACCEPT_LANGUAGE=accept)
    refused = api.patch(
        f"/api/v1/contacts/{contact.pk}", {}, format="json", HTTP_ACCEPT_LANGUAGE=accept
    )
    assert ok.status_code == 200
    assert ok["Content-Language"] == refused["Content-Language"] == language
    assert bool(CHINESE.search(_error(refused))) == (language == "zh-hans")
    # Caches must not hand one client's language to another.
    assert "Accept-Language" in ok["Vary"]


def test_event_reasons_read_in_the_answers_language(api):
    contact = ContactFactory()
    events = [
        {"event_id": "naive", "name": "page_view", "occurred_at": "2026-01-01T10:00:00"},
        {
            "event_id": "order",
            "name": "purchase",
            "occurred_at": "2026-01-01T10:00:00+08:00",
            "contact_id": contact.pk,
        },
        {
            "event_id": "later",
            "name": "page_view",
            "occurred_at": "2999-01-01T10:00:00+08:00",
            "contact_id": contact.pk,
        },
        None,
        {"event_id": "nobody", "name": "page_view", "occurred_at": "2026-01-01T10:00:00+08:00"},
        {
            "event_id": "twice",
            "name": "page_view",
            "occurred_at": "2026-01-01T10:00:00+08:00",
            "contact_id": contact.pk,
        },
        {
            "event_id": "twice",
            "name": "page_view",
            "occurred_at": "2026-01-01T10:00:00+08:00",
            "contact_id": contact.pk,
        },
    ]
    english = api.post("/api/v1/events", {"events": events}, format="json")
    chinese = api.post(
        "/api/v1/events", {"events": events}, format="json", HTTP_ACCEPT_LANGUAGE="zh-CN"
    )

    assert english["Content-Language"] == "en" and chinese["Content-Language"] == "zh-hans"
    english_reasons = [r["reason"] for r in english.json()["results"] if r["reason"]]
    chinese_reasons = [r["reason"] for r in chinese.json()["results"] if r["reason"]]
    # The first "twice" is stored by the first call (no reason) and is a duplicate without a
    # reason for the second; the other "twice" repeats it within the batch both times.
    assert len(english_reasons) == len(chinese_reasons) == 6
    assert not any(CHINESE.search(reason) for reason in english_reasons), english_reasons
    assert all(CHINESE.search(reason) for reason in chinese_reasons), chinese_reasons
    assert not any(ENGLISH_PHRASE.search(reason) for reason in chinese_reasons), chinese_reasons
    assert "repeated in batch" in english_reasons


def test_the_operator_ui_language_does_not_leak_into_the_api(api, client):
    contact = ContactFactory()
    # A browser that switched the operator UI to Chinese (Swagger's "Try it out") still gets
    # the API's rule: its Accept-Language, not the UI's cookie.
    api.cookies["django_language"] = "zh-hans"
    response = api.patch(f"/api/v1/contacts/{contact.pk}", {}, format="json")
    assert response["Content-Language"] == "en"
    assert not CHINESE.search(_error(response))
    # The operator UI keeps its own default: Chinese when the browser sends no header.
    assert client.get("/login/")["Content-Language"] == "zh-hans"


@override_settings(DATA_UPLOAD_MAX_MEMORY_SIZE=1000)
def test_a_refused_body_size_is_worded_in_the_answers_language(api):
    body = {"identities": [{"kind": "external_id", "value": "x" * 2000}]}
    english = api.post("/api/v1/identify", body, format="json")
    chinese = api.post("/api/v1/identify", body, format="json", HTTP_ACCEPT_LANGUAGE="zh-CN")
    assert english.status_code == chinese.status_code == 413
    assert english["Content-Language"] == "en" and not CHINESE.search(_error(english))
    assert chinese["Content-Language"] == "zh-hans" and CHINESE.search(_error(chinese))


def test_throttling_is_worded_in_the_answers_language():
    _, raw = api_key_create(name="slow", throttle_rate="1/minute")
    client = APIClient()
    client.credentials(HTTP_AUTHORIZATION=f"Api-Key {raw}")
    client.get("/api/v1/contacts/1")
    english = client.get("/api/v1/contacts/1")
    chinese = client.get("/api/v1/contacts/1", HTTP_ACCEPT_LANGUAGE="zh-CN")
    assert english.status_code == chinese.status_code == 429
    assert english["Content-Language"] == "en" and not CHINESE.search(_error(english))
    assert chinese["Content-Language"] == "zh-hans" and CHINESE.search(_error(chinese))
