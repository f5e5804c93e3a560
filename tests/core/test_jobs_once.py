"""job_request_once: two requests for the same kind of job at the same moment (two clicks on
"Recompute") queue one job, and the second is answered with it."""

import datetime as dt
import threading
import time

import pytest
from django.db import connection, transaction
from django.utils import timezone

from core import jobs
from core.models import Job, JobStatus
from tests.contacts.locking import in_threads, wait_until_another_backend_waits

pytestmark = pytest.mark.django_db

TIMEOUT = 20
HOUR = dt.timedelta(hours=1)


def _request(kind: str, sent: list) -> Job:
    return jobs.job_request_once(kind=kind, actor=None, stale_after=HOUR, enqueue=sent.append)


def test_a_finished_or_stale_job_does_not_stop_a_new_request(django_capture_on_commit_callbacks):
    Job.objects.create(kind="k", status=JobStatus.SUCCEEDED)
    Job.objects.create(kind="k", created_at=timezone.now() - 2 * HOUR)  # its worker was lost
    Job.objects.create(kind="other")
    sent: list = []

    with django_capture_on_commit_callbacks(execute=True):
        job = _request("k", sent)

    assert job.status == JobStatus.QUEUED and sent == [job.pk]
    assert Job.objects.filter(kind="k", status=JobStatus.QUEUED).count() == 2  # the stale one too


def test_a_request_rolled_back_with_its_caller_enqueues_nothing(
    django_capture_on_commit_callbacks,
):
    sent: list = []

    with (
        django_capture_on_commit_callbacks(execute=True),
        pytest.raises(RuntimeError),
        transaction.atomic(),
    ):
        _request("k", sent)
        raise RuntimeError

    assert sent == [] and not Job.objects.filter(kind="k").exists()


def _second_request_while_the_first_is_open(wait_for_second) -> None:
    """The first request has queued its job but not committed when the second comes."""
    queued = threading.Event()
    first_sent: list = []
    second_sent: list = []

    def first():
        with transaction.atomic(), connection.cursor() as cursor:
            job = _request("k", first_sent)
            queued.set()
            wait_for_second(cursor)
        return job.pk

    def second():
        assert queued.wait(timeout=TIMEOUT)
        return _request("k", second_sent).pk

    (first_pk, second_pk), errors = in_threads([first, second])

    assert errors == []
    assert list(Job.objects.filter(kind="k").values_list("pk", flat=True)) == [first_pk]
    assert second_pk == first_pk
    assert (first_sent, second_sent) == ([first_pk], [])


@pytest.mark.django_db(transaction=True)
@pytest.mark.skipif(connection.vendor != "postgresql", reason="PostgreSQL's locks")
def test_two_requests_at_once_queue_one_job_on_postgresql():
    def wait_for_second(cursor):
        # Committed once the second request waits for this one (or after a few seconds, when
        # it does not wait at all and has queued a job of its own).
        wait_until_another_backend_waits(cursor, timeout=3)

    _second_request_while_the_first_is_open(wait_for_second)


@pytest.mark.django_db(transaction=True)
@pytest.mark.skipif(connection.vendor != "sqlite", reason="SQLite's write lock")
def test_two_requests_at_once_queue_one_job_on_sqlite():
    def wait_for_second(cursor):
        # SQLite cannot tell that another connection waits for its lock: give the second
        # request the time to come to it.
        time.sleep(1)

    _second_request_while_the_first_is_open(wait_for_second)
