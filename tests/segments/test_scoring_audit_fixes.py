"""Lead scoring audit fixes: the stored score is the score operators see (two decimals), thresholds
only target stages on the customer's path and apply when saved, a new or changed event rule
scores past events, and property filters mean what they mean in segment rules."""

import datetime as dt

import pytest
from django.contrib.messages import get_messages
from django.urls import reverse
from django.utils import timezone, translation

from contacts.models import Contact, Event, Stage
from contacts.services import event_record
from core.errors import ValidationFailed
from segments import scoring
from segments.models import LeadScoreAward, LeadStageThreshold
from segments.rules import compile_rule
from segments.scoring_forms import ThresholdForm
from tests.factories import ContactFactory
from tests.segments.scoring_data import NOW, event_at, event_rule, half_life

pytestmark = pytest.mark.django_db

BIG_PURCHASE = [{"property": "amount", "operator": "gt", "value": 100}]


def _contact(pk) -> Contact:
    return Contact.objects.get(pk=getattr(pk, "pk", pk))


def _messages(response) -> list[str]:
    return [str(m) for m in get_messages(response.wsgi_request)]


@pytest.fixture
def english(settings, operator_client):
    operator_client.cookies[settings.LANGUAGE_COOKIE_NAME] = "en"
    return operator_client


# --- 1. The stored score is the score shown: thresholds and segment rules agree ---------------


def test_an_event_posted_through_the_api_that_earns_exactly_the_threshold_reaches_it(api):
    half_life(30)
    event_rule(points=10, property_filters=BIG_PURCHASE, cap_points=25, cap_period="day")
    scoring.threshold_set(stage_key="interested", min_score=10)
    contact = ContactFactory()
    # A client posts the purchase a little after it happened: its points decay from then.
    occurred = timezone.now() - dt.timedelta(seconds=20)

    response = api.post(
        "/api/v1/events",
        {
            "events": [
                {
                    "event_id": "o-1",
                    "name": "purchase",
                    "occurred_at": occurred.isoformat(),
                    "contact_id": contact.pk,
                    "properties": {"order_id": "o-1", "amount": 150},
                }
            ]
        },
        format="json",
    )

    assert response.json()["accepted"] == 1
    stored = _contact(contact)
    assert stored.lead_score == 10.0
    assert stored.lifecycle_stage_id == "interested"


def test_a_segment_rule_on_the_score_includes_a_contact_shown_at_that_score():
    half_life(30)
    event_rule(points=25)
    contact = ContactFactory()

    scoring.lead_scores_award_events(
        events=[event_at(contact, at=NOW - dt.timedelta(seconds=3))], now=NOW
    )

    assert _contact(contact).lead_score == 25.0
    rule = {"type": "attribute", "field": "lead_score", "operator": "gte", "value": 25}
    assert Contact.objects.filter(compile_rule(rule), pk=contact.pk).exists()


def test_every_writer_stores_the_score_rounded_to_two_decimals():
    half_life(7)
    event_rule(points=10)
    contact = ContactFactory()
    events = [event_at(contact, at=NOW - dt.timedelta(hours=h)) for h in (1, 5, 17)]

    scoring.lead_scores_award_events(events=events, now=NOW)
    by_award = _contact(contact).lead_score
    decayed_at = NOW + dt.timedelta(days=3, seconds=11)
    scoring.lead_scores_recompute_all(now=decayed_at)
    by_decay = _contact(contact).lead_score
    scoring.lead_scores_daily(now=decayed_at + dt.timedelta(days=1))
    by_daily = _contact(contact).lead_score

    for score in (by_award, by_decay, by_daily):
        assert score == round(score, 2)
    expected = sum(10 * 0.5 ** (h / 24 / 7) for h in (1, 5, 17))
    assert by_award == round(expected, 2)


def test_a_new_award_gives_the_same_score_as_a_full_recompute():
    half_life(3)
    event_rule(points=7)
    contact = ContactFactory()
    for i in range(6):
        at = NOW + dt.timedelta(hours=13 * i)
        scoring.lead_scores_award_events(
            events=[event_at(contact, at=at)], now=at + dt.timedelta(minutes=7)
        )
    incremental = _contact(contact)

    full = scoring.lead_scores_recompute_contacts(
        contact_ids=[contact.pk], now=incremental.lead_score_at
    )

    assert full[contact.pk] == incremental.lead_score


def test_the_scoring_page_shows_the_stored_score(operator_client):
    contact = ContactFactory()
    Contact.objects.filter(pk=contact.pk).update(lead_score=9.99)

    page = operator_client.get(reverse("segments:scoring")).content.decode()

    assert "9.99" in page


# --- 2. Thresholds only target stages on the customer's path ----------------------------------


@pytest.mark.parametrize("stage_key", ["dormant", "churned"])
def test_a_threshold_cannot_move_contacts_to_an_off_path_stage(stage_key):
    with translation.override("en"), pytest.raises(ValidationFailed) as exc:
        scoring.threshold_set(stage_key=stage_key, min_score=50)

    assert exc.value.code == "off_path_stage"
    assert "dormant or churned" in exc.value.message
    assert not LeadStageThreshold.objects.exists()


def test_the_threshold_form_offers_only_progression_stages():
    offered = {stage.key for stage in ThresholdForm().fields["stage"].queryset}

    assert offered == {"new", "interested", "first_purchase", "repeat", "loyal"}
    assert not ThresholdForm(data={"min_score": "50", "stage": "churned"}).is_valid()


def test_a_threshold_saved_on_an_off_path_stage_before_moves_nobody():
    half_life(0)
    event_rule(points=40)
    LeadStageThreshold.objects.create(stage=Stage.objects.get(key="churned"), min_score=10)
    contact = ContactFactory()

    event_record(contact=contact, name="purchase")

    assert _contact(contact).lifecycle_stage_id == "new"


def test_the_page_marks_a_threshold_saved_on_an_off_path_stage(english):
    LeadStageThreshold.objects.create(stage=Stage.objects.get(key="dormant"), min_score=10)

    page = english.get(reverse("segments:scoring")).content.decode()

    assert "not applied: a dormant or churned stage" in page


# --- 3. Saving a threshold applies it to current scores ---------------------------------------


def test_saving_a_threshold_moves_the_contacts_already_above_it(
    english, django_capture_on_commit_callbacks
):
    above, below, ahead = ContactFactory(), ContactFactory(), ContactFactory()
    ahead.lifecycle_stage_id = "repeat"
    ahead.save()
    for contact, score in ((above, 30), (below, 19.99), (ahead, 90)):
        Contact.objects.filter(pk=contact.pk).update(lead_score=score)

    with django_capture_on_commit_callbacks(execute=True):
        response = english.post(
            reverse("segments:scoring_threshold_set"), {"min_score": "20", "stage": "interested"}
        )

    assert response.status_code == 302
    (message,) = _messages(response)
    assert "already reaches it are being moved" in message
    stages = {c: _contact(c).lifecycle_stage_id for c in (above, below, ahead)}
    assert stages == {above: "interested", below: "new", ahead: "repeat"}
    changed = Event.objects.get(contact=above, name=scoring.STAGE_CHANGED_EVENT)
    assert changed.properties["score"] == 30


def test_lowering_a_threshold_moves_the_contacts_now_above_it(django_capture_on_commit_callbacks):
    contact = ContactFactory()
    Contact.objects.filter(pk=contact.pk).update(lead_score=40)
    with django_capture_on_commit_callbacks(execute=True):
        scoring.threshold_set(stage_key="interested", min_score=50)
    assert _contact(contact).lifecycle_stage_id == "new"

    with django_capture_on_commit_callbacks(execute=True):
        threshold = scoring.threshold_set(stage_key="interested", min_score=40)

    assert _contact(contact).lifecycle_stage_id == "interested"
    # Applying it again moves nobody twice.
    assert scoring.threshold_apply(threshold_id=threshold.pk) == 0
    assert Event.objects.filter(name=scoring.STAGE_CHANGED_EVENT).count() == 1


# --- 4. A new or changed event rule scores past events ----------------------------------------


def test_a_new_event_rule_scores_past_events_in_its_window(django_capture_on_commit_callbacks):
    half_life(0)
    now = timezone.now()
    recent, old = ContactFactory(), ContactFactory()
    day = timezone.localtime(now - dt.timedelta(days=3)).replace(hour=10)
    for minute in range(4):
        event_at(recent, at=day + dt.timedelta(minutes=minute), amount=150)
    event_at(recent, at=day, amount=50)  # filtered out
    event_at(old, at=now - dt.timedelta(days=scoring.BACKFILL_MAX_DAYS + 5), amount=500)
    scoring.threshold_set(stage_key="interested", min_score=25)

    with django_capture_on_commit_callbacks(execute=True):
        rule = event_rule(property_filters=BIG_PURCHASE, cap_points=25, cap_period="day")

    points = sorted(LeadScoreAward.objects.filter(rule=rule).values_list("points", flat=True))
    assert points == [5, 10, 10]
    assert not LeadScoreAward.objects.filter(contact=old).exists()
    assert _contact(recent).lead_score == 25.0
    assert _contact(recent).lifecycle_stage_id == "interested"


def test_the_back_fill_decays_past_points_and_stops_where_they_are_negligible():
    half_life(10)
    rule = event_rule(points=100)
    contact = ContactFactory()
    event_at(contact, at=NOW - dt.timedelta(days=10))
    event_at(contact, at=NOW - dt.timedelta(days=80))  # beyond 10 × log2(100) ≈ 67 days

    scoring.score_rule_backfill(rule_id=rule.pk, now=NOW)

    assert rule.awards.count() == 1
    assert _contact(contact).lead_score == 50.0


def test_the_back_fill_run_twice_awards_nothing_twice():
    half_life(30)
    rule = event_rule(points=10)
    contacts = [ContactFactory() for _ in range(3)]
    for contact in contacts:
        event_at(contact, at=NOW - dt.timedelta(days=2))
        event_at(contact, at=NOW - dt.timedelta(days=1))

    scoring.score_rule_backfill(rule_id=rule.pk, now=NOW)
    first = sorted(Contact.objects.values_list("pk", "lead_score"))
    scoring.score_rule_backfill(rule_id=rule.pk, now=NOW)

    assert rule.awards.count() == 6
    assert sorted(Contact.objects.values_list("pk", "lead_score")) == first


def test_editing_an_event_rule_re_awards_past_events(django_capture_on_commit_callbacks):
    half_life(0)
    rule = event_rule(points=10)
    contact = ContactFactory()
    event_record(contact=contact, name="purchase", properties={"amount": 50})
    event_record(contact=contact, name="purchase", properties={"amount": 500})
    assert _contact(contact).lead_score == 20

    data = {
        "name": "大额订单",
        "kind": "event",
        "event_name": "purchase",
        "points": 30,
        "property_filters": BIG_PURCHASE,
    }
    with django_capture_on_commit_callbacks(execute=True):
        scoring.score_rule_update(rule=rule, data=data)

    assert list(rule.awards.values_list("points", flat=True)) == [30]
    assert _contact(contact).lead_score == 30


def test_renaming_a_rule_does_not_queue_a_back_fill(django_capture_on_commit_callbacks):
    rule = event_rule()
    data = {"name": "改名", "kind": "event", "event_name": "purchase", "points": 10}

    with django_capture_on_commit_callbacks() as callbacks:
        scoring.score_rule_update(rule=rule, data=data)

    assert callbacks == []


# --- 5. Property filters mean what they mean in segment rules ---------------------------------


def test_a_number_sent_as_text_neither_scores_nor_matches_a_segment():
    half_life(0)
    event_rule(property_filters=BIG_PURCHASE)
    text_buyer, number_buyer = ContactFactory(), ContactFactory()

    event_record(contact=text_buyer, name="purchase", properties={"amount": "150"})
    event_record(contact=number_buyer, name="purchase", properties={"amount": 150})

    scored = set(LeadScoreAward.objects.values_list("contact_id", flat=True))
    segment = {"type": "event", "name": "purchase", "filters": BIG_PURCHASE}
    in_segment = set(Contact.objects.filter(compile_rule(segment)).values_list("pk", flat=True))
    assert scored == in_segment == {number_buyer.pk}


@pytest.mark.parametrize(
    "filters",
    [
        [{"property": "sku", "operator": "eq", "value": "A-1"}],
        [{"property": "sku", "operator": "neq", "value": "A-1"}],
        [{"property": "qty", "operator": "in", "value": [1, 3]}],
        [{"property": "note", "operator": "contains", "value": "VIP"}],
        [{"property": "coupon", "operator": "exists"}],
        [{"property": "coupon", "operator": "not_exists"}],
    ],
)
def test_scoring_and_segments_match_the_same_events(filters):
    half_life(0)
    event_rule(property_filters=filters)
    samples = [
        {"sku": "A-1", "qty": 1, "note": "vip guest", "coupon": None},
        {"sku": "a-1", "qty": "3", "note": ["VIP"]},
        {"qty": 3, "coupon": "C"},
        {},
    ]
    contacts = [ContactFactory() for _ in samples]

    for contact, properties in zip(contacts, samples, strict=True):
        event_record(contact=contact, name="purchase", properties=properties)

    scored = set(LeadScoreAward.objects.values_list("contact_id", flat=True))
    segment = {"type": "event", "name": "purchase", "filters": filters}
    in_segment = set(Contact.objects.filter(compile_rule(segment)).values_list("pk", flat=True))
    assert scored == in_segment


def test_dotted_property_names_are_refused_as_in_segments():
    with translation.override("en"), pytest.raises(ValidationFailed) as exc:
        event_rule(property_filters=[{"property": "order.amount", "operator": "gt", "value": 1}])

    assert exc.value.message.startswith("property_filters[0].property:")
    assert exc.value.details == {"path": "property_filters[0].property"}


def test_the_rule_form_keeps_equals_values_as_text_as_the_segment_builder_does(english):
    response = english.post(
        reverse("segments:scoring_rule_create"),
        {
            "name": "上海门店",
            "kind": "event",
            "event_name": "purchase",
            "points": "5",
            "cap_period": "none",
            "is_active": "on",
            "f0_property": "store_code",
            "f0_operator": "eq",
            "f0_value": "021",
            "f1_property": "qty",
            "f1_operator": "in",
            "f1_value": "1, 02",
        },
    )

    assert response.status_code == 302
    (rule,) = scoring.LeadScoreRule.objects.all()
    assert rule.property_filters == [
        {"property": "store_code", "operator": "eq", "value": "021"},
        {"property": "qty", "operator": "in", "value": ["1", "02"]},
    ]
