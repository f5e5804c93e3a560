"""The rule builder: a rule rendered as rows and posted back is the same rule."""

import re
from html.parser import HTMLParser

import pytest
from django.urls import reverse
from django.utils import translation
from django.utils.translation import trans_real

from contacts.models import CustomField, CustomFieldKind
from membership.models import Tier
from segments.forms import rule_apply_action, rule_error_part, rule_from_post
from segments.models import Segment
from segments.services import segment_create
from tests.factories import SegmentFactory, StoreFactory, TagFactory
from tests.segments.posts import CITY_ROW, builder_post

pytestmark = pytest.mark.django_db


class FormFields(HTMLParser):
    """What a browser would submit for the form with the given id (successful controls only)."""

    def __init__(self, form_id: str) -> None:
        super().__init__()
        self.form_id = form_id
        self.inside = False
        self.select: tuple[str, bool] | None = None
        self.options: list[tuple[str, bool]] = []
        self.option_open: dict | None = None
        self.textarea: str | None = None
        self.pairs: list[tuple[str, str]] = []

    def handle_starttag(self, tag, attrs):
        a = dict(attrs)
        if tag == "form" and a.get("id") == self.form_id:
            self.inside = True
        if not self.inside:
            return
        if tag == "input" and a.get("name"):
            kind = a.get("type", "text")
            if kind in ("checkbox", "radio") and "checked" not in a:
                return
            if kind in ("submit", "button", "file"):
                return
            self.pairs.append((a["name"], a.get("value", "on" if kind == "checkbox" else "")))
        elif tag == "select":
            self.select = (a.get("name"), "multiple" in a)
            self.options = []
        elif tag == "option" and self.select is not None:
            self.options.append((a.get("value", ""), "selected" in a))
        elif tag == "textarea":
            self.textarea = a.get("name")
            self.pairs.append((self.textarea, ""))

    def handle_data(self, data):
        if self.textarea is not None:
            name, text = self.pairs[-1]
            self.pairs[-1] = (name, text + data)

    def handle_endtag(self, tag):
        if tag == "form" and self.inside:
            self.inside = False
        elif tag == "textarea":
            self.textarea = None
        elif tag == "select" and self.select is not None:
            name, multiple = self.select
            chosen = [v for v, selected in self.options if selected]
            if not multiple and not chosen and self.options:
                chosen = [self.options[0][0]]
            self.pairs.extend((name, v) for v in chosen)
            self.select = None


def form_data(html: str, form_id: str = "segment-form") -> dict[str, list[str]]:
    parser = FormFields(form_id)
    parser.feed(html)
    data: dict[str, list[str]] = {}
    for name, value in parser.pairs:
        data.setdefault(name, []).append(value)
    return data


def _querydict(data: dict[str, list[str]]):
    from django.http import QueryDict

    q = QueryDict(mutable=True)
    for key, values in data.items():
        q.setlist(key, values)
    return q


@pytest.fixture
def catalogue():
    CustomField.objects.create(
        key="skin_type", label="肤质", kind=CustomFieldKind.SINGLE_CHOICE, choices=["dry", "oily"]
    )
    Tier.objects.create(name="金卡", code="gold", rank=2, min_growth=100)
    return {
        "tags": [TagFactory(name="VIP"), TagFactory(name="护肤")],
        "store": StoreFactory(),
        "other": SegmentFactory(name="老客"),
    }


def nested_rule(catalogue) -> dict:
    tags = catalogue["tags"]
    return {
        "op": "and",
        "conditions": [
            {"type": "attribute", "field": "city", "operator": "in", "value": ["上海", "杭州"]},
            {"type": "attribute", "field": "gender", "operator": "eq", "value": "female"},
            {
                "type": "attribute",
                "field": "store",
                "operator": "in",
                "value": [catalogue["store"].pk],
            },
            {
                "type": "attribute",
                "field": "birthday",
                "operator": "between",
                "value": ["1990-01-01", "1999-12-31"],
            },
            {"type": "attribute", "field": "lead_score", "operator": "gte", "value": 10},
            {
                "type": "attribute",
                "field": "last_seen_at",
                "operator": "within_last_days",
                "value": 30,
            },
            {
                "type": "attribute",
                "field": "attributes.skin_type",
                "operator": "eq",
                "value": "dry",
            },
            {
                "op": "or",
                "conditions": [
                    {"type": "tag", "match": "all", "tags": [tags[0].pk, tags[1].pk]},
                    {
                        "type": "event",
                        "name": "purchase",
                        "measure": "count",
                        "operator": "gte",
                        "value": 2,
                        "window": {"last_days": 90},
                        "filters": [
                            {"property": "sku", "operator": "in", "value": ["A-30ML", "B-50ML"]},
                            {"property": "amount", "operator": "gt", "value": 100},
                        ],
                    },
                    {
                        "op": "not",
                        "conditions": [
                            {
                                "type": "membership",
                                "field": "tier",
                                "operator": "in",
                                "value": ["gold"],
                            },
                            {
                                "type": "consent",
                                "channel": "sms",
                                "purpose": "marketing",
                                "state": "withdrawn",
                            },
                        ],
                    },
                ],
            },
            {
                "type": "event",
                "name": "refund",
                "measure": "not_performed",
                "window": {"from": "2026-01-01", "to": "2026-06-30"},
            },
            {"type": "reachable", "channel": "wechat_oa", "value": False},
            {"type": "segment", "match": "not_in", "segment": catalogue["other"].pk},
            {"type": "rfm", "match": "in", "layers": ["important_value", "general_value"]},
            {"type": "koc", "operator": "score_gte", "value": 2.5},
            {"type": "membership", "field": "is_member", "operator": "is_true"},
        ],
    }


def test_a_nested_rule_round_trips_through_the_edit_page(operator_client, catalogue):
    rule = nested_rule(catalogue)
    segment = segment_create(name="复杂规则", rule=rule)

    page = operator_client.get(reverse("segments:edit", args=[segment.pk])).content.decode()
    data = form_data(page)

    assert rule_from_post(_querydict(data)) == rule
    response = operator_client.post(reverse("segments:edit", args=[segment.pk]), data)
    assert response.status_code == 302
    segment.refresh_from_db()
    assert segment.rule == rule


def test_actions_add_and_remove_rows_at_any_depth(operator_client, catalogue):
    rule = {"op": "and", "conditions": [{"op": "or", "conditions": []}]}
    rule = rule_apply_action(rule, "add-condition:r-0")
    rule = rule_apply_action(rule, "add-group:r-0")
    assert [c.get("op", c.get("type")) for c in rule["conditions"][0]["conditions"]] == [
        "attribute",
        "and",
    ]
    rule = rule_apply_action(rule, "remove:r-0-0")
    assert rule["conditions"][0]["conditions"] == [
        {
            "op": "and",
            "conditions": [{"type": "attribute", "field": "city", "operator": "eq", "value": ""}],
        }
    ]
    # The root cannot be removed, and unknown paths change nothing.
    assert rule_apply_action(rule, "remove:r") == rule
    assert rule_apply_action(rule, "add-condition:r-7-1") == rule


def test_builder_button_re_renders_the_rows_as_a_fragment(operator_client, catalogue):
    page = operator_client.get(reverse("segments:create")).content.decode()
    data = form_data(page)
    data["action"] = ["add-group:r"]

    response = operator_client.post(reverse("segments:create"), data, HTTP_HX_REQUEST="true")

    html = response.content.decode()
    assert response.status_code == 200
    assert html.lstrip().startswith('<div id="rule-builder">')
    assert 'name="r-0.kind"' in html and 'name="r-0-0.kind"' in html
    assert response["HX-Trigger-After-Settle"] == "rule-changed"
    assert list(Segment.objects.values_list("name", flat=True)) == ["老客"]


def test_switching_a_condition_kind_starts_from_that_kinds_defaults(operator_client):
    data = {
        "name": "x",
        "kind": "dynamic",
        "refresh_policy": "on_change",
        "refresh_interval_minutes": "60",
        "refresh_hour": "3",
        "r.kind": "group",
        "r.op": "and",
        "r-0.kind": "tag",
        "r-0.was": "attribute",
        "r-0.field": "city",
        "r-0.operator": "eq",
        "r-0.value": "上海",
        "action": "refresh",
    }
    response = operator_client.post(reverse("segments:create"), data, HTTP_HX_REQUEST="true")
    html = response.content.decode()
    assert 'name="r-0.match"' in html and 'name="r-0.field"' not in html


def test_changing_the_field_offers_that_fields_operators(operator_client):
    data = builder_post(
        CITY_ROW,
        name="x",
        **{
            "r-0__field": "created_at",
            "r-0__operator": "contains",
            "action": "refresh",
        },
    )
    response = operator_client.post(reverse("segments:create"), data, HTTP_HX_REQUEST="true")
    html = response.content.decode()
    assert 'value="within_last_days"' in html and 'value="contains"' not in html
    assert 'type="date" name="r-0.value"' in html


def test_value_widgets_fit_the_field(operator_client, catalogue):
    rule = nested_rule(catalogue)
    segment = segment_create(name="控件", rule=rule)
    html = operator_client.get(reverse("segments:edit", args=[segment.pk])).content.decode()
    # a multi-select of stores, a choice list for gender, two date pickers, a tag picker with
    # colours, a datalist of event names, tiers and RFM layers
    assert 'name="r-2.value" multiple' in html
    assert 'name="r-1.value"' in html and '<option value="female" selected>' in html
    assert 'type="date" name="r-3.value_lo"' in html and 'type="date" name="r-3.value_hi"' in html
    assert "--tag-color" in html
    assert '<datalist id="event-names">' in html and '<option value="purchase">' in html
    assert '<option value="gold" selected>' in html
    assert 'value="important_value" checked' in html


SET_LIKE_FIELDS = ("gender", "store", "attributes.size", "attributes.hobby")


def _canonical(node):
    """The rule as the builder must keep it: order of ticked options and placeholders aside."""
    if "op" in node:
        return {"op": node["op"], "conditions": [_canonical(c) for c in node["conditions"]]}
    node = {k: v for k, v in node.items() if v is not None}
    if node.get("type") == "koc" and not node["operator"].startswith("score_"):
        node.pop("value", None)
    if node.get("operator") in ("is_set", "not_set", "is_true", "is_false"):
        node.pop("value", None)  # ignored by the engine, so the builder does not keep it
    if node.get("type") == "event" and not node.get("filters"):
        node.pop("filters", None)
    for key in ("tags", "layers"):
        if key in node:
            node[key] = sorted(set(node[key]))
    if node.get("field") in SET_LIKE_FIELDS and isinstance(node.get("value"), list):
        node["value"] = sorted(set(node["value"]))
    return node


@pytest.fixture
def property_catalogue():
    from contacts.models import Store, Tag, TagGroup
    from tests.segments import test_rules_property as prop

    group = TagGroup.objects.create(name="兴趣")
    tags = [Tag.objects.create(group=group, name=f"t{i}") for i in range(3)]
    stores = [Store.objects.create(code=f"s{i}", name=f"门店{i}") for i in range(2)]
    for key, kind, choices in (
        ("level", "number", []),
        ("hobby", "multi_choice", prop.HOBBIES),
        ("vip", "boolean", []),
        ("since", "date", []),
        ("size", "single_choice", prop.CHOICES),
        ("note", "text", []),
    ):
        CustomField.objects.create(key=key, label=key, kind=kind, choices=choices)
    Tier.objects.create(name="银卡", code="silver", rank=1)
    Tier.objects.create(name="金卡", code="gold", rank=2)
    other = Segment.objects.create(name="静态名单", kind="static")
    return prop.rules([t.pk for t in tags], [s.pk for s in stores], other.pk)


def test_every_valid_rule_round_trips_through_the_rows(property_catalogue):
    """Property: whatever valid rule is stored, the rows it renders post back the same rule."""
    from django.template.loader import render_to_string
    from hypothesis import HealthCheck, given, settings

    from segments.forms import builder_tree
    from segments.rules import validate_rule

    @settings(max_examples=150, deadline=None, suppress_health_check=list(HealthCheck))
    @given(rule=property_catalogue)
    def check(rule):
        if "op" not in rule:
            rule = {"op": "and", "conditions": [rule]}
        validate_rule(rule)
        html = render_to_string("segments/_rule_node.html", {"n": builder_tree(rule)})
        posted = rule_from_post(_querydict(form_data(f'<form id="f">{html}</form>', "f")))
        assert _canonical(posted) == _canonical(rule)

    check()


def _rows(**fields) -> dict[str, str]:
    """The form a browser posts for a root AND group with one condition at r-0."""
    return builder_post(CITY_ROW, **{"name": "上海客户", **fields})


@pytest.mark.parametrize("name", ["上海客户", ""])
def test_a_select_posting_through_htmx_re_renders_the_rows_and_never_saves(operator_client, name):
    """A select that changes the widgets (kind, field, operator …) posts without an action: with
    a valid form and rule it must not create the segment, and with an invalid one it must not
    answer 422 (which htmx does not swap in, so the select would seem dead)."""
    data = _rows(name=name, **{"r-0__field": "lead_score"})

    response = operator_client.post(reverse("segments:create"), data, HTTP_HX_REQUEST="true")

    html = response.content.decode()
    assert response.status_code == 200
    assert html.lstrip().startswith('<div id="rule-builder">')
    assert 'value="gte"' in html and 'value="contains"' not in html  # a number's operators
    assert not Segment.objects.exists()

    unchanged = operator_client.post(
        reverse("segments:create"), _rows(name=name), HTTP_HX_REQUEST="true"
    )
    assert unchanged.status_code == 200
    assert not Segment.objects.exists()


def test_the_form_itself_still_saves(operator_client):
    response = operator_client.post(reverse("segments:create"), _rows())

    segment = Segment.objects.get()
    assert response.status_code == 302 and response["Location"].endswith(f"/{segment.pk}/")
    assert segment.rule["conditions"] == [
        {"type": "attribute", "field": "city", "operator": "eq", "value": "上海"}
    ]


def test_the_preview_names_the_incomplete_condition(operator_client):
    """The live preview says which row is wrong and carries the row's message, which the
    builder's script shows next to that condition."""
    data = _rows(**{"r-0__field": "lead_score", "r-0__field_was": "lead_score"})
    data.update({"r-0.operator": "gte", "r-0.value": ""})

    html = operator_client.post(reverse("segments:preview"), data).content.decode()

    assert 'data-error-path="r-0"' in html
    row_error = html.split("<template>", 1)[1].split("</template>", 1)[0]
    assert 'class="field-error rule-error" role="alert"' in row_error
    assert _translated("zh-hans", "must be a number") in row_error  # the default UI language


# --- rule errors in the operator's language --------------------------------------------------


def _translated(language: str, msgid: str) -> str:
    with translation.override(language):
        return translation.gettext(msgid)


@pytest.fixture
def zh_rule_messages(monkeypatch):
    """The zh-hans texts of the rule errors these tests provoke, whether or not the compiled
    catalogue has them yet (it has them once the .po files are merged; this changes nothing
    then, and meanwhile it proves that what the builder shows goes through the catalogue)."""
    texts = {
        "must be a number": "须为数字",
        "must be one of %(choices)s for this field": "此字段的运算符须为以下之一：%(choices)s",
    }
    catalog = trans_real.translation("zh-hans")._catalog._catalogs[0]
    for msgid, text in texts.items():
        monkeypatch.setitem(catalog, msgid, text)
    return texts


def _bad_value_rows() -> dict[str, str]:
    return _rows(
        **{"r-0__field": "lead_score", "r-0__field_was": "lead_score", "r-0__operator": "gte"},
        **{"r-0__value": "lots"},
    )


@pytest.mark.parametrize(
    ("language", "expected"), [("zh-hans", "须为数字"), ("en", "must be a number")]
)
def test_the_preview_shows_a_rule_error_in_the_operators_language(
    operator_client, zh_rule_messages, language, expected
):
    html = operator_client.post(
        reverse("segments:preview"), _bad_value_rows(), HTTP_ACCEPT_LANGUAGE=language
    ).content.decode()

    assert 'data-error-path="r-0"' in html
    row_error = html.split("<template>", 1)[1].split("</template>", 1)[0]
    assert expected in row_error
    # Only the human message: the row itself says where.
    assert "rule.conditions" not in html
    if language == "zh-hans":
        assert "must be a number" not in html


@pytest.mark.parametrize(
    ("language", "expected"), [("zh-hans", "须为数字"), ("en", "must be a number")]
)
def test_saving_shows_a_rule_error_in_the_operators_language(
    operator_client, zh_rule_messages, language, expected
):
    response = operator_client.post(
        reverse("segments:create"), _bad_value_rows(), HTTP_ACCEPT_LANGUAGE=language
    )

    html = response.content.decode()
    assert response.status_code == 422 and not Segment.objects.exists()
    error = re.search(r'<div class="field-error rule-error" role="alert">(.*?)</div>', html, re.S)
    assert error and expected in error.group(1)
    assert _translated(language, "Value") in error.group(1)  # which part of the row
    assert "rule.conditions" not in error.group(1)


def test_a_rule_error_with_a_placeholder_is_translated_before_it_is_filled(
    operator_client, zh_rule_messages
):
    data = _rows(**{"r-0__operator": "gte"})  # not an operator of a text field

    html = operator_client.post(
        reverse("segments:preview"), data, HTTP_ACCEPT_LANGUAGE="zh-hans"
    ).content.decode()

    # The operators by the names the builder shows them with, never the rule's keys (eq, neq).
    assert f"此字段的运算符须为以下之一：“{_translated('zh-hans', 'equals')}”" in html
    assert "eq, neq" not in html
    assert "must be one of" not in html


@pytest.mark.parametrize(
    ("attr", "en", "zh"),
    [
        ("value", "Value", "值"),
        ("operator", "Operator", "运算符"),
        ("filters[1].value", "Property filter 2 · Value", "属性筛选 2 · 值"),
        ("layers", "", ""),  # the RFM row has nothing else the error could be about
    ],
)
def test_the_error_names_the_part_of_the_row_by_its_label(monkeypatch, attr, en, zh):
    catalog = trans_real.translation("zh-hans")._catalog._catalogs[0]
    monkeypatch.setitem(  # until the .po files are merged (the same text afterwards)
        catalog, "Property filter %(number)s · %(part)s", "属性筛选 %(number)s · %(part)s"
    )
    with translation.override("en"):
        assert rule_error_part(attr) == en
    with translation.override("zh-hans"):
        assert rule_error_part(attr) == zh


def test_builder_rows_have_named_buttons_and_swap_at_once(operator_client):
    segment = segment_create(
        name="上海",
        rule={
            "op": "and",
            "conditions": [
                {"type": "attribute", "field": "city", "operator": "eq", "value": "上海"},
                {"type": "event", "name": "purchase", "measure": "performed"},
            ],
        },
    )
    page = operator_client.get(reverse("segments:edit", args=[segment.pk])).content.decode()
    data = form_data(page)
    data["action"] = ["add-filter:r-1"]

    html = operator_client.post(
        reverse("segments:edit", args=[segment.pk]), data, HTTP_HX_REQUEST="true"
    ).content.decode()

    # An icon-only ✕ button is announced (and found) by what it does.
    assert html.count('aria-label="删除此条件"') == 2
    assert 'aria-label="删除此筛选"' in html
    # htmx wires new rows when it settles: any delay there loses a change made meanwhile.
    swaps = re.findall(r'hx-target="#rule-builder" hx-swap="([^"]*)"', html)
    assert swaps and set(swaps) == {"outerHTML settle:0ms"}
