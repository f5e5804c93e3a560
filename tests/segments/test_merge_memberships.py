"""Rule-based segment memberships through a contact merge and its undo.

A merge and its undo are bookkeeping about who is who: the places they move are moved
silently (no segment event, no signal, so no journey starts), while what really changes for a
contact (a rule it matches only with the other's data, a tag taken off meanwhile) is applied as
any entry or exit.
"""

import datetime as dt

import pytest
from django.utils import timezone

from channels.models import Delivery
from contacts.models import Event
from contacts.services import (
    contact_merge,
    contact_merge_undo,
    contact_tag_add,
    contact_tag_remove,
)
from journeys.models import Enrollment
from journeys.services import enrollments_advance_due, journey_activate
from segments import merging
from segments.models import Segment, SegmentMembership, SegmentSize
from segments.services import (
    auto_tag_rule_create,
    segment_archive,
    segment_create,
    segment_refresh,
)
from tests.factories import (
    ChannelFactory,
    ContactFactory,
    JourneyFactory,
    JourneyStepFactory,
    TagFactory,
)

pytestmark = pytest.mark.django_db

SEGMENT_EVENTS = ("segment_entered", "segment_exited")


def tagged(tag, match: str = "any") -> dict:
    tags = tag if isinstance(tag, list) else [tag]
    return {
        "op": "and",
        "conditions": [{"type": "tag", "match": match, "tags": [t.pk for t in tags]}],
    }


def with_journey(segment: Segment):
    """A live journey started by entering `segment`: a wait, then a message."""
    journey = JourneyFactory(name=f"{segment.name}旅程", trigger_segment=segment)
    JourneyStepFactory(journey=journey, position=0, kind="wait", wait_seconds=60)
    JourneyStepFactory(
        journey=journey,
        position=1,
        kind="send",
        channel=ChannelFactory(),
        title="欢迎",
        body="感谢关注",
    )
    journey_activate(journey=journey)
    return journey


def members(segment: Segment) -> set[int]:
    return set(segment.memberships.values_list("contact_id", flat=True))


def memberships() -> list[tuple]:
    return sorted(SegmentMembership.objects.values_list("segment_id", "contact_id", "entered_at"))


def entered_at(segment: Segment, contact) -> dt.datetime:
    return segment.memberships.get(contact=contact).entered_at


def last_event() -> int:
    return Event.objects.order_by("-pk").values_list("pk", flat=True).first() or 0


def segment_events_since(mark: int) -> list[tuple]:
    return list(
        Event.objects.filter(pk__gt=mark, name__in=SEGMENT_EVENTS)
        .order_by("pk")
        .values_list("contact_id", "name", "properties__segment_id")
    )


def assert_counts_right() -> None:
    today = timezone.localdate()
    for segment in Segment.objects.all():
        assert segment.member_count == segment.memberships.count(), segment.name
        size = SegmentSize.objects.get(segment=segment, day=today)
        assert size.member_count == segment.member_count, segment.name


def run_journeys_to_the_end() -> None:
    """Advance every enrollment past its wait, so that any message due would be sent."""
    for _ in range(2):
        Enrollment.objects.update(next_run_at=timezone.now() - dt.timedelta(seconds=1))
        enrollments_advance_due()


def test_merge_and_undo_of_two_members_start_no_journey_and_restore_entry_times(
    django_capture_on_commit_callbacks,
):
    tag = TagFactory(name="高价值")
    survivor, duplicate, other = ContactFactory(), ContactFactory(), ContactFactory()
    for contact in (survivor, duplicate, other):
        contact_tag_add(contact=contact, tag=tag)
    # Both are initial members (a first build is silent): nobody is enrolled yet.
    vip = segment_create(name="VIP", rule=tagged(tag))
    journey = with_journey(vip)
    # Refreshed only by schedule: the re-evaluation after commit does not reach it.
    daily = segment_create(name="每日 VIP", rule=tagged(tag), refresh_policy="daily")
    before = memberships()
    mark = last_event()

    with django_capture_on_commit_callbacks(execute=True):
        record = contact_merge(survivor=survivor, duplicate=duplicate)

    assert members(vip) == members(daily) == {survivor.pk, other.pk}
    record.refresh_from_db()
    assert [row["segment"] for row in record.moved[merging.RULE_KEY]] == [vip.pk, daily.pk]
    assert_counts_right()

    with django_capture_on_commit_callbacks(execute=True):
        contact_merge_undo(record=record)

    # The very rows of before, entry times included.
    assert memberships() == before
    assert (
        entered_at(vip, duplicate)
        == dict(((s, c), at) for s, c, at in before)[(vip.pk, duplicate.pk)]
    )
    # The scheduled refresh finds nothing to change either.
    assert segment_refresh(segment=daily) == (0, 0)
    assert segment_events_since(mark) == []
    run_journeys_to_the_end()
    assert not Enrollment.objects.filter(journey=journey).exists()
    assert not Delivery.objects.exists()
    assert not Event.objects.filter(pk__gt=mark, name="journey_enrolled").exists()
    assert_counts_right()


def test_the_survivor_takes_the_duplicates_place_only_where_it_matches(
    django_capture_on_commit_callbacks,
):
    vip_tag, opted_out = TagFactory(name="高价值"), TagFactory(name="已退订")
    survivor, duplicate = ContactFactory(), ContactFactory()
    contact_tag_add(contact=duplicate, tag=vip_tag)
    contact_tag_add(contact=survivor, tag=opted_out)
    vip = segment_create(name="VIP", rule=tagged(vip_tag))
    reachable = segment_create(name="可触达", rule=tagged(opted_out, match="none"))
    frozen = segment_create(name="去年可触达", rule=tagged(opted_out, match="none"))
    segment_archive(segment=frozen)
    journeys = [with_journey(vip), with_journey(reachable)]
    assert members(vip) == members(reachable) == members(frozen) == {duplicate.pk}
    since = entered_at(vip, duplicate)
    before = memberships()
    mark = last_event()

    with django_capture_on_commit_callbacks(execute=True):
        record = contact_merge(survivor=survivor, duplicate=duplicate)

    # The VIP tag moved to the survivor: the person was a VIP all along, since then.
    assert members(vip) == {survivor.pk}
    assert entered_at(vip, survivor) == since
    # Opted out now (the survivor's own tag): the place is gone, without an exit.
    assert members(reachable) == set()
    # A frozen segment keeps its people, as a list does.
    assert members(frozen) == {survivor.pk}
    assert segment_events_since(mark) == []
    assert not Enrollment.objects.exists()
    assert_counts_right()

    with django_capture_on_commit_callbacks(execute=True):
        contact_merge_undo(record=record)

    assert memberships() == before
    assert segment_events_since(mark) == []
    run_journeys_to_the_end()
    assert not Enrollment.objects.filter(journey__in=journeys).exists()
    assert not Delivery.objects.exists()
    assert_counts_right()


def test_a_survivor_matching_only_with_the_duplicates_data_enters_and_leaves_for_real(
    django_capture_on_commit_callbacks,
):
    skin, makeup = TagFactory(name="护肤"), TagFactory(name="彩妆")
    survivor, duplicate = ContactFactory(), ContactFactory()
    contact_tag_add(contact=survivor, tag=skin)
    contact_tag_add(contact=duplicate, tag=makeup)
    both = segment_create(name="护肤也彩妆", rule=tagged([skin, makeup], match="all"))
    journey = with_journey(both)
    assert members(both) == set()
    mark = last_event()

    with django_capture_on_commit_callbacks(execute=True):
        record = contact_merge(survivor=survivor, duplicate=duplicate)

    # Neither was in it; the merged person is: a real entry, and the journey starts.
    assert members(both) == {survivor.pk}
    assert segment_events_since(mark) == [(survivor.pk, "segment_entered", both.pk)]
    assert Enrollment.objects.get(journey=journey).contact_id == survivor.pk
    assert_counts_right()
    mark = last_event()

    with django_capture_on_commit_callbacks(execute=True):
        contact_merge_undo(record=record)

    assert members(both) == set()
    assert segment_events_since(mark) == [(survivor.pk, "segment_exited", both.pk)]
    assert not Enrollment.objects.filter(contact=duplicate).exists()
    assert_counts_right()


def test_a_duplicate_that_lost_its_tag_while_merged_leaves_for_real_after_the_undo(
    django_capture_on_commit_callbacks,
):
    vip_tag = TagFactory(name="高价值")
    survivor, duplicate = ContactFactory(), ContactFactory()
    contact_tag_add(contact=duplicate, tag=vip_tag)
    vip = segment_create(name="VIP", rule=tagged(vip_tag))
    journey = with_journey(vip)
    with django_capture_on_commit_callbacks(execute=True):
        record = contact_merge(survivor=survivor, duplicate=duplicate)
    assert members(vip) == {survivor.pk}
    # An operator takes the tag (the duplicate's, moved by the merge) off the merged person.
    mark = last_event()
    with django_capture_on_commit_callbacks(execute=True):
        contact_tag_remove(contact=survivor, tag=vip_tag)
    assert segment_events_since(mark) == [(survivor.pk, "segment_exited", vip.pk)]
    mark = last_event()

    with django_capture_on_commit_callbacks(execute=True):
        contact_merge_undo(record=record)

    # The tag row is gone, so it does not come back: the duplicate, given its place back,
    # really left the segment while merged. It never re-enters on the way.
    assert members(vip) == set()
    assert segment_events_since(mark) == [(duplicate.pk, "segment_exited", vip.pk)]
    assert not Enrollment.objects.filter(journey=journey).exists()
    assert_counts_right()


def test_a_segment_first_built_while_merged_takes_the_duplicate_in_silently(
    django_capture_on_commit_callbacks,
):
    vip_tag = TagFactory(name="高价值")
    survivor, duplicate = ContactFactory(), ContactFactory()
    for contact in (survivor, duplicate):
        contact_tag_add(contact=contact, tag=vip_tag)
    with django_capture_on_commit_callbacks(execute=True):
        record = contact_merge(survivor=survivor, duplicate=duplicate)
    new = segment_create(name="新 VIP", rule=tagged(vip_tag))
    journey = with_journey(new)
    marker = TagFactory(name="新 VIP 标记")
    auto_tag_rule_create(segment=new, tag=marker)
    assert members(new) == {survivor.pk}
    mark = last_event()
    undone_at = timezone.now()

    with django_capture_on_commit_callbacks(execute=True):
        contact_merge_undo(record=record)

    # Unmerged, it would have been one of the initial members, and those enter silently.
    assert members(new) == {survivor.pk, duplicate.pk}
    assert entered_at(new, duplicate) >= undone_at
    # With the auto-tag the initial members got.
    assert set(marker.contact_tags.values_list("contact_id", flat=True)) == {
        survivor.pk,
        duplicate.pk,
    }
    assert segment_events_since(mark) == []
    run_journeys_to_the_end()
    assert not Enrollment.objects.filter(journey=journey).exists()
    assert not Delivery.objects.exists()
    assert_counts_right()


def test_undo_takes_back_only_the_place_the_survivor_was_given(
    django_capture_on_commit_callbacks,
):
    vip_tag = TagFactory(name="高价值")
    survivor, duplicate = ContactFactory(), ContactFactory()
    contact_tag_add(contact=duplicate, tag=vip_tag)
    vip = segment_create(name="VIP", rule=tagged(vip_tag))
    since = entered_at(vip, duplicate)
    with django_capture_on_commit_callbacks(execute=True):
        record = contact_merge(survivor=survivor, duplicate=duplicate)
    # The survivor leaves and enters again while merged: that entry is its own.
    with django_capture_on_commit_callbacks(execute=True):
        contact_tag_remove(contact=survivor, tag=vip_tag)
    with django_capture_on_commit_callbacks(execute=True):
        contact_tag_add(contact=survivor, tag=vip_tag)
    own = entered_at(vip, survivor)
    assert own > since
    mark = last_event()

    with django_capture_on_commit_callbacks(execute=True):
        contact_merge_undo(record=record)

    # The survivor keeps its own tag and entry; the duplicate gets its place back, silently,
    # and leaves for real: its tag went when the survivor's was taken off.
    assert entered_at(vip, survivor) == own
    assert members(vip) == {survivor.pk}
    assert segment_events_since(mark) == [(duplicate.pk, "segment_exited", vip.pk)]
    assert_counts_right()
