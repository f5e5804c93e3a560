"""A segment whose refresh failed keeps its retry until a full refresh succeeds, whatever is
edited meanwhile, and is still evaluated by the incremental passes: a change that reaches it
while it is failing is never lost."""

import datetime as dt

import pytest
from django.utils import timezone

from contacts.models import Contact, CustomField
from segments.models import DirtyContact, RefreshPolicy, Segment, SegmentFieldRef
from segments.services import (
    REFRESH_RETRY,
    mark_dirty,
    segment_create,
    segment_refresh_contacts,
    segment_update,
    segments_refresh_incremental,
    segments_tick,
)
from tests.factories import ContactFactory

pytestmark = pytest.mark.django_db


def skin_is(value: str) -> dict:
    return {
        "op": "and",
        "conditions": [
            {"type": "attribute", "field": "attributes.skin", "operator": "eq", "value": value}
        ],
    }


def members(segment: Segment) -> set[int]:
    return set(segment.memberships.values_list("contact_id", flat=True))


@pytest.fixture
def broken():
    """An on-change segment without time windows (no schedule of its own) whose last refresh
    failed: the field its stored rule reads is gone (a database from before fields were
    protected). Returned as loaded before the failure, as a form or the admin may hold it."""
    field = CustomField.objects.create(key="skin", label="肤质", kind="text")
    segment = segment_create(name="干性肌肤", rule=skin_is("dry"))
    SegmentFieldRef.objects.filter(segment=segment).delete()
    field.delete()
    stale = Segment.objects.get(pk=segment.pk)
    mark_dirty(contact_ids=[ContactFactory().pk], topics=None)
    segments_tick()
    segment.refresh_from_db()
    assert segment.refresh_error and segment.next_refresh_at is not None
    return stale


def stored(segment: Segment) -> Segment:
    return Segment.objects.get(pk=segment.pk)


# --- editing a failing segment ------------------------------------------------------------------


def test_renaming_a_failing_segment_keeps_its_retry_and_its_error(broken):
    retry = stored(broken).next_refresh_at

    segment_update(segment=broken, name="干性肌肤（旧）")

    after = stored(broken)
    assert after.name == "干性肌肤（旧）"
    assert after.next_refresh_at == retry
    # The caller's copy was loaded before the failure: its empty error is not written back.
    assert after.refresh_error


def test_a_policy_change_keeps_the_retry_when_it_is_sooner(broken):
    retry = stored(broken).next_refresh_at

    segment_update(
        segment=broken, refresh_policy=RefreshPolicy.INTERVAL, refresh_interval_minutes=600
    )

    assert stored(broken).next_refresh_at == retry


def test_a_policy_whose_own_refresh_is_sooner_takes_that_one(broken):
    before = timezone.now()

    segment_update(
        segment=broken, refresh_policy=RefreshPolicy.INTERVAL, refresh_interval_minutes=5
    )

    assert stored(broken).next_refresh_at < before + REFRESH_RETRY


def test_a_segment_refreshed_only_when_asked_is_not_retried(broken):
    segment_update(segment=broken, refresh_policy=RefreshPolicy.MANUAL)

    assert stored(broken).next_refresh_at is None


def test_the_kept_retry_clears_the_error_once_the_rule_works_again(broken):
    contact = ContactFactory(attributes={"skin": "dry"})
    segment_update(segment=broken, name="干性肌肤（旧）", description="已修复")
    CustomField.objects.create(key="skin", label="肤质", kind="text")

    segments_tick(now=stored(broken).next_refresh_at)

    after = stored(broken)
    assert after.refresh_error == ""
    assert members(after) == {contact.pk}


def test_an_edit_does_not_bring_back_an_error_a_refresh_cleared_meanwhile(broken):
    failing = stored(broken)  # holds the error
    CustomField.objects.create(key="skin", label="肤质", kind="text")
    segments_tick(now=failing.next_refresh_at)
    assert stored(broken).refresh_error == ""

    segment_update(segment=failing, description="已修复")

    assert stored(broken).refresh_error == ""
    assert stored(broken).next_refresh_at is None  # on change, no time windows: no schedule


# --- incremental passes over a failing segment ----------------------------------------------------


def test_an_inline_pass_still_evaluates_a_failing_segment(broken):
    """Its queue row is released: if the segment were left out, the change would be lost
    whenever a full refresh that read its matches before the change then cleared the error."""
    CustomField.objects.create(key="skin", label="肤质", kind="text")
    contact = ContactFactory()
    Contact.objects.filter(pk=contact.pk).update(attributes={"skin": "dry"})

    segment_refresh_contacts(contact_ids=[contact.pk], topics=None)

    assert members(broken) == {contact.pk}
    assert not DirtyContact.objects.exists()


def test_the_per_minute_pass_still_evaluates_a_failing_segment(broken):
    CustomField.objects.create(key="skin", label="肤质", kind="text")
    contact = ContactFactory()
    Contact.objects.filter(pk=contact.pk).update(attributes={"skin": "dry"})
    mark_dirty(contact_ids=[contact.pk], topics=None)

    segments_refresh_incremental()

    assert members(broken) == {contact.pk}
    assert not DirtyContact.objects.exists()


def test_a_segment_failing_again_keeps_its_retry_instead_of_retrying_every_minute(broken):
    retry = stored(broken).next_refresh_at
    mark_dirty(contact_ids=[ContactFactory().pk], topics=None)

    segments_refresh_incremental(now=timezone.now() + dt.timedelta(minutes=1))

    after = stored(broken)
    assert after.refresh_error
    assert after.next_refresh_at == retry
    assert not DirtyContact.objects.exists()
