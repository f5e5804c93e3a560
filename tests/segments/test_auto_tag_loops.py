"""An auto-tag may not follow a segment whose rule reads that tag (directly or through the
segments it reads): the members would enter and leave in turn, pass after pass, each time with
events, journey entries and tag changes."""

import pytest
from django.contrib.messages import get_messages
from django.urls import reverse

from contacts.models import Event
from core.errors import ValidationFailed
from segments.models import AutoTagRule, Segment
from segments.services import auto_tag_rule_create, segment_create, segment_update
from tests.factories import ContactFactory, TagFactory

pytestmark = pytest.mark.django_db


def lacking(tag) -> dict:
    return {"op": "and", "conditions": [{"type": "tag", "match": "none", "tags": [tag.pk]}]}


def reads(segment: Segment) -> dict:
    return {"op": "and", "conditions": [{"type": "segment", "match": "in", "segment": segment.pk}]}


def everyone_in_shanghai() -> dict:
    return {
        "op": "and",
        "conditions": [{"type": "attribute", "field": "city", "operator": "eq", "value": "上海"}],
    }


def test_a_segment_cannot_keep_a_tag_its_own_rule_reads():
    tag = TagFactory(name="价格敏感")
    ContactFactory.create_batch(3)
    segment = segment_create(name="不敏感", rule=lacking(tag))

    with pytest.raises(ValidationFailed) as refused:
        auto_tag_rule_create(segment=segment, tag=tag)

    assert refused.value.code == "tag_loop"
    assert "不敏感" in refused.value.message and "价格敏感" in refused.value.message
    assert not AutoTagRule.objects.exists()
    assert not Event.objects.filter(name__in=["tag_added", "tag_removed"]).exists()


def test_nor_a_tag_that_a_segment_it_reads_reads():
    tag = TagFactory(name="价格敏感")
    inner = segment_create(name="不敏感", rule=lacking(tag))
    outer = segment_create(name="外层", rule=reads(inner))

    with pytest.raises(ValidationFailed, match="不敏感"):
        auto_tag_rule_create(segment=outer, tag=tag)


def test_a_rule_change_that_would_close_the_loop_is_refused_and_nothing_changes():
    tag = TagFactory(name="上海客户")
    ContactFactory(city="上海")
    inner = segment_create(name="上海", rule=everyone_in_shanghai())
    outer = segment_create(name="外层", rule=reads(inner))
    auto_tag_rule_create(segment=outer, tag=tag)

    with pytest.raises(ValidationFailed) as refused:
        segment_update(segment=inner, rule=lacking(tag))

    assert refused.value.code == "tag_loop"
    assert Segment.objects.get(pk=inner.pk).rule == everyone_in_shanghai()
    with pytest.raises(ValidationFailed):
        segment_update(segment=outer, rule=lacking(tag))
    # A change that does not read the tag is fine.
    segment_update(segment=inner, rule=lacking(TagFactory(name="别的")))


def test_the_segment_page_says_why(operator_client):
    tag = TagFactory(name="价格敏感")
    segment = segment_create(name="不敏感", rule=lacking(tag))

    response = operator_client.post(
        reverse("segments:auto_tag_add", args=[segment.pk]),
        {"tag": tag.pk, "remove_on_exit": "on"},
    )

    assert response.status_code == 302
    [message] = [str(m) for m in get_messages(response.wsgi_request)]
    assert "价格敏感" in message
    assert not AutoTagRule.objects.exists()
