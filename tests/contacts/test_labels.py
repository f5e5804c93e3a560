"""Operators read labels, never the codes contacts store: on the 360 page (timeline details,
merges, source, profile attributes), in the merge preview and in exports, in both languages."""

import csv
import html
import io
import re

import openpyxl
import pytest
from django.conf import settings
from django.contrib.auth.models import Permission
from django.core.files.uploadedfile import SimpleUploadedFile
from django.urls import reverse
from django.utils import translation

from contacts import exporters, importers
from contacts.importers import ImportSpec
from contacts.models import Contact, CustomField, Gender, MergeRecord
from contacts.services import (
    consent_record,
    contact_merge,
    contact_merge_undo,
    contact_update,
    merge_block_add,
)
from core.models import JobStatus
from tests.factories import ContactFactory, EventFactory, UserFactory

pytestmark = pytest.mark.django_db

TIMELINE_ITEM = re.compile(
    r'<div class="timeline-title">(.*?)</div>\s*(?:<div class="muted small">(.*?)</div>)?'
)


def _page(client, contact: Contact, language: str, name: str = "detail") -> str:
    client.cookies[settings.LANGUAGE_COOKIE_NAME] = language
    response = client.get(reverse(f"contacts:{name}", args=[contact.pk]))
    assert response.status_code == 200
    return html.unescape(response.content.decode())


def _timeline(page: str) -> dict[str, str]:
    """Detail line per timeline title (the newest entry of each title)."""
    details: dict[str, str] = {}
    for title, detail in TIMELINE_ITEM.findall(page):
        details.setdefault(title, detail)
    return details


@pytest.mark.parametrize(
    ("language", "granted", "expected"),
    [("zh-hans", "已授权", "短信 · 营销"), ("en", "Consent granted", "SMS · Marketing")],
)
def test_a_consent_entry_names_the_channel_and_purpose(
    operator_client, language, granted, expected
):
    contact = ContactFactory()
    consent_record(contact=contact, channel="sms", purpose="marketing", granted=True, source="api")

    timeline = _timeline(_page(operator_client, contact, language))

    assert timeline[granted] == expected


@pytest.mark.parametrize(
    ("language", "title", "expected"),
    [
        ("zh-hans", "资料已更新", "姓名、生日、生命周期阶段、肤质、mood"),
        ("en", "Profile updated", "Name, Birthday, Lifecycle stage, 肤质, mood"),
    ],
)
def test_a_profile_update_lists_field_labels(operator_client, language, title, expected):
    CustomField.objects.create(key="skin_type", label="肤质", kind="text")
    contact = ContactFactory(attributes={"mood": "good"})
    contact_update(
        contact=contact,
        data={
            "name": "林小雨",
            "birthday": "1990-02-03",
            "lifecycle_stage": "interested",
            "skin_type": "dry",
        },
    )
    # A trait no custom field defines (identify keeps any) shows as its key.
    event = contact.events.get(name="profile_updated")
    event.properties["fields"].append("mood")
    event.save(update_fields=["properties"])

    timeline = _timeline(_page(operator_client, contact, language))

    assert timeline[title] == expected


@pytest.mark.parametrize(
    ("language", "title"), [("zh-hans", "生命周期阶段变更"), ("en", "Lifecycle stage changed")]
)
def test_a_stage_change_names_both_stages(operator_client, language, title):
    from contacts.models import Stage

    Stage.objects.update_or_create(key="interested", defaults={"name": "意向"})
    Stage.objects.update_or_create(key="new", defaults={"name": "新客/潜客"})
    contact = ContactFactory()
    # As lead scoring records a threshold's move; "gone" is a stage deleted since.
    EventFactory(
        contact=contact, name="stage_changed", properties={"from": "new", "to": "interested"}
    )

    assert _timeline(_page(operator_client, contact, language))[title] == "新客/潜客 → 意向"

    EventFactory(contact=contact, name="stage_changed", properties={"from": "gone", "to": "new"})
    assert _timeline(_page(operator_client, contact, language))[title] == "gone → 新客/潜客"


@pytest.mark.parametrize(
    ("language", "reason", "undone"),
    [("zh-hans", "自动：身份相同", "撤销合并"), ("en", "Automatic: same identity", "Merge undone")],
)
def test_merges_name_the_other_contact_and_the_reason(operator_client, language, reason, undone):
    survivor = ContactFactory(name="刘雨")
    duplicate = ContactFactory(name="刘雨")
    record = contact_merge(survivor=survivor, duplicate=duplicate, reason="identify")

    page = _page(operator_client, survivor, language)

    merged_title = "档案合并" if language == "zh-hans" else "Profiles merged"
    assert _timeline(page)[merged_title] == f"刘雨 #{duplicate.pk} · {reason}"
    assert f"刘雨 #{duplicate.pk}</span>" in page  # the merges panel
    assert f"· {reason} ·" in page and "· identify ·" not in page

    contact_merge_undo(record=MergeRecord.objects.get(pk=record.pk))
    survivor_page = _page(operator_client, survivor, language)
    duplicate_page = _page(operator_client, duplicate, language)

    assert _timeline(survivor_page)[undone] == f"刘雨 #{duplicate.pk}"
    assert _timeline(duplicate_page)[undone] == f"刘雨 #{survivor.pk}"
    # The "not the same person" block the undo wrote, with its reason labelled.
    assert f"刘雨 #{duplicate.pk}</a>" in survivor_page
    assert f"· {undone} ·" in survivor_page and "merge undone" not in survivor_page


@pytest.mark.parametrize(
    ("language", "title", "reason"),
    [("zh-hans", "身份冲突", "不是同一人"), ("en", "Identity conflict", "Not the same person")],
)
def test_an_identity_conflict_names_the_other_contact(operator_client, language, title, reason):
    contact, other = ContactFactory(name="张伟"), ContactFactory(name="张伟")
    EventFactory(
        contact=contact,
        name="identity_conflict",
        properties={"other_contact_id": other.pk, "reason": "not_same_person", "source": "api"},
    )

    timeline = _timeline(_page(operator_client, contact, language))

    assert timeline[title] == f"张伟 #{other.pk} · {reason}"


@pytest.mark.parametrize(("language", "manual"), [("zh-hans", "手动"), ("en", "Manual")])
def test_a_never_merge_pair_set_by_hand_shows_a_labelled_reason(operator_client, language, manual):
    contact, other = ContactFactory(name="王芳"), ContactFactory(name="王芳")
    merge_block_add(contact=contact, other=other)

    page = _page(operator_client, contact, language)

    assert f"王芳 #{other.pk}</a>" in page
    assert f"· {manual} ·" in page and "· manual ·" not in page


@pytest.mark.parametrize(
    ("language", "labels"),
    [
        ("zh-hans", {"api": "API", "import": "导入", "小程序注册": "小程序注册"}),
        ("en", {"api": "API", "import": "Import", "小程序注册": "小程序注册"}),
    ],
)
def test_the_source_shows_its_label_and_a_client_word_as_it_is(operator_client, language, labels):
    for source, label in labels.items():
        contact = ContactFactory(source=source)

        page = _page(operator_client, contact, language)

        shown = re.search(r"<dt>(?:来源|Source)</dt><dd>(.*?)</dd>", page).group(1)
        assert shown == label


@pytest.mark.parametrize("language", ["zh-hans", "en"])
def test_profile_attributes_show_the_custom_field_label_else_the_key(operator_client, language):
    CustomField.objects.create(key="skin_type", label="肤质", kind="text")
    contact = ContactFactory(attributes={"skin_type": "干性", "preferred_store": "静安店"})

    page = _page(operator_client, contact, language)

    assert '<dt class="attr-key">肤质</dt><dd>干性</dd>' in page
    assert "skin_type" not in page
    assert '<dt class="attr-key">preferred_store</dt><dd>静安店</dd>' in page


@pytest.mark.parametrize("language", ["zh-hans", "en"])
def test_the_merge_preview_tells_two_same_name_contacts_apart(operator_client, language):
    survivor = ContactFactory(name="刘雨", phone="+8613800138000", source="api")
    duplicate = ContactFactory(name="刘雨", phone="+8613900139000", source="import")
    operator_client.cookies[settings.LANGUAGE_COOKIE_NAME] = language

    url = reverse("contacts:merge_preview", args=[survivor.pk, duplicate.pk])
    page = html.unescape(operator_client.get(url).content.decode())

    # The sentence “… will be merged into …” and the column heads carry the ids.
    assert f"“刘雨 #{duplicate.pk}”" in page and f"“刘雨 #{survivor.pk}”" in page
    assert "+86138****8000" in page and "+86139****9000" in page
    assert "13800138000" not in page and "13900139000" not in page
    imported = "导入" if language == "zh-hans" else "Import"
    assert f"<td>{imported}</td>" in page and "<td>import</td>" not in page

    search = reverse("contacts:merge", args=[survivor.pk])
    results = html.unescape(operator_client.get(search, {"q": "刘雨"}).content.decode())
    assert f"刘雨 #{duplicate.pk}" in results


# --- exports ----------------------------------------------------------------------------------


@pytest.fixture
def media(settings, tmp_path):
    settings.MEDIA_ROOT = tmp_path
    return tmp_path


def _exporter():
    user = UserFactory(username="exporter", is_superuser=False, is_staff=False)
    user.user_permissions.add(
        *Permission.objects.filter(
            content_type__app_label="contacts",
            codename__in=["export_contact", "view_contact", "view_personal_data"],
        )
    )
    return type(user).objects.get(pk=user.pk)


def _export(capture, language: str, fmt: str = "csv"):
    with translation.override(language), capture(execute=True):
        job = exporters.export_start(user=_exporter(), filters={}, fmt=fmt)
    job.refresh_from_db()
    assert job.status == JobStatus.SUCCEEDED, job.error
    return job


@pytest.mark.parametrize(
    ("language", "header", "female", "male", "unknown"),
    [("zh-hans", "性别", "女", "男", "未知"), ("en", "Gender", "Female", "Male", "Unknown")],
)
def test_exports_write_gender_in_the_export_language(
    media, django_capture_on_commit_callbacks, language, header, female, male, unknown
):
    ContactFactory(name="林小雨", gender=Gender.FEMALE)
    ContactFactory(name="王刚", gender=Gender.MALE)
    ContactFactory(name="赵敏", gender=Gender.UNKNOWN)

    job = _export(django_capture_on_commit_callbacks, language)
    rows = list(csv.reader(io.StringIO((media / job.output_file).read_text("utf-8-sig"))))
    sheet = _export(django_capture_on_commit_callbacks, language, fmt="xlsx")
    book = openpyxl.load_workbook(media / sheet.output_file, read_only=True)
    xlsx_rows = [list(row) for row in book.active.iter_rows(values_only=True)]

    for table in (rows, xlsx_rows):
        column = table[0].index(header)
        names = table[0].index("姓名" if language == "zh-hans" else "Name")
        genders = {row[names]: row[column] for row in table[1:]}
        assert genders == {"林小雨": female, "王刚": male, "赵敏": unknown}


@pytest.mark.parametrize("language", ["zh-hans", "en"])
def test_an_exported_file_imports_back_with_its_genders(
    media, django_capture_on_commit_callbacks, language
):
    ContactFactory(name="林小雨", phone="+8613800138000", gender=Gender.FEMALE)
    ContactFactory(name="王刚", phone="+8613900139000", gender=Gender.MALE)
    job = _export(django_capture_on_commit_callbacks, language)
    content = (media / job.output_file).read_bytes()
    Contact.objects.all().delete()

    upload = importers.import_upload(file=SimpleUploadedFile("export.csv", content), user=None)
    spec = ImportSpec(mapping=upload.params["mapping"], key="phone", tag_ids=[])
    with django_capture_on_commit_callbacks(execute=True):
        importers.import_start(job=upload, spec=spec)
    upload.refresh_from_db()

    assert upload.status == JobStatus.SUCCEEDED, upload.error
    assert (upload.result["created"], upload.result["rejected"]) == (2, 0)
    assert dict(Contact.objects.values_list("name", "gender")) == {
        "林小雨": Gender.FEMALE,
        "王刚": Gender.MALE,
    }


def test_store_staff_see_names_only_of_contacts_they_may_see(client):
    # A conflict with (or a merge of) another store's customer must not tell store staff who
    # that customer is: the timeline shows a bare id for contacts outside their view.
    from contacts.roles import roles_sync
    from tests.factories import StoreFactory, user_with_role

    roles_sync()
    store, other_store = StoreFactory(), StoreFactory()
    clerk = user_with_role("store_staff", store=store)
    mine = ContactFactory(name="本店客户", store=store)
    stranger = ContactFactory(name="别店客户", store=other_store)
    neighbour = ContactFactory(name="同店客户", store=store)
    EventFactory(
        contact=mine, name="identity_conflict", properties={"other_contact_id": stranger.pk}
    )
    client.force_login(clerk)

    page = _page(client, mine, "zh-hans")
    assert "别店客户" not in page
    assert f"#{stranger.pk}" in page

    EventFactory(
        contact=mine, name="identity_conflict", properties={"other_contact_id": neighbour.pk}
    )
    assert f"同店客户 #{neighbour.pk}" in _page(client, mine, "zh-hans")
