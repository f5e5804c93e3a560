"""What an operator meets on the segment screens, found in a walk-through of every screen: the
builder's empty pickers, static lists, archived segments, the explain page and the KOC page."""

import datetime as dt
import html

import pytest
from django.conf import settings
from django.contrib.messages import get_messages
from django.urls import reverse
from django.utils import timezone

from segments.models import SegmentKind, SegmentSize
from segments.services import segment_archive, segment_create, segment_static_add
from tests.factories import ContactFactory, TierFactory
from tests.segments.posts import builder_post

pytestmark = pytest.mark.django_db

HX = {"HTTP_HX_REQUEST": "true"}
CITY_RULE = {
    "op": "and",
    "conditions": [{"type": "attribute", "field": "city", "operator": "eq", "value": "上海"}],
}


@pytest.fixture
def english(operator_client):
    """The operator's client with the UI in English (the messages added here are not compiled
    into zh-Hans yet; the English text is what the code says)."""
    operator_client.cookies[settings.LANGUAGE_COOKIE_NAME] = "en"
    return operator_client


def _page(response) -> str:
    return html.unescape(response.content.decode())


def _messages(response) -> list[str]:
    return [str(m) for m in get_messages(response.wsgi_request)]


# The builder ------------------------------------------------------------------------------------


def test_switching_a_membership_row_to_tier_offers_the_tiers_and_no_none(english):
    TierFactory(name="金卡", code="gold")
    row = {
        "r-0.kind": "membership",
        "r-0.was": "membership",
        "r-0.field": "tier",
        # What the row posted while it was still "is a member": no value widget, is yes.
        "r-0.operator": "is_true",
    }

    page = _page(english.post(reverse("segments:create"), builder_post(row), **HX))

    assert ">金卡</option>" in page
    # The empty value was shown as an option "None" and posted back as the tier code "None".
    assert 'value="None"' not in page and ">None<" not in page


@pytest.mark.parametrize(
    ("row", "message"),
    [
        ({"r-0.kind": "tag", "r-0.was": "tag", "r-0.match": "any"}, "Tick at least one tag."),
        (
            {"r-0.kind": "segment", "r-0.was": "segment", "r-0.match": "in", "r-0.segment": ""},
            "Choose a segment.",
        ),
        (
            {
                "r-0.kind": "membership",
                "r-0.was": "membership",
                "r-0.field": "tier",
                "r-0.operator": "eq",
                "r-0.value": "",
            },
            "Choose a value.",
        ),
        (
            {
                "r-0.kind": "attribute",
                "r-0.was": "attribute",
                "r-0.field": "lifecycle_stage",
                "r-0.field_was": "lifecycle_stage",
                "r-0.operator": "in",
            },
            "Choose a value.",
        ),
    ],
)
def test_an_empty_picker_is_named_in_the_builders_words(english, row, message):
    TierFactory(code="gold")

    preview = _page(english.post(reverse("segments:preview"), builder_post(row), **HX))
    saved = english.post(reverse("segments:create"), builder_post(row))

    # Not "must be a non-empty list of tag ids" / "must be a segment id": the JSON's words.
    assert message in preview and 'data-error-path="r-0"' in preview
    assert saved.status_code == 422
    assert message in _page(saved)


def test_a_wrong_value_still_reads_as_the_rule_language_says(english):
    row = {
        "r-0.kind": "tag",
        "r-0.was": "tag",
        "r-0.match": "any",
        "r-0.tags": "999999",
    }

    preview = _page(english.post(reverse("segments:preview"), builder_post(row), **HX))

    assert "unknown tag ids [999999]" in preview


@pytest.mark.parametrize(
    ("op", "text"),
    [
        ("and", "No conditions: every contact matches."),
        ("or", "No conditions: no contact matches."),
    ],
)
def test_an_empty_group_says_what_it_matches(english, op, text):
    data = builder_post(**{"r.op": op})

    page = _page(english.post(reverse("segments:create"), data, **HX))

    assert text in page


def test_an_empty_any_of_group_really_matches_nobody(english):
    ContactFactory()

    preview = _page(english.post(reverse("segments:preview"), builder_post(**{"r.op": "or"}), **HX))

    assert 'data-count="0"' in preview


# Static lists -----------------------------------------------------------------------------------


def test_creating_a_static_list_says_list_and_how_to_fill_it(english):
    form = _page(english.get(reverse("segments:create") + "?kind=static"))
    assert "<h1>New static list</h1>" in form and "Create list" in form

    data = builder_post(name="展会名单", kind="static", refresh_policy="manual")
    response = english.post(reverse("segments:create"), data)

    assert response.status_code == 302
    assert _messages(response) == [
        "Static list “展会名单” created. Add contacts from a file here, or tick them in the "
        "contact list."
    ]


def test_an_empty_static_list_page_shows_how_to_add_members(english):
    static = segment_create(name="名单", kind=SegmentKind.STATIC)

    page = _page(english.get(reverse("segments:detail", args=[static.pk])))

    assert "This list has no members yet" in page
    assert reverse("contacts:list") in page
    assert "Last refreshed" not in page  # a list is never refreshed


def test_adding_contacts_already_in_the_list_says_so(english):
    static = segment_create(name="名单", kind=SegmentKind.STATIC)
    a, b, c = ContactFactory(), ContactFactory(), ContactFactory()
    segment_static_add(segment=static, contact_ids=[a.pk, b.pk])

    response = english.post(
        reverse("segments:static_members"),
        {"segment": static.pk, "ids": [a.pk, b.pk, c.pk], "next": "/contacts/"},
    )
    removed = english.post(
        reverse("segments:static_members"),
        {"segment": static.pk, "ids": [c.pk], "operation": "remove", "next": "/contacts/"},
    )
    again = english.post(
        reverse("segments:static_members"),
        {"segment": static.pk, "ids": [c.pk], "operation": "remove", "next": "/contacts/"},
    )

    assert _messages(response) == ["1 contact added to “名单”. 2 of them were already in the list."]
    # Messages wait in the session until a page shows them: the latest is the answer.
    assert _messages(removed)[-1] == "1 contact removed from “名单”."
    assert _messages(again)[-1] == "0 contacts removed from “名单”. 1 of them was not in the list."


def test_the_contact_list_picker_starts_on_no_list(english):
    segment_create(name="名单", kind=SegmentKind.STATIC)

    picker = _page(english.get(reverse("segments:static_picker")))

    assert '<option value="">Choose a list…</option>' in picker


def test_adding_without_choosing_a_list_goes_back_with_a_message(english):
    contact = ContactFactory()

    response = english.post(
        reverse("segments:static_members"),
        {"segment": "", "ids": [contact.pk], "next": "/contacts/?city=sh"},
    )

    assert response.status_code == 302 and response["Location"] == "/contacts/?city=sh"
    assert _messages(response) == ["Choose a static list."]


# Archived segments ------------------------------------------------------------------------------


def test_an_archived_segment_does_not_claim_to_refresh(english):
    segment = segment_create(name="上海", rule=CITY_RULE)
    segment_archive(segment=segment, archived=True)

    detail = _page(english.get(reverse("segments:detail", args=[segment.pk])))
    listing = _page(english.get(reverse("segments:list") + "?archived=1"))

    assert "Not refreshed (archived)" in detail and "When contacts change" not in detail
    assert "Add auto-tag" not in detail
    assert "Not refreshed (archived)" in listing and "When contacts change" not in listing


def test_the_contact_panel_marks_an_archived_segment(english):
    contact = ContactFactory(city="上海")
    segment = segment_create(name="上海", rule=CITY_RULE)
    segment_archive(segment=segment, archived=True)

    panel = _page(english.get(reverse("segments:contact_segments", args=[contact.pk]), **HX))

    assert '上海</a> <span class="badge">Archived</span>' in panel


# List, explain, KOC, scoring --------------------------------------------------------------------


def test_the_sparkline_tells_its_first_and_last_count(english):
    segment = segment_create(name="上海", rule=CITY_RULE)
    today = timezone.localdate()
    for days_ago, count in ((3, 12), (2, 15), (1, 20)):
        SegmentSize.objects.update_or_create(
            segment=segment,
            day=today - dt.timedelta(days=days_ago),
            defaults={"member_count": count},
        )

    page = _page(english.get(reverse("segments:list")))

    assert "<title>Members over the last 30 days: 12 → " in page


def test_explaining_an_unknown_contact_says_not_found(english):
    segment = segment_create(name="上海", rule=CITY_RULE)

    page = _page(english.get(reverse("segments:explain", args=[segment.pk]) + "?contact=987654"))

    assert "No contact found." in page


def test_the_explain_lines_start_with_a_capital(english):
    other = segment_create(name="老客", rule=CITY_RULE)
    segment = segment_create(
        name="老客里的上海人",
        rule={"op": "and", "conditions": [{"type": "segment", "match": "in", "segment": other.pk}]},
    )

    page = _page(english.get(reverse("segments:detail", args=[segment.pk])))

    assert "Is in segment “老客”" in page


def test_a_contact_name_condition_reads_as_a_persons_name(operator_client):
    segment = segment_create(
        name="张三",
        rule={
            "op": "and",
            "conditions": [
                {"type": "attribute", "field": "name", "operator": "eq", "value": "张三"}
            ],
        },
    )

    page = _page(operator_client.get(reverse("segments:detail", args=[segment.pk])))

    assert "姓名 等于 张三" in page  # 名称 is what a segment or a tag has


def test_the_koc_page_before_the_first_computation(english):
    page = _page(english.get(reverse("segments:koc")))

    assert page.count("Influence has not been computed yet.") == 2
    assert "Nobody has brought anyone in yet." not in page


def test_in_chinese_the_two_sentences_run_together(operator_client):
    static = segment_create(name="名单", kind=SegmentKind.STATIC)
    a, b = ContactFactory(), ContactFactory()
    segment_static_add(segment=static, contact_ids=[a.pk])

    response = operator_client.post(
        reverse("segments:static_members"),
        {"segment": static.pk, "ids": [a.pk, b.pk], "next": "/contacts/"},
    )

    assert _messages(response) == ["已将 1 位客户加入“名单”。其中 1 位已在名单中。"]
