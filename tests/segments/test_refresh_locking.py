"""A full refresh and an incremental pass writing the same segment at once, with real threads
and real PostgreSQL transactions.

The pass writes a segment's entries in its own transaction; a full refresh of the same segment
(a scheduled one, "refresh now") may start while those writes are open. Both must finish, the
contacts must end up members exactly once, and each entry must be written once. Before the
segment's row was locked first by both, the pass held the new membership rows and waited for
the segment's row (its member count) while the refresh held that row and waited for the same
membership rows: PostgreSQL aborted one of them as a deadlock (the pass then recorded the
segment as failing and scheduled a retry).
"""

import threading
import time

import pytest
from django.db import connection, connections

from contacts.models import Contact, Event
from segments.models import Segment
from segments.services import (
    INLINE_REFRESH_LIMIT,
    mark_dirty,
    segment_create,
    segment_refresh,
    segments_refresh_incremental,
)
from segments.signals import segment_entered

pytestmark = [
    pytest.mark.django_db(transaction=True),
    pytest.mark.skipif(
        connection.vendor != "postgresql",
        reason="SQLite runs one writing transaction at a time: the two cannot interleave",
    ),
]

SHANGHAI = {
    "op": "and",
    "conditions": [{"type": "attribute", "field": "city", "operator": "eq", "value": "上海"}],
}


def _run(target, errors: list) -> threading.Thread:
    def run() -> None:
        try:
            target()
        except Exception as exc:  # reported by the test
            errors.append(exc)
        finally:
            connections.close_all()

    thread = threading.Thread(target=run)
    thread.start()
    return thread


@pytest.mark.parametrize("movers", [3, INLINE_REFRESH_LIMIT + 50], ids=["few", "many"])
def test_full_refresh_during_an_incremental_write_waits_for_it(movers):
    segment = segment_create(name="上海客户", rule=SHANGHAI)
    Contact.objects.bulk_create([Contact(name=f"c{n}", city="北京") for n in range(movers)])
    ids = list(Contact.objects.values_list("pk", flat=True))
    # They move to Shanghai and are queued, as contact_update queues them.
    Contact.objects.filter(pk__in=ids).update(city="上海")
    mark_dirty(contact_ids=ids, topics=None)

    pass_writing = threading.Event()
    refresh_started = threading.Event()
    refresh_thread: list[int] = []

    def hold_open(sender, segment, contact_ids, **kwargs):
        # Sent inside the pass's writing transaction, after its membership rows are written:
        # the refresh starts now, and gets a moment to reach whatever it waits on. (A large
        # pass writes in threads of its own.)
        if threading.get_ident() not in refresh_thread and not pass_writing.is_set():
            pass_writing.set()
            assert refresh_started.wait(10)
            time.sleep(1.5)

    def full() -> None:
        refresh_thread.append(threading.get_ident())
        assert pass_writing.wait(20)
        refresh_started.set()
        segment_refresh(segment=Segment.objects.get(pk=segment.pk))

    segment_entered.connect(hold_open)
    errors: list = []
    try:
        threads = [_run(segments_refresh_incremental, errors), _run(full, errors)]
        for thread in threads:
            thread.join(timeout=60)
    finally:
        segment_entered.disconnect(hold_open)
    assert not any(thread.is_alive() for thread in threads), "a thread hung"
    assert errors == []
    assert pass_writing.is_set()

    assert set(segment.memberships.values_list("contact_id", flat=True)) == set(ids)
    entries = Event.objects.filter(name="segment_entered", properties__segment_id=segment.pk)
    assert sorted(entries.values_list("contact_id", flat=True)) == sorted(ids)
    segment.refresh_from_db()
    assert segment.member_count == movers
    # Neither side failed quietly (the pass records a segment's failure instead of raising).
    assert segment.refresh_error == ""
