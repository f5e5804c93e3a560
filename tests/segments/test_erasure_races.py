"""A static list's adds racing the erasure of a person they add (contacts.services.erasure).

Memberships carry no foreign key and the erasure takes the person out of the segments it finds
them in: an add that read the person before the erasure and wrote after it must leave them out
(or be seen by the erasure), never fail, and never leave the list counting someone erased.

Real concurrent transactions: PostgreSQL only (SQLite runs one writing transaction at a time).
"""

from contacts.models import Contact, Erasure
from core import jobs
from core.models import JobStatus
from segments import services
from segments.models import SegmentKind, SegmentMembership
from segments.services import segment_create, segment_static_add, segment_static_members_job_run
from tests.contacts.erasing import (
    BackgroundErasure,
    erase_now,
    erase_once_segment_locked,
    segment_member_ids,
)
from tests.contacts.locking import CONCURRENT_TRANSACTIONS, deadlocks, deadlocks_since
from tests.factories import ContactFactory, UserFactory

pytestmark = CONCURRENT_TRANSACTIONS


def test_an_erasure_meeting_an_add_in_flight_waits_and_takes_the_person_out_of_the_list(
    monkeypatch,
):
    # The person is in no segment: the erasure has no list to lock. It starts once the add
    # has checked its contacts and is writing; it must wait for the add and then find the
    # membership, rather than commit under it (the add then failed at commit).
    static = segment_create(name="活动名单", kind=SegmentKind.STATIC)
    erased, kept = ContactFactory(), ContactFactory()
    erasure = BackgroundErasure(erased.pk)
    insert_new = services.insert_new

    def erase_meanwhile(model, rows, **kwargs):
        if model is SegmentMembership and not erasure.thread.is_alive() and not erasure.errors:
            erasure.start_and_let_run()
        return insert_new(model, rows, **kwargs)

    monkeypatch.setattr(services, "insert_new", erase_meanwhile)

    added = segment_static_add(segment=static, contact_ids=[erased.pk, kept.pk])
    erasure.join()

    assert erasure.errors == []
    assert added == 2
    assert Erasure.objects.get().summary["segments.segmentmembership"] == 1
    assert not Contact.objects.filter(pk=erased.pk).exists()
    assert segment_member_ids(static) == {kept.pk}
    static.refresh_from_db()
    assert static.member_count == 1


def test_re_adding_a_member_while_they_are_erased_does_not_deadlock(monkeypatch):
    # The erasure locks the person, then each list they are in; an add that held the list
    # while waiting for the person's row would close the circle. The erasure starts once the
    # add holds the list.
    static = segment_create(name="活动名单", kind=SegmentKind.STATIC)
    erased, kept = ContactFactory(), ContactFactory()
    segment_static_add(segment=static, contact_ids=[erased.pk])
    erasure = erase_once_segment_locked(monkeypatch, erased.pk)
    before = deadlocks()

    added = segment_static_add(segment=static, contact_ids=[erased.pk, kept.pk])
    erasure.join()

    assert erasure.errors == []
    assert deadlocks_since(before) == 0
    assert added == 1
    assert not Contact.objects.filter(pk=erased.pk).exists()
    assert segment_member_ids(static) == {kept.pk}
    static.refresh_from_db()
    assert static.member_count == 1


def test_a_person_erased_after_the_add_checked_them_is_left_out(monkeypatch):
    static = segment_create(name="活动名单", kind=SegmentKind.STATIC)
    erased, kept = ContactFactory(), ContactFactory()
    static_add = services._static_add

    def erase_first(segment, contact_ids, now):
        erase_now(erased.pk)
        return static_add(segment, contact_ids, now)

    monkeypatch.setattr(services, "_static_add", erase_first)

    added = segment_static_add(segment=static, contact_ids=[erased.pk, kept.pk])

    assert added == 1
    assert segment_member_ids(static) == {kept.pk}
    static.refresh_from_db()
    assert static.member_count == 1


def test_a_static_list_job_completes_with_the_rest_when_a_person_is_erased_meanwhile(
    monkeypatch,
):
    static = segment_create(name="活动名单", kind=SegmentKind.STATIC)
    erased, *kept = (ContactFactory(name=f"上海{i}") for i in range(3))
    job = jobs.job_create(
        kind=services.STATIC_MEMBERS_JOB_KIND,
        created_by=UserFactory(),
        params={"segment_id": static.pk, "remove": False, "filter_params": {"q": ["上海"]}},
    )
    static_add = services._static_add

    def erase_first(segment, contact_ids, now):
        # The batch has read its contacts (the erased one among them) in its transaction.
        assert erased.pk in contact_ids
        erase_now(erased.pk)
        return static_add(segment, contact_ids, now)

    monkeypatch.setattr(services, "_static_add", erase_first)

    segment_static_members_job_run(job_id=job.pk)

    job.refresh_from_db()
    assert job.status == JobStatus.SUCCEEDED, job.error
    assert job.result["changed"] == 2
    assert segment_member_ids(static) == {c.pk for c in kept}
    static.refresh_from_db()
    assert static.member_count == 2
