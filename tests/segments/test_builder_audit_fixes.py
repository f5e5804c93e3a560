"""Fixes from the segment builder audit, the same on SQLite and PostgreSQL:

1. event property equality compares text forms, so codes made of digits ("1001", "021") match
   as typed, and numbers in stored rules keep working;
2. the event window {"last_days": 0} is today, as the docs say; the docs' examples are valid;
3. saving (and the live preview) report every invalid condition at once, each at its row;
4. the live preview does not mark a condition red before the operator has filled it in;
5. switching an event condition's measure clears the value meant for the old measure.
"""

import datetime as dt
import json
import re
from pathlib import Path

import pytest
from django.conf import settings
from django.http import QueryDict
from django.urls import reverse
from django.utils import timezone

from contacts.models import Contact, CustomField, Event
from contacts.services import MAX_CLOCK_SKEW
from core.errors import ValidationFailed
from journeys.demo import catalog
from segments.forms import builder_tree, rule_from_post, rule_problems
from segments.models import Segment
from segments.rules import compile_rule, validate_rule
from segments.rules.compiler import json_text_equals
from segments.rules.schema import errors_of, property_value_equals, rule_errors
from tests.browser import conftest as browser_fixtures
from tests.factories import ContactFactory, EventFactory
from tests.segments.posts import CITY_ROW, builder_post
from tests.segments.reference import World, property_matches, same_text
from tests.segments.test_builder import FormFields

pytestmark = pytest.mark.django_db

HX = {"HTTP_HX_REQUEST": "true"}
browser = browser_fixtures.browser  # the Playwright fixture of tests/browser
NOW = timezone.make_aware(dt.datetime(2026, 6, 15, 10, 30))
DOCS = Path(settings.BASE_DIR) / "docs" / "segments.md"


def _matching(rule: dict, now: dt.datetime | None = None) -> set[int]:
    validate_rule(rule)
    query = Contact.objects.filter(compile_rule(rule, now=now), merged_into__isnull=True)
    return set(query.values_list("pk", flat=True))


def _reference(rule: dict, now: dt.datetime) -> set[int]:
    return World(now).matching(rule)


def _event_rule(*filters: dict, **extra) -> dict:
    node = {"type": "event", "name": "coupon_redeemed", "measure": "performed", **extra}
    if filters:
        node["filters"] = list(filters)
    return {"op": "and", "conditions": [node]}


def _coupon(contact, **properties):
    return EventFactory(contact=contact, name="coupon_redeemed", properties=properties)


def _event_row(**fields: str) -> dict[str, str]:
    row = {
        "r-0.kind": "event",
        "r-0.was": "event",
        "r-0.name": "coupon_redeemed",
        "r-0.measure": "performed",
        "r-0.window": "all",
    }
    row.update({key.replace("__", "."): value for key, value in fields.items()})
    return row


def _posted(data: dict[str, str]) -> QueryDict:
    query = QueryDict(mutable=True)
    for key, value in data.items():
        query.setlist(key, value if isinstance(value, list) else [value])
    return query


# 1. Property equality compares text forms ------------------------------------------------------


@pytest.fixture
def coupons():
    """Who redeemed which coupon, the codes sent as text by one system and as numbers by
    another."""
    return {
        "text": _coupon(ContactFactory(), coupon_code="1001", store_code="021").contact,
        "number": _coupon(ContactFactory(), coupon_code=1001, store_code=21).contact,
        "other": _coupon(ContactFactory(), coupon_code="1002", store_code="21").contact,
        "none": _coupon(ContactFactory(), sku="A1").contact,
    }


def test_a_code_typed_in_the_builder_stays_text_and_matches(coupons):
    """coupon_code 等于 1001 and store_code 等于 021, typed in the builder, find the events."""
    rows = _event_row(
        **{"r-0.f0.property": "coupon_code", "r-0.f0.operator": "eq", "r-0.f0.value": "1001"},
        **{"r-0.f1.property": "store_code", "r-0.f1.operator": "eq", "r-0.f1.value": "021"},
    )
    rule = rule_from_post(_posted(builder_post(rows)))

    filters = rule["conditions"][0]["filters"]
    assert [f["value"] for f in filters] == ["1001", "021"]  # not 1001 and 21
    assert _matching(rule) == {coupons["text"].pk}


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("1001", {"text", "number"}),  # the text "1001" and the number 1001 alike
        (1001, {"text", "number"}),  # a number in a stored rule keeps working, the same way
        (1001.0, {"text", "number"}),
        ("1001.0", {"number"}),  # a number spelled with decimals; not the text "1001"
        ("1002", {"other"}),
        ("01001", set()),  # a leading zero is text: never the number 1001
    ],
)
def test_equality_matches_text_and_numbers_by_their_text(coupons, value, expected):
    rule = _event_rule({"property": "coupon_code", "operator": "eq", "value": value})

    assert _matching(rule) == {coupons[k].pk for k in expected}
    assert _reference(rule, timezone.now()) == _matching(rule)


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("021", {"text"}),  # not the number 21 an import made of it
        ("21", {"number", "other"}),
        (21, {"number", "other"}),
    ],
)
def test_a_leading_zero_is_kept(coupons, value, expected):
    rule = _event_rule({"property": "store_code", "operator": "eq", "value": value})

    assert _matching(rule) == {coupons[k].pk for k in expected}


def test_in_and_neq_compare_text_forms_too(coupons):
    one_of = _event_rule({"property": "store_code", "operator": "in", "value": ["021", 99]})
    assert _matching(one_of) == {coupons["text"].pk}
    mixed = _event_rule({"property": "coupon_code", "operator": "in", "value": ["1002", 1001]})
    assert _matching(mixed) == {coupons[k].pk for k in ("text", "number", "other")}
    # neq also holds for events without the property.
    neq = _event_rule({"property": "coupon_code", "operator": "neq", "value": "1001"})
    assert _matching(neq) == {coupons["other"].pk, coupons["none"].pk}
    for rule in (one_of, mixed, neq):
        assert _reference(rule, timezone.now()) == _matching(rule)


def test_comparisons_stay_numeric(coupons):
    """greater / less compare numbers only (a code sent as text is not > 1000)."""
    rows = _event_row(
        **{"r-0.f0.property": "coupon_code", "r-0.f0.operator": "gt", "r-0.f0.value": "1000"}
    )
    rule = rule_from_post(_posted(builder_post(rows)))

    assert rule["conditions"][0]["filters"][0]["value"] == 1000
    assert _matching(rule) == {coupons["number"].pk}


RAW_VALUES = [
    "1001", 1001, 1001.0, "021", 21, "21", 12.5, "12.5", "12.50", 0.1, "0.1", -3, "-3",
    True, False, "true", None, "", "abc", [1001], {"a": 1},
]  # fmt: skip
RULE_VALUES = ["1001", 1001, "1001.0", "021", "21", 21, "12.5", "12.50", 12.5, "0.1", 0.1,
               "-3", "+3", "true", "false", "", "abc", "1e3"]  # fmt: skip


def test_the_python_meaning_agrees_with_sql_and_the_reference():
    """schema.property_value_equals (for other callers, e.g. lead scoring) means what the
    compiled SQL means, and what the test reference means, for every pair."""
    contact = ContactFactory()
    events = {i: _coupon(contact, code=raw) for i, raw in enumerate(RAW_VALUES)}
    for value in RULE_VALUES:
        sql = set(
            Event.objects.filter(json_text_equals("properties", "code", value))
            .filter(pk__in=[e.pk for e in events.values()])
            .values_list("pk", flat=True)
        )
        python = {
            e.pk for e in events.values() if property_value_equals(e.properties["code"], value)
        }
        reference = {
            e.pk
            for e in events.values()
            if property_matches(
                e.properties, {"property": "code", "operator": "eq", "value": value}
            )
        }
        assert sql == python == reference, value
    assert same_text(True, "true") and not same_text(1, "true")


def test_a_stored_number_is_saved_unchanged_and_an_edited_value_is_text(operator_client):
    """The builder shows a stored number and posts it back as a number (a saved rule stays what
    it was); what the operator types instead is text, even digits with a leading zero."""
    rule = _event_rule(
        {"property": "coupon_code", "operator": "eq", "value": 1001},
        {"property": "store_code", "operator": "in", "value": [21, "A"]},
    )
    segment = Segment.objects.create(name="券", rule=rule)
    page = operator_client.get(reverse("segments:edit", args=[segment.pk])).content.decode()
    parser = FormFields("segment-form")
    parser.feed(page)
    fields = dict(parser.pairs)

    assert rule_from_post(_posted(fields)) == rule
    fields["r-0.f0.value"] = "021"
    fields["r-0.f1.value"] = "21, 022"
    edited = rule_from_post(_posted(fields))["conditions"][0]["filters"]
    assert edited[0]["value"] == "021"
    assert edited[1]["value"] == [21, "022"]


def test_builder_rows_render_a_code_without_losing_its_zero():
    tree = builder_tree(_event_rule({"property": "store_code", "operator": "eq", "value": "021"}))
    assert tree.children[0].extra["filters"][0]["value"] == "021"
    assert tree.children[0].extra["filters"][0]["number"] is False


# 2. {"last_days": 0} is today; the docs' examples are valid -----------------------------------


def test_a_window_of_0_days_is_today():
    today = ContactFactory()
    yesterday = ContactFactory()
    midnight = timezone.make_aware(dt.datetime.combine(timezone.localdate(NOW), dt.time.min))
    EventFactory(contact=today, name="purchase", occurred_at=midnight)
    EventFactory(contact=today, name="purchase", occurred_at=NOW + MAX_CLOCK_SKEW)
    EventFactory(contact=yesterday, name="purchase", occurred_at=midnight - dt.timedelta(seconds=1))
    rule = {
        "op": "and",
        "conditions": [{"type": "event", "name": "purchase", "window": {"last_days": 0}}],
    }

    assert _matching(rule, NOW) == {today.pk} == _reference(rule, NOW)
    counted = {**rule["conditions"][0], "measure": "count", "operator": "eq", "value": 2}
    assert _matching({"op": "and", "conditions": [counted]}, NOW) == {today.pk}


@pytest.mark.parametrize("days", [-1, 36501, 1.5, True, "0"])
def test_a_window_outside_0_to_36500_days_is_refused(days):
    rule = {
        "op": "and",
        "conditions": [{"type": "event", "name": "x", "window": {"last_days": days}}],
    }

    with pytest.raises(ValidationFailed) as refused:
        validate_rule(rule)
    assert refused.value.details == {"path": "rule.conditions[0].window.last_days"}
    assert "0–36500" in refused.value.message


def test_the_builder_saves_a_window_of_0_days(operator_client):
    data = builder_post(
        _event_row(**{"r-0.name": "purchase", "r-0.window": "last", "r-0.window_days": "0"})
    )

    response = operator_client.post(reverse("segments:create"), data)

    assert response.status_code == 302
    assert Segment.objects.get().rule["conditions"][0]["window"] == {"last_days": 0}


def _docs_examples() -> list[dict]:
    text = DOCS.read_text(encoding="utf-8")
    blocks = re.findall(r"```json\n(.*?)```", text, re.S)
    lines = [line for block in blocks for line in block.splitlines()]
    return [json.loads(line) for line in lines if line.startswith('{"type": "attribute"')]


def test_the_docs_examples_on_custom_fields_are_valid_on_the_demo():
    for key, label, kind, choices in catalog.CUSTOM_FIELDS:
        CustomField.objects.create(key=key, label=label, kind=kind, choices=list(choices))
    examples = [e for e in _docs_examples() if e["field"].startswith("attributes.")]

    assert examples, "the docs show a condition on a custom field"
    for example in examples:
        validate_rule({"op": "and", "conditions": [example]})


def test_the_docs_say_what_the_validator_accepts_for_the_window():
    text = DOCS.read_text(encoding="utf-8")
    assert '{"last_days": 0}' in text
    validate_rule(
        {"op": "and", "conditions": [{"type": "event", "name": "x", "window": {"last_days": 0}}]}
    )


# 3. Every invalid condition at once ------------------------------------------------------------

THREE_WRONG = {
    "op": "and",
    "conditions": [
        {"type": "attribute", "field": "lead_score", "operator": "gte", "value": "lots"},
        {"type": "attribute", "field": "city", "operator": "eq", "value": "上海"},
        {"op": "or", "conditions": [{"type": "event", "name": "", "measure": "performed"}]},
        {"type": "event", "name": "purchase", "window": {"last_days": -2}},
    ],
}
WRONG_PATHS = [
    "rule.conditions[0].value",
    "rule.conditions[2].conditions[0].name",
    "rule.conditions[3].window.last_days",
]


def test_validation_lists_every_invalid_condition():
    assert [e.details["path"] for e in rule_errors(THREE_WRONG)] == WRONG_PATHS

    with pytest.raises(ValidationFailed) as refused:
        validate_rule(THREE_WRONG)
    # The error names the first (as before) and lists them all.
    assert refused.value.details["path"] == WRONG_PATHS[0]
    assert [e["path"] for e in refused.value.details["errors"]] == WRONG_PATHS
    assert [e.details["path"] for e in errors_of(refused.value)] == WRONG_PATHS


def _rows_of(html: str) -> dict[str, str]:
    """Each condition row's opening tag, by its builder path."""
    return dict(
        (m.group(2), m.group(1))
        for m in re.finditer(r'(<div class="rule-condition[^"]*" data-path="([^"]+)">)', html)
    )


def _at(path: str, row: dict[str, str]) -> dict[str, str]:
    """A row posted at r-0, moved to `path`."""
    return {key.replace("r-0.", f"{path}.", 1): value for key, value in row.items()}


SCORE_ROW = {
    "r-0.kind": "attribute",
    "r-0.was": "attribute",
    "r-0.field": "lead_score",
    "r-0.field_was": "lead_score",
    "r-0.operator": "gte",
    "r-0.value": "lots",
}
BAD_WINDOW_ROW = _event_row(
    **{"r-0.name": "purchase", "r-0.window": "last", "r-0.window_days": "x"}
)


def test_saving_marks_every_invalid_condition(operator_client):
    data = builder_post(SCORE_ROW, _at("r-1", BAD_WINDOW_ROW), _at("r-2", CITY_ROW))

    response = operator_client.post(reverse("segments:create"), data)

    html = response.content.decode()
    assert response.status_code == 422 and not Segment.objects.exists()
    rows = _rows_of(html)
    assert "has-error" in rows["r-0"] and "has-error" in rows["r-1"]
    assert "has-error" not in rows["r-2"]
    assert html.count('class="field-error rule-error"') == 2


def test_the_preview_names_every_invalid_condition(operator_client):
    data = builder_post(SCORE_ROW, _at("r-1", BAD_WINDOW_ROW))

    html = operator_client.post(reverse("segments:preview"), data, **HX).content.decode()

    assert 'data-error-path="r-0"' in html and 'data-error-path="r-1"' in html
    assert "data-unfilled" not in html and "data-count" not in html
    assert "alert-error" in html


# 4. No red on a condition the operator has not filled in yet --------------------------------


def test_a_fresh_condition_is_not_marked_during_the_live_preview(operator_client):
    """A condition just added (city equals "") is incomplete: no count, no red row; saving
    still refuses it at that row."""
    fresh = builder_post(CITY_ROW, **{"r-0.value": ""})

    preview = operator_client.post(reverse("segments:preview"), fresh, **HX).content.decode()

    assert "data-count" not in preview  # still no count for an incomplete rule
    assert "alert-error" not in preview and 'role="status"' in preview
    assert re.search(r'data-error-path="r-0" data-unfilled', preview)
    saved = operator_client.post(reverse("segments:create"), fresh)
    assert saved.status_code == 422
    assert "has-error" in _rows_of(saved.content.decode())["r-0"]


def test_a_filled_in_wrong_value_is_still_marked_next_to_a_fresh_one(operator_client):
    data = builder_post(
        {
            "r-0.kind": "attribute", "r-0.was": "attribute", "r-0.field": "lead_score",
            "r-0.field_was": "lead_score", "r-0.operator": "between",
            "r-0.value_lo": "", "r-0.value_hi": "",
        },
        {k.replace("r-0", "r-1"): v for k, v in CITY_ROW.items()} | {"r-1.value": "上海"},
        {k.replace("r-0", "r-2"): v for k, v in CITY_ROW.items()} | {"r-2.field": "lead_score",
         "r-2.field_was": "lead_score", "r-2.operator": "gte", "r-2.value": "lots"},
    )  # fmt: skip
    rule = rule_from_post(_posted(data))

    with pytest.raises(ValidationFailed) as refused:
        validate_rule(rule)
    problems = rule_problems(refused.value, rule)

    assert [(p.path, p.unfilled) for p in problems] == [("r-0", True), ("r-2", False)]
    html = operator_client.post(reverse("segments:preview"), data, **HX).content.decode()
    assert "alert-error" in html and "lots" not in html.split("<template>")[0]


@pytest.mark.parametrize(
    ("node", "unfilled"),
    [
        ({"type": "tag", "match": "any", "tags": []}, True),
        ({"type": "segment", "match": "in", "segment": None}, True),
        ({"type": "event", "name": "", "measure": "performed"}, True),
        ({"type": "event", "name": "x", "filters": [{"property": "", "operator": "eq"}]}, True),
        ({"type": "event", "name": "x", "window": {"from": "2026-01-01", "to": ""}}, True),
        ({"type": "event", "name": "x", "measure": "sum", "operator": "gte", "value": "x"}, False),
        ({"type": "attribute", "field": "nope", "operator": "eq", "value": "1"}, False),
    ],
)
def test_which_conditions_count_as_not_filled_in(node, unfilled):
    rule = {"op": "and", "conditions": [node]}
    with pytest.raises(ValidationFailed) as refused:
        validate_rule(rule)
    assert [p.unfilled for p in rule_problems(refused.value, rule)] == [unfilled]


# 5. Switching the measure clears the value ---------------------------------------------------


def _measured(measure: str, was: str, operator: str = "gte", value: str = "500") -> dict:
    return builder_post(
        _event_row(
            **{"r-0.name": "purchase", "r-0.measure": measure, "r-0.measure_was": was},
            **{"r-0.operator": operator, "r-0.value": value},
        )
    )


def test_switching_from_sum_to_count_clears_the_value(operator_client):
    rule = rule_from_post(_posted(_measured("count", "sum")))
    node = rule["conditions"][0]
    assert node["measure"] == "count" and node["operator"] == "gte" and node["value"] is None

    rows = operator_client.post(reverse("segments:create"), _measured("count", "sum"), **HX)
    html = rows.content.decode()
    assert 'name="r-0.measure_was" value="count"' in html
    assert re.search(r'name="r-0.value" value=""', html)
    saved = operator_client.post(reverse("segments:create"), _measured("count", "sum"))
    assert saved.status_code == 422 and not Segment.objects.exists()


def test_switching_to_a_date_measure_clears_the_comparison_too():
    node = rule_from_post(_posted(_measured("last", "count")))["conditions"][0]
    assert node["operator"] == "" and node["value"] is None
    assert builder_tree({"op": "and", "conditions": [node]}).children[0].value.value == ""


def test_the_same_measure_keeps_its_value(operator_client):
    node = rule_from_post(_posted(_measured("sum", "sum")))["conditions"][0]
    assert node["value"] == 500
    # A post without the hidden field (an older page) keeps it too.
    data = _measured("sum", "sum")
    del data["r-0.measure_was"]
    assert rule_from_post(_posted(data))["conditions"][0]["value"] == 500


# In a real browser ----------------------------------------------------------------------------


@pytest.mark.browser
@pytest.mark.django_db(transaction=True)
def test_the_builder_in_a_browser(browser, live_server):
    """A fresh condition is not red while the preview runs; every wrong condition is; a code
    with a leading zero is found; switching sum to count empties the value."""
    from playwright.sync_api import expect

    from tests.browser.test_segment_builder import _login
    from tests.factories import UserFactory

    UserFactory(username="yunying")
    for code in ("021", "21"):
        _coupon(ContactFactory(), store_code=code)
    page = browser.new_page(locale="zh-CN", viewport={"width": 1400, "height": 1000})
    page.set_default_timeout(15_000)
    expect.set_options(timeout=15_000)
    _login(page, live_server, "yunying")
    preview = page.locator("#rule-preview")
    builder = page.locator("#rule-builder")

    def condition(path: str):
        return page.locator(f'.rule-condition[data-path="{path}"]')

    def settled() -> None:
        expect(builder).not_to_have_attribute("aria-busy", "true")

    def add_condition() -> None:
        page.locator('.rule-group[data-path="r"] > .rule-group-actions button').first.click()
        settled()

    page.goto(f"{live_server.url}/segments/new/")
    expect(preview.locator(".preview-count")).to_be_visible()

    # A fresh condition: no count, no red row.
    add_condition()
    expect(preview.get_by_role("status")).to_contain_text("规则尚未填写完整")
    expect(condition("r-0").get_by_role("alert")).to_have_count(0)

    # Two wrong conditions: both are marked at once.
    condition("r-0").locator('select[name="r-0.field"]').select_option("lead_score")
    settled()
    condition("r-0").locator('select[name="r-0.operator"]').select_option("between")
    settled()
    condition("r-0").locator('input[name="r-0.value_lo"]').fill("10")
    condition("r-0").locator('input[name="r-0.value_hi"]').fill("5")  # low above high
    add_condition()
    condition("r-1").locator('select[name="r-1.kind"]').select_option("event")
    settled()
    condition("r-1").locator('input[name="r-1.name"]').fill("coupon_redeemed")
    condition("r-1").locator('select[name="r-1.window"]').select_option("last")
    settled()
    condition("r-1").locator('input[name="r-1.window_days"]').fill("-3")
    add_condition()
    condition("r-2").locator('input[name="r-2.value"]').fill("上海")
    expect(preview.get_by_role("alert")).to_contain_text("规则尚未填写完整")
    expect(condition("r-0").get_by_role("alert")).to_have_count(1)
    expect(condition("r-1").get_by_role("alert")).to_have_count(1)
    expect(condition("r-2").get_by_role("alert")).to_have_count(0)

    # Fixed, and narrowed to the store code 021: one contact (not the one with 21).
    condition("r-2").locator(".rule-remove").click()
    settled()
    condition("r-0").locator(".rule-remove").click()
    settled()
    row = condition("r-0")
    row.locator('input[name="r-0.window_days"]').fill("0")
    row.locator('button[value="add-filter:r-0"]').click()
    settled()
    row.locator('input[name="r-0.f0.property"]').fill("store_code")
    row.locator('input[name="r-0.f0.value"]').fill("021")
    expect(preview.locator(".preview-count [data-count]")).to_have_attribute("data-count", "1")

    # From a sum of 500 to a count: the value is emptied, not kept as "count ≥ 500".
    row.locator('select[name="r-0.measure"]').select_option("sum")
    settled()
    row.locator('select[name="r-0.operator"]').select_option("gte")
    settled()
    row.locator('input[name="r-0.value"]').fill("500")
    expect(preview.locator(".preview-count [data-count]")).to_have_attribute("data-count", "0")
    row.locator('select[name="r-0.measure"]').select_option("count")
    settled()
    expect(row.locator('input[name="r-0.value"]')).to_have_value("")
    expect(row.locator('select[name="r-0.operator"]')).to_have_value("gte")
    expect(preview.get_by_role("status")).to_contain_text("规则尚未填写完整")
    expect(row.get_by_role("alert")).to_have_count(0)
