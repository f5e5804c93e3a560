"""The segment list refuses an empty `after` (`?after=`) with the same 400 as any malformed
cursor, as docs/api.md promises for an `after` that is not a positive id; before, it answered
the first page. An empty `kind` still means no filter. Member ids are JSON numbers in a body
and plain digits in the query string."""

import pytest

from segments.models import SegmentKind, SegmentMembership
from segments.services import segment_create
from tests.factories import ContactFactory

pytestmark = pytest.mark.django_db

INVALID_CURSOR = {
    "code": "invalid",
    "message": "after: A valid integer is required.",
    "details": {"after": ["A valid integer is required."]},
}


@pytest.fixture
def segments():
    return [
        segment_create(name="VIP 名单", kind=SegmentKind.STATIC),
        segment_create(name="会员名单", kind=SegmentKind.STATIC),
    ]


@pytest.mark.parametrize(
    "query",
    [
        "after=",
        "after=&kind=static",
        "kind=&after=",
        "after=abc",
        "after=5.0",
        "after=%2B5",
        "after=1_000",
        "after=%D9%A5",
        "after=%205",
    ],
)
def test_an_empty_or_malformed_after_answers_the_same_400(api, segments, query):
    response = api.get(f"/api/v1/segments?{query}")

    assert response.status_code == 400
    assert response.json()["error"] == INVALID_CURSOR


def test_an_empty_kind_alone_is_no_filter(api, segments):
    response = api.get("/api/v1/segments?kind=")

    assert response.status_code == 200
    assert {r["name"] for r in response.json()["results"]} == {"VIP 名单", "会员名单"}


def test_a_cursor_of_plain_digits_pages_on(api, segments, monkeypatch):
    from segments import api as segments_api

    monkeypatch.setattr(segments_api, "LIST_PAGE_SIZE", 1)
    first = api.get("/api/v1/segments").json()
    second = api.get(f"/api/v1/segments?after={first['next_after']}").json()

    assert [r["name"] for r in first["results"] + second["results"]] == ["会员名单", "VIP 名单"]


@pytest.mark.parametrize("ids", [["{pk}"], ["{pk}.0"], ["float"], [True]])
def test_member_ids_in_a_body_must_be_json_numbers(api, segments, ids):
    contact = ContactFactory()
    sent = [
        float(contact.pk) if i == "float" else i.format(pk=contact.pk) if isinstance(i, str) else i
        for i in ids
    ]
    url = f"/api/v1/segments/{segments[0].pk}/members"

    added = api.post(url, {"contact_ids": sent}, format="json")

    assert added.status_code == 400
    error = added.json()["error"]
    assert error["code"] == "invalid"
    assert error["details"] == {"contact_ids": {"0": ["A valid integer is required."]}}
    assert not SegmentMembership.objects.exists()
    assert api.post(url, {"contact_ids": [contact.pk]}, format="json").status_code == 200


@pytest.mark.parametrize("query", ["contact_ids=", "contact_ids={pk}.0", "contact_ids=%2B{pk}"])
def test_member_ids_in_the_query_must_be_plain_digits(api, segments, query):
    contact = ContactFactory()
    url = f"/api/v1/segments/{segments[0].pk}/members"
    api.post(url, {"contact_ids": [contact.pk]}, format="json")

    refused = api.delete(f"{url}?{query.format(pk=contact.pk)}")
    removed = api.delete(f"{url}?contact_ids={contact.pk}")

    assert refused.status_code == 400
    assert refused.json()["error"]["code"] == "invalid"
    assert "contact_ids" in refused.json()["error"]["details"]
    assert removed.status_code == 200 and removed.json()["changed"] == 1
