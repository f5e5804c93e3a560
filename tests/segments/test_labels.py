"""Rule summaries read as words in both languages: event names as the timeline labels them,
operators labelled, fit rules described like segment rules and edited with the builder's rows;
a duplicated segment's name is in the operator's language."""

import html

import pytest
from django.conf import settings
from django.template.loader import render_to_string
from django.urls import reverse
from django.utils import translation

from segments import scoring
from segments.models import LeadScoreRule
from segments.rule_labels import Names, describe_condition, describe_property_filter
from segments.services import segment_create, segment_duplicate
from tests.segments.posts import CITY_ROW

pytestmark = pytest.mark.django_db

HX = {"HTTP_HX_REQUEST": "true"}

EVENT_RULE = {
    "op": "and",
    "conditions": [
        {
            "type": "event",
            "name": "purchase",
            "measure": "count",
            "operator": "gte",
            "value": 2,
            "filters": [{"property": "amount", "operator": "gt", "value": 300}],
            "window": {"last_days": 90},
        }
    ],
}


def _in(language: str, msgid: str) -> str:
    with translation.override(language):
        return translation.gettext(msgid)


def _get(client, url: str, language: str, **extra) -> str:
    client.cookies[settings.LANGUAGE_COOKIE_NAME] = language
    response = client.get(url, **extra)
    assert response.status_code == 200
    return html.unescape(response.content.decode())


# --- Segment rules -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("language", "expected"),
    [
        ("zh-hans", "购买：次数 至少为 2 · amount 大于 300 近 90 天内"),
        (
            "en",
            "Purchase: number of times is at least 2 · amount is more than 300 in the last 90 days",
        ),
    ],
)
def test_a_segment_rule_names_the_event_as_the_timeline_does(operator_client, language, expected):
    segment = segment_create(name="复购", rule=EVENT_RULE)

    page = _get(operator_client, reverse("segments:detail", args=[segment.pk]), language)

    assert f'<li class="rule-depth-1">{expected}</li>' in page


@pytest.mark.parametrize("language", ["zh-hans", "en"])
def test_presence_filters_read_without_a_value(language):
    with translation.override(language):
        present = describe_property_filter({"property": "coupon", "operator": "exists"})
        absent = describe_property_filter({"property": "coupon", "operator": "not_exists"})

    assert present == f"coupon {_in(language, 'is present')}"
    assert absent == f"coupon {_in(language, 'is absent')}"


# --- Lead scoring ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("language", "event_text", "fit_lines"),
    [
        (
            "zh-hans",
            "购买 · amount 大于 100 · coupon 不存在",
            ["满足以下全部条件", "城市 等于 上海"],
        ),
        (
            "en",
            "Purchase · amount is more than 100 · coupon is absent",
            ["All of the following", "City equals 上海"],
        ),
    ],
)
def test_the_scoring_table_describes_rules_in_words(
    operator_client, language, event_text, fit_lines
):
    scoring.score_rule_create(
        data={
            "name": "大额订单",
            "kind": "event",
            "event_name": "purchase",
            "points": 10,
            "property_filters": [
                {"property": "amount", "operator": "gt", "value": 100},
                # Lead scoring spells "absent" as exists = false.
                {"property": "coupon", "operator": "exists", "value": False},
            ],
        }
    )
    scoring.score_rule_create(
        data={
            "name": "上海客户",
            "kind": "attribute",
            "points": 5,
            "condition": {
                "op": "and",
                "conditions": [
                    {"type": "attribute", "field": "city", "operator": "eq", "value": "上海"}
                ],
            },
        }
    )

    page = _get(operator_client, reverse("segments:scoring"), language)

    assert f'<td class="small">{event_text}</td>' in page
    for depth, line in enumerate(fit_lines):
        assert f'<li class="rule-depth-{depth}">{line}</li>' in page
    assert " gt " not in page and "{'op'" not in page and "'conditions'" not in page


def _rule_post(**fields: str) -> dict[str, str]:
    data = {
        "name": "上海客户",
        "kind": "attribute",
        "event_name": "",
        "points": "5",
        "cap_points": "",
        "cap_period": "none",
        "is_active": "on",
        "r.kind": "group",
        "r.op": "and",
    }
    data.update({key.replace("__", "."): value for key, value in fields.items()})
    return data


@pytest.mark.parametrize("language", ["zh-hans", "en"])
def test_fit_rules_are_edited_with_the_segment_builder(operator_client, language):
    url = reverse("segments:scoring_rule_create")
    page = _get(operator_client, url, language)
    assert 'id="rule-builder"' in page and 'name="r.kind"' in page
    assert '<textarea name="condition"' not in page

    operator_client.cookies[settings.LANGUAGE_COOKIE_NAME] = language
    added = operator_client.post(url, {**_rule_post(), "action": "add-condition:r"}, **HX)
    assert added.status_code == 200
    assert 'name="r-0.kind"' in added.content.decode() and "<html" not in added.content.decode()

    saved = operator_client.post(url, {**_rule_post(), **CITY_ROW})
    assert saved.status_code == 302
    rule = LeadScoreRule.objects.get()
    assert rule.condition == {
        "op": "and",
        "conditions": [{"type": "attribute", "field": "city", "operator": "eq", "value": "上海"}],
    }

    edit = _get(operator_client, reverse("segments:scoring_rule_edit", args=[rule.pk]), language)
    assert 'name="r-0.value"' in edit and 'value="上海"' in edit


@pytest.mark.parametrize("language", ["zh-hans", "en"])
def test_the_builder_shows_fit_rule_errors(operator_client, language):
    url = reverse("segments:scoring_rule_create")
    operator_client.cookies[settings.LANGUAGE_COOKIE_NAME] = language

    empty = operator_client.post(url, _rule_post())
    assert empty.status_code == 422
    assert _in(language, "a profile-fit rule needs a condition.") in html.unescape(
        empty.content.decode()
    )

    bad = operator_client.post(
        url,
        {
            **_rule_post(),
            **CITY_ROW,
            "r-0.field": "lead_score",
            "r-0.field_was": "lead_score",
            "r-0.operator": "gt",
            "r-0.value": "lots",
        },
    )
    assert bad.status_code == 422
    page = html.unescape(bad.content.decode())
    row = page.split('data-path="r-0"', 1)[1]
    assert 'class="field-error rule-error"' in row.split('data-path="', 1)[0]
    assert not LeadScoreRule.objects.exists()


# --- Duplicated segments -----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("language", "first", "second"),
    [("zh-hans", "上海（副本）", "上海（副本） 2"), ("en", "上海 (copy)", "上海 (copy) 2")],
)
def test_a_duplicate_is_named_in_the_operator_language(language, first, second):
    segment = segment_create(name="上海", rule=EVENT_RULE)

    with translation.override(language):
        names = [segment_duplicate(segment=segment).name for _ in range(2)]

    assert names == [first, second]


@pytest.mark.parametrize("language", ["zh-hans", "en"])
def test_a_long_name_is_cut_so_the_copy_suffix_stays(language):
    segment = segment_create(name="长" * 100, rule=EVENT_RULE)

    with translation.override(language):
        copy = segment_duplicate(segment=segment)
        suffix = translation.gettext("%(name)s (copy)") % {"name": ""}

    assert copy.name.endswith(suffix) and len(copy.name) <= 95


@pytest.mark.parametrize(
    ("language", "expected"),
    [("zh-hans", "coupon_redeemed：做过 今天"), ("en", "coupon_redeemed: did it today")],
)
def test_a_client_event_keeps_its_name_and_a_0_day_window_reads_today(language, expected):
    node = {"type": "event", "name": "coupon_redeemed", "window": {"last_days": 0}}
    with translation.override(language):
        text = describe_condition(node, Names.for_rule({"op": "and", "conditions": [node]}))

    assert text == expected


@pytest.mark.parametrize(
    ("node", "expected"),
    [
        ({"field": "last_seen_at", "operator": "within_last_days", "value": 0}, "is today"),
        ({"field": "last_seen_at", "operator": "within_last_days", "value": 1}, "last 1 day"),
        ({"field": "last_seen_at", "operator": "more_than_days_ago", "value": 1}, "1 day ago"),
        ({"field": "birthday", "operator": "anniversary_within_days", "value": 1}, "next 1 day"),
    ],
)
def test_day_counts_read_in_the_singular_and_0_days_as_today(node, expected):
    node = {"type": "attribute", **node}
    window = {"type": "event", "name": "purchase", "window": {"last_days": 1}}
    rule = {"op": "and", "conditions": [node, window]}
    with translation.override("en"):
        text = describe_condition(node, Names.for_rule(rule))
        event_text = describe_condition(window, Names.for_rule(rule))

    assert text.endswith(expected)
    assert event_text.endswith("in the last 1 day")


@pytest.mark.parametrize(
    ("language", "expected"),
    [
        ("zh-hans", '<span class="small">值：</span>须为数字'),
        ("en", '<span class="small">Value: </span>must be a number'),
    ],
)
def test_a_row_error_puts_its_label_before_the_message_in_the_languages_punctuation(
    language, expected
):
    with translation.override(language):
        html = render_to_string(
            "segments/_rule_error.html",
            {
                "error": translation.gettext("must be a number"),
                "attr": translation.gettext("Value"),
            },
        )

    assert expected in html
