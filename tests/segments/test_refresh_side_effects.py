"""What refreshes keep up besides membership: auto-tags (re-synced by every full refresh) and
the growth chart and "last refreshed" (written by the per-minute pass too)."""

import datetime as dt

import pytest
from django.utils import timezone

from contacts.models import Contact, ContactTag, Event, TagSource
from contacts.services import contact_tag_remove
from segments.models import Segment, SegmentSize
from segments.selectors import segment_size_series
from segments.services import (
    auto_tag_rule_create,
    mark_dirty,
    segment_create,
    segment_refresh,
    segments_refresh_incremental,
    segments_tick,
)
from tests.factories import ContactFactory, TagFactory

pytestmark = pytest.mark.django_db


def city_is(city: str) -> dict:
    return {
        "op": "and",
        "conditions": [{"type": "attribute", "field": "city", "operator": "eq", "value": city}],
    }


# --- auto-tags -----------------------------------------------------------------------------------


def test_a_full_refresh_gives_back_an_auto_tag_taken_off_a_member_by_hand(
    django_capture_on_commit_callbacks,
):
    member = ContactFactory(city="上海")
    tag = TagFactory(name="上海人")
    segment = segment_create(name="上海", rule=city_is("上海"))
    auto_tag_rule_create(segment=segment, tag=tag, remove_on_exit=True)
    with django_capture_on_commit_callbacks(execute=True):
        contact_tag_remove(contact=member, tag=tag)
    assert not ContactTag.objects.filter(contact=member, tag=tag).exists()

    segment_refresh(segment=Segment.objects.get(pk=segment.pk))

    given = ContactTag.objects.get(contact=member, tag=tag)
    assert given.source == TagSource.RULE
    assert Event.objects.filter(
        contact=member, name="tag_added", properties__source=TagSource.RULE
    ).exists()


def test_a_full_refresh_takes_a_rule_tag_off_someone_who_is_not_a_member():
    outsider = ContactFactory(city="北京")
    tag = TagFactory(name="上海人")
    segment = segment_create(name="上海", rule=city_is("上海"))
    auto_tag_rule_create(segment=segment, tag=tag, remove_on_exit=True)
    ContactTag.objects.create(contact=outsider, tag=tag, source=TagSource.RULE)
    manual = ContactFactory(city="北京")
    ContactTag.objects.create(contact=manual, tag=tag, source=TagSource.MANUAL)

    segment_refresh(segment=Segment.objects.get(pk=segment.pk))

    assert not ContactTag.objects.filter(contact=outsider, tag=tag).exists()
    assert ContactTag.objects.filter(contact=manual, tag=tag).exists()  # an operator's stays


def test_a_full_refresh_with_auto_tags_in_step_writes_no_tag_events():
    ContactFactory(city="上海")
    segment = segment_create(name="上海", rule=city_is("上海"))
    auto_tag_rule_create(segment=segment, tag=TagFactory(), remove_on_exit=True)
    before = Event.objects.filter(name__in=("tag_added", "tag_removed")).count()

    segment_refresh(segment=Segment.objects.get(pk=segment.pk))

    assert Event.objects.filter(name__in=("tag_added", "tag_removed")).count() == before


# --- growth chart and last refresh ---------------------------------------------------------------


def test_the_per_minute_pass_draws_todays_size_and_moves_the_refresh_time():
    movers = [ContactFactory(city="北京") for _ in range(3)]
    segment = segment_create(name="上海", rule=city_is("上海"))
    two_days_ago = timezone.localdate() - dt.timedelta(days=2)
    SegmentSize.objects.filter(segment=segment).update(day=two_days_ago)
    Segment.objects.filter(pk=segment.pk).update(
        last_refreshed_at=timezone.now() - dt.timedelta(days=2)
    )
    # Queued for the per-minute pass, as an import's changes are.
    Contact.objects.filter(pk__in=[c.pk for c in movers]).update(city="上海")
    mark_dirty(contact_ids=[c.pk for c in movers], topics=["city"])
    before = timezone.now()

    segments_tick()

    segment.refresh_from_db()
    assert segment.member_count == 3
    assert segment.last_refreshed_at >= before
    assert SegmentSize.objects.get(segment=segment, day=timezone.localdate()).member_count == 3
    # Two days ago, yesterday (not counted: the last count carried), today.
    assert segment_size_series(segment_ids=[segment.pk]) == {segment.pk: [0, 0, 3]}


def test_an_unbuilt_segment_keeps_no_refresh_time_so_its_first_build_stays_silent():
    contact = ContactFactory(city="北京")
    segment = segment_create(name="上海", rule=city_is("上海"), build=False)
    Contact.objects.filter(pk=contact.pk).update(city="上海")
    mark_dirty(contact_ids=[contact.pk], topics=["city"])

    segments_refresh_incremental()

    segment.refresh_from_db()
    assert segment.last_refreshed_at is None
