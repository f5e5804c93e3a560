"""What an operator's walk through the contact pages found wrong in their templates: raw source
codes and silently hidden tags in the list, numbers set apart from their headers in the merge
preview, a Python list and True/False in the import preview, the import counts indented off
their labels, a bulk job still "in progress" once done, and an infinite timeline that never
said it had reached the end. Masking is checked where a nameless contact is named by its phone:
the merge preview, its four panels and the timeline.
"""

import re

import pytest
from django.contrib.auth.models import Permission
from django.core.files.uploadedfile import SimpleUploadedFile
from django.urls import reverse

from channels.models import Delivery, DeliveryStatus
from contacts import bulk, importers, roles
from contacts.models import Contact, ContactTag, CustomField, TagSource
from contacts.services import contact_merge
from core.models import Job, JobStatus
from journeys.models import Enrollment
from membership.services import member_get_or_create
from segments.services import segment_create, segment_static_add
from tests.factories import (
    ChannelFactory,
    ContactFactory,
    EventFactory,
    JourneyFactory,
    TagFactory,
    TierFactory,
    UserFactory,
    user_with_role,
)

pytestmark = pytest.mark.django_db

HX = {"HTTP_HX_REQUEST": "true"}


def _cell(page: str, marker: str) -> str:
    """The <tr> of the contact list that links to `marker`."""
    rows = re.findall(r"<tr>.*?</tr>", page, flags=re.S)
    return next(row for row in rows if marker in row)


# --- Contact list ----------------------------------------------------------------------------


def test_the_list_shows_a_source_the_product_writes_by_its_label(operator_client):
    imported = ContactFactory(name="导入的客户", source=TagSource.IMPORT)
    ContactFactory(name="公众号来的", source="公众号")

    page = operator_client.get(reverse("contacts:list")).content.decode()

    row = _cell(page, f"/contacts/{imported.pk}/")
    assert ">导入<" in row and ">import<" not in row
    # A source a client sent stays as it was written.
    assert ">公众号<" in page


def test_the_list_says_how_many_tags_it_does_not_show(operator_client):
    contact = ContactFactory(name="标签很多")
    tags = [TagFactory(name=f"标签{i}") for i in range(6)]
    for tag in tags:
        ContactTag.objects.create(contact=contact, tag=tag)
    few = ContactFactory(name="标签很少")
    ContactTag.objects.create(contact=few, tag=tags[0])

    page = operator_client.get(reverse("contacts:list")).content.decode()

    row = _cell(page, f'/contacts/{contact.pk}/"')
    shown = re.findall(r'<span class="tag"[^>]*>(.*?)</span>', row)
    assert shown == ["标签0", "标签1", "标签2", "标签3"]
    more = re.search(r'<a class="muted small nowrap" href="([^"]+)" title="([^"]+)">(.*?)</a>', row)
    assert more is not None
    assert more.group(1) == reverse("contacts:detail", args=[contact.pk]) + "#contact-tags"
    assert more.group(2) == "标签4, 标签5"  # the hidden ones, on hover
    assert "2" in more.group(3)
    assert "#contact-tags" not in _cell(page, f'/contacts/{few.pk}/"')


def test_an_empty_list_tells_no_contacts_yet_from_no_match(client, english):
    roles.roles_sync()
    client.force_login(user_with_role(roles.ANALYST))
    url = reverse("contacts:list")

    empty = client.get(url).content.decode()
    filtered = client.get(url, {"city": "杭州"}).content.decode()

    assert "No contacts yet." in empty and "No contacts match" not in empty
    assert "No contacts match these filters." in filtered
    # Analysts may not bulk-tag: the empty row spans the eight columns there are.
    assert 'colspan="8" class="empty"' in empty


# --- Merge preview ---------------------------------------------------------------------------


@pytest.fixture
def pair():
    """Two nameless contacts, members with deliveries, that pages can only name by phone."""
    TierFactory(name="普卡", min_growth=0)
    survivor = ContactFactory(name="", nickname="", phone="+8613800138000")
    duplicate = ContactFactory(name="", nickname="", phone="+8613900139000")
    journey = JourneyFactory(name="新客旅程")
    segment = segment_create(name="到店名单", kind="static")
    segment_static_add(segment=segment, contact_ids=[survivor.pk, duplicate.pk])
    for contact in (survivor, duplicate):
        member_get_or_create(contact=contact)
        Enrollment.objects.create(journey=journey, contact=contact)
        Delivery.objects.create(
            channel=ChannelFactory(),
            contact=contact,
            payload={"title": "t", "body": "b"},
            idempotency_key=f"k-{contact.pk}",
            status=DeliveryStatus.SENT,
        )
    return survivor, duplicate


PANEL_URLS = ("membership", "segments", "journeys", "channels")


def _merger_without_personal_data():
    """Merges and sees every panel, but may not unmask phones and emails."""
    user = UserFactory(is_superuser=False, is_staff=False)
    codenames = [
        ("contacts", "view_contact"),
        ("contacts", "merge_contact"),
        ("membership", "view_member"),
        ("segments", "view_segment"),
    ]
    user.user_permissions.set(
        [Permission.objects.get(content_type__app_label=a, codename=c) for a, c in codenames]
    )
    return user


def test_the_merge_preview_and_its_panels_mask_the_phones_that_name_the_contacts(client, pair):
    survivor, duplicate = pair
    client.force_login(_merger_without_personal_data())

    pages = [client.get(reverse("contacts:merge_preview", args=[survivor.pk, duplicate.pk]))]
    pages += [
        client.get(reverse(f"{app}:contact_merge_preview", args=[survivor.pk, duplicate.pk]), **HX)
        for app in PANEL_URLS
    ]

    for response in pages:
        assert response.status_code == 200
        html = response.content.decode()
        assert "+86138****8000" in html and "+86139****9000" in html
        assert "13800138000" not in html and "13900139000" not in html


def test_the_merge_preview_puts_numbers_under_their_headers(operator_client, pair):
    survivor, duplicate = pair
    args = [survivor.pk, duplicate.pk]

    main = operator_client.get(reverse("contacts:merge_preview", args=args)).content.decode()
    membership = operator_client.get(
        reverse("membership:contact_merge_preview", args=args), **HX
    ).content.decode()
    messages = operator_client.get(
        reverse("channels:contact_merge_preview", args=args), **HX
    ).content.decode()

    # Columns that mix text, dates and numbers read left to right, as their headers do.
    assert 'class="num' not in main.split('id="merge-membership"')[0].split("<tbody>")[1]
    assert 'class="num' not in membership
    assert "<td>0</td>" in membership  # points, no longer pushed to the next column's edge
    # The messages panel holds only counts: its headers are right-aligned over them.
    headers = re.findall(r"<th( class=\"num\")?>", messages.split("<tbody>")[0])
    assert headers == ["", ' class="num"', ' class="num"', ' class="num"']
    assert '<td class="num">1</td>' in messages


def test_the_timeline_names_a_merged_nameless_contact_by_its_masked_phone(client, pair):
    survivor, duplicate = pair
    contact_merge(survivor=survivor, duplicate=duplicate)
    client.force_login(_merger_without_personal_data())

    page = client.get(reverse("contacts:detail", args=[survivor.pk])).content.decode()

    timeline = page.split('id="timeline"')[1]
    assert f"+86139****9000 #{duplicate.pk}" in timeline
    assert "13900139000" not in page


# --- Timeline --------------------------------------------------------------------------------


def test_the_end_of_an_infinite_timeline_says_so(operator_client, english):
    contact = ContactFactory()
    events = [EventFactory(contact=contact, name=f"evt_{i:02d}") for i in range(35)]
    url = reverse("contacts:detail", args=[contact.pk])

    first = operator_client.get(url).content.decode()
    last = operator_client.get(url, {"before": events[5].pk}, **HX).content.decode()

    assert "No older events." not in first
    assert "No older events." in last and 'id="timeline-more"' not in last
    # A short timeline shown at once needs no such line.
    short = ContactFactory()
    EventFactory(contact=short, name="evt_only")
    page = operator_client.get(reverse("contacts:detail", args=[short.pk])).content.decode()
    assert "evt_only" in page and "No older events." not in page


# --- Import and export -----------------------------------------------------------------------


@pytest.fixture
def media(settings, tmp_path):
    settings.MEDIA_ROOT = tmp_path
    return tmp_path


def test_the_import_preview_shows_choices_and_yes_no_as_an_operator_writes_them(
    admin_client, media
):
    CustomField.objects.create(
        key="interests", label="兴趣", kind="multi_choice", choices=["护肤", "彩妆", "香水"]
    )
    CustomField.objects.create(key="vip_opt", label="接受邀约", kind="boolean")
    content = (
        "手机号,姓名,兴趣,接受邀约\n"
        '13800138000,赵晓燕,"护肤,香水",是\n'
        "13900139000,钱多多,彩妆,否\n"
        "12345,孙悟空,,\n"
    ).encode("gbk")
    response = admin_client.post(
        reverse("contacts_io:import"), {"file": SimpleUploadedFile("客户.csv", content)}
    )
    job = Job.objects.get()
    headers, mapping = job.params["headers"], job.params["mapping"]
    assert mapping["兴趣"] == importers.CUSTOM_PREFIX + "interests"
    form = {f"col_{i}": mapping[h] for i, h in enumerate(headers)}

    fragment = admin_client.post(
        response["Location"], {**form, "key": "phone", "action": "preview"}, **HX
    ).content.decode()

    assert "护肤, 香水" in fragment and "[" not in fragment
    assert "True" not in fragment and "False" not in fragment
    assert ">是<" in fragment and ">否<" in fragment
    # The reason of a refused row spans the row below it, readable whatever the column count.
    reason = re.search(r'<tr class="row-error"><td></td><td colspan="(\d+)">', fragment)
    assert reason is not None and int(reason.group(1)) == len(headers) + 1
    assert '<tr class="nowrap">' in fragment and "<td>赵晓燕</td>" in fragment
    assert not Contact.objects.exists()


def test_the_import_counts_sit_under_their_labels(operator_client, operator):
    job = Job.objects.create(
        kind=importers.JOB_KIND,
        status=JobStatus.SUCCEEDED,
        created_by=operator,
        params={"filename": "客户.csv", "started": True},
        result={"created": 3, "updated": 1, "unchanged": 0, "rejected": 5, "rows": 9},
    )

    page = operator_client.get(reverse("contacts_io:job", args=[job.pk])).content.decode()

    # A <dd> is indented by the browser's default margin; the counts are spans like the
    # dashboard's.
    assert "<dd" not in page and "<dl" not in page
    counts = re.findall(r'<span class="stat-value">(\d+)</span>', page)
    assert counts == ["3", "1", "0", "5"]


def test_the_export_download_button_names_its_format(operator_client, operator, english):
    job = Job.objects.create(
        kind="contact_export",
        status=JobStatus.SUCCEEDED,
        created_by=operator,
        params={"format": "xlsx"},
        result={"rows": 2, "format": "xlsx", "file": "exports/x.xlsx"},
    )

    page = operator_client.get(reverse("contacts_io:job", args=[job.pk])).content.decode()

    assert "Download (XLSX)" in page


# --- Bulk tagging ----------------------------------------------------------------------------


def test_a_finished_bulk_job_is_not_titled_as_still_running(operator_client, operator, english):
    job = Job.objects.create(
        kind=bulk.JOB_KIND,
        created_by=operator,
        total=600,
        done=600,
        status=JobStatus.SUCCEEDED,
        params={"tag": "渠道/直播间", "add": True},
        result={"changed": 590, "processed": 600},
    )

    page = operator_client.get(reverse("contacts:bulk_job", args=[job.pk])).content.decode()

    assert "Add tag “渠道/直播间” in bulk" in page
    assert "Adding tag" not in page
