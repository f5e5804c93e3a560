"""Lead scoring review fixes: property names that look like Django lookups are keys, the
back-fill's cap totals and contact batches cost what their rows cost, undoing a merge after a
back-fill gives the duplicate its events' awards back, and one award costs the same whatever
the contact's history."""

import datetime as dt
import threading

import pytest
from django.db import connection
from django.test.utils import CaptureQueriesContext
from django.utils import timezone

from contacts.models import Contact, Event, MergeRecord
from contacts.services import event_record
from contacts.services.merge import contact_merge, contact_merge_undo
from core.errors import ValidationFailed
from segments import scoring
from segments.models import DirtyContact, LeadScoreAward, LeadScoringConfig
from segments.rules import compile_rule
from tests.factories import ContactFactory, EventFactory
from tests.segments.reference import property_matches
from tests.segments.scoring_data import NOW, event_at, event_rule, half_life, stored_score

pytestmark = pytest.mark.django_db

LOOKUP_NAMES = ["contains", "in", "exact", "gt", "icontains", "isnull", "a__b", "a__0"]


# --- 1. A property named like a Django lookup is that key -----------------------------------

FILTERS = [
    ("eq", "x"),
    ("eq", "12"),
    ("neq", "x"),
    ("in", ["x", "y"]),
    ("contains", "X"),
    ("gt", 5),
    ("lte", 12),
    ("exists", None),
    ("not_exists", None),
]
PROPERTIES = [
    {"@": "x"},
    {"@": "xyz"},
    {"@": 12},
    {"@": "12"},
    {"@": 3},
    {"@": True},
    {"other": "x"},
    # What Django would read `a__b` as: key "a", then key (or lookup) "b".
    {"a": {"b": "x", "0": "x"}, "@": None},
]


@pytest.mark.parametrize("prop", LOOKUP_NAMES)
def test_a_property_named_like_a_lookup_filters_that_key_as_the_reference_does(prop):
    contact = ContactFactory()
    events = []
    for props in PROPERTIES:
        data = {prop if k == "@" else k: v for k, v in props.items() if v is not None or k != "@"}
        events.append(event_at(contact, **data))
    for operator, value in FILTERS:
        item = {"property": prop, "operator": operator}
        if value is not None:
            item["value"] = value
        got = set(
            Event.objects.filter(pk__in=[e.pk for e in events])
            .filter(scoring.property_filters_q(filters=[item]))
            .values_list("pk", flat=True)
        )
        want = {e.pk for e in events if property_matches(e.properties, item)}
        assert got == want, (prop, operator, value)


@pytest.mark.parametrize("prop", ["contains", "in", "a__b"])
def test_a_segment_rule_filters_a_property_named_like_a_lookup(prop):
    yes, no = ContactFactory(), ContactFactory()
    event_at(yes, **{prop: "Blue shirt"})
    event_at(no, a={"b": "Blue shirt"}, **{prop + "x": "Blue shirt"})
    for operator, value in (("eq", "Blue shirt"), ("contains", "blue")):
        rule = {
            "type": "event",
            "name": "purchase",
            "filters": [{"property": prop, "operator": operator, "value": value}],
        }
        matched = set(Contact.objects.filter(compile_rule(rule)).values_list("pk", flat=True))
        assert matched == {yes.pk}, (prop, operator)


def test_a_score_rule_on_a_property_named_contains_does_not_break_recording_the_event():
    # `properties__contains` was PostgreSQL's JSON containment: NotSupportedError on SQLite,
    # raised inside the recording transaction, so every "purchase" failed to record.
    half_life(0)
    event_rule(
        points=5, property_filters=[{"property": "contains", "operator": "eq", "value": "bag"}]
    )
    contact = ContactFactory()

    event_record(contact=contact, name="purchase", properties={"contains": "bag"})
    event_record(contact=contact, name="purchase", properties={"contains": "shoe"})

    assert Event.objects.filter(contact=contact, name="purchase").count() == 2
    assert stored_score(contact) == 5


# --- 2. The back-fill's cap check and contact batches ------------------------------------------


def test_the_cap_check_works_out_each_candidates_period_once_with_one_query_per_rule():
    half_life(0)
    rule = event_rule(points=1, cap_period="day", cap_points=1000)
    contact = ContactFactory()
    # The reviewer's scenario: 1,000 events over 167 days for one contact, a daily cap.
    events = [
        Event(
            pk=i + 1,
            contact_id=contact.pk,
            name="purchase",
            occurred_at=NOW - dt.timedelta(hours=i * 4),
        )
        for i in range(1000)
    ]
    calls = 0
    bounds = scoring._period_bounds

    def counting(*args):
        nonlocal calls
        calls += 1
        return bounds(*args)

    scoring._period_bounds = counting
    # Without storing (the events are not in the database): the cost is the check's.
    original = LeadScoreAward.objects.bulk_create
    LeadScoreAward.objects.bulk_create = lambda *a, **k: None
    try:
        with CaptureQueriesContext(connection) as ctx:
            awards = scoring._create_awards([(rule, e) for e in events], NOW)
    finally:
        scoring._period_bounds = bounds
        LeadScoreAward.objects.bulk_create = original
    assert len(awards) == 1000
    assert calls == len(events)
    # One query for awards already given, one grouped query for the running totals.
    assert len(ctx) <= 3, [q["sql"][:120] for q in ctx.captured_queries]


def test_the_running_totals_count_awards_already_given_in_each_period():
    half_life(0)
    rule = event_rule(points=4, cap_period="day", cap_points=10)
    a, b = ContactFactory(), ContactFactory()
    day1, day2 = NOW - dt.timedelta(days=2), NOW - dt.timedelta(days=1)
    # Already given: 8 of 10 to `a` on day 1, 10 of 10 to `b` on day 2.
    given = [(a, day1, 8), (b, day2, 10)]
    for contact, at, points in given:
        LeadScoreAward.objects.create(
            contact=contact, rule=rule, event=event_at(contact, at=at), points=points, awarded_at=at
        )
    new = [event_at(c, at=at + dt.timedelta(hours=1)) for c in (a, b) for at in (day1, day2)]

    awards = scoring._create_awards([(rule, e) for e in new], NOW)

    got = sorted((x.contact_id, x.awarded_at.date(), x.points) for x in awards)
    assert got == sorted([(a.pk, day1.date(), 2), (a.pk, day2.date(), 4), (b.pk, day1.date(), 4)])


def test_a_backfill_over_many_contacts_and_days_respects_the_caps():
    half_life(0)
    contacts = [ContactFactory() for _ in range(3)]
    now = timezone.now()
    for contact in contacts:
        for i in range(12):
            event_at(contact, at=now - dt.timedelta(hours=6 * i + 1))
    rule = event_rule(points=3, cap_period="day", cap_points=5)
    LeadScoreAward.objects.all().delete()

    scoring.score_rule_backfill(rule_id=rule.pk, now=now)

    for contact in contacts:
        per_day: dict = {}
        for award in LeadScoreAward.objects.filter(contact=contact, rule=rule):
            day = timezone.localtime(award.awarded_at).date()
            per_day[day] = per_day.get(day, 0) + award.points
        # Four events a day of 3 points each, capped at 5 a day (a partial day may hold fewer).
        assert per_day and all(total <= 5 for total in per_day.values())
        assert max(per_day.values()) == 5
        assert stored_score(contact) == sum(per_day.values())


def test_the_backfill_pages_contacts_by_id_and_never_reads_events_past_its_page(monkeypatch):
    half_life(0)
    monkeypatch.setattr(scoring, "BACKFILL_BATCH", 2)
    contacts = [ContactFactory() for _ in range(5)]
    now = timezone.now()
    for contact in contacts[::2]:
        event_at(contact, at=now - dt.timedelta(days=1))
    rule = event_rule(points=2)
    LeadScoreAward.objects.all().delete()

    with CaptureQueriesContext(connection) as ctx:
        done = scoring.score_rule_backfill(rule_id=rule.pk, now=now)

    assert done == 3
    assert [stored_score(c) for c in contacts] == [2, 0, 2, 0, 2]
    # No DISTINCT over the rule's events without the page's contacts.
    distinct = [q["sql"] for q in ctx.captured_queries if "DISTINCT" in q["sql"]]
    assert distinct and all(" IN (" in sql for sql in distinct)


# --- 3. Undoing a merge after a back-fill -----------------------------------------------------


@pytest.mark.django_db(transaction=True)
def test_undo_after_a_backfill_gives_the_duplicate_its_events_awards_back():
    half_life(0)
    rule = event_rule(points=10)
    survivor, duplicate = ContactFactory(), ContactFactory()
    own = event_at(survivor, at=timezone.now() - dt.timedelta(days=2))
    theirs = event_at(duplicate, at=timezone.now() - dt.timedelta(days=1))
    scoring.lead_scores_award_events(events=[own, theirs])
    contact_merge(survivor=survivor, duplicate=duplicate, actor=None)
    record = MergeRecord.objects.latest("pk")
    scoring.score_rule_update(
        rule=rule, data={"name": "r", "kind": "event", "event_name": "purchase", "points": 20}
    )
    scoring.score_rule_backfill(rule_id=rule.pk)
    assert stored_score(survivor) == 40

    contact_merge_undo(record=record)

    theirs.refresh_from_db()
    assert theirs.contact_id == duplicate.pk
    assert LeadScoreAward.objects.get(event=theirs).contact_id == duplicate.pk
    assert LeadScoreAward.objects.get(event=own).contact_id == survivor.pk
    assert (stored_score(survivor), stored_score(duplicate)) == (20, 20)


# --- 4. One award costs the same whatever the contact's history -------------------------------


def _history(contact, rule, n: int) -> None:
    Event.objects.bulk_create(
        [
            Event(event_id=f"h{contact.pk}-{i}", contact_id=contact.pk, name="old", occurred_at=NOW)
            for i in range(n)
        ]
    )
    ids = list(Event.objects.filter(contact=contact).values_list("pk", flat=True))
    LeadScoreAward.objects.bulk_create(
        [
            LeadScoreAward(contact_id=contact.pk, rule=rule, event_id=i, points=1, awarded_at=NOW)
            for i in ids
        ],
        batch_size=1000,
    )
    scoring.lead_scores_recompute_contacts(contact_ids=[contact.pk], now=NOW)


@pytest.mark.parametrize("history", [0, 300])
def test_awarding_one_event_never_reads_the_contacts_award_history(history, monkeypatch):
    half_life(30)
    rule = event_rule(event_name="page_view", points=1)
    contact = ContactFactory()
    _history(contact, rule, history)
    event = Event.objects.create(
        event_id="new", contact_id=contact.pk, name="page_view", occurred_at=NOW
    )

    def no_full_recompute(**kwargs):
        raise AssertionError("a contact with a known score was recomputed from its awards")

    monkeypatch.setattr(scoring, "lead_scores_recompute_contacts", no_full_recompute)
    with CaptureQueriesContext(connection) as ctx:
        scoring.lead_scores_award_events(events=[event], now=NOW + dt.timedelta(hours=5))
    monkeypatch.undo()

    reads = [
        q["sql"]
        for q in ctx.captured_queries
        if q["sql"].startswith("SELECT") and "leadscoreaward" in q["sql"].lower()
    ]
    # Only the "already awarded?" check, by event id.
    assert len(reads) == 1 and "event_id" in reads[0]
    stored = Contact.objects.get(pk=contact.pk)
    full = scoring.lead_scores_recompute_contacts(
        contact_ids=[contact.pk], now=stored.lead_score_at
    )
    assert full[contact.pk] == stored.lead_score


def test_the_incremental_score_equals_a_full_recompute_with_fit_points_and_decay():
    half_life(3)
    rule = event_rule(points=7)
    scoring.score_rule_create(
        data={
            "name": "fit",
            "kind": "attribute",
            "points": 5,
            "condition": {"type": "attribute", "field": "name", "operator": "is_set"},
        }
    )
    contact = ContactFactory(name="王")
    scoring.lead_scores_fit(contact_ids=[contact.pk], now=NOW)
    for i in range(9):
        at = NOW + dt.timedelta(hours=11 * i, minutes=i)
        scoring.lead_scores_award_events(
            events=[event_at(contact, at=at)], now=at + dt.timedelta(minutes=3)
        )
        stored = Contact.objects.get(pk=contact.pk)
        # The stored score stays the rounded value shown; the engagement part is exact.
        assert stored.lead_score == round(stored.lead_score, 2)
        parts = list(
            LeadScoreAward.objects.filter(contact=contact).values_list(
                "points", "awarded_at", "event_id"
            )
        )
        fit, engagement = scoring._score_parts(
            [(p, at_, e is None) for p, at_, e in parts], now=stored.lead_score_at, half_life_days=3
        )
        assert fit == 5
        assert stored.lead_score_engagement == pytest.approx(engagement, rel=1e-12)
        assert stored.lead_score == scoring.score_round(fit + engagement)
    full = scoring.lead_scores_recompute_contacts(
        contact_ids=[contact.pk], now=stored.lead_score_at
    )
    assert full[contact.pk] == stored.lead_score
    assert rule.pk


def test_a_contact_scored_before_the_engagement_column_is_recomputed_once():
    half_life(0)
    event_rule(points=3)
    contact = ContactFactory()
    scoring.lead_scores_award_events(events=[event_at(contact, at=NOW)], now=NOW)
    # As the migration leaves a contact scored before it: the part unknown.
    Contact.objects.filter(pk=contact.pk).update(lead_score_engagement=None)

    scoring.lead_scores_award_events(events=[event_at(contact, at=NOW)], now=NOW)

    stored = Contact.objects.get(pk=contact.pk)
    assert (stored.lead_score, stored.lead_score_engagement) == (6, 6)


def test_a_new_award_queues_its_contact_once(monkeypatch):
    half_life(0)
    event_rule(points=3)
    contact = ContactFactory()
    scoring.lead_scores_award_events(events=[event_at(contact, at=NOW)], now=NOW)
    DirtyContact.objects.all().delete()
    calls = []
    queue = scoring.queue_contacts
    monkeypatch.setattr(scoring, "queue_contacts", lambda **kw: (calls.append(kw), queue(**kw)))
    monkeypatch.setattr(
        scoring, "mark_dirty", lambda **kw: calls.append(kw) or pytest.fail("queued twice")
    )

    scoring.lead_scores_award_events(events=[event_at(contact, at=NOW)], now=NOW)

    assert len(calls) == 1
    assert list(DirtyContact.objects.values_list("contact_id", "topics")) == [
        (contact.pk, scoring.SCORE_TOPIC_MASK)
    ]


@pytest.mark.django_db(transaction=True)
def test_a_recompute_keeps_an_award_recorded_while_its_batch_runs(monkeypatch):
    LeadScoringConfig.objects.update_or_create(pk=1, defaults={"half_life_days": 0})
    scoring.score_rule_create(
        data={"name": "购买", "kind": "event", "event_name": "purchase", "points": 10}
    )
    contact = ContactFactory()
    now = timezone.now()
    first = EventFactory(contact=contact, name="purchase", occurred_at=now)
    scoring.lead_scores_award_events(events=[first], now=now)
    second = EventFactory(contact=contact, name="purchase", occurred_at=now)
    store = scoring._store_scores
    racing: list[threading.Thread] = []

    def award_meanwhile() -> None:
        try:
            scoring.lead_scores_award_events(events=[second], now=now)
        finally:
            connection.close()

    def store_after_another_award(scores, at):
        # Another worker records an event after this batch read its awards: it must wait for
        # the batch's lock instead of being overwritten by it.
        if not racing:
            racing.append(threading.Thread(target=award_meanwhile))
            racing[0].start()
            racing[0].join(timeout=0.5)
        return store(scores, at)

    monkeypatch.setattr(scoring, "_store_scores", store_after_another_award)
    scoring.lead_scores_recompute_all(now=now)
    racing[0].join(timeout=30)

    assert not racing[0].is_alive()
    assert Contact.objects.get(pk=contact.pk).lead_score == 20


@pytest.mark.parametrize(
    ("operator", "value"), [("eq", "150"), ("gt", 100), ("in", ["150", "9"]), ("eq", "满减")]
)
def test_a_chinese_property_name_filters_on_both_databases(operator, value):
    contact = ContactFactory()
    events = [
        event_at(contact, **{"金额": 150}),
        event_at(contact, **{"金额": 50}),
        event_at(contact, **{"优惠": "满减"}),
        event_at(contact, **{'a"b': 150}),
    ]
    prop = "优惠" if value == "满减" else "金额"
    item = {"property": prop, "operator": operator, "value": value}

    got = set(
        Event.objects.filter(pk__in=[e.pk for e in events])
        .filter(scoring.property_filters_q(filters=[item]))
        .values_list("pk", flat=True)
    )

    assert got == {e.pk for e in events if property_matches(e.properties, item)}
    assert len(got) == 1


@pytest.mark.parametrize("prop", ["12", "0", "1_0"])
def test_a_property_name_django_would_read_as_an_index_is_refused(prop):
    with pytest.raises(ValidationFailed) as refused:
        scoring.property_filters_validate(
            filters=[{"property": prop, "operator": "eq", "value": "x"}]
        )

    assert "property" in str(refused.value.details)
