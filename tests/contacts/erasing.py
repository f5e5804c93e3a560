"""Erasures run in another connection, for the tests that race them against work in flight
(PostgreSQL: real concurrent transactions)."""

import threading

from django.db import connection, connections

from contacts.models import Contact
from contacts.services import contact_erase
from segments import services as segment_services
from segments.models import SegmentMembership
from tests.contacts.locking import in_threads, wait_until_another_backend_waits


def erase_now(contact_id: int) -> None:
    """Erase the person in another connection, to its commit."""
    _results, errors = in_threads(
        [lambda: contact_erase(contact=Contact.objects.get(pk=contact_id), source="api")]
    )
    assert errors == []


class BackgroundErasure:
    """An erasure in another connection that this one lets run until it is done or waits for
    a lock this connection holds."""

    def __init__(self, contact_id: int) -> None:
        self.errors: list[Exception] = []
        self.thread = threading.Thread(target=self._run, args=(contact_id,))

    def _run(self, contact_id: int) -> None:
        try:
            contact_erase(contact=Contact.objects.get(pk=contact_id), source="api")
        except Exception as exc:  # reported by the test
            self.errors.append(exc)
        finally:
            connections.close_all()

    def start_and_let_run(self) -> None:
        self.thread.start()
        with connection.cursor() as cursor:
            while self.thread.is_alive() and not wait_until_another_backend_waits(
                cursor, timeout=0.2
            ):
                pass

    def join(self) -> None:
        self.thread.join(timeout=30)
        assert not self.thread.is_alive(), "the erasure hung"


def erase_once_segment_locked(monkeypatch, contact_id: int) -> BackgroundErasure:
    """Start erasing the person, in another connection, right after this connection next
    takes a segment's lock (segments.services._lock_segment), and let it run until it is done
    or waits for a lock this connection holds; return it (join it when done)."""
    erasure = BackgroundErasure(contact_id)
    lock_segment = segment_services._lock_segment

    def erase_meanwhile(segment):
        locked = lock_segment(segment)
        if not erasure.thread.is_alive() and not erasure.errors:
            erasure.start_and_let_run()
        return locked

    monkeypatch.setattr(segment_services, "_lock_segment", erase_meanwhile)
    return erasure


def segment_member_ids(segment) -> set[int]:
    """The contacts a segment's stored membership holds."""
    return set(
        SegmentMembership.objects.filter(segment=segment).values_list("contact_id", flat=True)
    )
