"""Bodies that used to end in a 500 (found by fuzzing the API): refused by name instead.

Each answer is a 4xx in the house error shape on SQLite and PostgreSQL alike.
"""

import json

import pytest
from django.test import override_settings

from contacts.models import Contact
from core.api import MAX_JSON_DEPTH, json_problem
from tests.factories import ContactFactory

pytestmark = pytest.mark.django_db


def _post_raw(api, path: str, body: str | bytes, method: str = "post"):
    return getattr(api, method)(path, body, content_type="application/json")


def _nested(depth: int) -> dict:
    value: dict = {"leaf": 1}
    for _ in range(depth - 1):
        value = {"a": value}
    return value


def test_json_nested_beyond_the_parsers_recursion_limit_is_refused_as_too_deep(api):
    response = _post_raw(api, "/api/v1/identify", "[" * 100_000 + "]" * 100_000)

    assert response.status_code == 400
    error = response.json()["error"]
    assert error["code"] == "too_deep"
    assert f"deeper than {MAX_JSON_DEPTH} levels" in error["message"]


def test_json_nested_deeper_than_the_limit_is_refused_with_where(api):
    contact = ContactFactory()
    body = {
        "channel": "sms",
        "purpose": "marketing",
        "granted": True,
        "source": "form",
        "evidence": _nested(MAX_JSON_DEPTH + 5),
    }

    response = api.post(f"/api/v1/contacts/{contact.pk}/consents", body, format="json")

    assert response.status_code == 400
    error = response.json()["error"]
    assert error["code"] == "too_deep"
    assert error["details"]["path"][:2] == ["evidence", "a"]
    assert len(error["details"]["path"]) == MAX_JSON_DEPTH
    assert not contact.consent_records.exists()


def test_json_nested_up_to_the_limit_is_accepted(api):
    contact = ContactFactory()
    # The body and "evidence" take two levels of the limit.
    evidence = _nested(MAX_JSON_DEPTH - 2)
    body = {"channel": "sms", "purpose": "marketing", "granted": True, "source": "form"}

    response = api.post(
        f"/api/v1/contacts/{contact.pk}/consents", {**body, "evidence": evidence}, format="json"
    )

    assert response.status_code == 201


def test_a_lone_surrogate_is_refused_with_its_place_and_nothing_is_stored(api):
    # json.dumps escapes the lone surrogate as \udc00, as a JavaScript client would send it.
    body = json.dumps(
        {"identities": [{"kind": "external_id", "value": "u-1"}], "traits": {"nickname": "\udc00"}}
    )

    response = _post_raw(api, "/api/v1/identify", body)

    assert response.status_code == 400
    error = response.json()["error"]
    assert error["code"] == "invalid_unicode"
    assert "traits.nickname" in error["message"]
    assert "U+DC00" in error["message"]
    assert error["details"] == {"path": ["traits", "nickname"]}
    assert not Contact.objects.exists()


def test_a_lone_surrogate_in_a_key_is_named_with_a_replacement_character(api):
    body = json.dumps(
        {"identities": [{"kind": "external_id", "value": "u-1"}], "traits": {"\ud800x": "a"}}
    )

    response = _post_raw(api, "/api/v1/identify", body)

    assert response.status_code == 400
    error = response.json()["error"]
    assert error["code"] == "invalid_unicode"
    assert error["details"] == {"path": ["traits", "\ufffdx"]}


def test_a_surrogate_pair_is_one_character_and_accepted(api):
    body = json.dumps(
        {"identities": [{"kind": "external_id", "value": "u-1"}], "traits": {"nickname": "🎉"}}
    )
    assert "\\ud83c\\udf89" in body

    response = _post_raw(api, "/api/v1/identify", body)

    assert response.status_code == 201
    assert Contact.objects.get().nickname == "🎉"


@override_settings(DATA_UPLOAD_MAX_MEMORY_SIZE=1000)
def test_a_body_over_the_size_limit_answers_413_in_the_error_shape(api):
    contact = ContactFactory()
    body = {"channel": "sms", "purpose": "marketing", "granted": True, "source": "form"}

    response = api.post(
        f"/api/v1/contacts/{contact.pk}/consents",
        {**body, "evidence": {"note": "x" * 2000}},
        format="json",
    )

    assert response.status_code == 413
    assert response["Content-Type"] == "application/json"
    assert response.json()["error"] == {
        "code": "too_large",
        "message": "The request body is larger than 1000 bytes; send it in smaller parts.",
        "details": {"max_bytes": 1000},
    }


def test_json_problem_reports_the_first_problem_in_document_order():
    value = {"a": ["ok", "\ud800"], "b": "\udfff"}

    problem = json_problem(value)

    assert problem is not None
    assert problem.path == ["a", 1]
    assert json_problem({"a": ["ok", "🎉"]}) is None
    assert json_problem({"a": "\ud800"}, unicode=False) is None


@pytest.mark.parametrize(
    "path", ["/api/v1/contacts/abc", "/api/v1/contacts/-1", "/api/v1/contacts/1.0", "/api/v1/nope"]
)
def test_an_api_path_that_matches_nothing_answers_the_api_error_format(client, path):
    response = client.get(path, HTTP_AUTHORIZATION="Api-Key whatever")

    assert response.status_code == 404
    assert response["Content-Type"].startswith("application/json")
    assert response.json()["error"]["code"] == "not_found"
