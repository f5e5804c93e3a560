"""The background job that adds a whole filtered list to a static list (or removes it) counts
the list's members once, at its end, not after every batch: a million-contact add used to count
every member a thousand times."""

import pytest
from django.db import connection
from django.test.utils import CaptureQueriesContext

from core import jobs
from core.models import Job, JobStatus
from segments import services
from segments.models import Segment, SegmentKind, SegmentMembership, SegmentSize
from segments.services import segment_create, segment_static_members_job_run
from tests.factories import ContactFactory, UserFactory

pytestmark = pytest.mark.django_db

MEMBERSHIP = SegmentMembership._meta.db_table


@pytest.fixture
def small_batches(monkeypatch):
    # Three batches out of six contacts, in one run of the task.
    monkeypatch.setattr(services, "STATIC_JOB_BATCH", 2)


def shanghai(n: int) -> list[int]:
    return sorted(ContactFactory(name=f"上海{i}").pk for i in range(n))


def start_job(static: Segment, *, remove: bool = False) -> Job:
    return jobs.job_create(
        kind=services.STATIC_MEMBERS_JOB_KIND,
        created_by=UserFactory(),
        params={"segment_id": static.pk, "remove": remove, "filter_params": {"q": ["上海"]}},
    )


def member_counts(queries) -> int:
    """How many statements counted the list's memberships."""
    return sum(
        1 for q in queries if "COUNT(" in q["sql"].upper() and MEMBERSHIP in q["sql"].lower()
    )


def test_a_job_of_several_batches_counts_the_members_once(small_batches):
    static = segment_create(name="活动名单", kind=SegmentKind.STATIC)
    contacts = shanghai(6)
    job = start_job(static)

    with CaptureQueriesContext(connection) as queries:
        segment_static_members_job_run(job_id=job.pk)

    job.refresh_from_db()
    assert job.status == JobStatus.SUCCEEDED and job.result["changed"] == 6
    assert set(static.memberships.values_list("contact_id", flat=True)) == set(contacts)
    assert member_counts(queries.captured_queries) == 1
    static.refresh_from_db()
    assert static.member_count == 6 and static.last_refreshed_at is not None
    assert SegmentSize.objects.get(segment=static).member_count == 6


def test_removing_in_batches_keeps_the_count_and_the_chart_right(small_batches):
    static = segment_create(name="活动名单", kind=SegmentKind.STATIC)
    contacts = shanghai(5)
    stays = ContactFactory(name="北京")
    services.segment_static_add(segment=static, contact_ids=[*contacts, stays.pk])
    job = start_job(static, remove=True)

    with CaptureQueriesContext(connection) as queries:
        segment_static_members_job_run(job_id=job.pk)

    assert member_counts(queries.captured_queries) == 1
    static.refresh_from_db()
    assert list(static.memberships.values_list("contact_id", flat=True)) == [stays.pk]
    assert static.member_count == 1
    assert SegmentSize.objects.get(segment=static).member_count == 1


def test_a_job_resumed_after_a_stop_ends_with_the_exact_count(small_batches):
    static = segment_create(name="活动名单", kind=SegmentKind.STATIC)
    contacts = shanghai(6)
    # A first run that stopped after its first batch, which committed with its cursor and the
    # count by difference; meanwhile an operator added someone else by hand.
    services.segment_static_add(segment=static, contact_ids=contacts[:2])
    services.segment_static_add(segment=static, contact_ids=[ContactFactory(name="北京").pk])
    job = start_job(static)
    Job.objects.filter(pk=job.pk).update(
        status=JobStatus.RUNNING, result={"cursor": contacts[1], "processed": 2, "changed": 2}
    )

    segment_static_members_job_run(job_id=job.pk)
    segment_static_members_job_run(job_id=job.pk)  # a redelivery changes nothing

    static.refresh_from_db()
    assert static.member_count == 7 == static.memberships.count()
    assert SegmentSize.objects.get(segment=static).member_count == 7


def test_a_single_add_still_counts_and_draws_the_chart_at_once():
    static = segment_create(name="活动名单", kind=SegmentKind.STATIC)
    contacts = shanghai(3)

    assert services.segment_static_add(segment=static, contact_ids=contacts) == 3
    assert services.segment_static_remove(segment=static, contact_ids=contacts[:1]) == 1

    static.refresh_from_db()
    assert static.member_count == 2 == static.memberships.count()
    assert SegmentSize.objects.get(segment=static).member_count == 2


def test_a_job_that_fails_midway_leaves_the_exact_count_of_what_it_added(
    small_batches, monkeypatch
):
    static = segment_create(name="活动名单", kind=SegmentKind.STATIC)
    contacts = shanghai(6)
    job = start_job(static)
    add, calls = services._static_add, []

    def fails_on_the_second_batch(segment, contact_ids, now):
        calls.append(contact_ids)
        if len(calls) == 2:
            raise RuntimeError("the database went away")
        return add(segment, contact_ids, now)

    # Someone added a contact by hand meanwhile: the count by difference alone would miss it.
    services.segment_static_add(segment=static, contact_ids=[ContactFactory(name="北京").pk])
    Segment.objects.filter(pk=static.pk).update(member_count=0)
    monkeypatch.setattr(services, "_static_add", fails_on_the_second_batch)

    segment_static_members_job_run(job_id=job.pk)

    job.refresh_from_db()
    assert job.status == JobStatus.FAILED
    static.refresh_from_db()
    assert static.member_count == 3 == static.memberships.count()
    assert set(contacts[:2]) <= set(static.memberships.values_list("contact_id", flat=True))
    assert SegmentSize.objects.get(segment=static).member_count == 3
