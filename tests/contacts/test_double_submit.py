"""A form sent twice (a double click, a client retry): bulk tag and untag, and "Start import".

Each copy of a bulk tag counts and records (events, "changed") only the contacts its own
statement tagged or untagged; of two "Start import" clicks only one starts the job, and the
other is answered as any click on a started import is.
"""

import datetime as dt
import threading

import pytest
from django.db import connection, transaction
from django.urls import reverse
from django.utils import timezone

from contacts import importers
from contacts.bulk import contacts_bulk_tag_start
from contacts.importers import ImportAlreadyStarted, ImportSpec
from contacts.models import ContactTag, Event
from core.models import AuditLog, Job, JobStatus
from tests.contacts.importing import upload
from tests.contacts.locking import in_threads, wait_until_another_backend_waits
from tests.factories import ContactFactory, TagFactory, UserFactory

pytestmark = pytest.mark.django_db

TIMEOUT = 20
postgresql_only = pytest.mark.skipif(
    connection.vendor != "postgresql", reason="SQLite runs one writing transaction at a time"
)


def _events(tag, name: str) -> list[int]:
    return sorted(
        Event.objects.filter(name=name, properties__tag_id=tag.pk).values_list(
            "contact_id", flat=True
        )
    )


# --- Bulk tag and untag -----------------------------------------------------------------------


def test_tagging_again_changes_and_records_only_the_contacts_that_lacked_the_tag():
    user = UserFactory(is_superuser=True)
    tag = TagFactory()
    tagged = ContactFactory.create_batch(2)
    untagged = ContactFactory.create_batch(3)
    for contact in tagged:
        ContactTag.objects.create(contact=contact, tag=tag)
    ids = [c.pk for c in tagged + untagged]

    first = contacts_bulk_tag_start(tag=tag, add=True, actor=user, contact_ids=ids).result
    again = contacts_bulk_tag_start(tag=tag, add=True, actor=user, contact_ids=ids).result

    assert (first.processed, first.changed, again.changed) == (5, 3, 0)
    assert _events(tag, "tag_added") == sorted(c.pk for c in untagged)
    assert ContactTag.objects.filter(tag=tag).count() == 5


def test_untagging_again_changes_and_records_only_the_contacts_that_had_the_tag():
    user = UserFactory(is_superuser=True)
    tag = TagFactory()
    tagged = ContactFactory.create_batch(2)
    ids = [c.pk for c in [*tagged, ContactFactory()]]
    for contact in tagged:
        ContactTag.objects.create(contact=contact, tag=tag)

    first = contacts_bulk_tag_start(tag=tag, add=False, actor=user, contact_ids=ids).result
    again = contacts_bulk_tag_start(tag=tag, add=False, actor=user, contact_ids=ids).result

    assert (first.changed, again.changed) == (2, 0)
    assert _events(tag, "tag_removed") == sorted(c.pk for c in tagged)
    assert not ContactTag.objects.filter(tag=tag).exists()


def test_a_new_expiry_moves_the_tags_already_there_without_counting_them_as_changed():
    user = UserFactory(is_superuser=True)
    tag = TagFactory()
    old = ContactFactory()
    ContactTag.objects.create(contact=old, tag=tag)
    new = ContactFactory()
    expires = timezone.now() + dt.timedelta(days=7)

    result = contacts_bulk_tag_start(
        tag=tag, add=True, actor=user, contact_ids=[old.pk, new.pk], expires_at=expires
    ).result

    assert (result.changed, result.expiry_moved) == (1, 1)
    assert _events(tag, "tag_added") == [new.pk]
    assert set(ContactTag.objects.filter(tag=tag).values_list("expires_at", flat=True)) == {expires}


def _second_submit_while_the_first_is_open(*, add: bool, count: int = 30):
    """The first bulk (un)tag has written its rows but not committed when the same one is sent
    again: the second must wait for it, then find nothing left to change."""
    user = UserFactory(is_superuser=True)
    tag = TagFactory()
    contacts = ContactFactory.create_batch(count)
    ids = [c.pk for c in contacts]
    if not add:
        ContactTag.objects.bulk_create(ContactTag(contact=c, tag=tag) for c in contacts)
    written = threading.Event()

    def first():
        with transaction.atomic(), connection.cursor() as cursor:
            result = contacts_bulk_tag_start(tag=tag, add=add, actor=user, contact_ids=ids)
            written.set()
            # Committed once the second is seen waiting for these rows.
            assert wait_until_another_backend_waits(cursor, timeout=TIMEOUT)
        return result.result.changed

    def second():
        assert written.wait(timeout=TIMEOUT)
        return contacts_bulk_tag_start(tag=tag, add=add, actor=user, contact_ids=ids).result.changed

    changed, errors = in_threads([first, second])

    assert errors == []
    assert changed == [count, 0]
    assert _events(tag, "tag_added" if add else "tag_removed") == sorted(ids)
    assert ContactTag.objects.filter(tag=tag).count() == (count if add else 0)


@pytest.mark.django_db(transaction=True)
@postgresql_only
def test_a_bulk_tag_sent_twice_at_once_tags_and_records_each_contact_once():
    _second_submit_while_the_first_is_open(add=True)


@pytest.mark.django_db(transaction=True)
@postgresql_only
def test_a_bulk_untag_sent_twice_at_once_untags_and_records_each_contact_once():
    _second_submit_while_the_first_is_open(add=False)


@pytest.mark.django_db(transaction=True)
@postgresql_only
def test_four_copies_of_a_bulk_tag_at_once_share_out_the_changes():
    user = UserFactory(is_superuser=True)
    tag = TagFactory()
    ids = [c.pk for c in ContactFactory.create_batch(200)]
    start = threading.Barrier(4)

    def submit(add: bool):
        def go():
            start.wait(timeout=TIMEOUT)
            return contacts_bulk_tag_start(
                tag=tag, add=add, actor=user, contact_ids=ids
            ).result.changed

        return go

    added, errors = in_threads([submit(True)] * 4)
    assert errors == [] and sum(added) == 200
    assert _events(tag, "tag_added") == ids

    removed, errors = in_threads([submit(False)] * 4)
    assert errors == [] and sum(removed) == 200
    assert _events(tag, "tag_removed") == ids
    assert not ContactTag.objects.filter(tag=tag).exists()


# --- Start import -----------------------------------------------------------------------------


def _spec(job: Job) -> ImportSpec:
    return ImportSpec(mapping=job.params["mapping"], key="phone")


def test_a_start_from_a_copy_loaded_before_the_job_was_started_is_refused(
    media, django_capture_on_commit_callbacks
):
    job = upload([{"手机": "13800138000", "姓名": "张三"}])
    first, second = Job.objects.get(pk=job.pk), Job.objects.get(pk=job.pk)

    with django_capture_on_commit_callbacks() as callbacks:
        importers.import_start(job=first, spec=_spec(first))
        with pytest.raises(ImportAlreadyStarted):
            importers.import_start(job=second, spec=_spec(second))

    assert len(callbacks) == 1  # one run enqueued
    job.refresh_from_db()
    assert job.params["started"] is True and job.params["key"] == "phone"


def test_a_start_of_an_import_that_ended_unstarted_is_refused(
    media, django_capture_on_commit_callbacks
):
    # E.g. its upload expired and cleanup failed it while the mapping page was open.
    job = upload([{"手机": "13800138000", "姓名": "张三"}])
    stale = Job.objects.get(pk=job.pk)
    Job.objects.filter(pk=job.pk).update(status=JobStatus.FAILED)

    with django_capture_on_commit_callbacks() as callbacks, pytest.raises(ImportAlreadyStarted):
        importers.import_start(job=stale, spec=_spec(stale))

    assert callbacks == []
    job.refresh_from_db()
    assert "started" not in job.params


def _start_form(job: Job) -> dict:
    mapping = job.params["mapping"]
    return {
        **{f"col_{i}": mapping[h] for i, h in enumerate(job.params["headers"])},
        "key": "phone",
        "action": "start",
    }


@pytest.mark.django_db(transaction=True)
@postgresql_only
def test_a_second_start_click_while_the_first_commits_is_sent_to_the_job_page(media, client):
    user = UserFactory(is_superuser=True)
    client.force_login(user)
    rows = [{"手机": "13800138000", "姓名": "张三"}, {"手机": "13900139000", "姓名": "李四"}]
    job = upload(rows, user=user)
    url = reverse("contacts_io:import_mapping", args=[job.pk])
    started = threading.Event()

    def first():
        with transaction.atomic(), connection.cursor() as cursor:
            importers.import_start(job=Job.objects.get(pk=job.pk), spec=_spec(job))
            started.set()
            # Committed (and its run, inline in tests, done) once the second click waits.
            assert wait_until_another_backend_waits(cursor, timeout=TIMEOUT)

    def second():
        assert started.wait(timeout=TIMEOUT)
        # The view loads the job before the first start commits: it still awaits its mapping.
        return client.post(url, _start_form(job))

    (_none, response), errors = in_threads([first, second])

    assert errors == []
    assert response.status_code == 302
    assert response["Location"] == reverse("contacts_io:job", args=[job.pk])
    # One run: one audit entry, and it created both contacts.
    runs = AuditLog.objects.filter(object_type="job", object_id=str(job.pk))
    assert list(runs.values_list("action", flat=True)) == ["contacts_import"]
    job.refresh_from_db()
    assert (job.result["created"], job.result["unchanged"]) == (2, 0)
