"""The segment form and the rule builder.

The rule JSON is the single source of truth. The builder renders it as nested rows whose inputs
are named after the node's position (`r` is the root group, `r-2-0` the first child of its third
child), and `rule_from_post` turns the posted fields back into exactly that JSON, so editing a
segment shows its rule and saving unchanged stores it unchanged. Adding or removing rows is an
action applied to the parsed tree and re-rendered by the server (no client-side state).
"""

import re
from collections import defaultdict
from dataclasses import dataclass, field
from typing import Any

from django import forms
from django.contrib.auth import get_user_model
from django.http import QueryDict
from django.utils.translation import gettext
from django.utils.translation import gettext_lazy as _

from contacts.models import ConsentChannel, ConsentPurpose, CustomField, Stage, Store, TagGroup
from core.errors import ValidationFailed
from segments.models import RefreshPolicy, RFMLayer, Segment, SegmentKind
from segments.rule_labels import (
    CONDITION_TYPE_LABELS,
    CONSENT_STATE_LABELS,
    GROUP_LABELS,
    KOC_LABELS,
    MATCH_IN_LABELS,
    MEASURE_LABELS,
    MEMBERSHIP_FIELD_LABELS,
    OPERATOR_LABELS,
    REACHABLE_CHANNEL_LABELS,
    TAG_MATCH_LABELS,
    WINDOW_LABELS,
    choice_value_labels,
    field_label,
)
from segments.rules.schema import (
    AGGREGATE_OPS,
    BOOL,
    CHOICE,
    CONDITION_TYPES,
    CORE_FIELDS,
    CUSTOM_KIND_TYPES,
    CYCLE,
    DATE,
    DATETIME,
    DAYS_OPS,
    LIST_OPS,
    MAX_CONDITIONS,
    MAX_DEPTH,
    MEMBERSHIP_FIELDS,
    MULTI,
    NUMBER,
    OCCURRENCE_OPS,
    OPERATORS,
    PROPERTY_OPS,
    REACHABLE_CHANNELS,
    REF,
    RELATIVE_OPS,
    SET_OPS,
    errors_of,
    normalise_operator,
    property_text,
)

ROOT = "r"
NO_VALUE_OPS = (*SET_OPS, "is_true", "is_false", "exists", "not_exists")
LIST_SPLIT_RE = re.compile(r"\s*[,，、]\s*")
PATH_STEP_RE = re.compile(r"\.conditions\[(\d+)\]")
NEW_CONDITION = {"type": "attribute", "field": "city", "operator": "eq", "value": ""}
NEW_FILTER = {"property": "", "operator": "eq", "value": None}
# The comparisons each measure of an event condition offers.
MEASURE_OPS = {
    "count": AGGREGATE_OPS,
    "sum": AGGREGATE_OPS,
    "avg": AGGREGATE_OPS,
    "first": OCCURRENCE_OPS,
    "last": OCCURRENCE_OPS,
}
# The defaults a condition kind starts from when the operator switches to it.
KIND_DEFAULTS: dict[str, dict[str, Any]] = {
    "attribute": NEW_CONDITION,
    "tag": {"type": "tag", "match": "any", "tags": []},
    "event": {"type": "event", "name": "purchase", "measure": "performed"},
    "membership": {"type": "membership", "field": "is_member", "operator": "is_true"},
    "consent": {"type": "consent", "channel": "sms", "purpose": "marketing", "state": "granted"},
    "reachable": {"type": "reachable", "channel": "sms", "value": True},
    "segment": {"type": "segment", "match": "in", "segment": None},
    "rfm": {"type": "rfm", "match": "in", "layers": []},
    "koc": {"type": "koc", "operator": "is_koc"},
}


# Posted fields → rule ---------------------------------------------------------------------------


def _scalar(raw: str) -> Any:
    """A number when the text is one, else the text (so validation names what is wrong)."""
    text = raw.strip()
    try:
        return int(text)
    except ValueError:
        pass
    try:
        number = float(text)
    except ValueError:
        return text
    return number if number == number and abs(number) != float("inf") else text


def _kept_number(raw: str) -> Any:
    """The number `raw` spells when it is that number's own text form (150, 12.5), else `raw`:
    either means the same to a property equality, this keeps a stored number as it was."""
    value = _scalar(raw)
    if isinstance(value, int | float) and property_text(value) == raw:
        return value
    return raw


def _int_or_raw(raw: str) -> Any:
    value = _scalar(raw)
    return value if isinstance(value, int) else raw.strip()


def _split(raw: str) -> list[str]:
    return [part for part in LIST_SPLIT_RE.split(raw.strip()) if part]


class _Reader:
    def __init__(self, data: QueryDict) -> None:
        self.data = data
        self.children: dict[str, list[tuple[int, str]]] = defaultdict(list)
        for key in data:
            if not key.endswith(".kind"):
                continue
            path = key[: -len(".kind")]
            parent, _sep, index = path.rpartition("-")
            if parent and index.isdigit():
                self.children[parent].append((int(index), path))

    def get(self, path: str, name: str, default: Any = "") -> Any:
        return self.data.get(f"{path}.{name}", default)

    def getlist(self, path: str, name: str) -> list[str]:
        return [v for v in self.data.getlist(f"{path}.{name}") if v != ""]

    def node(self, path: str) -> dict[str, Any]:
        kind = self.get(path, "kind", "group")
        if kind == "group":
            return {
                "op": self.get(path, "op", "and"),
                "conditions": [self.node(p) for _i, p in sorted(self.children[path])],
            }
        if kind not in CONDITION_TYPES:
            return {"type": kind}
        previous = self.get(path, "was", kind)
        if previous != kind:
            # The operator switched the condition's kind: start from that kind's defaults.
            return dict(KIND_DEFAULTS[kind])
        return getattr(self, f"read_{kind}")(path)

    def operator_value(self, path: str, node: dict, value_type: str | None, list_select: bool):
        operator = node["operator"]
        if operator in NO_VALUE_OPS:
            return node
        if operator in DAYS_OPS:
            node["value"] = _int_or_raw(self.get(path, "value"))
        elif operator == "between":
            low, high = self.get(path, "value_lo"), self.get(path, "value_hi")
            if value_type in (DATE, DATETIME):
                node["value"] = [low, high]
            else:
                node["value"] = [_scalar(low), _scalar(high)]
        elif operator in LIST_OPS:
            if list_select:
                values = self.getlist(path, "value")
                node["value"] = [_int_or_raw(v) for v in values] if value_type == REF else values
            else:
                node["value"] = _split(self.get(path, "value"))
        elif value_type in (NUMBER, REF):
            node["value"] = _scalar(self.get(path, "value"))
        else:
            node["value"] = self.get(path, "value")
        return node

    def read_attribute(self, path: str) -> dict:
        field_path = self.get(path, "field")
        node = {"type": "attribute", "field": field_path, "operator": self.get(path, "operator")}
        if self.get(path, "field_was", field_path) != field_path:
            # Another field was picked: its operators and values differ, start afresh.
            return {"type": "attribute", "field": field_path, "operator": ""}
        value_type = _field_type(field_path)
        return self.operator_value(path, node, value_type, value_type in (CHOICE, REF, MULTI))

    def read_tag(self, path: str) -> dict:
        tags = [_int_or_raw(v) for v in self.getlist(path, "tags")]
        return {"type": "tag", "match": self.get(path, "match", "any"), "tags": tags}

    def read_event(self, path: str) -> dict:
        measure = self.get(path, "measure", "performed")
        node: dict[str, Any] = {"type": "event", "name": self.get(path, "name").strip()}
        node["measure"] = measure
        previous = self.get(path, "measure_was", measure)
        if previous != measure and measure in MEASURE_OPS:
            # Another measure was picked: the value meant something else ("sum ≥ 500" is not
            # "count ≥ 500"), so it is cleared; the comparison stays when the new measure has it.
            operator = self.get(path, "operator")
            node["operator"] = operator if operator in MEASURE_OPS[measure] else ""
            node["value"] = None
        elif measure in ("count", "sum", "avg"):
            node["operator"] = self.get(path, "operator")
            self.operator_value(path, node, NUMBER, False)
        elif measure in ("first", "last"):
            node["operator"] = self.get(path, "operator")
            self.operator_value(path, node, DATE, False)
            if node["operator"] in RELATIVE_OPS:
                node["value"] = _int_or_raw(self.get(path, "value"))
        window = self.get(path, "window", "all")
        if window == "last":
            node["window"] = {"last_days": _int_or_raw(self.get(path, "window_days"))}
        elif window == "between":
            node["window"] = {
                "from": self.get(path, "window_from"),
                "to": self.get(path, "window_to"),
            }
        filters = []
        indexes = sorted(
            int(key.split(".f", 1)[1].split(".", 1)[0])
            for key in self.data
            if key.startswith(f"{path}.f") and key.endswith(".property")
        )
        for j in indexes:
            fpath = f"{path}.f{j}"
            item: dict[str, Any] = {
                "property": self.data.get(f"{fpath}.property", "").strip(),
                "operator": self.data.get(f"{fpath}.operator", "eq"),
            }
            raw = self.data.get(f"{fpath}.value", "")
            # Equality compares text forms (schema.property_value_equals): what was typed stays
            # text, so a code like 021 is not read as the number 21. A number stored in an older
            # rule (the row carries that fact in a hidden input) stays a number while its text
            # is unchanged, so saving the rule unchanged stores it unchanged.
            number = self.data.get(f"{fpath}.number") == "1"
            if item["operator"] == "in":
                item["value"] = [_kept_number(v) if number else v for v in _split(raw)]
            elif item["operator"] in ("eq", "neq"):
                item["value"] = _kept_number(raw) if number else raw
            elif item["operator"] == "contains":
                item["value"] = raw
            elif item["operator"] not in NO_VALUE_OPS:
                item["value"] = _scalar(raw)
            filters.append(item)
        if filters:
            node["filters"] = filters
        return node

    def read_membership(self, path: str) -> dict:
        membership_field = self.get(path, "field", "is_member")
        node = {"type": "membership", "field": membership_field}
        node["operator"] = self.get(path, "operator")
        value_type = MEMBERSHIP_FIELDS.get(membership_field)
        return self.operator_value(path, node, value_type, membership_field == "tier")

    def read_consent(self, path: str) -> dict:
        return {
            "type": "consent",
            "channel": self.get(path, "channel"),
            "purpose": self.get(path, "purpose", "marketing"),
            "state": self.get(path, "state"),
        }

    def read_reachable(self, path: str) -> dict:
        return {
            "type": "reachable",
            "channel": self.get(path, "channel"),
            "value": self.get(path, "value", "true") != "false",
        }

    def read_segment(self, path: str) -> dict:
        ref = _int_or_raw(self.get(path, "segment"))
        return {"type": "segment", "match": self.get(path, "match", "in"), "segment": ref or None}

    def read_rfm(self, path: str) -> dict:
        layers = self.getlist(path, "layers")
        return {"type": "rfm", "match": self.get(path, "match", "in"), "layers": layers}

    def read_koc(self, path: str) -> dict:
        node: dict[str, Any] = {"type": "koc", "operator": self.get(path, "operator")}
        if str(node["operator"]).startswith("score_"):
            node["value"] = _scalar(self.get(path, "value"))
        return node


def rule_from_post(data: QueryDict) -> dict[str, Any]:
    """The rule tree the builder's fields describe (not yet validated)."""
    return _Reader(data).node(ROOT)


def _field_type(field_path: Any) -> str | None:
    if field_path in CORE_FIELDS:
        return CORE_FIELDS[field_path]
    if isinstance(field_path, str) and field_path.startswith("attributes."):
        kind = (
            CustomField.objects.filter(key=field_path.removeprefix("attributes."))
            .values_list("kind", flat=True)
            .first()
        )
        return CUSTOM_KIND_TYPES.get(kind) if kind else None
    return None


# Actions (add / remove rows) ------------------------------------------------------------------


def _steps(path: str) -> list[int]:
    return [int(i) for i in path.split("-")[1:]]


def _at(rule: dict, path: str) -> dict | None:
    node: Any = rule
    for index in _steps(path):
        children = node.get("conditions") if isinstance(node, dict) else None
        if not isinstance(children, list) or not 0 <= index < len(children):
            return None
        node = children[index]
    return node if isinstance(node, dict) else None


def _count(node: Any) -> int:
    if isinstance(node, dict) and "op" in node:
        return 1 + sum(_count(c) for c in node.get("conditions") or [])
    return 1


def rule_apply_action(rule: dict, action: str) -> dict:
    """Apply a builder button: add-condition:PATH, add-group:PATH, remove:PATH, add-filter:PATH,
    remove-filter:PATH:INDEX. Unknown or out-of-range actions leave the rule as it is."""
    verb, _sep, target = action.partition(":")
    target, _sep, extra = target.partition(":")
    node = _at(rule, target)
    if node is None:
        return rule
    depth = len(_steps(target))
    if verb in ("add-condition", "add-group") and "op" in node:
        if _count(rule) >= MAX_CONDITIONS:
            return rule
        if verb == "add-group" and depth + 2 <= MAX_DEPTH:
            node["conditions"].append({"op": "and", "conditions": [dict(NEW_CONDITION)]})
        elif verb == "add-condition" and depth + 1 <= MAX_DEPTH:
            node["conditions"].append(dict(NEW_CONDITION))
    elif verb == "remove" and target != ROOT:
        parent = _at(rule, target.rpartition("-")[0])
        if parent is not None:
            del parent["conditions"][_steps(target)[-1]]
    elif verb == "add-filter" and node.get("type") == "event":
        node.setdefault("filters", []).append(dict(NEW_FILTER))
    elif verb == "remove-filter" and node.get("type") == "event" and extra.isdigit():
        filters = node.get("filters") or []
        if int(extra) < len(filters):
            del filters[int(extra)]
        if not filters:
            node.pop("filters", None)
    return rule


# Rule → rows to render -------------------------------------------------------------------------


@dataclass
class Option:
    value: Any
    label: str
    selected: bool = False
    color: str = ""


@dataclass
class OptionGroup:
    label: str
    options: list[Option]


@dataclass
class ValueWidget:
    """How a condition's value is entered: kind is none | text | list | number | days | date |
    select | multi | between_number | between_date."""

    kind: str
    value: Any = ""
    low: Any = ""
    high: Any = ""
    options: list[Option] = field(default_factory=list)


@dataclass
class BuilderNode:
    path: str
    kind: str  # "group" or a condition type
    node: dict
    depth: int
    children: list["BuilderNode"] = field(default_factory=list)
    error: str = ""
    error_attr: str = ""
    kind_options: list[Option] = field(default_factory=list)
    op_options: list[Option] = field(default_factory=list)
    field_options: list[OptionGroup] = field(default_factory=list)
    operator_options: list[Option] = field(default_factory=list)
    value: ValueWidget | None = None
    extra: dict[str, Any] = field(default_factory=dict)
    can_add_condition: bool = False
    can_add_group: bool = False


def _options(pairs, selected) -> list[Option]:
    chosen = set(selected) if isinstance(selected, list | set | tuple) else {selected}
    return [Option(v, str(label), v in chosen) for v, label in pairs]


def _text(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, list):
        return ", ".join(str(v) for v in value)
    return str(value)


class BuilderCatalogue:
    """Everything the rows offer (fields, tags, stores, tiers …), read once per render."""

    def __init__(self, segment: Segment | None = None) -> None:
        from membership.models import Tier

        self.custom = list(CustomField.objects.filter(is_active=True).order_by("position", "key"))
        self.custom_by_path = {f"attributes.{c.key}": c for c in self.custom}
        self.stages = list(Stage.objects.values_list("key", "name"))
        self.genders = list(choice_value_labels()["gender"].items())
        self.stores = list(Store.objects.filter(is_active=True).values_list("pk", "name"))
        users = get_user_model().objects.filter(is_active=True).order_by("username")
        self.owners = [(u.pk, u.get_full_name() or u.get_username()) for u in users]
        self.tiers = list(Tier.objects.order_by("rank").values_list("code", "name"))
        self.tag_groups = list(TagGroup.objects.prefetch_related("tags"))
        segments = Segment.objects.filter(is_archived=False)
        if segment is not None:
            segments = segments.exclude(pk=segment.pk)
        self.segments = list(segments.values_list("pk", "name"))
        self.count = 0

    def field_groups(self, selected: str) -> list[OptionGroup]:
        core = [Option(k, str(v), k == selected) for k, v in _core_field_labels()]
        groups = [OptionGroup(str(_("Profile")), core)]
        if self.custom:
            custom = [
                Option(f"attributes.{c.key}", c.label, f"attributes.{c.key}" == selected)
                for c in self.custom
            ]
            groups.append(OptionGroup(str(_("Custom fields")), custom))
        return groups

    def field_type(self, field_path: str) -> str | None:
        if field_path in CORE_FIELDS:
            return CORE_FIELDS[field_path]
        custom = self.custom_by_path.get(field_path)
        return CUSTOM_KIND_TYPES.get(custom.kind) if custom else _field_type(field_path)

    def choices_for(self, field_path: str) -> list[tuple[Any, str]] | None:
        if field_path == "lifecycle_stage":
            return self.stages
        if field_path == "gender":
            return self.genders
        if field_path == "store":
            return self.stores
        if field_path == "owner":
            return self.owners
        custom = self.custom_by_path.get(field_path)
        if custom is not None and custom.choices:
            return [(str(c), str(c)) for c in custom.choices]
        return None


def _core_field_labels() -> list[tuple[str, str]]:
    from segments.rule_labels import FIELD_LABELS

    return [(k, str(FIELD_LABELS.get(k, k))) for k in CORE_FIELDS]


def _value_widget(value_type: str | None, operator: str, value: Any, choices) -> ValueWidget:
    if operator in NO_VALUE_OPS or value_type == BOOL:
        return ValueWidget("none")
    if operator in DAYS_OPS:
        return ValueWidget("days", value=_text(value))
    if operator == "between":
        low, high = ([*value, "", ""])[:2] if isinstance(value, list) else ("", "")
        kind = "between_date" if value_type in (DATE, DATETIME) else "between_number"
        return ValueWidget(kind, low=_text(low), high=_text(high))
    if value_type in (DATE, DATETIME):
        return ValueWidget("date", value=_text(value))
    if choices is not None:
        kind = "multi" if operator in LIST_OPS else "select"
        selected = value if isinstance(value, list) else [value]
        options = _options(choices, selected)
        if kind == "select":
            options.insert(0, Option("", "—", not any(o.selected for o in options)))
        known = {o.value for o in options}
        # Keep values the catalogue no longer offers (a deleted store): visible, and validated.
        # None is "nothing chosen yet" (e.g. right after the field or operator changed), not a
        # value: shown as an option it would be posted back as the text "None".
        options += [
            Option(v, str(v), True) for v in selected if v not in known and v not in ("", None)
        ]
        return ValueWidget(kind, options=options)
    if operator in LIST_OPS:
        return ValueWidget("list", value=_text(value))
    if value_type == NUMBER:
        return ValueWidget("number", value=_text(value))
    return ValueWidget("text", value=_text(value))


def _is_number_value(value: Any) -> bool:
    """Whether a stored property filter value holds numbers (a rule saved before typed values
    were kept as text)."""
    values = value if isinstance(value, list) else [value]
    return any(isinstance(v, int | float) and not isinstance(v, bool) for v in values)


def _operators(allowed, operator) -> tuple[list[Option], str]:
    operator = normalise_operator(operator)
    if operator not in allowed:
        operator = allowed[0]
    return [Option(o, str(OPERATOR_LABELS.get(o, o)), o == operator) for o in allowed], operator


def builder_tree(
    rule: Any, *, segment: Segment | None = None, error: ValidationFailed | None = None
) -> BuilderNode:
    """The rows that show `rule`, with a validation error attached to the node it names."""
    catalogue = BuilderCatalogue(segment)
    if not isinstance(rule, dict) or "op" not in rule:
        # A rule whose root is a single condition is shown inside an "all of" group.
        rule = {"op": "and", "conditions": [rule] if isinstance(rule, dict) and rule else []}
    root = _build(rule, ROOT, 0, catalogue, _count(rule))
    if error is not None:
        # Every invalid condition at once, each at its own row (the first error of a row).
        for problem in errors_of(error):
            path, attr = rule_error_location(problem)
            target = _find(root, path) or root
            if target.error:
                continue
            target.error = rule_error_message(problem, rule=rule)
            target.error_attr = rule_error_part(attr)
    return root


@dataclass
class RuleProblem:
    """One invalid condition as the live preview reports it."""

    path: str  # the builder path of the row (r-2-0)
    attr: str  # the row's label for the part the error names ("值"), or ""
    message: str
    # The part the error names is still empty (a condition just added, a value cleared because
    # the measure changed): the preview does not mark such a row red while the operator has
    # yet to fill it in; saving still refuses it.
    unfilled: bool = False
    cycle: bool = False


def rule_problems(error: ValidationFailed, rule: Any) -> list[RuleProblem]:
    """Every invalid condition a validation error stands for, for the live preview."""
    problems = []
    for item in errors_of(error):
        path, attr = rule_error_location(item)
        details = item.details if isinstance(item.details, dict) else {}
        node = _rule_node_at(rule, path)
        problems.append(
            RuleProblem(
                path=path,
                attr=rule_error_part(attr),
                message=rule_error_message(item, rule=rule),
                unfilled=node is not None and _unfilled(node, attr),
                cycle=details.get("reason") == CYCLE,
            )
        )
    return problems


ATTR_STEP_RE = re.compile(r"(\w+)(?:\[(\d+)\])?")


def _unfilled(node: dict, attr: str) -> bool:
    """Whether the part of a condition an error names (`value`, `tags`, `filters[1].value`,
    `window.last_days` …) is empty: nothing typed or picked yet, or only part of a pair."""
    if not attr:
        return False
    part: Any = node
    for step in attr.split("."):
        match = ATTR_STEP_RE.fullmatch(step)
        if match is None or not isinstance(part, dict):
            return False
        part = part.get(match.group(1))
        if match.group(2) is not None:
            index = int(match.group(2))
            if not isinstance(part, list) or index >= len(part):
                return False
            part = part[index]
    return _empty(part)


def _empty(value: Any) -> bool:
    if value is None or (isinstance(value, str) and not value.strip()):
        return True
    if isinstance(value, list):
        return not value or any(_empty(v) for v in value)
    if isinstance(value, dict):
        return not value or any(_empty(v) for v in value.values())
    return False


def rule_error_message(error: ValidationFailed, *, rule: Any = None) -> str:
    """The human part of a rule error, without the path (the builder shows the row instead):
    `rule.conditions[2].value: 须为数字` → `须为数字`, in the language active when raised.
    Given the `rule`, a picker left empty is named in the builder's own words."""
    if rule is not None:
        builder_path, attr = rule_error_location(error)
        node = _rule_node_at(rule, builder_path)
        friendly = _nothing_chosen(node, attr) if node is not None else None
        if friendly is not None:
            return friendly
    path = (error.details or {}).get("path", "") if isinstance(error.details, dict) else ""
    prefix = f"{path}: "
    if path and error.message.startswith(prefix):
        return error.message[len(prefix) :]
    return error.message


# Profile fields whose value is picked from a list in the builder (see BuilderCatalogue).
PICKED_FIELDS = ("lifecycle_stage", "gender", "store", "owner")


def _rule_node_at(rule: Any, builder_path: str) -> dict | None:
    """The node of `rule` at a builder path (`r-2-0`), or None when the rule has no such node."""
    node = rule
    for step in builder_path.split("-")[1:]:
        conditions = node.get("conditions") if isinstance(node, dict) else None
        if not isinstance(conditions, list) or not step.isdigit() or int(step) >= len(conditions):
            return None
        node = conditions[int(step)]
    return node if isinstance(node, dict) else None


def _nothing_chosen(node: dict, attr: str) -> str | None:
    """The builder's words for a row whose picker was left empty. The rule language's message
    names the JSON it expects ("a non-empty list of tag ids", "a segment id"), which means
    nothing to an operator ticking boxes."""
    kind = node.get("type")
    if kind == "tag" and attr == "tags" and not node.get("tags"):
        return gettext("Tick at least one tag.")
    if kind == "segment" and attr == "segment" and node.get("segment") in (None, ""):
        return gettext("Choose a segment.")
    picked = (kind == "attribute" and node.get("field") in PICKED_FIELDS) or (
        kind == "membership" and node.get("field") == "tier"
    )
    if picked and attr == "value" and node.get("value") in (None, "", []):
        return gettext("Choose a value.")
    return None


# What a condition row calls the part a rule error names (the labels of its own widgets).
ERROR_PART_LABELS = {
    "type": _("Condition type"),
    "field": _("Field"),
    "operator": _("Operator"),
    "value": _("Value"),
    "match": _("Match"),
    "tags": _("Tags"),
    "name": _("Event name"),
    "measure": _("Measure"),
    "window": _("When"),
    "window.last_days": _("When"),
    "filters": _("Property filter"),
    "property": _("Property"),
    "channel": _("Channel"),
    "purpose": _("Purpose"),
    "state": _("State"),
    # No "segment": the segment picker is the row's only choice the error can be about, and its
    # errors already name the segment ("segment “B” already depends on this one…"): a label
    # in front of them read "分群 分群“B”…".
}
FILTER_PART_RE = re.compile(r"filters\[(\d+)\](?:\.(\w+))?$")


def rule_error_part(attr: str) -> str:
    """The row's own label for the part of it an error names, in the operator's language:
    `value` → 值, `filters[1].value` → 属性筛选 2 · 值; "" when the row alone says enough."""
    step = FILTER_PART_RE.match(attr)
    if step is None:
        return str(ERROR_PART_LABELS.get(attr, ""))
    number = int(step.group(1)) + 1
    part = ERROR_PART_LABELS.get(step.group(2) or "")
    if part is None:
        return gettext("Property filter %(number)s") % {"number": number}
    return gettext("Property filter %(number)s · %(part)s") % {"number": number, "part": part}


def rule_error_location(error: ValidationFailed) -> tuple[str, str]:
    """The builder path and attribute a validation error names: `rule.conditions[2].value` →
    ("r-2", "value")."""
    path = (error.details or {}).get("path", "") if isinstance(error.details, dict) else ""
    if not path.startswith("rule"):
        return ROOT, ""
    rest = path[len("rule") :]
    builder_path = ROOT
    while True:
        step = PATH_STEP_RE.match(rest)
        if not step:
            break
        builder_path += f"-{step.group(1)}"
        rest = rest[step.end() :]
    return builder_path, rest.lstrip(".")


def _find(node: BuilderNode, path: str) -> BuilderNode | None:
    if node.path == path:
        return node
    for child in node.children:
        found = _find(child, path)
        if found is not None:
            return found
    return None


def _build(node: Any, path: str, depth: int, cat: BuilderCatalogue, total: int) -> BuilderNode:
    if not isinstance(node, dict):
        node = {"type": "attribute"}
    if "op" in node:
        item = BuilderNode(path, "group", node, depth)
        item.op_options = _options(GROUP_LABELS.items(), node.get("op"))
        item.children = [
            _build(child, f"{path}-{i}", depth + 1, cat, total)
            for i, child in enumerate(node.get("conditions") or [])
        ]
        room = total < MAX_CONDITIONS
        item.can_add_condition = room and depth + 1 <= MAX_DEPTH
        item.can_add_group = room and depth + 2 <= MAX_DEPTH
        return item
    kind = node.get("type") if node.get("type") in CONDITION_TYPES else "attribute"
    item = BuilderNode(path, kind, node, depth)
    item.kind_options = _options(CONDITION_TYPE_LABELS.items(), kind)
    getattr(_Rows, kind)(item, node, cat)
    return item


class _Rows:
    """The widgets of each condition kind."""

    @staticmethod
    def attribute(item: BuilderNode, node: dict, cat: BuilderCatalogue) -> None:
        field_path = node.get("field") or "city"
        value_type = cat.field_type(field_path)
        groups = cat.field_groups(field_path)
        if value_type is None:
            # An unknown (e.g. deleted custom) field stays visible so the error can name it.
            groups.insert(0, OptionGroup("", [Option(field_path, field_label(field_path), True)]))
            value_type = "string"
        item.field_options = groups
        item.operator_options, operator = _operators(OPERATORS[value_type], node.get("operator"))
        item.value = _value_widget(
            value_type, operator, node.get("value"), cat.choices_for(field_path)
        )

    @staticmethod
    def tag(item: BuilderNode, node: dict, cat: BuilderCatalogue) -> None:
        chosen = set(node.get("tags") or [])
        item.extra["match"] = _options(TAG_MATCH_LABELS.items(), node.get("match", "any"))
        item.extra["tag_groups"] = [
            OptionGroup(
                group.name,
                [Option(t.pk, t.name, t.pk in chosen, t.color) for t in group.tags.all()],
            )
            for group in cat.tag_groups
        ]

    @staticmethod
    def event(item: BuilderNode, node: dict, cat: BuilderCatalogue) -> None:
        measure = node.get("measure", "performed")
        item.extra["name"] = node.get("name", "")
        item.extra["measure"] = _options(MEASURE_LABELS.items(), measure)
        item.extra["measure_key"] = measure
        if measure in ("count", "sum", "avg"):
            item.operator_options, operator = _operators(AGGREGATE_OPS, node.get("operator"))
            item.value = _value_widget(NUMBER, operator, node.get("value"), None)
        elif measure in ("first", "last"):
            item.operator_options, operator = _operators(OCCURRENCE_OPS, node.get("operator"))
            item.value = _value_widget(DATE, operator, node.get("value"), None)
        window = node.get("window") or {}
        kind = "last" if "last_days" in window else "between" if window else "all"
        item.extra["window"] = _options(WINDOW_LABELS.items(), kind)
        item.extra["window_kind"] = kind
        item.extra["window_days"] = _text(window.get("last_days"))
        item.extra["window_from"] = _text(window.get("from"))
        item.extra["window_to"] = _text(window.get("to"))
        item.extra["filters"] = [
            {
                "index": j,
                "property": _text(f.get("property")) if isinstance(f, dict) else "",
                "operators": _options(
                    [(o, OPERATOR_LABELS.get(o, o)) for o in PROPERTY_OPS],
                    f.get("operator") if isinstance(f, dict) else "eq",
                ),
                "value": _text(f.get("value")) if isinstance(f, dict) else "",
                "number": isinstance(f, dict) and _is_number_value(f.get("value")),
            }
            for j, f in enumerate(node.get("filters") or [])
        ]

    @staticmethod
    def membership(item: BuilderNode, node: dict, cat: BuilderCatalogue) -> None:
        membership_field = node.get("field", "is_member")
        if membership_field not in MEMBERSHIP_FIELDS:
            membership_field = "is_member"
        item.extra["field"] = _options(MEMBERSHIP_FIELD_LABELS.items(), membership_field)
        value_type = MEMBERSHIP_FIELDS[membership_field]
        if membership_field == "is_member":
            allowed: tuple[str, ...] = ("is_true", "is_false")
        else:
            allowed = tuple(o for o in OPERATORS[value_type] if o not in SET_OPS)
        item.operator_options, operator = _operators(allowed, node.get("operator"))
        choices = cat.tiers if membership_field == "tier" else None
        item.value = _value_widget(value_type, operator, node.get("value"), choices)

    @staticmethod
    def consent(item: BuilderNode, node: dict, cat: BuilderCatalogue) -> None:
        item.extra["channel"] = _options(ConsentChannel.choices, node.get("channel"))
        item.extra["purpose"] = _options(ConsentPurpose.choices, node.get("purpose", "marketing"))
        item.extra["state"] = _options(CONSENT_STATE_LABELS.items(), node.get("state"))

    @staticmethod
    def reachable(item: BuilderNode, node: dict, cat: BuilderCatalogue) -> None:
        pairs = [(c, REACHABLE_CHANNEL_LABELS[c]) for c in REACHABLE_CHANNELS]
        item.extra["channel"] = _options(pairs, node.get("channel"))
        value = "false" if node.get("value", True) is False else "true"
        item.extra["reach"] = _options([("true", _("is")), ("false", _("is not"))], value)

    @staticmethod
    def segment(item: BuilderNode, node: dict, cat: BuilderCatalogue) -> None:
        item.extra["match"] = _options(MATCH_IN_LABELS.items(), node.get("match", "in"))
        options = _options(cat.segments, node.get("segment"))
        if node.get("segment") and not any(o.selected for o in options):
            options.insert(0, Option(node["segment"], f"#{node['segment']}", True))
        item.extra["segments"] = options

    @staticmethod
    def rfm(item: BuilderNode, node: dict, cat: BuilderCatalogue) -> None:
        item.extra["match"] = _options(MATCH_IN_LABELS.items(), node.get("match", "in"))
        item.extra["layers"] = _options(RFMLayer.choices, node.get("layers") or [])

    @staticmethod
    def koc(item: BuilderNode, node: dict, cat: BuilderCatalogue) -> None:
        operator = node.get("operator") if node.get("operator") in KOC_LABELS else "is_koc"
        item.operator_options = _options(KOC_LABELS.items(), operator)
        if operator.startswith("score_"):
            item.value = ValueWidget("number", value=_text(node.get("value")))


# The segment form ------------------------------------------------------------------------------


class SegmentForm(forms.Form):
    """Name, description, kind and refresh policy; the rule comes from the builder rows."""

    name = forms.CharField(label=_("Name"), max_length=100)
    description = forms.CharField(
        label=_("Description"), required=False, widget=forms.Textarea(attrs={"rows": 2})
    )
    kind = forms.ChoiceField(
        label=_("Kind"), choices=SegmentKind.choices, initial=SegmentKind.DYNAMIC
    )
    refresh_policy = forms.ChoiceField(
        label=_("Refresh"), choices=RefreshPolicy.choices, initial=RefreshPolicy.ON_CHANGE
    )
    refresh_interval_minutes = forms.IntegerField(
        label=_("Every (minutes)"), min_value=5, max_value=7 * 24 * 60, initial=60
    )
    refresh_hour = forms.IntegerField(
        label=_("Daily at (hour)"), min_value=0, max_value=23, initial=3
    )

    def __init__(self, *args, segment: Segment | None = None, **kwargs):
        self.segment = segment
        if segment is not None and "initial" not in kwargs:
            kwargs["initial"] = {
                "name": segment.name,
                "description": segment.description,
                "kind": segment.kind,
                "refresh_policy": segment.refresh_policy,
                "refresh_interval_minutes": segment.refresh_interval_minutes,
                "refresh_hour": segment.refresh_hour,
            }
        super().__init__(*args, **kwargs)
        if segment is not None:
            # The kind of an existing segment is fixed: a list and a rule do not convert.
            self.fields["kind"].disabled = True

    def clean_name(self) -> str:
        return self.cleaned_data["name"].strip()

    @property
    def is_static(self) -> bool:
        if self.segment is not None:
            return self.segment.kind == SegmentKind.STATIC
        value = self["kind"].value()
        return value == SegmentKind.STATIC

    def apply_error(self, exc: ValidationFailed) -> bool:
        """Attach a service error to its form field; False when it concerns the rule."""
        path = (exc.details or {}).get("path") if isinstance(exc.details, dict) else None
        if path:
            return False
        target = {"invalid_name": "name", "duplicate_name": "name", "invalid_policy": None}
        self.add_error(target.get(exc.code), exc.message)
        return True


class StaticImportForm(forms.Form):
    file = forms.FileField(
        label=_("File (CSV or Excel)"),
        widget=forms.ClearableFileInput(attrs={"accept": ".csv,.txt,.xlsx,.xlsm"}),
    )
    match_by = forms.ChoiceField(
        label=_("Match by"),
        choices=[
            ("phone", _("Phone")),
            ("email", _("Email")),
            ("external_id", _("External id")),
            ("unionid", _("WeChat unionid")),
        ],
    )


class AutoTagForm(forms.Form):
    tag = forms.ModelChoiceField(label=_("Tag"), queryset=None, empty_label=_("Choose a tag…"))
    remove_on_exit = forms.BooleanField(
        label=_("Remove the tag when a contact leaves"), required=False, initial=True
    )

    def __init__(self, *args, **kwargs):
        from contacts.selectors import tags_grouped

        super().__init__(*args, **kwargs)
        self.fields["tag"].queryset = tags_grouped()
