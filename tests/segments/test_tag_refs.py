"""A tag a segment rule or an auto-tag rule reads cannot be deleted; deleting any other tag
untags its contacts the way untagging does."""

import pytest
from django.db.models import ProtectedError
from django.urls import reverse

from contacts.models import ContactTag, Event, Tag
from contacts.services import contact_tag_add, tag_delete
from segments.services import auto_tag_rule_create, segment_create, segment_update
from tests.factories import ContactFactory, TagFactory

pytestmark = pytest.mark.django_db


def has_any(*tags: Tag) -> dict:
    return {
        "op": "and",
        "conditions": [{"type": "tag", "match": "any", "tags": [t.pk for t in tags]}],
    }


def test_a_segment_records_the_tags_its_rule_reads_and_follows_rule_changes():
    vip, new = TagFactory(name="VIP"), TagFactory(name="新客")
    segment = segment_create(name="VIP", rule=has_any(vip, new))
    assert set(segment.tags_read.all()) == {vip, new}
    segment_update(segment=segment, rule=has_any(vip))
    assert set(segment.tags_read.all()) == {vip}


def test_a_tag_a_rule_reads_cannot_be_deleted_until_the_rule_stops_reading_it():
    vip = TagFactory(name="VIP")
    segment = segment_create(name="VIP", rule=has_any(vip))
    with pytest.raises(ProtectedError):
        tag_delete(tag=vip)
    assert Tag.objects.filter(pk=vip.pk).exists()

    segment_update(segment=segment, rule={"op": "and", "conditions": []})
    tag_delete(tag=vip)
    assert not Tag.objects.filter(pk=vip.pk).exists()


def test_a_tag_an_auto_tag_rule_keeps_cannot_be_deleted():
    tag = TagFactory(name="上海人")
    segment = segment_create(
        name="上海",
        rule={
            "op": "and",
            "conditions": [
                {"type": "attribute", "field": "city", "operator": "eq", "value": "上海"}
            ],
        },
    )
    auto_tag_rule_create(segment=segment, tag=tag)
    with pytest.raises(ProtectedError):
        tag_delete(tag=tag)


def test_deleting_a_tag_untags_its_contacts_on_their_timelines():
    tag = TagFactory(name="旧活动")
    tagged = [ContactFactory(), ContactFactory()]
    for contact in tagged:
        contact_tag_add(contact=contact, tag=tag)

    assert tag_delete(tag=tag) == 2

    assert not ContactTag.objects.exists()
    removed = Event.objects.filter(name="tag_removed")
    assert sorted(removed.values_list("contact_id", flat=True)) == sorted(c.pk for c in tagged)
    assert {e.properties["reason"] for e in removed} == {"tag_deleted"}


def test_the_admin_refuses_to_delete_a_tag_a_rule_reads(admin_client):
    vip = TagFactory(name="VIP")
    segment_create(name="会员分群", rule=has_any(vip))
    url = reverse("admin:contacts_tag_delete", args=[vip.pk])

    page = admin_client.get(url)
    response = admin_client.post(url, {"post": "yes"})

    assert "会员分群" in page.content.decode()
    assert response.status_code == 200  # the confirmation page again, listing what protects it
    assert Tag.objects.filter(pk=vip.pk).exists()


def test_a_tag_a_profile_fit_rule_reads_cannot_be_deleted_until_the_rule_stops_reading_it():
    from segments import scoring

    vip = TagFactory(name="VIP")
    rule = scoring.score_rule_create(
        data={"name": "VIP 加分", "kind": "attribute", "condition": has_any(vip), "points": 10}
    )
    assert set(rule.tags_read.all()) == {vip}
    with pytest.raises(ProtectedError):
        tag_delete(tag=vip)

    other = TagFactory(name="其他")
    scoring.score_rule_update(
        rule=rule,
        data={"name": "VIP 加分", "kind": "attribute", "condition": has_any(other), "points": 10},
    )
    tag_delete(tag=vip)
    assert not Tag.objects.filter(pk=vip.pk).exists()
