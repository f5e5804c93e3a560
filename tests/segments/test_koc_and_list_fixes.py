"""Operator-UI fixes: the KOC page watches its recompute as the RFM page does (one set of job
helpers in core.jobs for both), the growth column shows a segment counted only today, and a
static list's "last refreshed" stamp is shown as what it is, the same one the API returns."""

import datetime as dt
import re

import pytest
from django.conf import settings
from django.contrib.messages import get_messages
from django.urls import reverse
from django.utils import timezone
from django.utils.dateparse import parse_datetime

from core import jobs
from core.models import Job, JobStatus
from segments import influence, rfm, tasks
from segments.models import Influence, RFMRun, SegmentKind, SegmentSize
from segments.services import segment_create, segment_static_add
from tests.factories import ContactFactory, EventFactory

pytestmark = pytest.mark.django_db

HX = {"HTTP_HX_REQUEST": "true"}
CITY_RULE = {
    "op": "and",
    "conditions": [{"type": "attribute", "field": "city", "operator": "eq", "value": "上海"}],
}


@pytest.fixture
def english(settings, operator_client):
    """The operator's client with the UI in English (the strings added here are not compiled
    into zh-Hans until the catalogue is merged)."""
    operator_client.cookies[settings.LANGUAGE_COOKIE_NAME] = "en"
    return operator_client


def _sharer(name: str = "分享达人", shares: int = 25):
    contact = ContactFactory(name=name)
    for i in range(shares):
        EventFactory(
            contact=contact,
            name="share",
            properties={"share_id": f"{name}-{i}"},
            occurred_at=timezone.now() - dt.timedelta(days=1),
        )
    return contact


def _old(job: Job, hours: float) -> Job:
    Job.objects.filter(pk=job.pk).update(created_at=timezone.now() - dt.timedelta(hours=hours))
    job.refresh_from_db()
    return job


# ---------- 1. core.jobs: the helpers RFM and KOC share ----------


def test_the_active_job_is_the_newest_pending_one_of_its_kind_and_not_a_stale_one():
    stale_after = dt.timedelta(hours=6)
    assert jobs.job_active(kind="k", stale_after=stale_after) is None

    _old(jobs.job_create(kind="k"), hours=7)  # its worker was lost long ago
    jobs.job_create(kind="other")
    done = jobs.job_create(kind="k")
    jobs.job_finish(job_id=done.pk, result={})
    assert jobs.job_active(kind="k", stale_after=stale_after) is None

    pending = jobs.job_create(kind="k")
    assert jobs.job_active(kind="k", stale_after=stale_after) == pending


@pytest.mark.parametrize("raw", ["", "abc", "-1", "0", "1.5", None, "99999999999999999999"])
def test_a_malformed_job_id_names_no_job(raw):
    jobs.job_create(kind="k")

    assert jobs.job_of_kind(kind="k", job_id=raw) is None


def test_a_job_of_another_kind_is_not_found_by_id():
    job = jobs.job_create(kind="k")

    assert jobs.job_of_kind(kind="k", job_id=str(job.pk)) == job
    assert jobs.job_of_kind(kind="other", job_id=job.pk) is None


def test_a_job_is_requested_once_and_enqueued_after_commit(django_capture_on_commit_callbacks):
    sent = []

    with django_capture_on_commit_callbacks(execute=True) as callbacks:
        first = jobs.job_request_once(
            kind="k", actor=None, stale_after=dt.timedelta(hours=1), enqueue=sent.append
        )
        again = jobs.job_request_once(
            kind="k", actor=None, stale_after=dt.timedelta(hours=1), enqueue=sent.append
        )

    assert again == first and first.status == JobStatus.QUEUED
    assert len(callbacks) == 1 and sent == [first.pk]


def test_running_with_a_job_records_its_start_and_result():
    job = jobs.job_create(kind="k")

    outcome = jobs.job_run(job_id=job.pk, work=lambda: 7, result=lambda n: {"n": n})

    job.refresh_from_db()
    assert outcome == 7 and job.status == JobStatus.SUCCEEDED and job.result == {"n": 7}
    assert job.started_at is not None and job.finished_at is not None


def test_running_with_a_job_records_a_failure_and_raises_it_again():
    job = jobs.job_create(kind="k")

    def boom():
        raise RuntimeError("the database went away")

    with pytest.raises(RuntimeError):
        jobs.job_run(job_id=job.pk, work=boom, result=dict)

    job.refresh_from_db()
    assert job.status == JobStatus.FAILED and job.error == "the database went away"


def test_running_without_a_job_records_nothing():
    assert jobs.job_run(job_id=None, work=lambda: 3, result=dict) == 3
    assert not Job.objects.exists()


def test_rfm_keeps_its_behaviour_on_the_shared_helpers(django_capture_on_commit_callbacks):
    stale = _old(jobs.job_create(kind=rfm.JOB_KIND), hours=7)
    assert rfm.rfm_active_job() is None
    assert rfm.rfm_job(job_id=str(stale.pk)) == stale and rfm.rfm_job(job_id="x") is None

    with django_capture_on_commit_callbacks(execute=True):
        job = rfm.rfm_recompute_request(actor=None)

    job.refresh_from_db()
    run = RFMRun.objects.get()
    assert job.status == JobStatus.SUCCEEDED and job.result == {"run": run.pk, "contacts": 0}


# ---------- 1. the KOC page watches its recompute ----------


def test_koc_recompute_now_queues_one_job_that_the_status_region_watches(
    operator_client, django_capture_on_commit_callbacks
):
    koc = _sharer()

    with django_capture_on_commit_callbacks(execute=False) as callbacks:
        response = operator_client.post(reverse("segments:koc_recompute"), **HX)
    fragment = response.content.decode()
    job = Job.objects.get(kind=influence.JOB_KIND)
    assert job.status == JobStatus.QUEUED and len(callbacks) == 1
    assert fragment.lstrip().startswith('<section id="koc-status"')
    assert f"?watch={job.pk}" in fragment and 'hx-trigger="every 2s"' in fragment
    assert "<html" not in fragment

    # A second click while it waits queues nothing more.
    with django_capture_on_commit_callbacks(execute=False) as more:
        operator_client.post(reverse("segments:koc_recompute"), **HX)
    assert Job.objects.filter(kind=influence.JOB_KIND).count() == 1 and not more

    # While it waits, the region keeps polling.
    waiting = operator_client.get(
        reverse("segments:koc") + f"?watch={job.pk}", HTTP_HX_TARGET="koc-status", **HX
    )
    assert waiting.status_code == 200 and 'hx-trigger="every 2s"' in waiting.content.decode()

    callbacks[0]()
    job.refresh_from_db()
    assert job.status == JobStatus.SUCCEEDED
    assert job.result == {"contacts": 1, "kocs": 1, "removed": 0}
    assert Influence.objects.get(contact=koc).is_koc
    poll = operator_client.get(
        reverse("segments:koc") + f"?watch={job.pk}", HTTP_HX_TARGET="koc-status", **HX
    )
    assert poll.status_code == 204 and poll["HX-Refresh"] == "true"


def test_the_koc_page_shows_a_recompute_in_progress(english):
    job = jobs.job_create(kind=influence.JOB_KIND)

    page = english.get(reverse("segments:koc")).content.decode()

    assert "Recomputing…" in page
    assert f'hx-get="{reverse("segments:koc")}?watch={job.pk}"' in page
    button = re.search(r"<button[^>]*>Recompute now</button>", page).group(0)
    assert "disabled" in button


def test_the_koc_page_without_a_pending_recompute_does_not_poll(english):
    _old(jobs.job_create(kind=influence.JOB_KIND), hours=7)  # a lost worker's

    page = english.get(reverse("segments:koc")).content.decode()

    assert "Recomputing…" not in page and "every 2s" not in page
    assert "disabled" not in re.search(r"<button[^>]*>Recompute now</button>", page).group(0)


def test_a_failed_koc_recompute_is_reported(english, monkeypatch):
    def boom(**kwargs):
        raise RuntimeError("events table locked")

    monkeypatch.setattr(influence, "influence_compute", boom)
    job = jobs.job_create(kind=influence.JOB_KIND)

    with pytest.raises(RuntimeError):
        tasks.influence_compute(job_id=job.pk)

    job.refresh_from_db()
    assert job.status == JobStatus.FAILED and job.error == "events table locked"
    poll = english.get(
        reverse("segments:koc") + f"?watch={job.pk}", HTTP_HX_TARGET="koc-status", **HX
    )
    assert poll.status_code == 204 and poll["HX-Refresh"] == "true"
    shown = [str(m) for m in get_messages(poll.wsgi_request)]
    assert shown == ["The influence recompute failed: events table locked"]


def test_koc_recompute_without_htmx_redirects_back(
    operator_client, django_capture_on_commit_callbacks
):
    koc = _sharer()

    with django_capture_on_commit_callbacks(execute=True):
        response = operator_client.post(reverse("segments:koc_recompute"))

    assert response.status_code == 302 and response["Location"] == reverse("segments:koc")
    assert Job.objects.get(kind=influence.JOB_KIND).status == JobStatus.SUCCEEDED
    assert Influence.objects.filter(contact=koc).exists()


def test_the_koc_only_filter_still_swaps_the_table(operator_client):
    _sharer("分享达人", shares=30)
    _sharer("普通客户", shares=1)
    influence.influence_compute()

    only = operator_client.get(reverse("segments:koc") + "?koc=1", **HX).content.decode()

    assert only.lstrip().startswith('<section id="koc-table"')
    assert "分享达人" in only and "普通客户" not in only


def test_the_nightly_influence_task_still_runs_without_a_job():
    from config.celery import app

    spec = settings.SCRM_PERIODIC_TASKS["segments: influence compute"]
    assert spec["task"] == "segments.influence_compute" and spec["task"] in app.tasks
    assert not spec.get("args") and not spec.get("kwargs")
    koc = _sharer()

    result = app.tasks[spec["task"]].delay().get()

    assert result == {"contacts": 1, "kocs": 1, "removed": 0}
    assert Influence.objects.get(contact=koc).is_koc and not Job.objects.exists()


# ---------- 2. the growth column of a segment counted only today ----------


def test_a_segment_counted_only_today_shows_its_count_as_a_dot(english):
    segment = segment_create(name="今天新建", rule=CITY_RULE)
    SegmentSize.objects.filter(segment=segment).delete()
    SegmentSize.objects.create(segment=segment, day=timezone.localdate(), member_count=1234)

    page = english.get(reverse("segments:list")).content.decode()

    row = re.search(r"<tr>\s*<td><a[^>]*>今天新建</a>.*?</tr>", page, re.S).group(0)
    assert "<circle" in row and "<polyline" not in row
    assert "<title>First counted today: 1,234 members</title>" in row
    assert '<span class="muted">—</span>' not in row


def test_a_segment_never_counted_still_shows_a_dash(english):
    segment = segment_create(name="未统计", rule=CITY_RULE)
    SegmentSize.objects.filter(segment=segment).delete()

    page = english.get(reverse("segments:list")).content.decode()

    row = re.search(r"<tr>\s*<td><a[^>]*>未统计</a>.*?</tr>", page, re.S).group(0)
    assert "<svg" not in row and '<span class="muted">—</span>' in row


# ---------- 3. a static list's stamp: the same in the UI as in the API ----------


def _local(stamp: str) -> str:
    return timezone.localtime(parse_datetime(stamp)).strftime("%Y-%m-%d %H:%M")


def test_a_static_list_shows_when_members_were_last_updated_as_the_api_returns_it(english, api):
    vip = segment_create(name="VIP 名单", kind=SegmentKind.STATIC)
    segment_static_add(segment=vip, contact_ids=[ContactFactory().pk])

    rows = api.get("/api/v1/segments?kind=static").json()["results"]
    stamp = rows[0]["last_refreshed_at"]
    assert stamp is not None
    shown = _local(stamp)

    listing = english.get(reverse("segments:list")).content.decode()
    row = re.search(r"<tr>\s*<td><a[^>]*>VIP 名单</a>.*?</tr>", listing, re.S).group(0)
    assert f'{shown} <span class="small">(members updated)</span>' in row

    detail = english.get(reverse("segments:detail", args=[vip.pk])).content.decode()
    assert "Members last updated" in detail and shown in detail


def test_a_static_list_never_changed_says_so_in_both(english, api):
    empty = segment_create(name="空名单", kind=SegmentKind.STATIC)

    assert api.get("/api/v1/segments?kind=static").json()["results"][0]["last_refreshed_at"] is None
    listing = english.get(reverse("segments:list")).content.decode()
    row = re.search(r"<tr>\s*<td><a[^>]*>空名单</a>.*?</tr>", listing, re.S).group(0)
    assert "members updated" not in row
    detail = english.get(reverse("segments:detail", args=[empty.pk])).content.decode()
    assert re.search(r"Members last updated</span>.*?Never", detail, re.S)
