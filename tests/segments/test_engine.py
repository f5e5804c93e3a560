"""Segment engine services: validation, refresh (full, incremental, scheduled), dependencies,
static lists, auto-tags and explanations."""

import datetime as dt
import uuid
from decimal import Decimal

import pytest
from django.db import connection
from django.test import override_settings
from django.utils import timezone, translation

from contacts.models import Contact, ContactTag, Event, Identity, TagSource
from contacts.services import EventInput, contact_tag_add, contact_update, events_record
from core.errors import ValidationFailed
from segments.models import DirtyContact, RefreshPolicy, Segment, SegmentSize
from segments.rules import validate_rule
from segments.rules.topics import event_topic
from segments.selectors import segment_explain
from segments.services import (
    auto_tag_rule_create,
    mark_dirty,
    queue_contacts,
    segment_archive,
    segment_create,
    segment_duplicate,
    segment_refresh,
    segment_static_add,
    segment_static_remove,
    segment_update,
    segments_in_refresh_order,
    segments_refresh_incremental,
    segments_tick,
)
from segments.static_import import segment_static_import
from tests.factories import ContactFactory, TagFactory

pytestmark = pytest.mark.django_db


def city_rule(city: str) -> dict:
    return {
        "op": "and",
        "conditions": [{"type": "attribute", "field": "city", "operator": "eq", "value": city}],
    }


def contacts_in(city: str, count: int) -> list[int]:
    return [
        c.pk
        for c in Contact.objects.bulk_create(
            [Contact(name=f"c{i}", city=city) for i in range(count)]
        )
    ]


def bought(ids: list[int], at: dt.datetime) -> None:
    Event.objects.bulk_create(
        Event(event_id=uuid.uuid4().hex, contact_id=pk, name="purchase", occurred_at=at)
        for pk in ids
    )


def buyers_in(segment: Segment, name: str) -> Segment:
    """A segment of the contacts in `segment` who ever bought."""
    return segment_create(
        name=name,
        rule={
            "op": "and",
            "conditions": [
                {"type": "segment", "segment": segment.pk},
                {"type": "event", "name": "purchase", "measure": "performed"},
            ],
        },
    )


def members(segment: Segment) -> set[int]:
    return set(segment.memberships.values_list("contact_id", flat=True))


# --- validation ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("rule", "path"),
    [
        ({"op": "xor", "conditions": []}, "rule.op"),
        ({"op": "not", "conditions": []}, "rule.conditions"),
        ({"op": "and", "conditions": [{"type": "nope"}]}, "rule.conditions[0].type"),
        (
            {"op": "and", "conditions": [{"type": "attribute", "field": "shoe", "operator": "eq"}]},
            "rule.conditions[0].field",
        ),
        (
            {
                "op": "or",
                "conditions": [
                    {"type": "attribute", "field": "city", "operator": "eq", "value": "上海"},
                    {"type": "attribute", "field": "lead_score", "operator": "gt", "value": "high"},
                ],
            },
            "rule.conditions[1].value",
        ),
        (
            {
                "op": "and",
                "conditions": [
                    {
                        "type": "attribute",
                        "field": "created_at",
                        "operator": "between",
                        "value": ["2026-05-02", "2026-05-01"],
                    }
                ],
            },
            "rule.conditions[0].value",
        ),
        (
            {
                "op": "and",
                "conditions": [
                    {
                        "type": "event",
                        "name": "purchase",
                        "measure": "sum",
                        "operator": "gte",
                        "value": 500,
                        "window": {"last_days": -1},  # 0 is today: valid
                    }
                ],
            },
            "rule.conditions[0].window.last_days",
        ),
        (
            {
                "op": "and",
                "conditions": [
                    {
                        "type": "event",
                        "name": "purchase",
                        "filters": [{"property": "amount", "operator": "gt", "value": "100"}],
                    }
                ],
            },
            "rule.conditions[0].filters[0].value",
        ),
        (
            {"op": "and", "conditions": [{"type": "rfm", "layers": ["vip"]}]},
            "rule.conditions[0].layers",
        ),
        (
            {
                "op": "and",
                "conditions": [
                    {
                        "type": "attribute",
                        "field": "lifecycle_stage",
                        "operator": "eq",
                        "value": "martian",
                    }
                ],
            },
            "rule.conditions[0].value",
        ),
    ],
)
def test_invalid_rules_name_the_offending_node(rule, path):
    with pytest.raises(ValidationFailed) as exc:
        validate_rule(rule)
    assert exc.value.details["path"] == path


@pytest.mark.parametrize("language", ["en", "zh-hans"])
def test_a_rule_error_reads_in_the_active_language_and_keeps_its_path_and_code(language):
    """The message is translated when raised (the builder's operator, or the API's English
    unless the client sends Accept-Language); code and path stay machine-readable."""
    rule = {
        "op": "and",
        "conditions": [
            {"type": "attribute", "field": "lead_score", "operator": "gt", "value": "high"}
        ],
    }
    with translation.override(language), pytest.raises(ValidationFailed) as exc:
        validate_rule(rule)
    with translation.override(language):
        expected = translation.gettext("must be a number")

    assert exc.value.code == "invalid_rule"
    assert exc.value.details == {"path": "rule.conditions[0].value"}
    assert exc.value.message == f"rule.conditions[0].value: {expected}"
    if language == "en":
        assert expected == "must be a number"


def test_a_segment_that_would_read_itself_through_another_is_rejected():
    a = segment_create(name="A", rule=city_rule("上海"))
    b = segment_create(
        name="B", rule={"op": "and", "conditions": [{"type": "segment", "segment": a.pk}]}
    )
    with translation.override("en"), pytest.raises(ValidationFailed) as exc:
        segment_update(
            segment=a,
            rule={"op": "and", "conditions": [{"type": "segment", "segment": b.pk}]},
        )
    assert "cycle" in exc.value.message
    a.refresh_from_db()
    assert a.rule == city_rule("上海")  # nothing stored half-way
    with pytest.raises(ValidationFailed):
        segment_update(
            segment=a, rule={"op": "and", "conditions": [{"type": "segment", "segment": a.pk}]}
        )


# --- full refresh --------------------------------------------------------------------------


def test_first_build_is_silent_and_later_changes_are_events():
    sh = ContactFactory(city="上海")
    ContactFactory(city="北京")
    segment = segment_create(name="上海客户", rule=city_rule("上海"))
    assert members(segment) == {sh.pk}
    assert not Event.objects.filter(name="segment_entered").exists()
    newcomer = ContactFactory(city="上海")
    Contact.objects.filter(pk=sh.pk).update(city="杭州")
    assert segment_refresh(segment=segment) == (1, 1)
    assert members(segment) == {newcomer.pk}
    assert Event.objects.get(name="segment_entered").contact_id == newcomer.pk
    assert Event.objects.get(name="segment_exited").contact_id == sh.pk
    segment.refresh_from_db()
    assert segment.member_count == 1 and segment.last_refresh_seconds is not None
    assert SegmentSize.objects.get(segment=segment).member_count == 1
    # Nothing changed: nothing written.
    assert segment_refresh(segment=segment) == (0, 0)
    assert Event.objects.filter(name__startswith="segment_").count() == 2


def test_merged_contacts_never_match():
    a = ContactFactory(city="上海")
    b = ContactFactory(city="上海")
    Contact.objects.filter(pk=b.pk).update(merged_into=a)
    segment = segment_create(name="s", rule=city_rule("上海"))
    assert members(segment) == {a.pk}


# --- incremental ---------------------------------------------------------------------------


def _purchase(contact: Contact, amount: int) -> EventInput:
    return EventInput(
        event_id=uuid.uuid4().hex,
        name="purchase",
        occurred_at=timezone.now() - dt.timedelta(minutes=5),
        contact_id=contact.pk,
        value=Decimal(amount),
        # The ingest refuses a purchase without its order's id.
        properties={"amount": amount, "order_id": uuid.uuid4().hex},
    )


def test_new_events_queue_contacts_and_the_incremental_pass_applies_them():
    big = {
        "op": "and",
        "conditions": [
            {
                "type": "event",
                "name": "purchase",
                "measure": "sum",
                "operator": "gte",
                "value": 500,
                "window": {"last_days": 90},
            }
        ],
    }
    segment = segment_create(name="高消费", rule=big)
    buyer, other = ContactFactory(), ContactFactory()
    events_record(items=[_purchase(buyer, 300), _purchase(buyer, 250), _purchase(other, 10)])
    assert set(DirtyContact.objects.values_list("contact_id", flat=True)) == {buyer.pk, other.pk}
    assert members(segment) == set()  # nothing happens until the pass
    changes = segments_refresh_incremental()
    assert changes == {segment.pk: (1, 0)}
    assert members(segment) == {buyer.pk}
    assert not DirtyContact.objects.exists()
    # The incremental result equals a full rebuild.
    assert segment_refresh(segment=segment) == (0, 0)


def test_changes_after_the_cutoff_stay_queued():
    segment = segment_create(name="s", rule=city_rule("上海"))
    c = ContactFactory(city="上海")
    earlier = timezone.now()
    mark_dirty(contact_ids=[c.pk], at=earlier + dt.timedelta(seconds=5))
    segments_refresh_incremental(now=earlier)
    assert DirtyContact.objects.filter(contact_id=c.pk).exists()
    assert members(segment) == set()
    segments_refresh_incremental(now=earlier + dt.timedelta(seconds=10))
    assert members(segment) == {c.pk}


def test_operator_changes_apply_at_once(django_capture_on_commit_callbacks, operator):
    segment = segment_create(name="s", rule=city_rule("上海"))
    c = ContactFactory(city="北京")
    with django_capture_on_commit_callbacks(execute=True):
        contact_update(contact=c, data={"city": "上海"}, actor=operator)
    assert members(segment) == {c.pk}
    assert not DirtyContact.objects.exists()


def test_segments_reading_segments_refresh_after_them_in_one_pass():
    base = segment_create(name="上海", rule=city_rule("上海"))
    top = segment_create(
        name="上海且有标签",
        rule={"op": "and", "conditions": [{"type": "segment", "match": "in", "segment": base.pk}]},
    )
    outside = segment_create(
        name="非上海",
        rule={
            "op": "and",
            "conditions": [{"type": "segment", "match": "not_in", "segment": base.pk}],
        },
    )
    assert segments_in_refresh_order([outside, top, base])[0].pk == base.pk
    c = ContactFactory(city="北京")
    mark_dirty(contact_ids=[c.pk])
    segments_refresh_incremental()
    assert c.pk in members(outside)
    Contact.objects.filter(pk=c.pk).update(city="上海")
    mark_dirty(contact_ids=[c.pk])
    segments_refresh_incremental()
    assert c.pk in members(base) and c.pk in members(top) and c.pk not in members(outside)


# --- policies and the tick ------------------------------------------------------------------


def test_scheduled_refreshes_run_when_due():
    c = ContactFactory(city="上海")
    hourly = segment_create(
        name="hourly",
        rule=city_rule("上海"),
        refresh_policy=RefreshPolicy.INTERVAL,
        refresh_interval_minutes=60,
    )
    hourly.refresh_from_db()
    due = hourly.next_refresh_at
    assert due is not None
    Contact.objects.filter(pk=c.pk).update(city="北京")  # not signalled: only a refresh sees it
    segments_tick(now=due - dt.timedelta(minutes=1))
    assert members(hourly) == {c.pk}
    segments_tick(now=due + dt.timedelta(seconds=1))
    assert members(hourly) == set()
    hourly.refresh_from_db()
    assert hourly.next_refresh_at > due


def test_a_member_whose_time_window_lapsed_leaves_within_the_hour():
    """On-change segments with a time window are rebuilt every hour, on the hour: the stored
    membership (which the API answers from) keeps a lapsed member at most an hour."""
    rule = {
        "op": "and",
        "conditions": [
            {"type": "attribute", "field": "created_at", "operator": "within_last_days", "value": 7}
        ],
    }
    now = timezone.now()
    due = timezone.localtime(now).replace(minute=0, second=0, microsecond=0) + dt.timedelta(hours=1)
    # New now; past the 7 days at the next full hour.
    c = ContactFactory(created_at=due - dt.timedelta(days=7, seconds=1))
    new = segment_create(name="新客（近7天）", rule=rule)
    new.refresh_from_db()
    assert new.next_refresh_at == due
    assert members(new) == {c.pk}

    segments_tick(now=due - dt.timedelta(seconds=1))
    assert members(new) == {c.pk}
    segments_tick(now=due + dt.timedelta(seconds=1))

    assert members(new) == set()
    assert Event.objects.filter(contact=c, name="segment_exited").exists()
    new.refresh_from_db()
    assert new.next_refresh_at == due + dt.timedelta(hours=1)


def test_on_change_segments_skip_the_queue_for_other_policies():
    manual = segment_create(
        name="manual", rule=city_rule("上海"), refresh_policy=RefreshPolicy.MANUAL
    )
    c = ContactFactory(city="上海")
    mark_dirty(contact_ids=[c.pk])
    segments_tick()
    assert members(manual) == set()


def test_bad_policy_is_refused():
    with pytest.raises(ValidationFailed):
        segment_create(
            name="x", rule=city_rule("上海"), refresh_policy="interval", refresh_interval_minutes=1
        )
    assert not Segment.objects.filter(name="x").exists()


# --- static lists --------------------------------------------------------------------------


def test_static_lists_add_and_remove_idempotently():
    a, b = ContactFactory(), ContactFactory()
    static = segment_create(name="名单", kind="static")
    assert segment_static_add(segment=static, contact_ids=[a.pk, b.pk]) == 2
    assert segment_static_add(segment=static, contact_ids=[a.pk]) == 0
    assert members(static) == {a.pk, b.pk}
    assert Event.objects.filter(name="segment_entered").count() == 2
    assert segment_static_remove(segment=static, contact_ids=[a.pk, a.pk]) == 1
    assert members(static) == {b.pk}
    with pytest.raises(ValidationFailed):
        segment_static_add(segment=static, contact_ids=[999_999])
    assert members(static) == {b.pk}
    rule_based = segment_create(name="r", rule=city_rule("上海"))
    with pytest.raises(ValidationFailed):
        segment_static_add(segment=rule_based, contact_ids=[a.pk])


def test_static_list_from_a_gbk_file_reports_rows_matching_nobody(tmp_path):
    known = ContactFactory(phone="+8613800000001")
    Identity.objects.create(contact=known, kind="phone", value="+8613800000001")
    path = tmp_path / "list.csv"
    path.write_bytes("手机号\n13800000001\n13900000009\nnot-a-phone\n\n".encode("gbk"))
    static = segment_create(name="名单", kind="static")
    report = segment_static_import(segment=static, file=path, match_by="phone")
    assert (report.rows, report.matched, report.added, report.unmatched) == (4, 1, 1, 3)
    assert [row for row, _, _ in report.unmatched_first] == [3, 4, 5]
    assert report.unmatched_first[0][1] == "13900000009"  # as written, not as matched
    assert members(static) == {known.pk}
    again = segment_static_import(segment=static, file=path, match_by="phone")
    assert again.added == 0


def test_duplicate_and_archive():
    ContactFactory(city="上海")
    segment = segment_create(name="上海", rule=city_rule("上海"))
    with translation.override("en"):
        copy = segment_duplicate(segment=segment)
    assert copy.name == "上海 (copy)" and members(copy) == members(segment)
    reader = segment_create(
        name="r", rule={"op": "and", "conditions": [{"type": "segment", "segment": segment.pk}]}
    )
    with pytest.raises(ValidationFailed) as exc:
        segment_archive(segment=segment)
    assert exc.value.details["segments"] == ["r"]
    segment_archive(segment=reader)
    segment_archive(segment=segment)
    segment.refresh_from_db()
    assert segment.is_archived


# --- auto-tags -----------------------------------------------------------------------------


def test_auto_tags_follow_the_segment_but_leave_manual_tags_alone():
    tag = TagFactory(name="上海人")
    a = ContactFactory(city="上海")
    manual = ContactFactory(city="北京")
    contact_tag_add(contact=manual, tag=tag)
    segment = segment_create(name="上海", rule=city_rule("上海"))
    auto_tag_rule_create(segment=segment, tag=tag, remove_on_exit=True)
    assert ContactTag.objects.get(contact=a, tag=tag).source == TagSource.RULE
    Contact.objects.filter(pk=a.pk).update(city="杭州")
    b = ContactFactory(city="上海")
    segment_refresh(segment=segment)
    assert set(ContactTag.objects.filter(tag=tag).values_list("contact_id", flat=True)) == {
        b.pk,
        manual.pk,
    }
    assert Event.objects.filter(name="tag_removed", contact=a).exists()
    # The tag change queues the contacts for segments that read tags.
    assert DirtyContact.objects.filter(contact_id=b.pk).exists()


def test_a_tag_follows_one_segment_only():
    tag = TagFactory(name="上海人")
    shanghai = segment_create(name="上海", rule=city_rule("上海"))
    beijing = segment_create(name="北京", rule=city_rule("北京"))
    auto_tag_rule_create(segment=shanghai, tag=tag)
    with pytest.raises(ValidationFailed) as caught:
        auto_tag_rule_create(segment=beijing, tag=tag)
    assert caught.value.code == "tag_in_use"
    assert "上海" in caught.value.message
    assert not beijing.auto_tags.exists()
    auto_tag_rule_create(segment=shanghai, tag=tag, remove_on_exit=False)  # same segment: update
    assert shanghai.auto_tags.get().remove_on_exit is False


# --- explain -------------------------------------------------------------------------------


def test_explain_marks_each_condition():
    tag = TagFactory()
    c = ContactFactory(city="上海")
    rule = {
        "op": "and",
        "conditions": [
            {"type": "attribute", "field": "city", "operator": "eq", "value": "上海"},
            {
                "op": "or",
                "conditions": [
                    {"type": "tag", "match": "any", "tags": [tag.pk]},
                    {"type": "event", "name": "purchase", "measure": "performed"},
                ],
            },
        ],
    }
    segment = segment_create(name="s", rule=rule)
    tree = segment_explain(segment=segment, contact=c)
    assert tree.matched is False
    assert [n.matched for n in tree.children] == [True, False]
    assert [n.matched for n in tree.children[1].children] == [False, False]
    assert tree.children[1].children[0].path == "rule.conditions[1].conditions[0]"
    contact_tag_add(contact=c, tag=tag)
    assert segment_explain(segment=segment, contact=c).matched is True


def test_a_large_incremental_pass_matches_a_full_rebuild():
    """Above the inline limit the pass takes its other path (on PostgreSQL: evaluated against
    copies of the changed contacts and their events)."""
    base = segment_create(name="上海", rule=city_rule("上海"))
    spenders = segment_create(
        name="上海且买过",
        rule={
            "op": "and",
            "conditions": [
                {"type": "segment", "segment": base.pk},
                {
                    "type": "event",
                    "name": "purchase",
                    "measure": "count",
                    "operator": "gte",
                    "value": 1,
                    "window": {"last_days": 30},
                },
            ],
        },
    )
    contacts = Contact.objects.bulk_create([Contact(name=f"c{i}", city="北京") for i in range(300)])
    ids = [c.pk for c in contacts]
    Contact.objects.filter(pk__in=ids[:150]).update(city="上海")
    now = timezone.now()
    Event.objects.bulk_create(
        Event(
            event_id=uuid.uuid4().hex,
            contact_id=pk,
            name="purchase",
            occurred_at=now - dt.timedelta(days=1),
        )
        for pk in ids[100:250]
    )
    mark_dirty(contact_ids=ids, at=now)
    segments_refresh_incremental(now=now)
    assert members(base) == set(ids[:150])
    assert members(spenders) == set(ids[100:150])  # read base's new members in the same pass
    assert not DirtyContact.objects.exists()
    assert segment_refresh(segment=base, now=now) == (0, 0)
    assert segment_refresh(segment=spenders, now=now) == (0, 0)


def test_a_queued_change_re_evaluates_only_the_segments_that_read_it():
    """Topics: a contact queued for a tag change is not re-evaluated against a city rule, and
    segments reading a segment follow its entries in the same pass (both pass paths: above
    the inline limit PostgreSQL evaluates against copies)."""
    tag = TagFactory(name="VIP")
    base = segment_create(name="上海", rule=city_rule("上海"))
    spenders = segment_create(
        name="上海且买过",
        rule={
            "op": "and",
            "conditions": [
                {"type": "segment", "segment": base.pk},
                {"type": "event", "name": "purchase", "measure": "performed"},
            ],
        },
    )
    tagged = segment_create(
        name="VIP",
        rule={"op": "and", "conditions": [{"type": "tag", "match": "any", "tags": [tag.pk]}]},
    )
    contacts = Contact.objects.bulk_create([Contact(name=f"c{i}", city="北京") for i in range(300)])
    ids = [c.pk for c in contacts]
    now = timezone.now()
    Event.objects.bulk_create(
        Event(event_id=uuid.uuid4().hex, contact_id=pk, name="purchase", occurred_at=now)
        for pk in ids[100:250]
    )
    # Written behind the services' backs, so that only the queued topics say what changed.
    Contact.objects.filter(pk__in=ids[:250]).update(city="上海")
    ContactTag.objects.create(contact_id=ids[0], tag=tag)
    mark_dirty(contact_ids=ids[:250], at=now, topics=["city"])

    changes = segments_refresh_incremental(now=now)

    assert members(base) == set(ids[:250])
    assert members(spenders) == set(ids[100:250])  # re-evaluated because they entered base
    assert members(tagged) == set()  # no tag change was queued: the tag rule was not run
    assert tagged.pk not in changes
    assert not DirtyContact.objects.exists()

    mark_dirty(contact_ids=[ids[0]], topics=["tags"])
    segments_refresh_incremental()
    assert members(tagged) == {ids[0]}
    for segment in (base, spenders, tagged):
        assert segment_refresh(segment=segment, now=now) == (0, 0)


def test_queueing_again_keeps_every_topic():
    c = ContactFactory()
    mark_dirty(contact_ids=[c.pk], topics=["city"])
    mark_dirty(contact_ids=[c.pk], topics=["tags"], overwrite=False)
    segment = segment_create(name="上海", rule=city_rule("上海"))
    Contact.objects.filter(pk=c.pk).update(city="上海")
    segments_refresh_incremental(now=timezone.now() + dt.timedelta(seconds=1))
    assert members(segment) == {c.pk}


def test_points_changes_queue_the_member_for_membership_rules():
    from membership.models import Tier
    from membership.services import member_get_or_create, points_apply

    Tier.objects.create(code="silver", name="银卡", rank=1, min_growth=0)
    rich = segment_create(
        name="积分≥100",
        rule={
            "op": "and",
            "conditions": [
                {"type": "membership", "field": "points_balance", "operator": "gte", "value": 100}
            ],
        },
    )
    c = ContactFactory()
    member = member_get_or_create(contact=c)
    points_apply(member=member, delta=150, reason="adjustment", idempotency_key="k-1")
    assert DirtyContact.objects.filter(contact_id=c.pk).exists()
    segments_refresh_incremental(now=timezone.now() + dt.timedelta(seconds=1))
    assert members(rich) == {c.pk}


@pytest.mark.django_db(transaction=True)
def test_several_segments_materialise_side_by_side_after_the_segments_they_read():
    """On PostgreSQL independent segments build in parallel connections (committed data is
    what they see, hence a transactional test); a segment reading another waits for it."""
    from segments.services import segments_materialise

    contacts = Contact.objects.bulk_create(
        [Contact(name=f"c{i}", city=("上海", "北京", "杭州")[i % 3]) for i in range(90)]
    )
    shanghai = segment_create(name="上海", rule=city_rule("上海"), build=False)
    beijing = segment_create(name="北京", rule=city_rule("北京"), build=False)
    not_shanghai = segment_create(
        name="非上海",
        rule={
            "op": "and",
            "conditions": [{"type": "segment", "segment": shanghai.pk, "match": "not_in"}],
        },
        build=False,
    )
    assert members(shanghai) == set()  # not built yet

    results = segments_materialise(segments=[not_shanghai, beijing, shanghai], concurrency=2)

    by_city = {
        city: {c.pk for c in contacts if c.city == city} for city in ("上海", "北京", "杭州")
    }
    assert members(shanghai) == by_city["上海"]
    assert members(beijing) == by_city["北京"]
    assert members(not_shanghai) == by_city["北京"] | by_city["杭州"]
    assert set(results) == {shanghai.pk, beijing.pk, not_shanghai.pk}
    for segment in (shanghai, beijing, not_shanghai):
        segment.refresh_from_db()
        assert segment.last_refreshed_at is not None
        assert segment.member_count == len(members(segment))


@pytest.mark.django_db(transaction=True)
@override_settings(SEGMENT_REFRESH_CONCURRENCY=2)
def test_a_large_incremental_pass_evaluates_independent_segments_side_by_side():
    """Beat's pass outside a transaction: on PostgreSQL each segment's moves are written in a
    worker's connection while the next segment is evaluated, a segment reading another after
    it and with its entries; the member counts, entry events and queue end as a sequential pass
    leaves them, and the evaluation's copies of the contacts and events tables are gone."""
    ids = contacts_in("杭州", 300)
    shanghai = segment_create(name="上海", rule=city_rule("上海"))
    beijing = segment_create(name="北京", rule=city_rule("北京"))
    buyers_in_shanghai = buyers_in(shanghai, "上海且买过")
    now = timezone.now()
    Contact.objects.filter(pk__in=ids[:120]).update(city="上海")
    Contact.objects.filter(pk__in=ids[120:200]).update(city="北京")
    bought(ids[60:180], now)
    mark_dirty(contact_ids=ids, at=now, topics=["city", event_topic("purchase")])

    changes = segments_refresh_incremental(now=now)

    assert members(shanghai) == set(ids[:120])
    assert members(beijing) == set(ids[120:200])
    assert members(buyers_in_shanghai) == set(ids[60:120])
    assert changes == {shanghai.pk: (120, 0), beijing.pk: (80, 0), buyers_in_shanghai.pk: (60, 0)}
    for segment in (shanghai, beijing, buyers_in_shanghai):
        segment.refresh_from_db()
        assert segment.member_count == len(members(segment))
        entered = Event.objects.filter(
            name="segment_entered", properties__segment_id=segment.pk
        ).values_list("contact_id", flat=True)
        assert sorted(entered) == sorted(members(segment))
    assert not DirtyContact.objects.exists()
    if connection.vendor == "postgresql":
        with connection.cursor() as cursor:
            cursor.execute(
                "SELECT to_regclass('pg_temp.contacts_contact'), "
                "to_regclass('pg_temp.contacts_event')"
            )
            assert cursor.fetchone() == (None, None)


@pytest.mark.skipif(connection.vendor != "postgresql", reason="the large pass of PostgreSQL")
def test_moves_made_meanwhile_are_not_written_twice():
    """Between a large pass's evaluation and its writes, a full refresh may have made the same
    moves, or a contact may have been merged away: only what the database really changed
    becomes entries and exits, and a merged contact never enters."""
    from segments.services import _apply_diff

    stayed, left, joined, merged = (
        ContactFactory(city=city) for city in ("上海", "上海", "北京", "北京")
    )
    segment = segment_create(name="上海", rule=city_rule("上海"))
    Contact.objects.filter(pk=left.pk).update(city="北京")
    segment_refresh(segment=segment)  # the concurrent refresh: `left` leaves
    Contact.objects.filter(pk=joined.pk).update(city="上海")
    Contact.objects.filter(pk=merged.pk).update(city="上海", merged_into=stayed)

    moved = _apply_diff(segment, [joined.pk, stayed.pk, merged.pk], [left.pk], timezone.now())

    assert moved == ([joined.pk], [])  # `stayed` was a member, `left` already gone
    assert members(segment) == {stayed.pk, joined.pk}
    entries = Event.objects.filter(name="segment_entered", properties__segment_id=segment.pk)
    assert list(entries.values_list("contact_id", flat=True)) == [joined.pk]
    assert Event.objects.filter(name="segment_exited", contact=left).count() == 1
    segment.refresh_from_db()
    assert segment.member_count == 2


@pytest.mark.parametrize("contacts", [3, 300], ids=["inline", "large"])
def test_a_failed_pass_leaves_the_readers_of_segments_that_moved_queued(contacts, monkeypatch):
    """A pass that fails after some segments were written keeps the queue; the next pass finds
    nothing more to move in those segments, so the segments reading them must have been told
    of the moves (queued with the segment's topic) or they would miss them for good."""
    from segments import services

    class Interrupted(BaseException):
        """Stops the whole pass (a worker killed), unlike one segment's failure, which the
        pass records on that segment and goes on."""

    ids = contacts_in("杭州", contacts)
    shanghai = segment_create(name="上海", rule=city_rule("上海"))
    failing = segment_create(name="上海（另一个）", rule=city_rule("上海"))
    buyers = buyers_in(shanghai, "上海且买过")
    now = timezone.now()
    bought(ids, now)
    Contact.objects.filter(pk__in=ids).update(city="上海")
    mark_dirty(contact_ids=ids, at=now, topics=["city"])

    def breaking(original):
        def wrapped(segment, *args, **kwargs):
            if segment.pk == failing.pk:
                raise Interrupted
            return original(segment, *args, **kwargs)

        return wrapped

    with monkeypatch.context() as patch:
        for name in ("_incremental_segment", "_apply_diff"):
            patch.setattr(services, name, breaking(getattr(services, name)))
        with pytest.raises(Interrupted):
            segments_refresh_incremental(now=now)
    assert members(shanghai) == set(ids)  # written before the failure
    assert members(buyers) == set()  # never reached

    segments_refresh_incremental(now=timezone.now())

    assert members(buyers) == set(ids)
    assert not DirtyContact.objects.exists()


def test_a_segment_created_without_its_build_is_built_on_the_next_tick():
    c = ContactFactory(city="上海")
    segment = segment_create(name="s", rule=city_rule("上海"), build=False)
    assert segment.last_refreshed_at is None
    assert members(segment) == set()
    segments_tick()
    assert members(segment) == {c.pk}
    segment.refresh_from_db()
    assert segment.last_refreshed_at is not None


def test_every_field_a_rule_can_read_has_a_topic_bit_of_its_own():
    from segments.rules import CORE_FIELDS
    from segments.rules.topics import FIXED_BITS, FIXED_TOPICS, HASHED_BITS, topic_bit

    assert set(CORE_FIELDS) <= set(FIXED_TOPICS)
    assert len(set(FIXED_BITS.values())) == len(FIXED_TOPICS)
    assert HASHED_BITS > 16
    hashed = topic_bit("event:purchase") | topic_bit("segment:7")
    assert not hashed & sum(FIXED_BITS.values())  # events never cost a profile-field rule


def test_a_mask_reads_back_as_the_topics_it_holds():
    from segments.rules.topics import ALL, mask_topics, topics_mask

    assert mask_topics(topics_mask(["city", "tags"])) == ["city", "tags"]
    assert mask_topics(topics_mask(["event:purchase"])) == ["events / segments"]
    assert mask_topics(ALL) == ["*"]


def test_a_change_queued_while_a_pass_runs_stays_queued():
    """The pass deletes exactly the queue rows it read: a contact queued again meanwhile (a
    change committed during the pass, stamped before its cut-off) is kept for the next one."""
    from segments.services import _queue_release, _queue_take

    first, second = ContactFactory(), ContactFactory()
    before = timezone.now() - dt.timedelta(minutes=5)
    mark_dirty(contact_ids=[first.pk, second.pk], at=before, topics=["city"])
    taken = _queue_take(DirtyContact.objects.all())
    mark_dirty(contact_ids=[first.pk], at=before + dt.timedelta(seconds=1), topics=["city"])
    mark_dirty(contact_ids=[second.pk], at=before, overwrite=False, topics=["tags"])
    queue_contacts(masks={ContactFactory().pk: 1}, at=before)

    _queue_release(taken)

    assert DirtyContact.objects.count() == 3  # first: re-stamped; second: more topics; a newcomer
    _queue_release(_queue_take(DirtyContact.objects.all()))
    assert not DirtyContact.objects.exists()


def test_the_database_holds_one_active_rule_per_tag_whatever_the_caller():
    """Two concurrent creations could both pass the service's check; the constraint holds."""
    from django.db import IntegrityError, transaction

    from segments.models import AutoTagRule

    tag = TagFactory(name="上海人")
    shanghai = segment_create(name="上海", rule=city_rule("上海"))
    beijing = segment_create(name="北京", rule=city_rule("北京"))
    AutoTagRule.objects.create(segment=shanghai, tag=tag)
    with pytest.raises(IntegrityError), transaction.atomic():
        AutoTagRule.objects.create(segment=beijing, tag=tag)
    AutoTagRule.objects.create(segment=beijing, tag=tag, is_active=False)  # inactive: allowed
