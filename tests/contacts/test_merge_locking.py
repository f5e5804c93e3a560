"""A manual merge or its undo against a segment refresh of the same contacts, on PostgreSQL.

The merge locks its two contacts, then (moving their segment places) the segments they are
in. A refresh locks its segment first, then inserts memberships and events that point to a
contact: their foreign-key checks take a key-share lock on that contact's row, which the
merge holds for update. Each waits for the other, and PostgreSQL aborts one of them. When the
merge is the one aborted, it runs again (the refresh has finished by then); when that keeps
happening, the operator is told so instead of getting a server error.

SQLite runs one write transaction at a time (IMMEDIATE): these tests skip it.
"""

import threading
import time
from collections.abc import Callable

import pytest
from django.db import connection, transaction
from django.urls import reverse
from django.utils import timezone

from contacts.models import Contact, Event, MergeRecord
from contacts.services import contact_merge, contact_merge_undo, events_append
from contacts.services import merge as merge_services
from core.models import AuditLog
from segments.models import Segment, SegmentKind
from segments.services import segment_create, segment_static_add
from tests.contacts.locking import deadlocks, deadlocks_since, in_threads, try_set
from tests.factories import ContactFactory

pytestmark = [
    pytest.mark.django_db(transaction=True),
    pytest.mark.skipif(
        connection.vendor != "postgresql",
        reason="SQLite runs one writing transaction at a time: a merge and a refresh cannot "
        "hold row locks at once",
    ),
]

TIMEOUT = 20


@pytest.fixture
def pair():
    """A survivor and a duplicate; the duplicate is on a static list."""
    survivor, duplicate = ContactFactory(name="林小雨"), ContactFactory(name="林晓雨")
    segment = segment_create(name="门店活动名单", kind=SegmentKind.STATIC)
    segment_static_add(segment=segment, contact_ids=[duplicate.pk])
    return survivor, duplicate, segment


class Backend:
    """A thread's database backend, for the other threads to watch."""

    def __init__(self) -> None:
        self.pid = 0
        self.known = threading.Event()

    def record(self) -> None:
        """Called from the thread itself."""
        with connection.cursor() as cursor:
            cursor.execute("SELECT pg_backend_pid()")
            self.pid = cursor.fetchone()[0]
        self.known.set()

    def wait_until_waiting(self) -> None:
        """Return once the backend waits for a lock (the merge reached the segment)."""
        assert self.known.wait(timeout=TIMEOUT)
        deadline = time.monotonic() + TIMEOUT
        with connection.cursor() as cursor:
            while time.monotonic() < deadline:
                # The activity view is a snapshot kept for the transaction unless cleared.
                cursor.execute("SELECT pg_stat_clear_snapshot()")
                cursor.execute(
                    "SELECT wait_event_type FROM pg_stat_activity WHERE pid = %s", [self.pid]
                )
                row = cursor.fetchone()
                if row and row[0] == "Lock":
                    return
                time.sleep(0.05)
        raise AssertionError(f"backend {self.pid} never waited for a lock")


class Refresh:
    """What a refresh of `segment` does, timed against the merge: lock the segment's row (as
    segments.services._lock_segment), wait until the merge waits for it, then record a
    segment_entered event for `contact`. Its foreign-key check (at commit) needs the contact's
    row, which the merge holds: a deadlock, which PostgreSQL breaks by aborting the merge (its
    wait is the older one, and the refresh's own check is put off where the role may).

    `queued`: backends to see waiting (for the segment, behind the merge) before closing the
    cycle.
    """

    def __init__(
        self, segment: Segment, contact: Contact, *, merge: Backend, queued: tuple = ()
    ) -> None:
        self.segment, self.contact, self.merge, self.queued = segment, contact, merge, queued
        self.holding = threading.Event()

    def __call__(self) -> None:
        with transaction.atomic(), connection.cursor() as cursor:
            try_set(cursor, "SET LOCAL deadlock_timeout = '30s'")
            Segment.objects.select_for_update(no_key=True).filter(pk=self.segment.pk).first()
            self.holding.set()
            self.merge.wait_until_waiting()
            for backend in self.queued:
                backend.wait_until_waiting()
            events_append(
                contact_ids=[self.contact.pk],
                name="segment_entered",
                properties={"segment_id": self.segment.pk, "segment": self.segment.name},
                occurred_at=timezone.now(),
            )


def _merging(call: Callable, merge: Backend, refresh: Refresh) -> Callable:
    """`call` (a merge or an undo), started once the refresh holds its segment."""

    def run():
        with transaction.atomic(), connection.cursor() as cursor:
            # PostgreSQL looks for a deadlock once, deadlock_timeout after a wait starts: leave
            # the refresh time to close the cycle even on a busy machine.
            try_set(cursor, "SET deadlock_timeout = '2s'")
        merge.record()
        assert refresh.holding.wait(timeout=TIMEOUT)
        return call()

    return run


def test_a_merge_aborted_as_a_deadlock_victim_is_run_again(pair):
    survivor, duplicate, segment = pair
    merge = Backend()
    refresh = Refresh(segment, duplicate, merge=merge)
    call = _merging(lambda: contact_merge(survivor=survivor, duplicate=duplicate), merge, refresh)
    before = deadlocks()

    results, errors = in_threads([refresh, call])

    assert errors == []
    assert deadlocks_since(before) == 1  # a real one, which the merge got over
    record = results[1]
    assert (record.survivor_id, record.duplicate_id) == (survivor.pk, duplicate.pk)
    assert Contact.objects.get(pk=duplicate.pk).merged_into_id == survivor.pk
    # The second attempt ran after the refresh had committed: its event moved with the rest.
    entered = Event.objects.filter(name="segment_entered", properties__segment_id=segment.pk)
    # (The first is the list's own, from when the duplicate was put on it.)
    assert list(entered.values_list("contact_id", flat=True)) == [survivor.pk] * 2
    assert list(segment.memberships.values_list("contact_id", flat=True)) == [survivor.pk]
    # Nothing of the aborted attempt is left: one merge, recorded once.
    assert MergeRecord.objects.count() == 1
    assert Event.objects.filter(name="contact_merged").count() == 1
    assert AuditLog.objects.filter(action="contact.merge").count() == 1


def test_an_undo_aborted_as_a_deadlock_victim_is_run_again(pair):
    survivor, duplicate, segment = pair
    record = contact_merge(survivor=survivor, duplicate=duplicate)
    assert list(segment.memberships.values_list("contact_id", flat=True)) == [survivor.pk]
    merge = Backend()
    refresh = Refresh(segment, survivor, merge=merge)
    call = _merging(lambda: contact_merge_undo(record=record), merge, refresh)
    before = deadlocks()

    results, errors = in_threads([refresh, call])

    assert errors == []
    assert deadlocks_since(before) == 1
    assert results[1].pk == duplicate.pk
    assert Contact.objects.get(pk=duplicate.pk).merged_into_id is None
    record.refresh_from_db()
    assert record.undone_at is not None
    assert list(segment.memberships.values_list("contact_id", flat=True)) == [duplicate.pk]
    assert Event.objects.filter(name="merge_undone").count() == 2  # once per contact
    assert AuditLog.objects.filter(action="contact.merge_undo").count() == 1


def _losing_every_attempt(monkeypatch, segment: Segment, contact: Contact, call) -> list:
    """Two refreshes: the first deadlocks with the first attempt, the second (queued for the
    segment meanwhile, so it gets it before the retry) with the second and last."""
    monkeypatch.setattr(merge_services, "MERGE_ATTEMPTS", 2)
    merge, queued = Backend(), Backend()
    second = Refresh(segment, contact, merge=merge)
    first = Refresh(segment, contact, merge=merge, queued=(queued,))

    def second_refresh() -> None:
        queued.record()
        assert first.holding.wait(timeout=TIMEOUT)
        # Behind the merge in the segment's queue: were it ahead, the merge would wait for it,
        # a longer cycle whose first check may be this refresh's (where deadlock_timeout cannot
        # be raised for it).
        merge.wait_until_waiting()
        second()

    return [first, second_refresh, _merging(call, merge, first)]


def test_a_merge_that_keeps_losing_shows_the_operator_an_error_and_changes_nothing(
    monkeypatch, pair, operator_client
):
    survivor, duplicate, segment = pair
    url = reverse("contacts:merge_preview", args=[survivor.pk, duplicate.pk])
    targets = _losing_every_attempt(
        monkeypatch,
        segment,
        duplicate,
        lambda: operator_client.post(url, HTTP_ACCEPT_LANGUAGE="en"),
    )
    before = deadlocks()

    results, errors = in_threads(targets)

    assert errors == []
    assert deadlocks_since(before, wait_for=2) == 2
    response = results[2]
    # The preview again, with the reason as an error toast: not a server error.
    assert response.status_code == 200
    assert "kept getting in the way of the merge, so nothing was merged" in response.text
    assert Contact.objects.get(pk=duplicate.pk).merged_into_id is None
    assert not MergeRecord.objects.exists()
    assert list(segment.memberships.values_list("contact_id", flat=True)) == [duplicate.pk]
    # Both refreshes went through (the first event is the list's own).
    assert Event.objects.filter(name="segment_entered", contact=duplicate).count() == 3


def test_an_undo_that_keeps_losing_raises_its_own_error_and_changes_nothing(monkeypatch, pair):
    survivor, duplicate, segment = pair
    record = contact_merge(survivor=survivor, duplicate=duplicate)
    targets = _losing_every_attempt(
        monkeypatch, segment, survivor, lambda: contact_merge_undo(record=record)
    )
    before = deadlocks()

    _results, errors = in_threads(targets)

    assert [type(e) for e in errors] == [merge_services.MergeContended]
    assert errors[0].code == "merge_contended"
    assert deadlocks_since(before, wait_for=2) == 2
    record.refresh_from_db()
    assert record.undone_at is None
    assert Contact.objects.get(pk=duplicate.pk).merged_into_id == survivor.pk
    assert list(segment.memberships.values_list("contact_id", flat=True)) == [survivor.pk]
    assert not Event.objects.filter(name="merge_undone").exists()
