"""An import tells each contact's timeline what it did: one entry per existing contact it
changed (naming the job, the fields, identities and tags), and, for the contacts it created,
an entry derived from the job; an unchanged contact gets nothing, and neither does a re-run."""

import datetime as dt

import pandas as pd
import pytest
from django.core.files.uploadedfile import SimpleUploadedFile
from django.urls import reverse
from django.utils import translation

from contacts import importers, labels, roles, selectors, services
from contacts.importers import ImportSpec
from contacts.models import Contact, CustomField, Event, IdentityKind
from core.models import AuditLog, Job, JobStatus
from tests.contacts import importing
from tests.contacts.importing import existing
from tests.factories import (
    ContactFactory,
    EventFactory,
    TagFactory,
    TagGroupFactory,
    UserFactory,
    user_with_role,
)

pytestmark = pytest.mark.django_db

EVENT = importers.IMPORT_EVENT


@pytest.fixture(autouse=True)
def _media(media):
    return media


def run(rows: list[dict], capture, **options) -> Job:
    return importing.run(rows, capture, key="phone", filename="会员.csv", **options)


def entries(contact: Contact) -> list[Event]:
    return list(Event.objects.filter(contact=contact, name=EVENT))


def test_an_import_that_changes_a_contact_says_so_on_its_timeline(
    django_capture_on_commit_callbacks,
):
    vip = TagFactory(name="高价值", group=TagGroupFactory(name="客户分层"))
    wang = existing("+8613900139000", name="王", city="北京")
    rows = [
        {"手机号": "13900139000", "姓名": "王二", "城市": "", "会员号": "K9"},
        {"手机号": "13400134000", "姓名": "新", "城市": "上海", "会员号": "K1"},
    ]

    job = run(rows, django_capture_on_commit_callbacks, tag_ids=[vip.pk])

    (event,) = entries(wang)
    assert event.source == "import"
    assert event.properties == {
        "job_id": job.pk,
        "file": "会员.csv",
        "fields": ["name"],
        "identities": [IdentityKind.EXTERNAL_ID],
        "tags": ["客户分层/高价值"],
    }
    # What was done to the contact, not something it did: it is not "active" for it.
    assert not services.is_activity(EVENT)
    wang.refresh_from_db()
    assert wang.name == "王二" and wang.last_active_at is None
    # The contact the import created gets no stored entry: the job lists it instead.
    new = Contact.objects.get(phone="+8613400134000")
    assert not Event.objects.filter(contact=new).exists()
    assert any(first <= new.pk <= last for first, last in job.params[importers.CREATED_IDS])
    assert not any(first <= wang.pk <= last for first, last in job.params[importers.CREATED_IDS])


def test_each_kind_of_change_is_named_and_an_unchanged_contact_gets_nothing(
    django_capture_on_commit_callbacks,
):
    CustomField.objects.create(key="shoe_size", label="鞋码", kind="number")
    same = existing("+8613800138000", name="林", city="上海", attributes={"shoe_size": 38})
    sized = existing("+8613500135000", name="孙", city="杭州", attributes={"shoe_size": 40})
    emailed = existing("+8613600136000", name="钱")
    tagged = existing("+8613700137000", name="赵")
    rows = [
        {"手机号": "13800138000", "姓名": "林", "城市": "上海", "邮箱": "", "标签": "",
         "鞋码": "38"},
        {"手机号": "13500135000", "姓名": "", "城市": "宁波", "邮箱": "", "标签": "",
         "鞋码": "41"},
        {"手机号": "13600136000", "姓名": "", "城市": "", "邮箱": "q@example.com", "标签": "",
         "鞋码": ""},
        {"手机号": "13700137000", "姓名": "赵", "城市": "", "邮箱": "", "标签": "老客", "鞋码": ""},
    ]  # fmt: skip

    job = run(rows, django_capture_on_commit_callbacks)

    assert (job.result["updated"], job.result["unchanged"]) == (3, 1)
    assert entries(same) == []
    assert entries(sized)[0].properties["fields"] == ["city", "shoe_size"]
    emailed_props = entries(emailed)[0].properties
    assert (emailed_props["fields"], emailed_props["identities"]) == (["email"], ["email"])
    tagged_props = entries(tagged)[0].properties
    assert (tagged_props["fields"], tagged_props["tags"]) == ([], ["导入/老客"])


def test_running_the_same_file_again_writes_no_entry(django_capture_on_commit_callbacks):
    vip = TagFactory(name="高价值")
    existing("+8613900139000", name="王")
    rows = [
        {"手机号": "13900139000", "姓名": "王二", "会员号": "K9", "标签": "老客"},
        {"手机号": "13400134000", "姓名": "新", "会员号": "K1", "标签": ""},
    ]
    run(rows, django_capture_on_commit_callbacks, tag_ids=[vip.pk])
    written = Event.objects.count()

    again = run(rows, django_capture_on_commit_callbacks, tag_ids=[vip.pk])

    assert (again.result["updated"], again.result["unchanged"]) == (0, 2)
    assert Event.objects.count() == written == 1
    assert not again.params.get(importers.CREATED_IDS)


def test_the_entry_is_written_in_the_chunk_transaction(
    django_capture_on_commit_callbacks, monkeypatch
):
    wang = existing("+8613900139000", name="王")

    def fail(job_id, ranges):
        raise RuntimeError("disk full")

    # Recording the new contact's id is the chunk's last write: when it fails, nothing stays.
    monkeypatch.setattr(importers, "_record_created", fail)
    content = pd.DataFrame(
        [{"手机号": "13900139000", "姓名": "王二"}, {"手机号": "13400134000", "姓名": "新"}]
    ).to_csv(index=False)
    job = importers.import_upload(file=SimpleUploadedFile("a.csv", content.encode()), user=None)
    with django_capture_on_commit_callbacks(execute=True):
        importers.import_start(job=job, spec=ImportSpec(mapping=job.params["mapping"]))
    job.refresh_from_db()

    assert job.status == JobStatus.FAILED
    wang.refresh_from_db()
    assert wang.name == "王" and not Event.objects.exists()
    assert Contact.objects.count() == 1


def test_the_360_timeline_shows_the_import_with_a_link_for_whoever_may_open_it(
    client, django_capture_on_commit_callbacks, english
):
    roles.roles_sync()
    uploader = UserFactory(username="uploader")
    other = user_with_role("operator")
    vip = TagFactory(name="高价值", group=TagGroupFactory(name="客户分层"))
    wang = existing("+8613900139000", name="王")
    job = run(
        [{"手机号": "13900139000", "姓名": "王二"}, {"手机号": "13400134000", "姓名": "新"}],
        django_capture_on_commit_callbacks,
        user=uploader,
        tag_ids=[vip.pk],
    )
    new = Contact.objects.get(phone="+8613400134000")
    job_url = reverse("contacts_io:job", args=[job.pk])

    client.force_login(uploader)
    page = client.get(reverse("contacts:detail", args=[wang.pk])).content.decode()
    assert "Updated by import" in page
    assert "会员.csv · Name · tags added: 客户分层/高价值" in page
    assert f'<a href="{job_url}">View import</a>' in page
    created = client.get(reverse("contacts:detail", args=[new.pk])).content.decode()
    assert "Contact created" in created and "Import · 会员.csv" in created
    assert f'<a href="{job_url}">View import</a>' in created

    # Someone else sees what happened, without a link to a job they may not open.
    client.force_login(other)
    page = client.get(reverse("contacts:detail", args=[wang.pk])).content.decode()
    assert "Updated by import" in page and job_url not in page
    assert (
        "Import · 会员.csv"
        in client.get(reverse("contacts:detail", args=[new.pk])).content.decode()
    )


def test_the_timeline_speaks_the_operators_language(
    admin_client, django_capture_on_commit_callbacks
):
    wang = existing("+8613900139000", name="王")
    run(
        [{"手机号": "13900139000", "姓名": "王二"}, {"手机号": "13400134000", "姓名": "新"}],
        django_capture_on_commit_callbacks,
    )
    new = Contact.objects.get(phone="+8613400134000")
    with translation.override("zh-hans"):
        updated, created, source = (
            str(labels.EVENT_LABELS[EVENT]),
            str(labels.EVENT_LABELS[selectors.CREATED_ENTRY]),
            labels.source_label("import"),
        )
        name = str(Contact._meta.get_field("name").verbose_name)

    page = admin_client.get(
        reverse("contacts:detail", args=[wang.pk]), HTTP_ACCEPT_LANGUAGE="zh-hans"
    ).content.decode()
    assert updated in page and f"会员.csv · {name}" in page
    page = admin_client.get(
        reverse("contacts:detail", args=[new.pk]), HTTP_ACCEPT_LANGUAGE="zh-hans"
    ).content.decode()
    assert created in page and f"{source} · 会员.csv" in page


def test_the_created_entry_sits_on_the_timeline_page_that_holds_its_time(
    django_capture_on_commit_callbacks,
):
    run([{"手机号": "13400134000", "姓名": "新"}], django_capture_on_commit_callbacks)
    contact = Contact.objects.get()
    created = contact.created_at
    newer = [
        EventFactory(
            contact=contact, name="page_view", occurred_at=created + dt.timedelta(minutes=i)
        )
        for i in range(1, 4)
    ]
    older = EventFactory(
        contact=contact, name="purchase", occurred_at=created - dt.timedelta(days=3)
    )

    def page(before, limit):
        events = selectors.contact_timeline(contact=contact, before=before, limit=limit + 1)
        shown = selectors.contact_timeline_with_origin(
            contact=contact, events=events[:limit], before=before, more=len(events) > limit
        )
        return [e.pk or e.name for e in shown], (
            events[limit - 1].pk if len(events) > limit else None
        )

    first, after = page(None, 2)
    assert first == [newer[2].pk, newer[1].pk]
    second, after = page(after, 2)
    assert second == [newer[0].pk, selectors.CREATED_ENTRY, older.pk] and after is None
    # On one page, it sits between the events before and after it.
    whole, _end = page(None, 50)
    assert whole == [*(e.pk for e in reversed(newer)), selectors.CREATED_ENTRY, older.pk]


def test_a_contact_created_otherwise_has_no_created_entry(django_capture_on_commit_callbacks):
    run([{"手机号": "13400134000", "姓名": "新"}], django_capture_on_commit_callbacks)
    # Created by someone else while the import ran: its id is not among the job's.
    other = ContactFactory()

    assert selectors.contact_import_origin(contact=other) is None
    assert selectors.contact_import_origin(contact=Contact.objects.get(phone="+8613400134000"))


def test_the_preview_shows_stage_names_not_keys(admin_client, english):
    content = pd.DataFrame(
        [
            {"手机号": "13800138000", "阶段": "首购"},
            {"手机号": "13900139000", "阶段": "interested"},
            {"手机号": "bad", "阶段": "首购"},
        ]
    ).to_csv(index=False)
    admin_client.post(
        reverse("contacts_io:import"), {"file": SimpleUploadedFile("a.csv", content.encode())}
    )
    job = Job.objects.get()

    page = admin_client.get(reverse("contacts_io:import_mapping", args=[job.pk])).content.decode()

    preview = page[page.index('id="import-preview"') :]
    assert "first_purchase" not in preview and "<td>interested</td>" not in preview
    assert (preview.count("<td>首购</td>"), preview.count("<td>意向</td>")) == (2, 1)


def test_the_import_audit_entry_records_where_it_was_started_from(
    admin_client, django_capture_on_commit_callbacks
):
    content = pd.DataFrame([{"手机号": "13800138000", "姓名": "林"}]).to_csv(index=False)
    admin_client.post(
        reverse("contacts_io:import"), {"file": SimpleUploadedFile("a.csv", content.encode())}
    )
    job = Job.objects.get()
    form = {f"col_{i}": job.params["mapping"][h] for i, h in enumerate(job.params["headers"])}

    with django_capture_on_commit_callbacks(execute=True):
        admin_client.post(
            reverse("contacts_io:import_mapping", args=[job.pk]),
            {**form, "key": "phone", "action": "start"},
            REMOTE_ADDR="203.0.113.7",
        )

    entry = AuditLog.objects.get(action="contacts_import", object_id=str(job.pk))
    assert entry.ip == "203.0.113.7"


def test_a_job_without_created_ids_names_nobody(django_capture_on_commit_callbacks):
    # Imports finished before jobs recorded their ids: their contacts simply have no entry.
    run([{"手机号": "13400134000", "姓名": "新"}], django_capture_on_commit_callbacks)
    job = Job.objects.get()
    job.params.pop(importers.CREATED_IDS)
    job.save(update_fields=["params"])

    assert selectors.contact_import_origin(contact=Contact.objects.get()) is None
