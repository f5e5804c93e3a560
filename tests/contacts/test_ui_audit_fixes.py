"""Fixes from the operator audit of the contact screens: the merge preview shows every field the
merge changes, merge audit entries carry the operator's address, English timeline entries name
fields by label, long import cells are cut with a tooltip, the custom field admin takes a typed
list of choices, and the consent toast says whether consent was granted or withdrawn."""

import datetime as dt
import html
import json
import re

import pytest
from django.conf import settings
from django.contrib.messages import get_messages
from django.urls import reverse
from django.utils import timezone

from contacts import selectors
from contacts.models import Contact, CustomField, CustomFieldKind, Gender, MergeRecord
from contacts.services import contact_merge, contact_update
from core.models import AuditLog
from tests.contacts.importing import upload
from tests.factories import ContactFactory

pytestmark = pytest.mark.django_db

IP = "203.0.113.9"
# Columns the merge preview leaves out on purpose: bookkeeping, and the lead score columns that
# segments scores again after the merge.
NOT_PREVIEWED = {"updated_at", "merged_into_id", "lead_score", "lead_score_at"}
NOT_PREVIEWED |= {"lead_score_engagement"}


def _columns(contact: Contact) -> dict[str, object]:
    return {f.attname: getattr(contact, f.attname) for f in Contact._meta.concrete_fields}


# --- 2. The merge preview shows what the merge does ---------------------------------------------


@pytest.fixture
def pair():
    """Two contacts whose merge fills UTM fields, custom fields and an undefined trait."""
    CustomField.objects.create(
        key="skin_type",
        label="肤质",
        kind=CustomFieldKind.SINGLE_CHOICE,
        choices=["干性", "油性"],
        position=2,
    )
    CustomField.objects.create(
        key="hobbies",
        label="爱好",
        kind=CustomFieldKind.MULTI_CHOICE,
        choices=["瑜伽", "跑步"],
        position=1,
    )
    CustomField.objects.create(key="vip", label="是否VIP", kind=CustomFieldKind.BOOLEAN)
    CustomField.objects.create(
        key="retired_note", label="旧备注", kind=CustomFieldKind.TEXT, position=3, is_active=False
    )
    now = timezone.now().replace(microsecond=0)
    survivor = ContactFactory(
        name="林小雨",
        gender=Gender.UNKNOWN,
        utm_source="wechat",
        first_seen_at=now - dt.timedelta(days=3),
        last_seen_at=now - dt.timedelta(days=2),
        attributes={"skin_type": "干性"},
    )
    duplicate = ContactFactory(
        name="林雨",
        gender=Gender.FEMALE,
        email="lin@example.com",
        utm_source="douyin",
        utm_medium="cpc",
        utm_content="banner_a",
        utm_term="面霜",
        utm_campaign="spring",
        first_seen_at=now - dt.timedelta(days=9),
        last_seen_at=now - dt.timedelta(days=1),
        last_active_at=now - dt.timedelta(hours=5),
        attributes={
            "skin_type": "油性",
            "hobbies": ["瑜伽", "跑步"],
            "vip": True,
            "retired_note": "老客",
            "wx_city": "杭州",
        },
    )
    return survivor, duplicate


def test_the_preview_after_column_is_what_the_merge_produces(pair):
    survivor, duplicate = pair
    preview = selectors.contact_merge_preview(survivor=survivor, duplicate=duplicate)
    before = _columns(survivor)

    contact_merge(survivor=survivor, duplicate=duplicate)

    survivor = Contact.objects.get(pk=survivor.pk)
    rows = {row["name"]: row for row in preview["fields"]}
    for row in preview["fields"]:
        if row["name"].startswith("attributes."):
            key = row["name"].removeprefix("attributes.")
            assert survivor.attributes.get(key) == row["raw_result"], key
        else:
            attname = Contact._meta.get_field(row["name"]).attname
            assert getattr(survivor, attname) == row["raw_result"], row["name"]
            assert row["from_duplicate"] == (row["raw_result"] != before[attname]), row["name"]
    # Every column the merge changed has its row, and so has every trait the survivor now holds.
    changed = {k for k, v in _columns(survivor).items() if v != before[k]} - NOT_PREVIEWED
    assert changed == {
        "gender",
        "email",
        "utm_medium",
        "utm_campaign",
        "utm_content",
        "utm_term",
        "first_seen_at",
        "last_seen_at",
        "last_active_at",
        "attributes",
    }
    assert {Contact._meta.get_field(n).attname for n in rows if "." not in n} >= changed - {
        "attributes"
    }
    assert {f"attributes.{k}" for k in survivor.attributes} <= rows.keys()
    assert rows["attributes.skin_type"]["raw_result"] == "干性"  # the survivor's own is kept
    assert rows["attributes.hobbies"]["from_duplicate"] is True


def test_the_preview_names_custom_fields_by_their_label_in_field_order(pair):
    survivor, duplicate = pair

    rows = selectors.contact_merge_preview(survivor=survivor, duplicate=duplicate)["fields"]

    custom = [(r["label"], r["survivor"], r["duplicate"], r["result"]) for r in rows]
    custom = [r for r in custom if r[0] in ("爱好", "肤质", "是否VIP", "旧备注", "wx_city")]
    assert custom == [
        ("是否VIP", "", "✓", "✓"),  # position 0
        ("爱好", "", "瑜伽, 跑步", "瑜伽, 跑步"),
        ("肤质", "干性", "油性", "干性"),
        ("旧备注", "", "老客", "老客"),  # retired, but its value still moves
        ("wx_city", "", "杭州", "杭州"),  # no definition: named by its key
    ]


def test_a_custom_field_neither_contact_has_gets_no_row():
    CustomField.objects.create(key="shoe_size", label="鞋码", kind=CustomFieldKind.NUMBER)
    survivor, duplicate = ContactFactory(), ContactFactory(attributes={"shoe_size": None})

    rows = selectors.contact_merge_preview(survivor=survivor, duplicate=duplicate)["fields"]

    assert not [r for r in rows if r["name"].startswith("attributes.")]


def test_the_preview_page_shows_utm_and_custom_field_rows(operator_client, pair):
    survivor, duplicate = pair
    operator_client.cookies[settings.LANGUAGE_COOKIE_NAME] = "en"

    response = operator_client.get(
        reverse("contacts:merge_preview", args=[survivor.pk, duplicate.pk])
    )

    page = html.unescape(response.content.decode())
    cells = {
        re.sub(r"<[^>]+>", "", row[0]).strip(): [re.sub(r"<[^>]+>", "", c).strip() for c in row]
        for row in (
            re.findall(r"<td[^>]*>(.*?)</td>", tr, re.S)
            for tr in re.findall(r"<tr>(.*?)</tr>", page, re.S)
        )
        if row
    }
    assert cells["UTM medium"][1:] == ["—", "cpc", "cpc"]
    assert cells["UTM content"][1:] == ["—", "banner_a", "banner_a"]
    assert cells["UTM term"][1:] == ["—", "面霜", "面霜"]
    assert cells["爱好"][1:] == ["—", "瑜伽, 跑步", "瑜伽, 跑步"]
    assert cells["肤质"][1:] == ["干性", "油性", "干性"]
    assert "Lead score" not in cells


# --- 6. Merge, undo and merge-block audit entries record the address -------------------------


def test_a_merge_and_its_undo_are_audited_with_the_address(operator_client):
    survivor, duplicate = ContactFactory(), ContactFactory()

    operator_client.post(
        reverse("contacts:merge_preview", args=[survivor.pk, duplicate.pk]), REMOTE_ADDR=IP
    )
    record = MergeRecord.objects.get()
    operator_client.post(
        reverse("contacts:merge_undo", args=[record.pk]), REMOTE_ADDR="198.51.100.4"
    )

    entries = dict(AuditLog.objects.values_list("action", "ip"))
    assert entries == {
        "contact.merge": IP,
        "contact.merge_undo": "198.51.100.4",
        # The undo marks the two as different people, from the same request.
        "contact.merge_block": "198.51.100.4",
    }


def test_marking_and_unmarking_a_pair_is_audited_with_the_address(operator_client):
    contact, other = ContactFactory(), ContactFactory()
    args = [contact.pk, other.pk]

    operator_client.post(reverse("contacts:merge_block", args=args), REMOTE_ADDR=IP)
    operator_client.post(reverse("contacts:merge_unblock", args=args), REMOTE_ADDR="198.51.100.5")

    entries = dict(AuditLog.objects.values_list("action", "ip"))
    assert entries == {"contact.merge_block": IP, "contact.merge_unblock": "198.51.100.5"}


def test_an_automatic_merge_records_no_address():
    survivor, duplicate = ContactFactory(), ContactFactory()

    contact_merge(survivor=survivor, duplicate=duplicate, reason="identify")

    assert AuditLog.objects.get(action="contact.merge").ip is None


# --- 8. English timeline entries name the fields a profile update changed --------------------

TIMELINE_ITEM = re.compile(
    r'<div class="timeline-title">(.*?)</div>\s*(?:<div class="muted small">(.*?)</div>)?'
)


@pytest.mark.parametrize(
    ("language", "title", "expected"),
    [
        ("en", "Profile updated", "Name, Phone, 肤质"),
        ("zh-hans", "资料已更新", "姓名、手机号、肤质"),
    ],
)
def test_a_profile_update_names_fields_by_their_label(operator_client, language, title, expected):
    CustomField.objects.create(key="skin_type", label="肤质", kind=CustomFieldKind.TEXT)
    contact = ContactFactory(name="林", phone="")
    contact_update(
        contact=contact, data={"name": "林小雨", "phone": "13800138000", "skin_type": "dry"}
    )
    operator_client.cookies[settings.LANGUAGE_COOKIE_NAME] = language

    page = operator_client.get(reverse("contacts:detail", args=[contact.pk])).content.decode()

    entries = dict(TIMELINE_ITEM.findall(html.unescape(page)))
    assert entries[title] == expected


# --- 10. A long import cell is cut, with its whole value in a tooltip -------------------------


def test_a_long_import_preview_cell_is_cut_with_a_tooltip(admin_client, media):
    long_note = "这是一段非常非常长的备注" * 10
    job = upload([{"手机号": "13800138000", "城市": long_note}, {"手机号": "13900139000"}])

    page = admin_client.get(reverse("contacts_io:import_mapping", args=[job.pk])).content.decode()

    preview = page[page.index('id="import-preview"') :]
    assert f'<span class="clip-line cell-clip" title="{long_note}">{long_note}</span>' in preview
    assert "<td>13800138000</td>" in preview  # a short value as it was
    assert preview.count(long_note) == 2  # once shown (cut), once in the title


# --- 5. The custom field admin takes the choices as a typed list -----------------------------

ADD_FIELD = {"key": "hobbies", "label": "爱好", "kind": "multi_choice", "position": 0}


@pytest.mark.parametrize(
    ("typed", "saved"),
    [
        ("瑜伽,跑步", ["瑜伽", "跑步"]),
        ("瑜伽，跑步、游泳", ["瑜伽", "跑步", "游泳"]),
        ("瑜伽\r\n跑步\r\n\r\n 骑行 \r\n", ["瑜伽", "跑步", "骑行"]),
        ('["瑜伽", "跑步, 快走"]', ["瑜伽", "跑步, 快走"]),
    ],
)
def test_the_admin_takes_choices_as_a_list_or_as_json(admin_client, typed, saved):
    response = admin_client.post(
        reverse("admin:contacts_customfield_add"), {**ADD_FIELD, "choices": typed}
    )

    assert response.status_code == 302
    assert CustomField.objects.get(key="hobbies").choices == saved


def test_the_admin_keeps_refusing_bad_choices(admin_client):
    url = reverse("admin:contacts_customfield_add")

    broken = admin_client.post(url, {**ADD_FIELD, "choices": '["瑜伽", "跑步"'})
    repeated = admin_client.post(url, {**ADD_FIELD, "choices": "瑜伽,瑜伽"})
    empty = admin_client.post(url, {**ADD_FIELD, "choices": " , 、"})

    # The admin speaks the default language (zh-Hans): "…或填写 JSON 列表…".
    assert "JSON" in str(broken.context["adminform"].form.errors["choices"])
    assert '["瑜伽", "跑步"' in html.unescape(
        broken.content.decode()
    )  # what was typed, shown again
    assert repeated.context["adminform"].form.errors["choices"]
    assert empty.context["adminform"].form.errors["choices"]
    assert not CustomField.objects.exists()


def test_the_admin_shows_choices_one_per_line_and_saves_them_unchanged(admin_client):
    plain = CustomField.objects.create(
        key="hobbies", label="爱好", kind="multi_choice", choices=["瑜伽", "跑步"]
    )
    commas = CustomField.objects.create(
        key="sizes", label="尺码", kind="single_choice", choices=["S, 小", "M"]
    )
    text = CustomField.objects.create(key="remark", label="备注", kind="text")
    for field, shown in (
        (plain, "瑜伽\n跑步"),
        (commas, json.dumps(["S, 小", "M"], ensure_ascii=False)),
        (text, ""),
    ):
        url = reverse("admin:contacts_customfield_change", args=[field.pk])
        form = admin_client.get(url).context["adminform"].form
        assert form["choices"].value() == shown

        data = {k: form[k].value() for k in ("key", "label", "kind", "position", "choices")}
        response = admin_client.post(url, {**data, "label": field.label + "!", "is_active": "on"})

        assert response.status_code == 302
        field.refresh_from_db()
        assert field.label.endswith("!")
        assert field.choices == {plain.pk: ["瑜伽", "跑步"], commas.pk: ["S, 小", "M"]}.get(
            field.pk, []
        )


def test_the_admin_says_how_to_type_the_choices(admin_client, settings):
    settings.LANGUAGE_CODE = "en"

    page = admin_client.get(reverse("admin:contacts_customfield_add")).content.decode()

    assert "separated by commas or 、, or one per line" in html.unescape(page)


# --- Consent toast: granted or withdrawn ------------------------------------------------------


@pytest.mark.parametrize(
    ("granted", "toast"),
    [
        ("1", "Consent granted: SMS · Marketing."),
        ("0", "Consent withdrawn: SMS · Marketing."),
    ],
)
def test_the_consent_toast_says_what_was_recorded(operator_client, granted, toast):
    contact = ContactFactory()
    operator_client.cookies[settings.LANGUAGE_COOKIE_NAME] = "en"

    response = operator_client.post(
        reverse("contacts:consent", args=[contact.pk]),
        {"channel": "sms", "purpose": "marketing", "granted": granted, "source": "门店"},
    )

    assert [str(m) for m in get_messages(response.wsgi_request)] == [toast]
    assert contact.consents.get().granted is (granted == "1")
