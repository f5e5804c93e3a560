import pytest
from django.urls import reverse

from contacts.models import ContactTag
from segments.models import Segment, SegmentMembership
from segments.services import segment_create
from tests.factories import ContactFactory, SegmentFactory, TagFactory

pytestmark = pytest.mark.django_db

HX = {"HTTP_HX_REQUEST": "true"}


def _form(**overrides):
    data = {
        "name": "上海高价值",
        "description": "",
        "match": "and",
        "tag_match": "any",
        "c0_field": "",
        "c0_operator": "",
        "c0_value": "",
    }
    data.update(overrides)
    return data


def test_anonymous_users_are_sent_to_login(client):
    segment = SegmentFactory()
    for url in (
        reverse("segments:list"),
        reverse("segments:create"),
        reverse("segments:detail", args=[segment.pk]),
        reverse("segments:edit", args=[segment.pk]),
    ):
        response = client.get(url)
        assert response.status_code == 302
        assert response["Location"].startswith(reverse("login"))


def test_list_page_and_fragment(operator_client):
    SegmentFactory(name="沉睡客户")

    page = operator_client.get(reverse("segments:list")).content.decode()
    fragment = operator_client.get(reverse("segments:list"), **HX).content.decode()

    assert "<html" in page and "沉睡客户" in page
    assert fragment.lstrip().startswith('<section id="segment-table"')
    assert "沉睡客户" in fragment and "<html" not in fragment


def test_detail_shows_rule_and_members(operator_client):
    tag = TagFactory(name="VIP")
    inside = ContactFactory(name="上海会员", city="上海")
    ContactFactory(name="北京会员", city="北京")
    segment = segment_create(
        name="上海",
        rule={
            "op": "and",
            "conditions": [
                {"type": "attribute", "field": "city", "operator": "eq", "value": "上海"},
                {"type": "tag", "match": "none", "tags": [tag.pk]},
            ],
        },
    )

    response = operator_client.get(reverse("segments:detail", args=[segment.pk]))
    page = response.content.decode()

    assert response.status_code == 200
    assert "兴趣/VIP" in page  # tag ids are shown by name
    assert "上海会员" in page and "北京会员" not in page
    fragment = operator_client.get(
        reverse("segments:detail", args=[segment.pk]), **HX
    ).content.decode()
    assert fragment.lstrip().startswith('<section id="segment-members"')
    assert reverse("contacts:detail", args=[inside.pk]) in fragment


def test_create_builds_the_rule_from_the_form(operator_client):
    tag = TagFactory(name="VIP")
    member = ContactFactory(city="上海")
    ContactTag.objects.create(contact=member, tag=tag)
    ContactFactory(city="上海")

    response = operator_client.post(
        reverse("segments:create"),
        _form(
            tags=[tag.pk],
            tag_match="all",
            c0_field="city",
            c0_operator="in",
            c0_value="上海，杭州",
            c1_field="created_at",
            c1_operator="within_days",
            c1_value="30",
        ),
    )

    segment = Segment.objects.get(name="上海高价值")
    assert response.status_code == 302
    assert response["Location"] == reverse("segments:detail", args=[segment.pk])
    assert segment.rule == {
        "op": "and",
        "conditions": [
            {"type": "tag", "match": "all", "tags": [tag.pk]},
            {"type": "attribute", "field": "city", "operator": "in", "value": ["上海", "杭州"]},
            {"type": "attribute", "field": "created_at", "operator": "within_days", "value": 30},
        ],
    }
    assert list(SegmentMembership.objects.values_list("contact_id", flat=True)) == [member.pk]


def test_create_with_an_invalid_rule_shows_the_error_and_stores_nothing(operator_client):
    response = operator_client.post(
        reverse("segments:create"),
        _form(c0_field="created_at", c0_operator="within_days", c0_value="a week"),
    )

    page = response.content.decode()
    assert response.status_code == 422
    assert "请输入整数天数" in page  # the engine's complaint, said in the operator's words
    assert 'value="上海高价值"' in page  # the operator's input is kept
    assert not Segment.objects.exists()


def test_create_with_an_operator_that_does_not_fit_the_field(operator_client):
    response = operator_client.post(
        reverse("segments:create"), _form(c0_field="city", c0_operator="within_days", c0_value="3")
    )

    assert response.status_code == 422
    assert "仅适用于日期字段" in response.content.decode()
    assert not Segment.objects.exists()


def test_create_with_a_taken_name_stores_nothing(operator_client):
    SegmentFactory(name="上海高价值")

    response = operator_client.post(reverse("segments:create"), _form())

    assert response.status_code == 422
    assert Segment.objects.count() == 1


def test_edit_prefills_and_saves(operator_client):
    segment = segment_create(
        name="旧名字",
        rule={
            "op": "or",
            "conditions": [
                {"type": "attribute", "field": "city", "operator": "eq", "value": "上海"}
            ],
        },
    )
    url = reverse("segments:edit", args=[segment.pk])

    page = operator_client.get(url).content.decode()
    assert 'value="旧名字"' in page
    assert 'value="上海"' in page

    response = operator_client.post(
        url,
        _form(name="新名字", match="or", c0_field="city", c0_operator="eq", c0_value="北京"),
    )

    assert response.status_code == 302
    segment.refresh_from_db()
    assert segment.name == "新名字"
    assert segment.rule["conditions"][0]["value"] == "北京"


def test_edit_keeps_a_rule_too_complex_for_the_simple_editor(operator_client):
    nested = {
        "op": "and",
        "conditions": [
            {
                "op": "or",
                "conditions": [
                    {"type": "attribute", "field": "city", "operator": "eq", "value": "上海"},
                    {"type": "attribute", "field": "city", "operator": "eq", "value": "北京"},
                ],
            }
        ],
    }
    segment = segment_create(name="嵌套", rule=nested)

    response = operator_client.post(
        reverse("segments:edit", args=[segment.pk]), {"name": "嵌套规则", "description": "x"}
    )

    assert response.status_code == 302
    segment.refresh_from_db()
    assert segment.name == "嵌套规则"
    assert segment.rule == nested


def test_refresh_now(operator_client):
    segment = SegmentFactory()  # matches everyone, but was never refreshed
    ContactFactory.create_batch(3)

    response = operator_client.post(reverse("segments:refresh", args=[segment.pk]))

    assert response.status_code == 302
    segment.refresh_from_db()
    assert segment.member_count == 3
    assert segment.last_refreshed_at is not None
    assert operator_client.get(reverse("segments:refresh", args=[segment.pk])).status_code == 405


def test_contact_segments_panel(operator_client):
    contact = ContactFactory()
    segment = segment_create(name="所有人", rule={"op": "and", "conditions": []})
    url = reverse("segments:contact_segments", args=[contact.pk])

    fragment = operator_client.get(url, **HX).content.decode()
    page = operator_client.get(url).content.decode()

    assert fragment.lstrip().startswith('<section id="contact-segments"')
    assert segment.name in fragment
    assert "<html" in page and segment.name in page
