"""An auto-tag rule made or switched on in the admin tags the segment's members at once, as
auto_tag_rule_create does."""

import pytest
from django.urls import reverse

from contacts.models import ContactTag
from segments.models import AutoTagRule
from segments.services import segment_create
from tests.factories import ContactFactory, TagFactory

pytestmark = pytest.mark.django_db


def city_rule(city: str) -> dict:
    return {
        "op": "and",
        "conditions": [{"type": "attribute", "field": "city", "operator": "eq", "value": city}],
    }


def tagged(tag) -> set[int]:
    return set(ContactTag.objects.filter(tag=tag).values_list("contact_id", flat=True))


def test_an_auto_tag_rule_added_in_the_admin_tags_todays_members(admin_client):
    member = ContactFactory(city="上海")
    ContactFactory(city="北京")
    segment = segment_create(name="上海", rule=city_rule("上海"))
    tag = TagFactory(name="上海人")

    response = admin_client.post(
        reverse("admin:segments_autotagrule_add"),
        {"segment": segment.pk, "tag": tag.pk, "remove_on_exit": "on", "is_active": "on"},
    )

    assert response.status_code == 302
    assert tagged(tag) == {member.pk}


def test_an_auto_tag_rule_switched_on_in_the_admin_tags_todays_members(admin_client):
    member = ContactFactory(city="上海")
    segment = segment_create(name="上海", rule=city_rule("上海"))
    tag = TagFactory(name="上海人")
    rule = AutoTagRule.objects.create(segment=segment, tag=tag, is_active=False)

    response = admin_client.post(
        reverse("admin:segments_autotagrule_change", args=[rule.pk]),
        {"segment": segment.pk, "tag": tag.pk, "remove_on_exit": "on", "is_active": "on"},
    )

    assert response.status_code == 302
    assert tagged(tag) == {member.pk}
