import pytest

from contacts.services import contact_merge
from segments.models import SegmentKind, SegmentMembership
from segments.services import segment_create, segment_static_add
from tests.factories import ContactFactory

pytestmark = pytest.mark.django_db

CITY_RULE = {
    "op": "and",
    "conditions": [{"type": "attribute", "field": "city", "operator": "eq", "value": "上海"}],
}


@pytest.fixture
def shanghai():
    return segment_create(name="上海", rule=CITY_RULE)


@pytest.fixture
def vip_list():
    return segment_create(name="VIP 名单", kind=SegmentKind.STATIC)


def test_the_segment_endpoints_need_an_api_key(client, shanghai):
    for url in (
        "/api/v1/segments",
        f"/api/v1/segments/{shanghai.pk}/members/1",
        "/api/v1/contacts/1/segments",
    ):
        response = client.get(url)
        assert response.status_code == 401
        assert response.json()["error"]["code"] == "not_authenticated"


def test_list_segments_with_counts_and_keyset_pages(api, shanghai, vip_list):
    ContactFactory(city="上海")
    shanghai_count = shanghai.member_count
    archived = segment_create(name="旧", rule=CITY_RULE)
    archived.is_archived = True
    archived.save()

    body = api.get("/api/v1/segments").json()

    assert body["next_after"] is None
    by_name = {row["name"]: row for row in body["results"]}
    assert set(by_name) == {"上海", "VIP 名单"}
    assert by_name["上海"]["kind"] == "dynamic"
    assert by_name["上海"]["member_count"] == shanghai_count
    assert by_name["VIP 名单"]["kind"] == "static"
    assert set(by_name["上海"]) == {"id", "name", "kind", "member_count", "last_refreshed_at"}
    only_static = api.get("/api/v1/segments?kind=static").json()["results"]
    assert [row["name"] for row in only_static] == ["VIP 名单"]


def test_member_check_for_personalisation(api):
    inside = ContactFactory(city="上海")
    outside = ContactFactory(city="北京")
    shanghai = segment_create(name="上海", rule=CITY_RULE)

    yes = api.get(f"/api/v1/segments/{shanghai.pk}/members/{inside.pk}").json()
    no = api.get(f"/api/v1/segments/{shanghai.pk}/members/{outside.pk}").json()

    assert yes["member"] is True and yes["entered_at"]
    assert no == {"member": False, "entered_at": None}
    assert api.get(f"/api/v1/segments/{shanghai.pk}/members/999999").status_code == 404
    assert api.get(f"/api/v1/segments/999999/members/{inside.pk}").status_code == 404


def test_contact_segments_follow_merges(api, vip_list):
    survivor = ContactFactory()
    duplicate = ContactFactory()
    segment_static_add(segment=vip_list, contact_ids=[survivor.pk])
    contact_merge(survivor=survivor, duplicate=duplicate, actor=None)

    rows = api.get(f"/api/v1/contacts/{duplicate.pk}/segments").json()

    assert [(r["id"], r["name"], r["kind"]) for r in rows] == [(vip_list.pk, "VIP 名单", "static")]
    assert rows[0]["entered_at"]
    assert api.get("/api/v1/contacts/999999/segments").status_code == 404


def test_add_and_remove_static_members_idempotently(api, vip_list):
    a, b = ContactFactory(), ContactFactory()
    url = f"/api/v1/segments/{vip_list.pk}/members"

    first = api.post(url, {"contact_ids": [a.pk, b.pk]}, format="json")
    again = api.post(url, {"contact_ids": [a.pk, b.pk]}, format="json")

    assert first.status_code == 200 and first.json() == {"changed": 2, "member_count": 2}
    assert again.json() == {"changed": 0, "member_count": 2}
    removed = api.delete(url, {"contact_ids": [a.pk]}, format="json")
    assert removed.json() == {"changed": 1, "member_count": 1}
    by_query = api.delete(f"{url}?contact_ids={b.pk}&contact_ids={a.pk}")
    assert by_query.json() == {"changed": 1, "member_count": 0}
    assert not SegmentMembership.objects.filter(segment=vip_list).exists()


@pytest.mark.parametrize(
    "body,code,needle",
    [
        ({}, "invalid", "contact_ids"),
        ({"contact_ids": []}, "invalid", "contact_ids"),
        ({"contact_ids": "1,2"}, "invalid", "contact_ids"),
        ({"contact_ids": ["x"]}, "invalid", "contact_ids"),
        ({"contact_ids": list(range(1, 1002))}, "invalid", "1000"),
        ({"contact_ids": [999999]}, "unknown_contact", "999999"),
    ],
)
def test_bad_member_calls_change_nothing(api, vip_list, body, code, needle):
    known = ContactFactory()
    if "contact_ids" in body and body["contact_ids"] == [999999]:
        body = {"contact_ids": [known.pk, 999999]}

    response = api.post(f"/api/v1/segments/{vip_list.pk}/members", body, format="json")

    assert response.status_code == 400
    error = response.json()["error"]
    assert error["code"] == code
    assert needle in error["message"] or needle in str(error["details"])
    assert not SegmentMembership.objects.filter(segment=vip_list).exists()


def test_rule_based_segments_refuse_hand_edits(api, shanghai):
    contact = ContactFactory(city="北京")
    response = api.post(
        f"/api/v1/segments/{shanghai.pk}/members", {"contact_ids": [contact.pk]}, format="json"
    )
    assert response.status_code == 400
    assert response.json()["error"]["code"] == "not_static"
    assert not SegmentMembership.objects.filter(segment=shanghai, contact=contact).exists()


def test_unknown_segment_is_404(api):
    response = api.post("/api/v1/segments/999999/members", {"contact_ids": [1]}, format="json")
    assert response.status_code == 404
    assert response.json()["error"]["code"] == "not_found"


def test_schema_documents_the_segment_endpoints(client):
    import yaml

    schema = yaml.safe_load(client.get("/api/schema/").content)
    for path in (
        "/api/v1/segments",
        "/api/v1/segments/{segment_id}/members",
        "/api/v1/segments/{segment_id}/members/{contact_id}",
        "/api/v1/contacts/{contact_id}/segments",
    ):
        assert path in schema["paths"], path


def test_service_errors_are_english_unless_the_client_asks_for_another_language(api, shanghai):
    contact = ContactFactory()
    url = f"/api/v1/segments/{shanghai.pk}/members"
    body = {"contact_ids": [contact.pk]}

    default = api.post(url, body, format="json").json()["error"]
    chinese = api.post(url, body, format="json", HTTP_ACCEPT_LANGUAGE="zh-hans").json()["error"]

    assert default == {
        "code": "not_static",
        "message": "Members can be added or removed by hand only in a static list.",
        "details": None,
    }
    assert chinese["code"] == "not_static"
    assert chinese["message"] != default["message"] and "静态名单" in chinese["message"]
