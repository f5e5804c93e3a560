"""A matched contact counts as updated only when the row changes it; otherwise as unchanged."""

import pytest
from django.urls import reverse

from contacts import importers
from contacts.models import Contact, CustomField
from contacts.signals import contact_changed
from core.models import AuditLog, Job, JobStatus
from tests.contacts import importing
from tests.contacts.importing import existing
from tests.factories import TagFactory, UserFactory

# Files under a temporary MEDIA_ROOT; messages compared in English (tests/contacts/conftest.py).
pytestmark = [pytest.mark.django_db, pytest.mark.usefixtures("media", "english")]

HX = {"HTTP_HX_REQUEST": "true"}


def run(rows: list[dict], capture, **options) -> Job:
    return importing.run(rows, capture, key="phone", filename="客户.csv", **options)


def test_only_rows_that_change_their_contact_count_as_updated(
    django_capture_on_commit_callbacks,
):
    CustomField.objects.create(key="shoe_size", label="鞋码", kind="number")
    same = existing("+8613800138000", name="林", city="上海", attributes={"shoe_size": 38})
    renamed = existing("+8613900139000", name="王", city="北京")
    tagged = existing("+8613700137000", name="赵", city="广州")
    emailed = existing("+8613600136000", name="钱", city="深圳")
    sized = existing("+8613500135000", name="孙", city="杭州", attributes={"shoe_size": 40})
    before = {c.pk: c.updated_at for c in Contact.objects.all()}
    rows = [
        {"手机号": "13800138000", "姓名": "林", "城市": "", "标签": "", "邮箱": "", "鞋码": "38"},
        {"手机号": "13900139000", "姓名": "王二", "城市": "", "标签": "", "邮箱": "", "鞋码": ""},
        {"手机号": "13700137000", "姓名": "", "城市": "", "标签": "老客", "邮箱": "", "鞋码": ""},
        {"手机号": "13600136000", "姓名": "", "城市": "", "标签": "", "邮箱": "q@example.com",
         "鞋码": ""},
        {"手机号": "13500135000", "姓名": "孙", "城市": "杭州", "标签": "", "邮箱": "",
         "鞋码": "41"},
        {"手机号": "13400134000", "姓名": "新", "城市": "", "标签": "", "邮箱": "", "鞋码": ""},
    ]  # fmt: skip
    received: list[int] = []

    def listener(sender, contact_ids, **kwargs):
        received.extend(contact_ids)

    contact_changed.connect(listener)
    try:
        job = run(rows, django_capture_on_commit_callbacks)
    finally:
        contact_changed.disconnect(listener)

    assert (job.result["created"], job.result["updated"], job.result["unchanged"]) == (1, 4, 1)
    new = Contact.objects.get(phone="+8613400134000")
    # Segments re-evaluate the contacts that changed, not the one that did not.
    assert sorted(received) == sorted([renamed.pk, tagged.pk, emailed.pk, sized.pk, new.pk])
    same.refresh_from_db()
    assert same.updated_at == before[same.pk]  # not even rewritten
    assert AuditLog.objects.get(action="contacts_import").details["unchanged"] == 1


def test_reimporting_a_file_reports_every_row_unchanged(
    monkeypatch, django_capture_on_commit_callbacks
):
    monkeypatch.setattr(importers, "CHUNK_ROWS", 2)
    vip = TagFactory(name="VIP")
    rows = [
        {
            "手机号": f"1380013800{i}",
            "姓名": f"客户{i}",
            "邮箱": f"c{i}@example.com",
            "标签": "老客",
        }
        for i in range(5)
    ]
    first = run(rows, django_capture_on_commit_callbacks, tag_ids=[vip.pk])

    second = run(rows, django_capture_on_commit_callbacks, tag_ids=[vip.pk])
    third = run(rows, django_capture_on_commit_callbacks, tag_ids=[vip.pk, TagFactory().pk])

    assert (first.result["created"], first.result["updated"], first.result["unchanged"]) == (
        5,
        0,
        0,
    )
    assert (second.result["created"], second.result["updated"], second.result["unchanged"]) == (
        0,
        0,
        5,
    )
    # A tag chosen for every row is something the contacts did not have yet.
    assert (third.result["updated"], third.result["unchanged"]) == (5, 0)


@pytest.fixture
def operator_client(client):
    user = UserFactory(username="importer")
    client.force_login(user)
    return client, user


def test_the_job_page_shows_the_unchanged_count(
    operator_client, django_capture_on_commit_callbacks
):
    client, user = operator_client
    existing("+8613800138000", name="林")
    job = run(
        [{"手机号": "13800138000", "姓名": "林"}], django_capture_on_commit_callbacks, user=user
    )
    url = reverse("contacts_io:job", args=[job.pk])

    page = client.get(url).content.decode()
    fragment = client.get(url, HTTP_HX_TARGET="job-progress", **HX).content.decode()

    for html in (page, fragment):
        assert "Unchanged" in html
        counts = html.split('class="stat-value">')[1:]
        assert [c.split("<")[0] for c in counts] == ["0", "0", "1", "0"]
    assert "<html" in page and "<html" not in fragment


def test_a_job_from_before_the_unchanged_count_shows_no_such_figure(operator_client):
    client, user = operator_client
    job = Job.objects.create(
        kind=importers.JOB_KIND,
        status=JobStatus.SUCCEEDED,
        created_by=user,
        params={"filename": "old.csv", "started": True},
        result={"created": 1, "updated": 2, "rejected": 0, "rows": 3, "rejected_file": ""},
    )

    page = client.get(reverse("contacts_io:job", args=[job.pk])).content.decode()

    assert "Unchanged" not in page and "Updated" in page
