"""Erasing a person takes them out of every segment and list with the counts kept right, and
their copy of their data names the segments they are in and the lead-score points they got."""

import pytest
from django.utils import timezone

from contacts.models import Contact, Event
from contacts.services import contact_erase, contact_merge, contact_tag_add
from contacts.signals import contact_data_requested
from segments import scoring
from segments.models import (
    DirtyContact,
    LeadScoreAward,
    Segment,
    SegmentKind,
    SegmentMembership,
    SegmentSize,
)
from segments.services import (
    mark_dirty,
    segment_archive,
    segment_create,
    segment_refresh,
    segment_static_add,
)
from tests.factories import ContactFactory, EventFactory, TagFactory

pytestmark = pytest.mark.django_db


def tagged(tag) -> dict:
    return {"op": "and", "conditions": [{"type": "tag", "match": "any", "tags": [tag.pk]}]}


def members(segment: Segment) -> set[int]:
    return set(segment.memberships.values_list("contact_id", flat=True))


def assert_counts_right() -> None:
    today = timezone.localdate()
    for segment in Segment.objects.all():
        assert segment.member_count == segment.memberships.count(), segment.name
        size = SegmentSize.objects.get(segment=segment, day=today)
        assert size.member_count == segment.member_count, segment.name


def sections(contact_ids: list[int]) -> dict:
    merged: dict = {}
    for _receiver, answer in contact_data_requested.send(sender=Contact, contact_ids=contact_ids):
        merged.update(answer or {})
    return merged


def test_erasure_takes_the_person_out_of_rule_based_segments_and_lists_with_counts_right():
    tag = TagFactory(name="高价值")
    person, other, duplicate = ContactFactory(), ContactFactory(), ContactFactory()
    for contact in (person, other):
        contact_tag_add(contact=contact, tag=tag)
    vip = segment_create(name="VIP", rule=tagged(tag))
    frozen = segment_create(name="去年 VIP", rule=tagged(tag))
    segment_archive(segment=frozen)
    vip_list = segment_create(name="门店名单", kind=SegmentKind.STATIC)
    segment_static_add(segment=vip_list, contact_ids=[person.pk, other.pk, duplicate.pk])
    # The duplicate's place goes to the person: a list holds them once.
    contact_merge(survivor=person, duplicate=duplicate)
    mark_dirty(contact_ids=[person.pk, duplicate.pk, other.pk])
    assert members(vip) == members(frozen) == members(vip_list) == {person.pk, other.pk}
    assert_counts_right()

    erasure = contact_erase(contact=person, source="operator")

    assert members(vip) == members(frozen) == members(vip_list) == {other.pk}
    assert_counts_right()
    assert erasure.summary["segments.segmentmembership"] == 3
    assert erasure.summary["segments.dirtycontact"] == 2
    assert list(DirtyContact.objects.values_list("contact_id", flat=True)) == [other.pk]
    # Silently: there is no one left to write an exit for.
    assert not Event.objects.filter(name="segment_exited").exists()
    # A full refresh finds nothing to change.
    assert segment_refresh(segment=vip) == (0, 0)
    assert_counts_right()


def test_erasure_of_someone_in_no_segment_changes_no_count():
    tag = TagFactory()
    other = ContactFactory()
    contact_tag_add(contact=other, tag=tag)
    vip = segment_create(name="VIP", rule=tagged(tag))

    erasure = contact_erase(contact=ContactFactory(), source="api")

    assert "segments.segmentmembership" not in erasure.summary
    vip.refresh_from_db()
    assert vip.member_count == 1
    assert_counts_right()


def test_lead_score_awards_go_with_the_person():
    rule = scoring.score_rule_create(
        data={"name": "下单", "kind": "event", "event_name": "purchase", "points": 10}
    )
    person, other = ContactFactory(), ContactFactory()
    events = [EventFactory(contact=contact, name="purchase") for contact in (person, other)]
    scoring.lead_scores_award_events(events=events)

    erasure = contact_erase(contact=person, source="operator")

    assert list(LeadScoreAward.objects.values_list("contact_id", "rule_id")) == [
        (other.pk, rule.pk)
    ]
    assert erasure.summary["segments.leadscoreaward"] == 1


def test_the_copy_of_a_persons_data_names_their_segments_and_score_awards():
    tag = TagFactory()
    person = ContactFactory()
    contact_tag_add(contact=person, tag=tag)
    vip = segment_create(name="VIP", rule=tagged(tag))
    vip_list = segment_create(name="门店名单", kind=SegmentKind.STATIC)
    segment_static_add(segment=vip_list, contact_ids=[person.pk])
    scoring.score_rule_create(
        data={"name": "下单", "kind": "event", "event_name": "purchase", "points": 10}
    )
    event = EventFactory(contact=person, name="purchase")
    scoring.lead_scores_award_events(events=[event])

    data = sections([person.pk])

    rows = sorted(data["segments.memberships"], key=lambda row: row["segment"])
    assert [(row["segment"], row["kind"]) for row in rows] == [
        ("VIP", "dynamic"),
        ("门店名单", "static"),
    ]
    entered = SegmentMembership.objects.get(segment=vip, contact=person).entered_at
    assert rows[0]["entered_at"] == entered.isoformat()
    [award] = data["segments.lead_score_awards"]
    assert award["rule"] == "下单"
    assert award["points"] == 10
    assert award["event_id"] == event.event_id
    assert data["segments.rfm"] == data["segments.influence"] == []
