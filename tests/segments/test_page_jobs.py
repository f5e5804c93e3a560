"""Work the segment pages hand to the worker: "refresh now" (whose failure the page shows, and
stops polling) and adding a whole filtered contact list to a static list."""

import re

import pytest
from django.urls import reverse
from django.utils.html import escape

from contacts.models import Contact, CustomField
from core import jobs
from core.models import Job, JobStatus
from segments import services, tasks
from segments.models import Segment, SegmentFieldRef, SegmentKind, SegmentMembership
from segments.services import segment_create, segment_static_members_job_run
from tests.factories import ContactFactory, UserFactory

pytestmark = pytest.mark.django_db

HX = {"HTTP_HX_REQUEST": "true"}


def status_url(html: str) -> str:
    return re.search(r'hx-get="([^"]+)"', html).group(1).replace("&amp;", "&")


def members(segment: Segment) -> set[int]:
    return set(segment.memberships.values_list("contact_id", flat=True))


# --- refresh now ---------------------------------------------------------------------------------


@pytest.fixture
def broken():
    """A segment whose stored rule reads a custom field that is gone."""
    field = CustomField.objects.create(key="skin", label="肤质", kind="text")
    rule = {
        "op": "and",
        "conditions": [
            {"type": "attribute", "field": "attributes.skin", "operator": "eq", "value": "dry"}
        ],
    }
    segment = segment_create(name="干性肌肤", rule=rule)
    SegmentFieldRef.objects.filter(segment=segment).delete()
    field.delete()
    return segment


def test_a_failed_refresh_shows_its_error_and_the_page_stops_polling(
    operator_client, broken, django_capture_on_commit_callbacks
):
    with django_capture_on_commit_callbacks(execute=True):
        started = operator_client.post(reverse("segments:refresh", args=[broken.pk]), **HX)
    assert "every 1s" in started.content.decode()

    status = operator_client.get(status_url(started.content.decode()), **HX)

    html = status.content.decode()
    assert status.status_code == 200
    assert "every 1s" not in html
    assert 'class="alert alert-error"' in html
    assert "HX-Trigger" not in status
    broken.refresh_from_db()
    assert broken.refresh_job.status == JobStatus.FAILED
    assert broken.refresh_error
    # The segment page says so too, until a refresh succeeds.
    page = operator_client.get(reverse("segments:detail", args=[broken.pk])).content.decode()
    assert escape(broken.refresh_error) in page


def test_a_refresh_that_succeeds_reloads_the_members(
    operator_client, django_capture_on_commit_callbacks
):
    segment = segment_create(name="全部", rule={"op": "and", "conditions": []})
    ContactFactory()

    with django_capture_on_commit_callbacks(execute=True):
        started = operator_client.post(reverse("segments:refresh", args=[segment.pk]), **HX)
    status = operator_client.get(status_url(started.content.decode()), **HX)

    assert "every 1s" not in status.content.decode()
    assert status["HX-Trigger"] == "segment-refreshed"
    segment.refresh_from_db()
    assert segment.member_count == 1
    assert segment.refresh_job.status == JobStatus.SUCCEEDED
    page = operator_client.get(reverse("segments:detail", args=[segment.pk])).content.decode()
    assert "alert-error" not in page and "every 1s" not in page


def test_the_page_of_a_segment_being_refreshed_polls_its_job(operator_client):
    segment = segment_create(name="全部", rule={"op": "and", "conditions": []})

    operator_client.post(reverse("segments:refresh", args=[segment.pk]))  # never delivered

    page = operator_client.get(reverse("segments:detail", args=[segment.pk])).content.decode()
    assert "every 1s" in page
    assert f"job={Segment.objects.get(pk=segment.pk).refresh_job_id}" in page


def test_a_refresh_of_a_segment_archived_meanwhile_fails_its_job():
    segment = segment_create(name="全部", rule={"op": "and", "conditions": []})
    job = services.segment_refresh_request(segment=segment, actor=None)
    Segment.objects.filter(pk=segment.pk).update(is_archived=True)

    tasks.refresh(segment.pk, job.pk)

    job.refresh_from_db()
    assert job.status == JobStatus.FAILED


def test_a_redelivered_refresh_does_not_run_again():
    segment = segment_create(name="全部", rule={"op": "and", "conditions": []})
    job = services.segment_refresh_request(segment=segment, actor=None)
    tasks.refresh(segment.pk, job.pk)
    ContactFactory()

    tasks.refresh(segment.pk, job.pk)

    assert Segment.objects.get(pk=segment.pk).member_count == 0


# --- a whole filtered list into a static list ----------------------------------------------------


def shanghai_contacts(n: int) -> list[int]:
    Contact.objects.bulk_create([Contact(name=f"上海{i}") for i in range(n)])
    return list(Contact.objects.filter(name__startswith="上海").values_list("pk", flat=True))


def test_a_filtered_list_above_the_inline_limit_is_added_in_the_background(
    operator_client, django_capture_on_commit_callbacks
):
    static = segment_create(name="活动名单", kind=SegmentKind.STATIC)
    shanghai = shanghai_contacts(services.STATIC_INLINE_LIMIT + 3)
    ContactFactory(name="北京")

    with django_capture_on_commit_callbacks(execute=True):
        response = operator_client.post(
            reverse("segments:static_members"),
            {"segment": static.pk, "scope": "all", "q": "上海", "operation": "add", "next": "/"},
        )

    job = Job.objects.get(kind=services.STATIC_MEMBERS_JOB_KIND)
    assert response["Location"] == f"{reverse('segments:detail', args=[static.pk])}?job={job.pk}"
    assert job.status == JobStatus.SUCCEEDED  # ran in the worker (inline here), in batches
    assert job.result["changed"] == len(shanghai) and job.done == len(shanghai)
    assert set(job.params["filter_params"]) == {"q"}  # not the form's token
    assert members(static) == set(shanghai)
    page = operator_client.get(response["Location"]).content.decode()
    assert 'id="job-progress"' in page and 'id="segment-members"' in page
    progress = operator_client.get(response["Location"], **HX).content.decode()
    assert 'id="job-progress"' in progress and "every 1s" not in progress
    assert f"{len(shanghai):,} 位客户" in progress  # the result, in the default language


def test_removing_a_filtered_list_runs_in_the_background_too(
    operator_client, django_capture_on_commit_callbacks
):
    static = segment_create(name="活动名单", kind=SegmentKind.STATIC)
    shanghai = shanghai_contacts(services.STATIC_INLINE_LIMIT + 3)
    services.segment_static_add(segment=static, contact_ids=shanghai)

    with django_capture_on_commit_callbacks(execute=True):
        operator_client.post(
            reverse("segments:static_members"),
            {"segment": static.pk, "scope": "all", "q": "上海", "operation": "remove"},
        )

    assert Job.objects.get().status == JobStatus.SUCCEEDED
    assert members(static) == set()


def test_a_small_filtered_list_is_still_added_at_once(operator_client):
    static = segment_create(name="活动名单", kind=SegmentKind.STATIC)
    ContactFactory(name="上海")

    operator_client.post(
        reverse("segments:static_members"), {"segment": static.pk, "scope": "all", "q": "上海"}
    )

    assert not Job.objects.exists()
    assert static.memberships.count() == 1


def test_an_invalid_filter_never_widens_to_everyone(operator_client):
    static = segment_create(name="活动名单", kind=SegmentKind.STATIC)
    ContactFactory()

    operator_client.post(
        reverse("segments:static_members"),
        {"segment": static.pk, "scope": "all", "lifecycle_stage": "no-such-stage"},
    )

    assert not Job.objects.exists()
    assert not SegmentMembership.objects.filter(segment=static).exists()


def test_the_job_resumes_where_it_stopped_and_adds_nobody_twice():
    static = segment_create(name="活动名单", kind=SegmentKind.STATIC)
    contacts = sorted(c.pk for c in (ContactFactory(name=f"上海{i}") for i in range(4)))
    # A first run that stopped after its first batch (a worker restart, say).
    services.segment_static_add(segment=static, contact_ids=contacts[:2])
    job = jobs.job_create(
        kind=services.STATIC_MEMBERS_JOB_KIND,
        created_by=UserFactory(),
        params={"segment_id": static.pk, "remove": False, "filter_params": {"q": ["上海"]}},
        total=4,
    )
    Job.objects.filter(pk=job.pk).update(
        status=JobStatus.RUNNING, result={"cursor": contacts[1], "processed": 2, "changed": 2}
    )

    segment_static_members_job_run(job_id=job.pk)
    segment_static_members_job_run(job_id=job.pk)  # a redelivery changes nothing

    job.refresh_from_db()
    assert job.status == JobStatus.SUCCEEDED
    assert job.result == {"cursor": contacts[-1], "processed": 4, "changed": 4}
    assert members(static) == set(contacts)


def test_a_job_whose_list_was_archived_meanwhile_fails_instead_of_hanging():
    static = segment_create(name="活动名单", kind=SegmentKind.STATIC)
    ContactFactory(name="上海")
    job = jobs.job_create(
        kind=services.STATIC_MEMBERS_JOB_KIND,
        created_by=UserFactory(),
        params={"segment_id": static.pk, "remove": False, "filter_params": {"q": ["上海"]}},
    )
    Segment.objects.filter(pk=static.pk).update(is_archived=True)

    segment_static_members_job_run(job_id=job.pk)

    job.refresh_from_db()
    assert job.status == JobStatus.FAILED and job.error
    assert not static.memberships.exists()
