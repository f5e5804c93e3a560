"""Segment writes that race a concurrent (or retried) write of the same segment or tag.

A full refresh or an incremental pass works from a copy of the segment loaded before it waits
for the segment's lock: what it evaluates must be the rule stored when it holds the lock, not
the copy's (an operator's edit may have committed, and refreshed, meanwhile). Static-list adds
and removes and auto-tags say who entered, left, gained or lost a tag from what their own
statements wrote, so that two copies of one request record each change once.

The concurrent tests run real transactions on PostgreSQL: the first writer keeps its
transaction open until the second is seen waiting for a lock, so the interleaving is the same
on every run. SQLite runs one writing transaction at a time: there the sequential tests only.
"""

import threading

import pytest
from django.db import connection, transaction

from contacts.models import Contact, ContactTag, Event, TagSource
from core import jobs
from segments.models import AutoTagRule, DirtyContact, Segment, SegmentKind
from segments.services import (
    INLINE_REFRESH_LIMIT,
    STATIC_MEMBERS_JOB_KIND,
    auto_tags_sync,
    mark_dirty,
    segment_archive,
    segment_create,
    segment_refresh,
    segment_static_add,
    segment_static_members_job_run,
    segment_static_remove,
    segment_update,
    segments_refresh_incremental,
)
from segments.signals import segment_entered
from tests.contacts.locking import in_threads, wait_until_another_backend_waits
from tests.factories import ContactFactory, TagFactory, UserFactory

pytestmark = pytest.mark.django_db


def concurrent(test):
    """Real concurrent transactions: PostgreSQL only (SQLite runs one writing transaction at a
    time, the two cannot interleave), committed for the other connections to see."""
    test = pytest.mark.django_db(transaction=True)(test)
    return pytest.mark.skipif(
        connection.vendor != "postgresql", reason="concurrent transactions: PostgreSQL"
    )(test)


def attribute_rule(field: str, value: str) -> dict:
    return {
        "op": "and",
        "conditions": [{"type": "attribute", "field": field, "operator": "eq", "value": value}],
    }


SHANGHAI = attribute_rule("city", "上海")
BEIJING = attribute_rule("city", "北京")


def members(segment: Segment) -> set[int]:
    return set(segment.memberships.values_list("contact_id", flat=True))


def moves(segment: Segment) -> list[tuple[str, int]]:
    """Every entry and exit recorded for the segment, as (event, contact id), sorted."""
    return sorted(
        Event.objects.filter(
            name__in=["segment_entered", "segment_exited"], properties__segment_id=segment.pk
        ).values_list("name", "contact_id")
    )


def tag_events(tag, name: str) -> list[int]:
    return sorted(
        Event.objects.filter(name=name, properties__tag_id=tag.pk).values_list(
            "contact_id", flat=True
        )
    )


def fresh(segment: Segment) -> Segment:
    return Segment.objects.get(pk=segment.pk)


def interleave(holder, waiter):
    """Run `holder` in a transaction kept open until `waiter`, started once the holder has
    written, is seen waiting for a lock; then let the holder commit. Return both results."""
    held, release = threading.Event(), threading.Event()

    def hold():
        with transaction.atomic():
            result = holder()
            held.set()
            assert release.wait(30), "never released"
        return result

    def wait():
        assert held.wait(30), "the holder never wrote"
        return waiter()

    def conduct():
        try:
            assert held.wait(30), "the holder never wrote"
            with connection.cursor() as cursor:
                return wait_until_another_backend_waits(cursor)
        finally:
            release.set()

    (first, second, waited), errors = in_threads([hold, wait, conduct])
    assert not errors, errors
    assert waited, "the second writer never waited for the first"
    return first, second


# --- Full refresh: the rule stored when the lock is held -----------------------------------------


def test_a_refresh_given_an_old_copy_applies_the_stored_rule():
    sh, bj = ContactFactory(city="上海"), ContactFactory(city="北京")
    segment = segment_create(name="城市", rule=SHANGHAI)
    loaded = fresh(segment)  # a tick's or a worker's copy, loaded before the edit
    segment_update(segment=fresh(segment), rule=BEIJING)

    assert segment_refresh(segment=loaded) == (0, 0)  # the edit's own refresh moved them

    assert members(segment) == {bj.pk}
    assert moves(segment) == [("segment_entered", bj.pk), ("segment_exited", sh.pk)]
    assert loaded.member_count == 1 and loaded.refresh_error == ""


def test_a_refresh_given_an_old_copy_of_an_archived_segment_leaves_it_alone():
    ContactFactory(city="上海")
    segment = segment_create(name="上海", rule=SHANGHAI)
    loaded = fresh(segment)
    segment_archive(segment=fresh(segment))
    newcomer = ContactFactory(city="上海")
    refreshed_at = fresh(segment).last_refreshed_at

    assert segment_refresh(segment=loaded) == (0, 0)

    assert newcomer.pk not in members(segment)
    assert fresh(segment).last_refreshed_at == refreshed_at
    assert moves(segment) == []


def test_a_refresh_given_a_copy_from_before_the_first_build_records_the_moves_since():
    """A segment created without its build: the copy says "never built", but another refresh
    built it meanwhile. What moved since that build is a real entry, not part of a silent
    first build."""
    ContactFactory(city="上海")
    later = ContactFactory(city="北京")
    segment = segment_create(name="上海", rule=SHANGHAI, build=False)
    loaded = fresh(segment)
    segment_refresh(segment=fresh(segment))  # the first build, silent
    Contact.objects.filter(pk=later.pk).update(city="上海")

    assert segment_refresh(segment=loaded) == (1, 0)

    assert moves(segment) == [("segment_entered", later.pk)]


@concurrent
def test_a_refresh_that_waited_behind_a_rule_edit_applies_the_new_rule():
    sh, bj = ContactFactory(city="上海"), ContactFactory(city="北京")
    segment = segment_create(name="城市", rule=SHANGHAI)
    loaded = fresh(segment)  # "refresh now" or a tick: loaded, then waits for the lock

    _edited, refreshed = interleave(
        lambda: segment_update(segment=fresh(segment), rule=BEIJING),
        lambda: segment_refresh(segment=loaded),
    )

    assert refreshed == (0, 0)
    assert members(segment) == {bj.pk}
    assert moves(segment) == [("segment_entered", bj.pk), ("segment_exited", sh.pk)]
    assert fresh(segment).member_count == 1


# --- Incremental pass: results of an edited rule are not written ---------------------------------


@pytest.mark.parametrize("movers", [3, INLINE_REFRESH_LIMIT + 50], ids=["inline", "large"])
@concurrent
def test_an_incremental_pass_does_not_write_what_a_rule_edited_meanwhile_no_longer_says(movers):
    """The pass loaded the segments (old rule) and evaluated its contacts; the operator's edit
    committed, with its refresh, before the pass held the segment. The pass's moves were
    decided by the old rule: written, they would put contacts the new rule does not match into
    the segment. Its contacts stay queued instead, for the next pass and the rule it reads."""
    segment = segment_create(name="城市", rule=SHANGHAI)
    bj = ContactFactory(city="北京")
    Contact.objects.bulk_create([Contact(name=f"c{n}", city="杭州") for n in range(movers)])
    moved = list(Contact.objects.filter(city="杭州").values_list("pk", flat=True))
    Contact.objects.filter(pk__in=moved).update(city="上海")
    mark_dirty(contact_ids=moved, topics=["city"])

    interleave(
        lambda: segment_update(segment=fresh(segment), rule=BEIJING),
        lambda: segments_refresh_incremental(),
    )

    assert members(segment) == {bj.pk}
    assert moves(segment) == [("segment_entered", bj.pk)]
    assert fresh(segment).member_count == 1
    assert set(moved) <= set(DirtyContact.objects.values_list("contact_id", flat=True))

    segments_refresh_incremental()

    assert members(segment) == {bj.pk}
    assert moves(segment) == [("segment_entered", bj.pk)]


@concurrent
def test_contacts_a_pass_skipped_under_the_old_rule_are_queued_again_after_an_edit():
    """The edit's refresh read the contacts before one of them changed; the pass took that
    change from the queue but, with the rule it loaded (city), had nothing to evaluate for the
    segment; the edit (source) committed while the pass ran. The change must not be released
    unevaluated against the new rule: the next pass enters the contact."""
    edited_rule = attribute_rule("source", "直播")
    segment = segment_create(name="直播客户", rule=SHANGHAI)
    watcher = segment_create(name="直播（另一个）", rule=edited_rule)
    changed = ContactFactory(city="北京", source="")
    edited, pass_paused, committed = threading.Event(), threading.Event(), threading.Event()
    pass_thread: list[int] = []

    def pause_the_pass(sender, segment, contact_ids, **kwargs):
        # Inside the pass, while it writes the other segment: the edit commits now.
        if threading.get_ident() in pass_thread and segment.pk == watcher.pk:
            pass_paused.set()
            assert committed.wait(30)

    def edit():
        try:
            with transaction.atomic():
                segment_update(segment=fresh(segment), rule=edited_rule)
                edited.set()
                assert pass_paused.wait(30), "the pass never wrote the other segment"
        finally:
            committed.set()

    def run_pass():
        pass_thread.append(threading.get_ident())
        assert edited.wait(30)
        Contact.objects.filter(pk=changed.pk).update(source="直播")
        mark_dirty(contact_ids=[changed.pk], topics=["source"])
        return segments_refresh_incremental()

    segment_entered.connect(pause_the_pass)
    try:
        (_edit, changes), errors = in_threads([edit, run_pass])
    finally:
        segment_entered.disconnect(pause_the_pass)
    assert not errors, errors
    assert changes == {watcher.pk: (1, 0)}
    assert members(segment) == set()  # the edit's refresh ran before the change

    segments_refresh_incremental()

    assert members(segment) == {changed.pk}
    assert moves(segment) == [("segment_entered", changed.pk)]


# --- Static lists: each entry and exit once ------------------------------------------------------


def test_a_retried_static_add_or_remove_records_each_move_once():
    contact = ContactFactory()
    static = segment_create(name="VIP", kind=SegmentKind.STATIC)

    assert segment_static_add(segment=static, contact_ids=[contact.pk]) == 1
    assert segment_static_add(segment=static, contact_ids=[contact.pk]) == 0
    assert segment_static_remove(segment=static, contact_ids=[contact.pk]) == 1
    assert segment_static_remove(segment=static, contact_ids=[contact.pk]) == 0

    assert moves(static) == [("segment_entered", contact.pk), ("segment_exited", contact.pk)]
    assert fresh(static).member_count == 0


@concurrent
def test_a_static_add_retried_while_the_first_is_open_enters_each_contact_once():
    contacts = [ContactFactory().pk for _ in range(3)]
    static = segment_create(name="VIP", kind=SegmentKind.STATIC)

    first, retry = interleave(
        lambda: segment_static_add(segment=fresh(static), contact_ids=contacts),
        lambda: segment_static_add(segment=fresh(static), contact_ids=contacts),
    )

    assert (first, retry) == (3, 0)
    assert moves(static) == sorted(("segment_entered", pk) for pk in contacts)
    assert fresh(static).member_count == 3


@concurrent
def test_a_static_remove_retried_while_the_first_is_open_exits_each_contact_once():
    contacts = [ContactFactory().pk for _ in range(3)]
    static = segment_create(name="VIP", kind=SegmentKind.STATIC)
    segment_static_add(segment=static, contact_ids=contacts)

    first, retry = interleave(
        lambda: segment_static_remove(segment=fresh(static), contact_ids=contacts),
        lambda: segment_static_remove(segment=fresh(static), contact_ids=contacts),
    )

    assert (first, retry) == (3, 0)
    exits = [move for move in moves(static) if move[0] == "segment_exited"]
    assert exits == sorted(("segment_exited", pk) for pk in contacts)
    assert fresh(static).member_count == 0


@concurrent
def test_concurrent_adds_of_different_contacts_count_both():
    """Each add counts the list's members for its member count: counted before the other add
    committed, the last one to write would drop the other's contacts from the count."""
    one, other = ContactFactory(), ContactFactory()
    static = segment_create(name="VIP", kind=SegmentKind.STATIC)

    interleave(
        lambda: segment_static_add(segment=fresh(static), contact_ids=[one.pk]),
        lambda: segment_static_add(segment=fresh(static), contact_ids=[other.pk]),
    )

    assert members(static) == {one.pk, other.pk}
    assert fresh(static).member_count == 2


@concurrent
def test_a_static_list_job_batch_and_an_add_by_hand_enter_each_contact_once():
    static = segment_create(name="活动名单", kind=SegmentKind.STATIC)
    contacts = sorted(ContactFactory(name=f"上海{n}").pk for n in range(3))
    job = jobs.job_create(
        kind=STATIC_MEMBERS_JOB_KIND,
        created_by=UserFactory(),
        params={"segment_id": static.pk, "remove": False, "filter_params": {"q": ["上海"]}},
    )

    by_hand, _ = interleave(
        lambda: segment_static_add(segment=fresh(static), contact_ids=contacts[:1]),
        lambda: segment_static_members_job_run(job_id=job.pk),
    )

    assert by_hand == 1
    job.refresh_from_db()
    assert job.result["changed"] == 2
    assert moves(static) == sorted(("segment_entered", pk) for pk in contacts)
    assert fresh(static).member_count == 3


# --- Auto-tags: each tag given or taken once ---------------------------------------------------


def tagged_segment(contacts: int, *, leavers: int = 0):
    """A Shanghai segment keeping a tag on its members, with the tag not yet given; and
    `leavers` contacts elsewhere still holding the tag from the rule."""
    tag = TagFactory()
    joined = [ContactFactory(city="上海").pk for _ in range(contacts)]
    segment = segment_create(name="上海", rule=SHANGHAI)
    AutoTagRule.objects.create(segment=segment, tag=tag, remove_on_exit=True)
    left = [ContactFactory(city="北京").pk for _ in range(leavers)]
    ContactTag.objects.bulk_create(
        [ContactTag(contact_id=pk, tag=tag, source=TagSource.RULE) for pk in left]
    )
    return segment, tag, joined, left


def test_an_auto_tag_sync_run_again_tags_and_untags_no_one_twice():
    segment, tag, joined, left = tagged_segment(3, leavers=2)

    assert auto_tags_sync(segment=segment) == (3, 2)
    assert auto_tags_sync(segment=segment) == (0, 0)

    assert tag_events(tag, "tag_added") == sorted(joined)
    assert tag_events(tag, "tag_removed") == sorted(left)


@pytest.mark.parametrize(("joiners", "leavers"), [(4, 0), (0, 3)], ids=["tagged", "untagged"])
@concurrent
def test_concurrent_auto_tag_syncs_tag_or_untag_each_contact_once(joiners, leavers):
    """The second sync waits on the first's new (or deleted) tag rows; what it then finds
    already done is not its change."""
    segment, tag, joined, left = tagged_segment(joiners, leavers=leavers)

    first, second = interleave(
        lambda: auto_tags_sync(segment=fresh(segment)),
        lambda: auto_tags_sync(segment=fresh(segment)),
    )

    assert (first, second) == ((joiners, leavers), (0, 0))
    assert tag_events(tag, "tag_added") == sorted(joined)
    assert tag_events(tag, "tag_removed") == sorted(left)
    assert set(ContactTag.objects.filter(tag=tag).values_list("contact_id", flat=True)) == set(
        joined
    )


@concurrent
def test_an_auto_tag_sync_waiting_behind_a_refresh_does_not_tag_a_contact_it_removed():
    """Creating an auto-tag syncs it on its own; a refresh committing meanwhile may take a
    member out, and the sync must not tag that contact from the members it read before."""
    segment, tag, joined, _ = tagged_segment(3)
    leaving = joined[0]

    def refresh_without_the_leaver():
        Contact.objects.filter(pk=leaving).update(city="北京")
        return segment_refresh(segment=fresh(segment))

    refreshed, synced = interleave(
        refresh_without_the_leaver, lambda: auto_tags_sync(segment=fresh(segment))
    )

    assert refreshed == (0, 1)
    assert synced == (0, 0)  # the refresh's own sync tagged the two members left
    assert set(ContactTag.objects.filter(tag=tag).values_list("contact_id", flat=True)) == set(
        joined[1:]
    )
