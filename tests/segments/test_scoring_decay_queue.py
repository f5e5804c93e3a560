"""The daily lead-score decay reaches segments the same day: contacts whose score moved are
queued for the per-minute pass, and the decay runs before the daily segment refreshes."""

import datetime as dt

import pytest
from django.conf import settings

from contacts.models import Contact
from segments import scoring
from segments.models import DirtyContact, LeadScoreAward, LeadScoringConfig, Segment
from segments.rules.topics import topics_mask
from segments.services import segment_create, segments_refresh_incremental
from tests.factories import ContactFactory, EventFactory

pytestmark = pytest.mark.django_db

NOW = dt.datetime(2026, 3, 18, 12, 0, tzinfo=dt.UTC)


def score_at_least(points: int) -> dict:
    return {
        "op": "and",
        "conditions": [
            {"type": "attribute", "field": "lead_score", "operator": "gte", "value": points}
        ],
    }


@pytest.fixture
def engaged():
    """A contact whose 100 event points, awarded now, will have halved in 30 days."""
    LeadScoringConfig.objects.update_or_create(pk=1, defaults={"half_life_days": 30})
    scoring.score_rule_create(
        data={"name": "购买", "kind": "event", "event_name": "purchase", "points": 100}
    )
    contact = ContactFactory()
    scoring.lead_scores_award_events(
        events=[EventFactory(contact=contact, name="purchase", occurred_at=NOW)], now=NOW
    )
    DirtyContact.objects.all().delete()
    return contact


def test_the_decay_queues_the_contacts_whose_score_moved(engaged):
    fit_only = ContactFactory()
    fit_rule = scoring.score_rule_create(
        data={
            "name": "上海",
            "kind": "attribute",
            "condition": {
                "op": "and",
                "conditions": [
                    {"type": "attribute", "field": "city", "operator": "eq", "value": "北京"}
                ],
            },
            "points": 5,
        }
    )
    LeadScoreAward.objects.create(contact=fit_only, rule=fit_rule, points=5, awarded_at=NOW)
    scoring.lead_scores_recompute_contacts(contact_ids=[fit_only.pk], now=NOW)
    DirtyContact.objects.all().delete()

    scoring.lead_scores_recompute_all(now=NOW + dt.timedelta(days=30))

    queued = dict(DirtyContact.objects.values_list("contact_id", "topics"))
    assert queued == {engaged.pk: topics_mask(["lead_score"])}  # profile fit does not decay


def test_a_segment_on_the_score_follows_the_decay_on_the_next_pass(engaged):
    hot = segment_create(name="高意向", rule=score_at_least(80))
    assert list(hot.memberships.values_list("contact_id", flat=True)) == [engaged.pk]
    later = NOW + dt.timedelta(days=30)

    scoring.lead_scores_daily(now=later)
    segments_refresh_incremental()

    assert Contact.objects.get(pk=engaged.pk).lead_score == pytest.approx(50)
    assert not hot.memberships.exists()


def test_a_recompute_that_changes_nothing_queues_nobody(engaged):
    scoring.lead_scores_recompute_all(now=NOW)
    DirtyContact.objects.all().delete()

    scoring.lead_scores_recompute_all(now=NOW)

    assert not DirtyContact.objects.exists()


def test_the_decay_runs_before_the_daily_segment_refreshes():
    decay = settings.SCRM_PERIODIC_TASKS["segments: lead score decay and fit"]["daily_at"]
    rfm = settings.SCRM_PERIODIC_TASKS["segments: RFM recompute"]["daily_at"]
    koc = settings.SCRM_PERIODIC_TASKS["segments: influence compute"]["daily_at"]
    default_refresh_hour = 3
    assert max(rfm, koc) < decay < f"{default_refresh_hour:02d}:00"


def test_a_queue_too_large_for_a_pass_rebuilds_only_the_segments_reading_what_changed(
    engaged, monkeypatch
):
    from segments import services

    hot = segment_create(name="高意向", rule=score_at_least(80))
    hot_readers = segment_create(
        name="高意向客户",
        rule={"op": "and", "conditions": [{"type": "segment", "segment": hot.pk}]},
    )
    by_city = segment_create(
        name="上海",
        rule={
            "op": "and",
            "conditions": [
                {"type": "attribute", "field": "city", "operator": "eq", "value": "上海"}
            ],
        },
    )
    refreshed_before = dict(Segment.objects.values_list("pk", "last_refreshed_at"))
    # The size above which the queue becomes full refreshes: one contact stands for 200,000.
    monkeypatch.setattr(services, "INCREMENTAL_MAX", 0)

    scoring.lead_scores_daily(now=NOW + dt.timedelta(days=30))
    segments_refresh_incremental()

    assert not hot.memberships.exists() and not hot_readers.memberships.exists()
    by_city.refresh_from_db()
    assert by_city.last_refreshed_at == refreshed_before[by_city.pk]  # it reads no score
