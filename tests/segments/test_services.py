import datetime as dt

import pytest
from django.utils import timezone

from contacts.models import Contact
from contacts.services import contact_tag_add, contact_tag_remove
from core.errors import ValidationFailed
from segments.models import SegmentMembership
from segments.rules import validate_rule
from segments.services import segment_create, segment_queryset, segment_refresh
from tests.factories import ContactFactory, TagFactory

pytestmark = pytest.mark.django_db


def _ids(qs):
    return set(qs.values_list("pk", flat=True))


def test_nested_rule_compiles_to_the_expected_members():
    skin, makeup = TagFactory(name="护肤"), TagFactory(name="彩妆")
    sh_skin = ContactFactory(city="上海")
    sh_makeup = ContactFactory(city="上海")
    bj_skin = ContactFactory(city="北京")
    ContactFactory(city="广州")
    contact_tag_add(contact=sh_skin, tag=skin)
    contact_tag_add(contact=sh_makeup, tag=makeup)
    contact_tag_add(contact=bj_skin, tag=skin)
    rule = {
        "op": "and",
        "conditions": [
            {"type": "attribute", "field": "city", "operator": "in", "value": ["上海", "北京"]},
            {
                "op": "or",
                "conditions": [
                    {"type": "tag", "match": "any", "tags": [skin.pk]},
                    {"type": "attribute", "field": "city", "operator": "eq", "value": "北京"},
                ],
            },
            {"type": "tag", "match": "none", "tags": [makeup.pk]},
        ],
    }
    segment = segment_create(name="s", rule=rule)
    assert _ids(segment_queryset(segment=segment)) == {sh_skin.pk, bj_skin.pk}
    assert segment.member_count == 2


def test_tag_all_and_attribute_operators():
    a, b = TagFactory(), TagFactory()
    both = ContactFactory(name="张三", source="小程序")
    one = ContactFactory(name="张四", source="")
    for t in (a, b):
        contact_tag_add(contact=both, tag=t)
    contact_tag_add(contact=one, tag=a)
    all_rule = {"op": "and", "conditions": [{"type": "tag", "match": "all", "tags": [a.pk, b.pk]}]}
    members = segment_create(name="all", rule=all_rule).memberships
    assert list(members.values_list("contact_id", flat=True)) == [both.pk]
    starts = {
        "op": "and",
        "conditions": [
            {"type": "attribute", "field": "name", "operator": "startswith", "value": "张"},
            {"type": "attribute", "field": "source", "operator": "not_set"},
        ],
    }
    seg = segment_create(name="starts", rule=starts)
    assert list(seg.memberships.values_list("contact_id", flat=True)) == [one.pk]


def test_relative_date_rule():
    old = ContactFactory()
    Contact.objects.filter(pk=old.pk).update(created_at=timezone.now() - dt.timedelta(days=40))
    new = ContactFactory()
    rule = {
        "op": "and",
        "conditions": [
            {"type": "attribute", "field": "created_at", "operator": "within_days", "value": 30}
        ],
    }
    seg = segment_create(name="new", rule=rule)
    assert set(seg.memberships.values_list("contact_id", flat=True)) == {new.pk}


@pytest.mark.parametrize(
    "rule,path",
    [
        ([], "rule"),
        ({"op": "xor", "conditions": []}, "rule.op"),
        ({"op": "and", "conditions": [{"type": "tag", "match": "any", "tags": []}]}, "tags"),
        ({"op": "and", "conditions": [{"type": "tag", "match": "any", "tags": [99999]}]}, "tags"),
        ({"op": "and", "conditions": [{"type": "attribute", "field": "salary"}]}, "field"),
        (
            {
                "op": "and",
                "conditions": [
                    {"type": "attribute", "field": "city", "operator": "gt", "value": "x"}
                ],
            },
            "conditions[0].operator",
        ),
        (
            {
                "op": "or",
                "conditions": [{"type": "attribute", "field": "lifecycle_stage", "operator": "eq"}],
            },
            "value",
        ),
    ],
)
def test_invalid_rules_point_at_the_offending_condition(rule, path):
    with pytest.raises(ValidationFailed) as exc:
        validate_rule(rule)
    assert path in exc.value.message


def test_entries_and_exits_follow_tag_changes_and_are_recorded(
    django_capture_on_commit_callbacks,
):
    tag = TagFactory()
    contact = ContactFactory()
    seg = segment_create(
        name="tagged",
        rule={"op": "and", "conditions": [{"type": "tag", "match": "any", "tags": [tag.pk]}]},
    )
    assert seg.member_count == 0
    # The tag service announces the change after commit; the segment re-evaluates that contact.
    with django_capture_on_commit_callbacks(execute=True):
        contact_tag_add(contact=contact, tag=tag)
    assert SegmentMembership.objects.filter(segment=seg, contact=contact).exists()
    with django_capture_on_commit_callbacks(execute=True):
        contact_tag_remove(contact=contact, tag=tag)
    assert not SegmentMembership.objects.filter(segment=seg, contact=contact).exists()
    names = list(contact.events.order_by("pk").values_list("name", flat=True))
    assert names == ["tag_added", "segment_entered", "tag_removed", "segment_exited"]


def test_full_refresh_is_idempotent():
    tag = TagFactory()
    contacts = ContactFactory.create_batch(3)
    seg = segment_create(
        name="t",
        rule={"op": "and", "conditions": [{"type": "tag", "match": "none", "tags": [tag.pk]}]},
    )
    assert segment_refresh(segment=seg) == (0, 0)
    assert seg.member_count == 3
    assert set(seg.memberships.values_list("contact_id", flat=True)) == {c.pk for c in contacts}
