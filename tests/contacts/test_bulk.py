import pytest
from django.urls import reverse

from contacts import bulk, roles
from contacts.models import Contact, ContactTag, Event
from contacts.signals import contact_changed
from core.models import Job, JobStatus
from tests.factories import ContactFactory, StoreFactory, TagFactory, user_with_role

pytestmark = pytest.mark.django_db

HX = {"HTTP_HX_REQUEST": "true"}


def _many(n: int, **fields) -> list[int]:
    Contact.objects.bulk_create(
        [Contact(name=f"批量{i}", phone=f"+86139{i:08d}", **fields) for i in range(n)]
    )
    return list(Contact.objects.filter(name__startswith="批量").values_list("pk", flat=True))


def test_selected_contacts_are_tagged_inline(operator_client, operator):
    tag = TagFactory(name="VIP")
    chosen, other = ContactFactory.create_batch(2), ContactFactory()

    response = operator_client.post(
        reverse("contacts:bulk_tag"),
        {"bulk_tag": tag.pk, "op": "add", "scope": "selected", "ids": [c.pk for c in chosen]},
    )

    assert response.status_code == 302
    assert response["Location"] == reverse("contacts:list")
    assert set(ContactTag.objects.filter(tag=tag).values_list("contact_id", flat=True)) == {
        c.pk for c in chosen
    }
    link = ContactTag.objects.filter(tag=tag).first()
    assert link.source == "manual" and link.actor == operator
    assert Event.objects.filter(name="tag_added", contact__in=chosen).count() == 2
    assert not Job.objects.exists()
    assert "VIP" in operator_client.get(response["Location"]).content.decode()
    assert not ContactTag.objects.filter(contact=other).exists()


def test_all_matching_the_filter_are_untagged_and_the_filter_is_kept(operator_client):
    tag = TagFactory()
    shanghai = ContactFactory.create_batch(3, city="上海")
    beijing = ContactFactory(city="北京")
    for contact in [*shanghai, beijing]:
        ContactTag.objects.create(contact=contact, tag=tag)

    response = operator_client.post(
        reverse("contacts:bulk_tag"),
        {"bulk_tag": tag.pk, "op": "remove", "scope": "all", "city": "上海"},
    )

    assert response["Location"] == reverse("contacts:list") + "?city=%E4%B8%8A%E6%B5%B7"
    assert list(ContactTag.objects.values_list("contact_id", flat=True)) == [beijing.pk]
    assert Event.objects.filter(name="tag_removed").count() == 3


def test_selection_is_required_for_selected_scope(operator_client):
    tag = TagFactory()
    ContactFactory()

    response = operator_client.post(
        reverse("contacts:bulk_tag"), {"bulk_tag": tag.pk, "op": "add", "scope": "selected"}
    )

    assert response.status_code == 302
    assert not ContactTag.objects.exists()
    assert "toast-error" in operator_client.get(response["Location"]).content.decode()


def test_large_sets_run_as_a_background_job_in_batches(
    operator_client, operator, django_capture_on_commit_callbacks
):
    tag = TagFactory(name="大促")
    ids = _many(1_200, city="杭州")
    ContactFactory(city="上海")
    ContactTag.objects.create(contact_id=ids[0], tag=tag)
    batches: list[int] = []

    def on_changed(sender, contact_ids, **kwargs):
        batches.append(len(contact_ids))

    contact_changed.connect(on_changed)
    try:
        with django_capture_on_commit_callbacks(execute=True):
            response = operator_client.post(
                reverse("contacts:bulk_tag"),
                {"bulk_tag": tag.pk, "op": "add", "scope": "all", "city": "杭州"},
            )
    finally:
        contact_changed.disconnect(on_changed)

    job = Job.objects.get(kind=bulk.JOB_KIND)
    assert response["Location"] == reverse("contacts:bulk_job", args=[job.pk])
    assert job.status == JobStatus.SUCCEEDED
    assert job.total == 1_200 and job.done == 1_200
    assert job.result["changed"] == 1_199 and job.result["processed"] == 1_200
    assert ContactTag.objects.filter(tag=tag).count() == 1_200
    assert ContactTag.objects.filter(tag=tag, source="manual", actor=operator).count() == 1_199
    assert Event.objects.filter(name="tag_added").count() == 1_199
    assert batches == [999, 200]  # one signal per batch of 1,000 ids

    # Running the job again changes nothing.
    Job.objects.filter(pk=job.pk).update(status=JobStatus.RUNNING, result={})
    bulk.bulk_tag_job_run(job_id=job.pk)
    assert ContactTag.objects.filter(tag=tag).count() == 1_200
    assert Event.objects.filter(name="tag_added").count() == 1_199


def test_job_resumes_from_its_cursor(operator, monkeypatch, django_capture_on_commit_callbacks):
    monkeypatch.setattr(bulk, "BATCH_SIZE", 100)
    monkeypatch.setattr(bulk, "BATCHES_PER_RUN", 2)
    monkeypatch.setattr(bulk, "INLINE_LIMIT", 10)
    tag = TagFactory()
    _many(450)

    with django_capture_on_commit_callbacks(execute=True):
        started = bulk.contacts_bulk_tag_start(tag=tag, add=True, actor=operator, filter_params={})

    job = Job.objects.get(pk=started.job.pk)  # eager: every re-enqueued run already happened
    assert job.status == JobStatus.SUCCEEDED
    assert job.result["processed"] == 450
    assert ContactTag.objects.filter(tag=tag).count() == 450


def test_job_page_full_and_fragment(operator_client, operator):
    job = Job.objects.create(
        kind=bulk.JOB_KIND,
        created_by=operator,
        total=2_000,
        done=500,
        status=JobStatus.RUNNING,
        params={"tag": "兴趣/VIP", "add": True},
    )
    url = reverse("contacts:bulk_job", args=[job.pk])

    full = operator_client.get(url).content.decode()
    assert "<html" in full and 'id="job-progress"' in full and "兴趣/VIP" in full
    assert 'hx-trigger="every 1s"' in full

    fragment = operator_client.get(url, **HX).content.decode()
    assert fragment.lstrip().startswith('<section id="job-progress"') and "<html" not in fragment

    Job.objects.filter(pk=job.pk).update(
        status=JobStatus.SUCCEEDED, done=2_000, result={"changed": 1_990, "processed": 2_000}
    )
    done = operator_client.get(url, **HX).content.decode()
    assert "every 1s" not in done and ("1,990" in done or "1990" in done)


def test_other_users_jobs_are_not_shown(client, operator):
    job = Job.objects.create(kind=bulk.JOB_KIND, created_by=operator)
    roles.roles_sync()
    client.force_login(user_with_role("operator"))

    assert client.get(reverse("contacts:bulk_job", args=[job.pk])).status_code == 404


def test_store_staff_bulk_tag_only_their_contacts(client):
    roles.roles_sync()
    store = StoreFactory()
    clerk = user_with_role("store_staff", store=store)
    client.force_login(clerk)
    mine, theirs = ContactFactory(store=store), ContactFactory()
    tag = TagFactory()

    client.post(
        reverse("contacts:bulk_tag"),
        {"bulk_tag": tag.pk, "op": "add", "scope": "selected", "ids": [mine.pk, theirs.pk]},
    )
    client.post(reverse("contacts:bulk_tag"), {"bulk_tag": tag.pk, "op": "add", "scope": "all"})

    assert list(ContactTag.objects.values_list("contact_id", flat=True)) == [mine.pk]


def test_an_invalid_filter_never_widens_all_matching_to_everyone(operator_client):
    tag = TagFactory()
    ContactFactory.create_batch(3)

    response = operator_client.post(
        reverse("contacts:bulk_tag"),
        {"bulk_tag": tag.pk, "op": "add", "scope": "all", "created_from": "not-a-date"},
    )

    assert response.status_code == 302
    assert not ContactTag.objects.exists()
    assert "toast-error" in operator_client.get(response["Location"]).content.decode()
