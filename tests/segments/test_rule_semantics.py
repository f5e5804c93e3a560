"""What the rule language means at its edges, the same on SQLite and PostgreSQL: exact sums and
averages of amounts with cents, "in the last N days" up to the ingest's clock skew and for 0
days, Feb 29 anniversaries, archived segments and custom fields deleted under a stored rule."""

import datetime as dt
import re
import uuid
from decimal import Decimal

import pytest
from django.urls import reverse
from django.utils import timezone, translation

from contacts.models import Contact, CustomField, Event
from contacts.services import MAX_CLOCK_SKEW, EventInput, events_record
from core.errors import ValidationFailed
from segments.models import Segment, SegmentKind, SegmentMembership
from segments.rules import compile_rule, validate_rule
from segments.services import (
    segment_archive,
    segment_create,
    segment_refresh,
    segment_static_add,
    segment_update,
    segments_tick,
)
from tests.factories import ContactFactory
from tests.segments.posts import builder_post
from tests.segments.reference import World

pytestmark = pytest.mark.django_db

NOW = timezone.make_aware(dt.datetime(2026, 6, 15, 10, 30))


def matching(condition: dict, now: dt.datetime = NOW) -> set[int]:
    rule = {"op": "and", "conditions": [condition]}
    validate_rule(rule)
    compiled = set(Contact.objects.filter(compile_rule(rule, now=now)).values_list("pk", flat=True))
    assert compiled == World(now).matching(rule), condition  # the reference agrees
    return compiled


def buyer(*amounts: str, at: dt.datetime = NOW - dt.timedelta(hours=1)) -> int:
    contact = ContactFactory()
    Event.objects.bulk_create(
        Event(
            event_id=uuid.uuid4().hex,
            contact=contact,
            name="purchase",
            occurred_at=at,
            value=Decimal(amount),
        )
        for amount in amounts
    )
    return contact.pk


def spent(measure: str, operator: str, value) -> dict:
    return {
        "type": "event",
        "name": "purchase",
        "measure": measure,
        "operator": operator,
        "value": value,
    }


# --- sums and averages are exact ------------------------------------------------------------


def test_ten_purchases_of_49_90_add_up_to_exactly_499():
    pk = buyer(*["49.90"] * 10)

    assert pk in matching(spent("sum", "gte", 499))
    assert pk in matching(spent("sum", "eq", 499))
    assert pk in matching(spent("sum", "lte", 499))
    assert pk not in matching(spent("sum", "gt", 499))
    assert pk in matching(spent("sum", "between", [499, 499]))
    assert pk in matching(spent("avg", "eq", 49.9))
    assert pk not in matching(spent("avg", "gt", 49.9))


def test_a_full_refresh_sums_exactly_too():
    pk = buyer("0.10", "0.20")
    segment = segment_create(
        name="三毛", rule={"op": "and", "conditions": [spent("sum", "eq", 0.3)]}
    )

    assert set(segment.memberships.values_list("contact_id", flat=True)) == {pk}


def test_an_average_is_compared_rounded_to_the_cent_halves_away_from_zero():
    half_up = buyer("0.01", "0.02")  # 0.015
    half_down = buyer("-0.01", "-0.02")  # -0.015
    third = buyer("10.00", "10.00", "10.01")  # 10.00333…

    assert matching(spent("avg", "eq", 0.02)) == {half_up}
    assert matching(spent("avg", "eq", 0.015)) == set()
    assert matching(spent("avg", "eq", -0.02)) == {half_down}
    assert matching(spent("avg", "eq", 10)) == {third}
    assert matching(spent("avg", "gt", 10)) == set()  # 10.00 is not above 10


def test_a_comparison_finer_than_a_cent_is_exact():
    pk = buyer("49.90", "0.01")  # 49.91

    assert pk in matching(spent("sum", "gte", 49.905))
    assert pk not in matching(spent("sum", "gte", 49.915))
    assert pk not in matching(spent("sum", "eq", 49.905))
    assert pk in matching(spent("sum", "between", [49.905, 49.915]))


def test_huge_comparisons_match_everyone_or_no_one():
    pk = buyer("49.90")
    nobody = ContactFactory().pk

    assert {pk, nobody} <= matching(spent("sum", "lte", 1e300))
    assert matching(spent("sum", "gte", 1e300)) == set()
    assert {pk, nobody} <= matching(spent("sum", "gt", -1e300))
    assert matching(spent("avg", "lt", 1e300)) == {pk}


def test_infinite_or_nan_values_are_refused():
    for value in (float("inf"), float("nan")):
        with pytest.raises(ValidationFailed) as exc:
            validate_rule({"op": "and", "conditions": [spent("sum", "gte", value)]})
        assert exc.value.details == {"path": "rule.conditions[0].value"}


# --- "in the last N days" ---------------------------------------------------------------------


def test_events_a_few_minutes_ahead_count_in_every_last_n_days_window():
    """The ingest accepts events up to MAX_CLOCK_SKEW ahead of the server's clock."""
    ahead = buyer("1", at=NOW + dt.timedelta(minutes=2))
    edge = buyer("1", at=NOW + MAX_CLOCK_SKEW)
    beyond = buyer("1", at=NOW + MAX_CLOCK_SKEW + dt.timedelta(microseconds=1))
    Contact.objects.filter(pk=ahead).update(last_active_at=NOW + dt.timedelta(minutes=2))
    Contact.objects.filter(pk=beyond).update(last_active_at=NOW + dt.timedelta(minutes=6))

    performed = {"type": "event", "name": "purchase", "window": {"last_days": 1}}
    last = {**spent("last", "within_last_days", 1)}
    total = {**spent("sum", "gte", 1), "window": {"last_days": 1}}
    active = {
        "type": "attribute",
        "field": "last_active_at",
        "operator": "within_last_days",
        "value": 15,
    }
    assert matching(performed) == {ahead, edge}
    assert matching(last) == {ahead, edge}
    assert matching(total) == {ahead, edge}
    assert matching(active) == {ahead}


def test_an_event_from_a_fast_client_clock_enters_at_once(django_capture_on_commit_callbacks):
    contact = ContactFactory()
    segment = segment_create(
        name="近 15 天浏览",
        rule={
            "op": "and",
            "conditions": [
                {"type": "event", "name": "page_view", "window": {"last_days": 15}},
                {
                    "type": "event",
                    "name": "page_view",
                    "measure": "last",
                    "operator": "within_last_days",
                    "value": 15,
                },
                {
                    "type": "attribute",
                    "field": "last_active_at",
                    "operator": "within_last_days",
                    "value": 15,
                },
            ],
        },
    )
    with django_capture_on_commit_callbacks(execute=True):
        outcomes = events_record(
            items=[
                EventInput(
                    event_id="fast-clock",
                    contact_id=contact.pk,
                    name="page_view",
                    occurred_at=timezone.now() + dt.timedelta(minutes=2),
                )
            ]
        )
    assert [o.status for o in outcomes] == ["accepted"]

    segments_tick()

    assert SegmentMembership.objects.filter(segment=segment, contact=contact).exists()


def test_the_last_0_days_is_today_for_dates_and_moments_alike():
    midnight = timezone.make_aware(dt.datetime(2026, 6, 15))
    today = ContactFactory(birthday=dt.date(2026, 6, 15))
    Contact.objects.filter(pk=today.pk).update(created_at=midnight, last_active_at=NOW)
    yesterday = ContactFactory(birthday=dt.date(2026, 6, 14))
    Contact.objects.filter(pk=yesterday.pk).update(
        created_at=midnight - dt.timedelta(microseconds=1)
    )

    def last(field: str, days: int) -> set[int]:
        condition = {"type": "attribute", "field": field, "operator": "within_last_days"}
        return matching({**condition, "value": days}) & {today.pk, yesterday.pk}

    assert last("birthday", 0) == last("created_at", 0) == {today.pk}
    assert last("birthday", 1) == last("created_at", 1) == {today.pk, yesterday.pk}
    assert last("last_active_at", 0) == {today.pk}


def test_the_last_0_days_of_an_event_measure_is_today():
    this_morning = buyer("1", at=timezone.make_aware(dt.datetime(2026, 6, 15, 0, 1)))
    last_night = buyer("1", at=timezone.make_aware(dt.datetime(2026, 6, 14, 23, 59)))

    assert matching(spent("last", "within_last_days", 0)) == {this_morning}
    assert matching(spent("first", "more_than_days_ago", 0)) == {this_morning, last_night}


def test_the_documented_dormant_recipe_holds_the_never_active_once_they_are_60_days_old():
    """docs/segments.md: "more than N days ago" never matches an empty value, so a dormant
    segment that should hold contacts who never did anything adds them in an OR group."""
    days = dt.timedelta(days=1)
    lapsed = ContactFactory(last_active_at=NOW - 61 * days, created_at=NOW - 400 * days).pk
    ContactFactory(last_active_at=NOW - 10 * days, created_at=NOW - 400 * days)
    silent = ContactFactory(last_active_at=None, created_at=NOW - 61 * days).pk
    ContactFactory(last_active_at=None, created_at=NOW - 30 * days)  # too new to be dormant

    def older_than_60_days(field: str) -> dict:
        return {"type": "attribute", "field": field, "operator": "more_than_days_ago", "value": 60}

    never_active = {"type": "attribute", "field": "last_active_at", "operator": "not_set"}
    rule = {
        "op": "or",
        "conditions": [
            older_than_60_days("last_active_at"),
            {"op": "and", "conditions": [never_active, older_than_60_days("created_at")]},
        ],
    }
    validate_rule(rule)

    compiled = set(Contact.objects.filter(compile_rule(rule, now=NOW)).values_list("pk", flat=True))

    assert compiled == {lapsed, silent}
    assert compiled == World(NOW).matching(rule)
    # The plain condition alone leaves the never-active contact out, as documented.
    assert matching(rule["conditions"][0]) == {lapsed}


# --- anniversaries ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("today", "days", "matches"),
    [
        (dt.date(2027, 2, 27), 0, False),
        (dt.date(2027, 2, 27), 1, True),  # Feb 28, 2027: there is no Feb 29
        (dt.date(2027, 2, 28), 0, True),
        (dt.date(2027, 3, 1), 0, False),
        (dt.date(2026, 12, 31), 58, False),  # up to Feb 27, across the new year
        (dt.date(2026, 12, 31), 59, True),
        (dt.date(2028, 2, 28), 0, False),  # 2028 has Feb 29: tomorrow
        (dt.date(2028, 2, 28), 1, True),
        (dt.date(2028, 2, 29), 0, True),
    ],
)
def test_a_feb_29_anniversary_falls_on_feb_28_in_a_year_without_one(today, days, matches):
    leap = ContactFactory(birthday=dt.date(2000, 2, 29), attributes={"since": "2024-02-29"})
    CustomField.objects.create(key="since", label="入会日", kind="date")
    now = timezone.make_aware(dt.datetime.combine(today, dt.time(12)))

    for field in ("birthday", "attributes.since"):
        condition = {
            "type": "attribute",
            "field": field,
            "operator": "anniversary_within_days",
            "value": days,
        }
        assert (leap.pk in matching(condition, now)) is matches, field


def test_a_window_of_nearly_a_year_skips_the_days_it_does_not_reach():
    """June 15 + 360 days ends on June 10: June 12 is not in it, June 9 and June 20 are."""
    inside = [ContactFactory(birthday=dt.date(1990, 6, day)).pk for day in (9, 20)]
    outside = ContactFactory(birthday=dt.date(1990, 6, 12)).pk
    condition = {
        "type": "attribute",
        "field": "birthday",
        "operator": "anniversary_within_days",
        "value": 360,
    }

    found = matching(condition)

    assert set(inside) <= found and outside not in found


# --- archived segments ------------------------------------------------------------------------


def reads(segment) -> dict:
    return {"op": "and", "conditions": [{"type": "segment", "match": "in", "segment": segment.pk}]}


def test_a_new_rule_cannot_read_an_archived_segment():
    old = segment_create(name="旧名单", kind=SegmentKind.STATIC)
    segment_archive(segment=old)

    with translation.override("en"), pytest.raises(ValidationFailed) as exc:
        segment_create(name="读旧名单", rule=reads(old))

    assert exc.value.code == "invalid_rule"
    assert exc.value.details == {"path": "rule.conditions[0].segment"}
    assert "旧名单" in exc.value.message and "archived" in exc.value.message


def test_a_changed_rule_cannot_start_reading_an_archived_segment():
    old = segment_create(name="旧名单", kind=SegmentKind.STATIC)
    segment_archive(segment=old)
    reader = segment_create(name="上海", rule={"op": "and", "conditions": []})

    with pytest.raises(ValidationFailed) as exc:
        segment_update(segment=reader, rule=reads(old))

    assert exc.value.details == {"path": "rule.conditions[0].segment"}
    reader.refresh_from_db()
    assert reader.rule == {"op": "and", "conditions": []}


def test_a_stored_rule_reading_a_segment_archived_since_keeps_working():
    old = segment_create(name="旧名单", kind=SegmentKind.STATIC)
    contact = ContactFactory()
    segment_static_add(segment=old, contact_ids=[contact.pk])
    reader = segment_create(name="读旧名单", rule=reads(old))
    segment_archive(segment=reader)
    segment_archive(segment=old)  # nothing live reads it any more
    segment_archive(segment=reader, archived=False)  # restored, still reading it

    reader = segment_update(segment=reader, name="读旧名单（恢复）", rule=reads(old))
    segment_refresh(segment=reader)

    assert reader.name == "读旧名单（恢复）"
    assert set(reader.memberships.values_list("contact_id", flat=True)) == {contact.pk}


def test_the_builder_shows_the_archived_segment_at_its_condition(operator_client):
    old = segment_create(name="旧名单", kind=SegmentKind.STATIC)
    segment_archive(segment=old)
    data = builder_post(
        **{
            "r-0.kind": "segment",
            "r-0.was": "segment",
            "r-0.match": "in",
            "r-0.segment": str(old.pk),
        }
    )

    response = operator_client.post(reverse("segments:create"), data)

    assert response.status_code == 422
    html = response.content.decode()
    row = html[html.rindex("<", 0, html.index('data-path="r-0"')) :]
    assert "has-error" in row.split(">", 1)[0]
    error = re.search(r'<div class="field-error rule-error" role="alert">(.*?)</div>', row, re.S)
    assert error and "旧名单" in error.group(1)


# --- custom fields deleted under a stored rule ---------------------------------------------


def test_a_rule_on_a_deleted_custom_field_compiles_to_an_error_naming_it():
    """A rule stored before deleting a field it reads was refused (or by a direct database
    change) names the condition to change instead of failing with an AttributeError."""
    field = CustomField.objects.create(key="skin", label="肤质", kind="text")
    rule = {
        "op": "and",
        "conditions": [
            {"type": "attribute", "field": "city", "operator": "eq", "value": "上海"},
            {"type": "attribute", "field": "attributes.skin", "operator": "eq", "value": "干性"},
        ],
    }
    validate_rule(rule)
    segment = Segment.objects.create(name="干性肌肤", rule=rule)
    field.delete()

    with translation.override("en"), pytest.raises(ValidationFailed) as exc:
        compile_rule(rule)
    assert exc.value.code == "invalid_rule"
    assert exc.value.details == {"path": "rule.conditions[1].field"}
    assert "attributes.skin" in exc.value.message

    with pytest.raises(ValidationFailed) as exc:
        segment_refresh(segment=segment)
    assert exc.value.details == {"path": "rule.conditions[1].field"}
