"""Fixes from the audit of the operator UI in English and Chinese: examples and plurals that read
right in each language, a person's name called 姓名 (not 名称), RFM layer pages led by the
label in the page's language, a favicon for every page, and an API schema in the API's
language."""

import json
import re
from pathlib import Path

import pytest
from django.contrib.staticfiles import finders
from django.urls import reverse
from django.utils import translation
from rest_framework.test import APIClient

from contacts.models import Contact, CustomField
from core.models import Job, JobStatus
from segments import static_import
from segments.models import SegmentKind
from segments.services import STATIC_MEMBERS_JOB_KIND, segment_create, segment_static_add
from tests.contacts.importing import upload
from tests.factories import ContactFactory, TagFactory
from tests.segments.posts import CITY_ROW, builder_post

pytestmark = pytest.mark.django_db

EN = {"HTTP_ACCEPT_LANGUAGE": "en"}
ZH = {"HTTP_ACCEPT_LANGUAGE": "zh-hans"}
CJK = re.compile(r"[\u4e00-\u9fff]")
CITY_RULE = {
    "op": "and",
    "conditions": [{"type": "attribute", "field": "city", "operator": "eq", "value": "上海"}],
}


@pytest.fixture
def media(settings, tmp_path):
    """Uploads under a temporary MEDIA_ROOT."""
    settings.MEDIA_ROOT = tmp_path
    return tmp_path


def _text(html: str) -> str:
    """The page's visible words on one line: tags dropped, whitespace collapsed."""
    return re.sub(r"\s+", " ", re.sub(r"<[^>]+>", " ", html)).strip()


def _page(client, url: str, headers: dict) -> str:
    response = client.get(url, **headers)
    assert response.status_code == 200, response.status_code
    return response.content.decode()


def _sentence(text: str, start: str) -> str:
    """The sentence of `text` that starts with `start`, up to its full stop."""
    index = text.index(start)
    return text[index : text.index(".", index + len(start)) + 1]


# --- 1. The column mapping page: examples in the page's language, a plural for the rows -----


def _mapping_page(client, rows: list[dict], headers: dict) -> str:
    job = upload(rows)
    return _page(client, reverse("contacts_io:import_mapping", args=[job.pk]), headers)


def test_the_mapping_hint_gives_english_examples_in_english(admin_client, media):
    page = _text(_mapping_page(admin_client, [{"phone": "13800138000"}] * 3, EN))

    hint = page[page.index("About 3 rows.") : page.index("skip a column.")]
    assert "(Phone, Name, Email …; headers in English or Chinese are both recognised)" in hint
    assert not CJK.search(hint), hint


def test_the_mapping_hint_counts_one_row_in_the_singular(admin_client, media):
    page = _text(_mapping_page(admin_client, [{"phone": "13800138000"}], EN))

    assert "About 1 row." in page
    assert "About 1 rows" not in page


def test_the_mapping_hint_gives_chinese_examples_in_chinese(admin_client, media):
    page = _text(_mapping_page(admin_client, [{"手机号": "13800138000"}] * 2, ZH))

    assert "约 2 行。" in page
    assert "如手机号、姓名、邮箱" in page
    assert "中文和英文列名均可识别" in page


def test_tags_for_every_imported_row_are_chips_like_the_tag_filter(admin_client, media):
    TagFactory(name="护肤")
    TagFactory(name="彩妆")

    page = _mapping_page(admin_client, [{"phone": "13800138000"}], EN)

    chips = page[page.index('<div class="checkbox-chips">') :]
    chips = chips[: chips.index("</div>")]
    assert chips.count('<label class="chip">') == 2
    assert chips.count('type="checkbox" name="tags"') == 2
    assert "<legend" in page and "Tag every imported contact with</legend>" in page


# --- 2. Counts in English take the singular for one ------------------------------------------


def test_the_builder_preview_says_contact_or_contacts(operator_client):
    data = builder_post(CITY_ROW)
    ContactFactory()

    one = _text(operator_client.post(reverse("segments:preview"), data, **EN).content.decode())
    ContactFactory()
    two = _text(operator_client.post(reverse("segments:preview"), data, **EN).content.decode())
    chinese = _text(operator_client.post(reverse("segments:preview"), data, **ZH).content.decode())

    assert "1 contact matches now" in one
    assert "2 contacts match now" in two
    assert "2 位客户当前符合" in chinese


def _static_list(size: int):
    segment = segment_create(name="VIP", kind=SegmentKind.STATIC)
    segment_static_add(segment=segment, contact_ids=[ContactFactory().pk for _ in range(size)])
    segment.refresh_from_db()
    return segment


def _static_members_job(segment, *, changed: int, remove: bool, user) -> Job:
    """A finished add-to-list (or remove-from-list) job, as the background task leaves it."""
    return Job.objects.create(
        kind=STATIC_MEMBERS_JOB_KIND,
        status=JobStatus.SUCCEEDED,
        params={"segment_id": segment.pk, "segment": segment.name, "remove": remove},
        total=changed,
        done=changed,
        result={"changed": changed},
        created_by=user,
    )


@pytest.mark.parametrize(
    ("changed", "remove", "english", "chinese"),
    [
        (1, False, "1 contact added to “VIP”.", "已将 1 位客户加入“VIP”。"),
        (2, False, "2 contacts added to “VIP”.", "已将 2 位客户加入“VIP”。"),
        (1, True, "1 contact removed from “VIP”.", "已从“VIP”移除 1 位客户。"),
        (3, True, "3 contacts removed from “VIP”.", "已从“VIP”移除 3 位客户。"),
    ],
)
def test_a_finished_list_job_counts_its_contacts(
    operator_client, operator, changed, remove, english, chinese
):
    segment = _static_list(1)
    job = _static_members_job(segment, changed=changed, remove=remove, user=operator)
    url = f"{reverse('segments:detail', args=[segment.pk])}?job={job.pk}"

    assert english in _text(_page(operator_client, url, EN))
    assert chinese in _text(_page(operator_client, url, ZH))


@pytest.mark.parametrize(
    ("done", "total", "english", "wrong", "chinese"),
    [
        # A running job shows at most 99%: the last step (writing the result) is still to come.
        (1, 1, "1 of 1 row (99%)", "1 of 1 rows", "已处理 1 / 1 行（99%）"),
        (0, 2, "0 of 2 rows (0%)", "0 of 2 row ", "已处理 0 / 2 行（0%）"),
        (1, 0, "1 row", "1 rows", "已处理 1 行"),
        (2, 0, "2 rows", "2 row ", "已处理 2 行"),
    ],
)
def test_job_progress_counts_rows_in_the_singular_for_one(
    operator_client, operator, done, total, english, wrong, chinese
):
    segment = _static_list(1)
    job = _static_members_job(segment, changed=0, remove=False, user=operator)
    Job.objects.filter(pk=job.pk).update(status=JobStatus.RUNNING, done=done, total=total)
    url = f"{reverse('segments:detail', args=[segment.pk])}?job={job.pk}"

    page = _text(_page(operator_client, url, EN))
    progress = page[page.index("Progress Running") :][:60]

    assert english in progress and wrong not in progress, progress
    assert chinese in _text(_page(operator_client, url, ZH))


def _static_import_job(segment, user, **result) -> Job:
    return Job.objects.create(
        kind=static_import.STATIC_IMPORT_JOB_KIND,
        status=JobStatus.SUCCEEDED,
        params={"segment_id": segment.pk},
        total=1,
        done=1,
        result={"rows": 1, "matched": 1, "duplicates": 0, "added": 1, "unmatched": 0, **result},
        created_by=user,
    )


@pytest.mark.parametrize(
    ("members", "english", "chinese"),
    [
        (1, "The list now holds 1 contact.", "名单现有 1 位客户。"),
        (2, "The list now holds 2 contacts.", "名单现有 2 位客户。"),
    ],
)
def test_a_list_import_result_counts_the_lists_members(
    operator_client, operator, members, english, chinese
):
    segment = _static_list(members)
    job = _static_import_job(segment, operator)
    url = f"{reverse('segments:static_import', args=[segment.pk])}?job={job.pk}"

    assert english in _text(_page(operator_client, url, EN))
    assert chinese in _text(_page(operator_client, url, ZH))


def test_the_list_import_page_states_its_row_limit_and_counts_without_broken_plurals(
    operator_client, operator
):
    segment = _static_list(1)
    job = _static_import_job(segment, operator)
    Job.objects.filter(pk=job.pk).update(
        status=JobStatus.RUNNING,
        total=10,
        done=3,
        result={"rows": 3, "matched": 1, "duplicates": 1, "unmatched": 1},
    )
    url = f"{reverse('segments:static_import', args=[segment.pk])}?job={job.pk}"

    page = _text(_page(operator_client, url, EN))

    limit = f"{static_import.STATIC_IMPORT_MAX_ROWS:,}"
    assert f"Up to {limit} rows." in page
    # One count of each: "1 contacts found" and "1 rows matched" are gone with the label form.
    assert "So far: contacts found 1, repeated rows 1, rows that matched nobody 1." in page, page
    assert "目前已找到 1 位客户，1 行重复，1 行未匹配到任何人。" in _text(
        _page(operator_client, url, ZH)
    )


@pytest.mark.parametrize(
    ("changed", "processed", "english"),
    [
        (1, 1, "Tagged the 1 contact."),
        (3, 3, "Tagged all 3 contacts."),
        (0, 1, "The 1 contact already had the tag."),
        (0, 4, "All 4 contacts already had the tag."),
        (1, 2, "Tagged 1 of 2 contacts; the others already had the tag."),
    ],
)
def test_a_bulk_tag_result_counts_in_english(
    operator_client, operator, changed, processed, english
):
    tag = TagFactory(name="VIP")
    job = Job.objects.create(
        kind="contacts.bulk_tag",
        status=JobStatus.SUCCEEDED,
        params={"add": True, "tag": tag.name, "tag_id": tag.pk},
        total=processed,
        done=processed,
        result={"changed": changed, "processed": processed},
        created_by=operator,
    )

    page = _text(_page(operator_client, reverse("contacts:bulk_job", args=[job.pk]), EN))

    assert english in page


# --- 3. A person's name is 姓名 --------------------------------------------------------------


def test_the_contact_pages_call_a_persons_name_xingming(operator_client):
    contact = ContactFactory(name="林小雨")
    other = ContactFactory(name="林小雨")

    listing = _page(operator_client, reverse("contacts:list"), ZH)
    detail = _page(operator_client, reverse("contacts:detail", args=[contact.pk]), ZH)
    merge = _page(operator_client, f"{reverse('contacts:merge', args=[contact.pk])}?q=林小雨", ZH)
    edit = _page(operator_client, reverse("contacts:edit", args=[contact.pk]), ZH)

    assert "<th>姓名</th>" in listing
    assert "<dt>姓名</dt>" in detail
    assert "<th>姓名</th>" in merge and f"#{other.pk}" in merge
    assert re.search(r'<label class="field-label" for="id_name">姓名', edit), edit
    for page in (listing, detail, merge, edit):
        assert "<th>名称</th>" not in page and "<dt>名称</dt>" not in page


def test_the_model_field_is_the_persons_name():
    with translation.override("zh-hans"):
        assert str(Contact._meta.get_field("name").verbose_name) == "姓名"
    with translation.override("en"):
        assert str(Contact._meta.get_field("name").verbose_name) == "name"


def test_an_api_error_about_the_name_says_xingming_in_chinese(api):
    contact = ContactFactory()

    chinese = api.patch(
        f"/api/v1/contacts/{contact.pk}", {"name": 7}, format="json", HTTP_ACCEPT_LANGUAGE="zh-CN"
    )
    english = api.patch(f"/api/v1/contacts/{contact.pk}", {"name": 7}, format="json")

    assert chinese.status_code == english.status_code == 400
    assert chinese.json()["error"]["message"] == "字段“姓名”须为文本。"
    assert english.json()["error"]["message"] == "Field 'Name' must be text."


# --- 4. An RFM layer page leads with the label in the page's language -------------------------


def test_an_rfm_layer_page_leads_with_the_english_label_in_english(operator_client):
    page = _page(operator_client, reverse("segments:rfm_layer", args=["important_value"]), EN)

    title = re.search(r"<title>(.*?)</title>", page, re.S).group(1)
    heading = _text(re.search(r"<h1>(.*?)</h1>", page, re.S).group(1))
    assert title.startswith("Important value (重要价值) · RFM")
    assert heading.startswith("Important value 重要价值")
    assert '<span lang="zh-Hans">重要价值</span>' in page


def test_an_rfm_layer_page_leads_with_the_classic_name_in_chinese(operator_client):
    page = _page(operator_client, reverse("segments:rfm_layer", args=["important_value"]), ZH)

    title = re.search(r"<title>(.*?)</title>", page, re.S).group(1)
    heading = _text(re.search(r"<h1>(.*?)</h1>", page, re.S).group(1))
    assert title.startswith("重要价值 · RFM")
    assert heading == "重要价值 R↑F↑M↑"


# --- 5. The page names its language, which the stylesheet's font stacks follow ----------------


@pytest.mark.parametrize(("headers", "lang"), [(EN, "en"), (ZH, "zh-hans")])
def test_pages_name_their_language_for_the_font_stack(operator_client, headers, lang):
    page = _page(operator_client, reverse("contacts:list"), headers)

    assert f'<html lang="{lang}">' in page


def test_the_stylesheet_puts_latin_fonts_first_for_pages_not_in_chinese():
    css = Path(finders.find("css/app.css")).read_text(encoding="utf-8")

    latin_rule = css[css.index(":root:not(:lang(zh)) {") :]
    latin_rule = latin_rule[: latin_rule.index("}")]
    assert "--font: var(--font-latin-first);" in latin_rule
    latin = css[css.index("--font-latin-first:") :]
    latin = latin[: latin.index(";")]
    assert latin.index("Arial") < latin.index('"Noto Sans CJK SC"')
    cjk = css[css.index("--font-cjk-first:") :]
    cjk = cjk[: cjk.index(";")]
    assert cjk.index('"Noto Sans CJK SC"') < cjk.index("Arial")


# --- 6. The rule builder's value placeholder is short enough to read -------------------------


def test_the_property_filter_value_has_a_short_placeholder_and_a_full_hint(operator_client):
    data = builder_post(
        {"r-0.kind": "event", "r-0.was": "event", "r-0.event": "purchase"},
        name="购买",
        action="add-filter:r-0",
    )

    page = operator_client.post(reverse("segments:create"), data, **EN).content.decode()

    assert 'placeholder="value, or a,b,c"' in page
    assert 'title="For an operator that takes a list, separate the values with commas."' in page


# --- 7. A favicon for pages that name none ---------------------------------------------------


def test_favicon_ico_points_at_the_icon_in_static(client):
    response = client.get("/favicon.ico")

    assert response.status_code == 302
    assert response["Location"] == "/static/img/favicon.ico"
    assert "max-age=86400" in response["Cache-Control"]
    icon = Path(finders.find("img/favicon.ico")).read_bytes()
    assert icon[:4] == b"\x00\x00\x01\x00"  # an ICO file
    assert int.from_bytes(icon[4:6], "little") >= 2  # with more than one size


# --- 8. The API schema follows the API's language rule ---------------------------------------


def _schema(**headers):
    client = APIClient()
    client.cookies["django_language"] = "zh-hans"  # the UI's language does not count
    response = client.get("/api/schema/", {"format": "json"}, **headers)
    assert response.status_code == 200
    return response, json.loads(response.content)


def _gender_description(schema: dict) -> str:
    return schema["components"]["schemas"]["GenderEnum"]["description"]


def _shape(node):
    if isinstance(node, dict):
        return {key: _shape(value) for key, value in node.items()}
    if isinstance(node, list):
        return [_shape(value) for value in node]
    return type(node).__name__


def test_the_schema_is_english_without_accept_language_whatever_the_ui_language():
    response, schema = _schema()

    assert response["Content-Language"] == "en"
    assert "Accept-Language" in response["Vary"]
    assert "`female` - Female" in _gender_description(schema)


@pytest.mark.parametrize("accept", ["zh-CN", "fr, zh-CN;q=0.5", "zh-Hans"])
def test_the_schema_is_chinese_when_accept_language_asks_for_it(accept):
    response, schema = _schema(HTTP_ACCEPT_LANGUAGE=accept)

    assert response["Content-Language"] == "zh-hans"
    assert "`female` - 女" in _gender_description(schema)


@pytest.mark.parametrize("accept", ["en-US", "fr", "*", "zh-CN;q=0"])
def test_the_schema_is_english_for_english_or_languages_the_site_lacks(accept):
    response, schema = _schema(HTTP_ACCEPT_LANGUAGE=accept)

    assert response["Content-Language"] == "en"
    assert "`female` - Female" in _gender_description(schema)


def test_the_lang_parameter_does_not_override_the_rule():
    client = APIClient()
    response = client.get("/api/schema/", {"format": "json", "lang": "zh-hans"})

    assert response["Content-Language"] == "en"
    assert "`female` - Female" in _gender_description(json.loads(response.content))


def test_the_schema_has_one_structure_in_every_language():
    CustomField.objects.create(key="skin_type", label="肤质", kind="text")
    _, english = _schema(HTTP_ACCEPT_LANGUAGE="en")
    _, chinese = _schema(HTTP_ACCEPT_LANGUAGE="zh-CN")

    assert _shape(english) == _shape(chinese)
    properties = chinese["components"]["schemas"]["ContactOut"]["properties"]
    assert "title" not in properties["name"]
    assert properties["gender"] == {"$ref": "#/components/schemas/GenderEnum"}
