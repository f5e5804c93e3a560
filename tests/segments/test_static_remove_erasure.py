"""A static list's removes racing the erasure of a person they remove (segment_static_remove).

The remove holds the list and writes a segment_exited event about each member it takes out;
the erasure holds the person and takes them out of every list they are in: neither may wait
for the other while holding what the other waits for.

Real concurrent transactions: PostgreSQL only (SQLite runs one writing transaction at a time).
"""

from contacts.models import Contact, Event
from contacts.services import contact_erase
from segments import services
from segments.models import SegmentKind
from segments.services import segment_create, segment_static_add, segment_static_remove
from tests.contacts.erasing import erase_once_segment_locked, segment_member_ids
from tests.contacts.locking import CONCURRENT_TRANSACTIONS, deadlocks, deadlocks_since, in_threads
from tests.factories import ContactFactory

pytestmark = CONCURRENT_TRANSACTIONS


def _exited() -> set[int]:
    return set(Event.objects.filter(name="segment_exited").values_list("contact", flat=True))


def test_removing_a_member_while_they_are_erased_does_not_deadlock(monkeypatch):
    # The erasure locks the person, then each list they are in; a remove holding the list
    # whose event's foreign-key check at commit waits for the person would close the circle.
    # The erasure starts once the remove holds the list.
    static = segment_create(name="活动名单", kind=SegmentKind.STATIC)
    erased, kept, other = ContactFactory(), ContactFactory(), ContactFactory()
    segment_static_add(segment=static, contact_ids=[erased.pk, kept.pk, other.pk])
    erasure = erase_once_segment_locked(monkeypatch, erased.pk)
    before = deadlocks()

    removed = segment_static_remove(segment=static, contact_ids=[erased.pk, kept.pk])
    erasure.join()

    assert erasure.errors == []
    assert deadlocks_since(before) == 0
    assert removed == 2
    assert not Contact.objects.filter(pk=erased.pk).exists()
    assert segment_member_ids(static) == {other.pk}
    assert _exited() == {kept.pk}
    static.refresh_from_db()
    assert static.member_count == 1


def test_a_person_erased_before_the_remove_locked_them_is_left_to_the_erasure(monkeypatch):
    static = segment_create(name="活动名单", kind=SegmentKind.STATIC)
    erased, kept = ContactFactory(), ContactFactory()
    segment_static_add(segment=static, contact_ids=[erased.pk, kept.pk])
    lock_live = services.contacts_lock_live

    def erase_first(*, contact_ids):
        if Contact.objects.filter(pk=erased.pk).exists():
            _results, errors = in_threads(
                [lambda: contact_erase(contact=Contact.objects.get(pk=erased.pk), source="api")]
            )
            assert errors == []
        return lock_live(contact_ids=contact_ids)

    monkeypatch.setattr(services, "contacts_lock_live", erase_first)

    removed = segment_static_remove(segment=static, contact_ids=[erased.pk, kept.pk])

    assert removed == 1
    assert segment_member_ids(static) == set()
    assert _exited() == {kept.pk}
    static.refresh_from_db()
    assert static.member_count == 0
