"""The rule language: what a condition may say, and validation with errors that point at it.

A rule is a JSON tree. Groups combine conditions:

    {"op": "and" | "or" | "not", "conditions": [<node>, ...]}

`not` matches the contacts that do NOT match all of its conditions (NOT (a AND b ...)).
Every other node is a condition with a "type"; docs/segments.md is the operator-facing reference
of each kind, and compiler.py gives each its SQL meaning.
"""

import datetime as dt
import math
import re
from collections.abc import Iterator
from dataclasses import dataclass
from decimal import Decimal
from functools import cached_property
from typing import Any

from django.contrib.auth import get_user_model
from django.utils.translation import gettext as _
from django.utils.translation import pgettext

from contacts.models import (
    ConsentChannel,
    ConsentPurpose,
    CustomField,
    CustomFieldKind,
    Gender,
    Stage,
    Store,
    Tag,
)
from core.errors import ValidationFailed
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
    choice_value_labels,
)

GROUP_OPS = ("and", "or", "not")
MAX_DEPTH = 6
MAX_CONDITIONS = 100
MAX_DAYS = 36500
MAX_LIST = 1000

# Value types of fields and the operators each accepts.
STRING, CHOICE, REF, NUMBER, DATE, DATETIME, BOOL, MULTI = (
    "string",
    "choice",
    "ref",
    "number",
    "date",
    "datetime",
    "bool",
    "multi",
)
SET_OPS = ("is_set", "not_set")
RELATIVE_OPS = ("within_last_days", "more_than_days_ago")
DATE_OPS = ("on", "before", "after", "between", *RELATIVE_OPS, *SET_OPS)
OPERATORS: dict[str, tuple[str, ...]] = {
    STRING: ("eq", "neq", "in", "not_in", "contains", "not_contains", "startswith", *SET_OPS),
    CHOICE: ("eq", "neq", "in", "not_in", *SET_OPS),
    REF: ("eq", "neq", "in", "not_in", *SET_OPS),
    NUMBER: ("eq", "neq", "gt", "gte", "lt", "lte", "between", *SET_OPS),
    DATE: (*DATE_OPS, "anniversary_within_days"),
    DATETIME: DATE_OPS,
    BOOL: ("is_true", "is_false", *SET_OPS),
    MULTI: ("contains", "not_contains", "contains_any", *SET_OPS),
}
# The first rule language spelled two date operators differently; stored rules keep working.
LEGACY_OPERATORS = {"within_days": "within_last_days", "before_days": "more_than_days_ago"}
LIST_OPS = ("in", "not_in", "contains_any")
DAYS_OPS = (*RELATIVE_OPS, "anniversary_within_days")

CORE_FIELDS: dict[str, str] = {
    "name": STRING,
    "nickname": STRING,
    "phone": STRING,
    "email": STRING,
    "province": STRING,
    "city": STRING,
    "source": STRING,
    "channel_code": STRING,
    "utm_source": STRING,
    "utm_medium": STRING,
    "utm_campaign": STRING,
    "utm_content": STRING,
    "utm_term": STRING,
    "gender": CHOICE,
    "lifecycle_stage": CHOICE,
    "owner": REF,
    "store": REF,
    "birthday": DATE,
    "created_at": DATETIME,
    "first_seen_at": DATETIME,
    "last_seen_at": DATETIME,
    "last_active_at": DATETIME,
    "lead_score": NUMBER,
}
CUSTOM_KIND_TYPES = {
    CustomFieldKind.TEXT: STRING,
    CustomFieldKind.NUMBER: NUMBER,
    CustomFieldKind.DATE: DATE,
    CustomFieldKind.SINGLE_CHOICE: CHOICE,
    CustomFieldKind.MULTI_CHOICE: MULTI,
    CustomFieldKind.BOOLEAN: BOOL,
}

EVENT_MEASURES = ("performed", "not_performed", "count", "sum", "avg", "first", "last")
AGGREGATE_OPS = ("eq", "gt", "gte", "lt", "lte", "between")
OCCURRENCE_OPS = ("on", "before", "after", "between", *RELATIVE_OPS)
PROPERTY_OPS = ("eq", "neq", "gt", "gte", "lt", "lte", "in", "contains", "exists", "not_exists")
NUMERIC_PROPERTY_OPS = ("gt", "gte", "lt", "lte")
# Property equality (eq, neq, in) compares text forms (see property_value_equals).
TEXT_PROPERTY_OPS = ("eq", "neq", "in")
# A plain decimal numeral: what a number's text form looks like (no leading zero as in "021",
# no sign "+", no exponent).
PLAIN_NUMBER_RE = re.compile(r"-?(?:0|[1-9][0-9]*)(?:\.[0-9]+)?")

MEMBERSHIP_FIELDS = {
    "is_member": BOOL,
    "tier": CHOICE,
    "points_balance": NUMBER,
    "growth_value": NUMBER,
    "joined_at": DATETIME,
}
CONSENT_STATES = ("granted", "withdrawn", "unknown")
REACHABLE_CHANNELS = ("sms", "email", "wechat_oa", "miniprogram", "wecom")
KOC_OPS = ("is_koc", "not_koc", "score_gte", "score_lte")
MATCH_IN = ("in", "not_in")
TAG_MATCHES = ("any", "all", "none")

CONDITION_TYPES = (
    "attribute",
    "tag",
    "event",
    "membership",
    "consent",
    "reachable",
    "segment",
    "rfm",
    "koc",
)


@dataclass(frozen=True)
class FieldSpec:
    """What a field path means: its value type and, for choice fields, the allowed values."""

    path: str
    type: str
    custom: CustomField | None = None


# `reason` of a rule error whose rule is complete but would make a segment read itself.
CYCLE = "cycle"


def rule_error(path: str, message: str, *, reason: str | None = None) -> ValidationFailed:
    """The error for the rule node at `path` (e.g. `rule.conditions[2].value`): the builder shows
    it at that condition. `reason` (in the details) tells a complete rule refused for what it
    reads (CYCLE) from one not filled in correctly."""
    # `message` is translated where it is raised, so it reads in the language active then: the
    # operator's in the builder, English in the API unless the client sends Accept-Language.
    details = {"path": path} if reason is None else {"path": path, "reason": reason}
    return ValidationFailed(f"{path}: {message}", code="invalid_rule", details=details)


def _fail(path: str, message: str, *, reason: str | None = None) -> None:
    raise rule_error(path, message, reason=reason)


def _choice_list(choices, labels=None) -> str:
    """The choices as the builder names them (“equals”, “is more than”): an operator never
    sees the rule's keys (eq, gt). A choice without a label is shown as it is."""
    if labels is None:
        return ", ".join(str(c) for c in choices)
    # Translators: between the choices of a list, e.g. “equals”, “is more than”.
    separator = pgettext("list of choices", ", ")
    return separator.join(f"“{labels[c]}”" if c in labels else str(c) for c in choices)


def _one_of(choices, labels=None) -> str:
    return _("must be one of %(choices)s") % {"choices": _choice_list(choices, labels)}


def field_spec(field: Any) -> FieldSpec | None:
    if not isinstance(field, str):
        return None
    if field in CORE_FIELDS:
        return FieldSpec(field, CORE_FIELDS[field])
    if field.startswith("attributes.") and len(field) > 11:
        custom = CustomField.objects.filter(key=field[11:]).first()
        if custom is not None:
            return FieldSpec(field, CUSTOM_KIND_TYPES[custom.kind], custom)
    return None


def normalise_operator(operator: Any) -> Any:
    return LEGACY_OPERATORS.get(operator, operator)


def parse_date(value: Any) -> dt.date | None:
    if not isinstance(value, str):
        return None
    try:
        return dt.date.fromisoformat(value)
    except ValueError:
        return None


def _is_number(value: Any) -> bool:
    # Python's JSON parser accepts Infinity and NaN, which compare with nothing sensibly.
    if isinstance(value, float):
        return math.isfinite(value)
    return isinstance(value, int) and not isinstance(value, bool)


def property_text(value: Any) -> str | None:
    """The text form a property equality compares: text as it is, a number as a plain numeral
    (150 → "150", 1001.0 → "1001", 12.5 → "12.5"), true/false as "true"/"false"; None for
    anything else (null, lists, objects)."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        return value
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float) and math.isfinite(value):
        if value == int(value):
            return str(int(value))
        text = format(Decimal(repr(value)), "f")
        return text
    return None


def numeral_value(text: str) -> int | float | None:
    """The number a text written as a plain numeral stands for ("1001" → 1001, "12.50" → 12.5);
    None for other text ("021", "+5", "1e3", "SKU-1")."""
    if not isinstance(text, str) or not PLAIN_NUMBER_RE.fullmatch(text):
        return None
    if "." not in text:
        return int(text)
    number = float(text)
    return int(number) if number == int(number) and abs(number) < 2**53 else number


def property_value_equals(raw: Any, value: Any) -> bool:
    """Whether an event property `raw` (decoded JSON) equals a filter's `value` (text, or a
    number in rules stored before values were kept as text).

    Both are compared by their text form, so codes made of digits match however the sender
    typed them: the value "1001" (or 1001) matches the text "1001" and the number 1001 alike.
    Text matches only the same text ("021" is not "21"); a number matches a value written as a
    plain numeral of the same number ("12.50" matches 12.5); true and false match "true" and
    "false". This is the segment rule compiler's meaning (compiler.json_text_equals)."""
    text = property_text(value) if not isinstance(value, bool) else None
    if text is None:
        return False
    if isinstance(raw, bool):
        return text == ("true" if raw else "false")
    if isinstance(raw, str):
        return raw == text
    if isinstance(raw, int | float) and math.isfinite(raw):
        number = numeral_value(text)
        return number is not None and Decimal(repr(raw)) == Decimal(repr(number))
    return False


def _is_days(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and 0 <= value <= MAX_DAYS


def validate_rule(rule: Any, *, segment_id: int | None = None) -> None:
    """Raise ValidationFailed naming the offending node's path, e.g. `rule.conditions[2].value`.

    `segment_id` is the segment the rule belongs to (if it exists yet), so that a rule reading
    another segment that (directly or not) reads this one is rejected as a cycle, and so that
    an archived segment its stored rule already reads may stay in it.

    The error names the first invalid condition; when several are invalid, its details also
    list them all (`details["errors"]`: path, message and reason of each, in rule order), so
    that the builder and API clients can point at every one at once (see rule_errors).
    """
    errors = rule_errors(rule, segment_id=segment_id)
    if not errors:
        return
    first = errors[0]
    if len(errors) > 1:
        first.details = {
            **first.details,
            "errors": [{"message": e.message, **e.details} for e in errors],
        }
    raise first


def rule_errors(rule: Any, *, segment_id: int | None = None) -> list[ValidationFailed]:
    """Every invalid condition of `rule` (one error each, the first thing wrong with it), in
    rule order; [] when the rule is valid. A malformed group (or a rule over the limits of
    size and depth) gives that one error: what it holds cannot be placed."""
    validator = Validator(segment_id)
    try:
        validator.node(rule, "rule", 0)
    except ValidationFailed as exc:
        return [exc]
    return validator.errors


def errors_of(exc: ValidationFailed) -> list[ValidationFailed]:
    """The errors a validation error stands for: each invalid condition validate_rule listed
    in its details, or the error itself."""
    details = exc.details if isinstance(exc.details, dict) else {}
    listed = details.get("errors")
    if not isinstance(listed, list) or not listed:
        return [exc]
    out = []
    for item in listed:
        extra = {k: v for k, v in item.items() if k != "message"}
        out.append(ValidationFailed(item["message"], code=exc.code, details=extra))
    return out


class _TooBig(ValidationFailed):
    """The rule exceeds a size or depth limit: validation stops there."""


class Validator:
    def __init__(self, segment_id: int | None) -> None:
        self.segment_id = segment_id
        self.count = 0
        # Errors of the conditions seen so far (each condition stops at its first error).
        self.errors: list[ValidationFailed] = []

    @cached_property
    def stored_refs(self) -> set[int]:
        """The segments this segment's stored rule reads (the rule before this change)."""
        from segments.models import Segment

        if self.segment_id is None:
            return set()
        stored = Segment.objects.filter(pk=self.segment_id).values_list("rule", flat=True)
        return set().union(*(rule_segment_refs(rule) for rule in stored))

    def node(self, node: Any, path: str, depth: int) -> None:
        if not isinstance(node, dict):
            _fail(path, _("must be an object"))
        if depth > MAX_DEPTH:
            message = _("groups nest deeper than %(max)s levels") % {"max": MAX_DEPTH}
            raise _TooBig(f"{path}: {message}", code="invalid_rule", details={"path": path})
        self.count += 1
        if self.count > MAX_CONDITIONS:
            message = _("a rule may hold at most %(max)s conditions") % {"max": MAX_CONDITIONS}
            raise _TooBig(f"{path}: {message}", code="invalid_rule", details={"path": path})
        if "op" in node:
            if node["op"] not in GROUP_OPS:
                _fail(f"{path}.op", _one_of(GROUP_OPS, GROUP_LABELS))
            children = node.get("conditions")
            if not isinstance(children, list):
                _fail(f"{path}.conditions", _("must be a list"))
            if node["op"] == "not" and not children:
                _fail(f"{path}.conditions", _("a NOT group needs at least one condition"))
            for i, child in enumerate(children):
                try:
                    self.node(child, f"{path}.conditions[{i}]", depth + 1)
                except _TooBig:
                    raise
                except ValidationFailed as exc:
                    # Go on with the next condition: the operator sees every error at once.
                    self.errors.append(exc)
            return
        kind = node.get("type")
        if kind not in CONDITION_TYPES:
            _fail(
                f"{path}.type",
                _("must be one of %(choices)s, or a group of conditions")
                % {"choices": _choice_list(CONDITION_TYPES, CONDITION_TYPE_LABELS)},
            )
        getattr(self, kind)(node, path)

    # Condition kinds -------------------------------------------------------------------------

    def attribute(self, node: dict, path: str) -> None:
        spec = field_spec(node.get("field"))
        if spec is None:
            _fail(f"{path}.field", _("unknown field '%(field)s'") % {"field": node.get("field")})
        self.operator_value(spec, node, path)

    def operator_value(self, spec: FieldSpec, node: dict, path: str) -> None:
        operator = normalise_operator(node.get("operator"))
        allowed = OPERATORS[spec.type]
        if operator not in allowed:
            _fail(
                f"{path}.operator",
                _("must be one of %(choices)s for this field")
                % {"choices": _choice_list(allowed, OPERATOR_LABELS)},
            )
        value = node.get("value")
        vpath = f"{path}.value"
        if operator in SET_OPS or operator in ("is_true", "is_false"):
            return
        if operator in DAYS_OPS:
            if not _is_days(value):
                _fail(
                    vpath,
                    _("must be a whole number of days between 0 and %(max)s") % {"max": MAX_DAYS},
                )
            return
        if spec.type in (DATE, DATETIME):
            self.dates(operator, value, vpath)
            return
        if operator == "between":
            if (
                not isinstance(value, list)
                or len(value) != 2
                or not all(_is_number(v) for v in value)
            ):
                _fail(vpath, _("fill in both numbers, the lower and the upper bound"))
            if value[0] > value[1]:
                _fail(vpath, _("the low bound is above the high bound"))
            return
        values = self.values(operator, value, vpath)
        if spec.type == NUMBER:
            if not all(_is_number(v) for v in values):
                _fail(vpath, _("must be a number"))
            return
        if spec.type == REF:
            if not all(isinstance(v, int) and not isinstance(v, bool) for v in values):
                _fail(vpath, _("must be an id (a whole number)"))
            model = get_user_model() if node.get("field") == "owner" else Store
            known = set(model.objects.filter(pk__in=values).values_list("pk", flat=True))
            missing = sorted(set(values) - known)
            if missing:
                message = (
                    _("unknown owner ids %(ids)s")
                    if node.get("field") == "owner"
                    else _("unknown store ids %(ids)s")
                )
                _fail(vpath, message % {"ids": missing})
            return
        if not all(isinstance(v, str) and v != "" for v in values):
            _fail(vpath, _("must be non-empty text"))
        if any(len(v) > 200 for v in values):
            _fail(vpath, _("is longer than %(max)s characters") % {"max": 200})
        allowed_values = self.choices(spec)
        if allowed_values is not None:
            bad = [v for v in values if v not in allowed_values]
            if bad:
                # Stages and genders by the names the builder shows, not their keys.
                labels = choice_value_labels().get(spec.path)
                _fail(
                    vpath,
                    _("unknown choices %(values)s; allowed: %(choices)s")
                    % {
                        "values": _choice_list(bad, {v: v for v in bad}),
                        "choices": _choice_list(allowed_values, labels),
                    },
                )

    @staticmethod
    def choices(spec: FieldSpec) -> list[str] | None:
        if spec.path == "lifecycle_stage":
            return list(Stage.objects.values_list("key", flat=True))
        if spec.path == "gender":
            return list(Gender.values)
        if spec.custom is not None and spec.type in (CHOICE, MULTI):
            return [str(c) for c in spec.custom.choices]
        return None

    @staticmethod
    def values(operator: str, value: Any, vpath: str) -> list:
        if operator in LIST_OPS:
            if not isinstance(value, list) or not value:
                _fail(vpath, _("fill in at least one value"))
            if len(value) > MAX_LIST:
                _fail(vpath, _("may hold at most %(max)s values") % {"max": MAX_LIST})
            return value
        if isinstance(value, list | dict) or value is None:
            _fail(vpath, _("must be a single value"))
        return [value]

    @staticmethod
    def dates(operator: str, value: Any, vpath: str) -> None:
        if operator == "between":
            if not isinstance(value, list) or len(value) != 2:
                _fail(vpath, _("fill in both the start and the end date (like 2026-05-17)"))
            first, last = parse_date(value[0]), parse_date(value[1])
            if first is None or last is None:
                _fail(vpath, _("fill in both the start and the end date (like 2026-05-17)"))
            if first > last:
                _fail(vpath, _("the start date is after the end date"))
            return
        if parse_date(value) is None:
            _fail(vpath, _("must be a date like 2026-05-17"))

    def tag(self, node: dict, path: str) -> None:
        if node.get("match") not in TAG_MATCHES:
            _fail(f"{path}.match", _one_of(TAG_MATCHES, TAG_MATCH_LABELS))
        tags = node.get("tags")
        if (
            not isinstance(tags, list)
            or not tags
            or not all(isinstance(t, int) and not isinstance(t, bool) for t in tags)
        ):
            _fail(f"{path}.tags", _("must be a non-empty list of tag ids"))
        missing = set(tags) - set(Tag.objects.filter(pk__in=tags).values_list("pk", flat=True))
        if missing:
            _fail(f"{path}.tags", _("unknown tag ids %(ids)s") % {"ids": sorted(missing)})

    def event(self, node: dict, path: str) -> None:
        name = node.get("name")
        if not isinstance(name, str) or not name.strip() or len(name) > 64:
            _fail(f"{path}.name", _("must be an event name (1–64 characters)"))
        measure = node.get("measure", "performed")
        if measure not in EVENT_MEASURES:
            _fail(f"{path}.measure", _one_of(EVENT_MEASURES, MEASURE_LABELS))
        operator = normalise_operator(node.get("operator"))
        value = node.get("value")
        if measure in ("count", "sum", "avg"):
            if operator not in AGGREGATE_OPS:
                _fail(f"{path}.operator", _one_of(AGGREGATE_OPS, OPERATOR_LABELS))
            if operator == "between":
                if (
                    not isinstance(value, list)
                    or len(value) != 2
                    or not all(_is_number(v) for v in value)
                    or value[0] > value[1]
                ):
                    _fail(
                        f"{path}.value",
                        _("fill in both numbers, the lower bound no higher than the upper one"),
                    )
            elif not _is_number(value):
                _fail(f"{path}.value", _("must be a number"))
            if measure == "count":
                values = value if isinstance(value, list) else [value]
                if any(not isinstance(v, int) or v < 0 for v in values):
                    _fail(f"{path}.value", _("a count must be a whole number ≥ 0"))
        elif measure in ("first", "last"):
            if operator not in OCCURRENCE_OPS:
                _fail(f"{path}.operator", _one_of(OCCURRENCE_OPS, OPERATOR_LABELS))
            if operator in RELATIVE_OPS:
                if (
                    not isinstance(value, int)
                    or isinstance(value, bool)
                    or not 0 <= value <= MAX_DAYS
                ):
                    _fail(f"{path}.value", _("must be a whole number of days"))
            else:
                self.dates(operator, value, f"{path}.value")
        self.window(node.get("window"), f"{path}.window")
        filters = node.get("filters", [])
        if not isinstance(filters, list):
            _fail(f"{path}.filters", _("must be a list of property filters"))
        for i, item in enumerate(filters):
            validate_property_filter(item, f"{path}.filters[{i}]")

    @staticmethod
    def window(window: Any, path: str) -> None:
        if window in (None, {}):
            return
        if not isinstance(window, dict):
            _fail(path, _("must be a number of days, or a start and an end date"))
        if "last_days" in window:
            days = window["last_days"]
            # 0 is today so far (from local midnight): "purchased today".
            if not _is_days(days):
                _fail(
                    f"{path}.last_days",
                    _("must be a whole number of days, 0–%(max)s") % {"max": MAX_DAYS},
                )
            return
        first, last = parse_date(window.get("from")), parse_date(window.get("to"))
        if first is None or last is None:
            # In the builder's words: the operator fills in dates or days, not JSON keys.
            _fail(
                path,
                _(
                    "fill in both the start and the end date (like 2026-05-17), "
                    "or the number of days"
                ),
            )
        if first > last:
            _fail(path, _("the start date is after the end date"))

    def membership(self, node: dict, path: str) -> None:
        field = node.get("field")
        if field not in MEMBERSHIP_FIELDS:
            _fail(f"{path}.field", _one_of(MEMBERSHIP_FIELDS, MEMBERSHIP_FIELD_LABELS))
        if field == "is_member":
            if normalise_operator(node.get("operator")) not in ("is_true", "is_false"):
                _fail(f"{path}.operator", _one_of(("is_true", "is_false"), OPERATOR_LABELS))
            return
        spec = FieldSpec(f"membership.{field}", MEMBERSHIP_FIELDS[field])
        operator = normalise_operator(node.get("operator"))
        if operator in SET_OPS:
            _fail(f"{path}.operator", _("membership conditions apply to members only"))
        self.operator_value(spec, node, path)
        if field == "tier":
            from membership.models import Tier

            values = node["value"] if isinstance(node["value"], list) else [node["value"]]
            known = set(Tier.objects.values_list("code", flat=True))
            bad = [v for v in values if v not in known]
            if bad:
                _fail(f"{path}.value", _("unknown tier codes %(codes)s") % {"codes": bad})

    def consent(self, node: dict, path: str) -> None:
        if node.get("channel") not in ConsentChannel.values:
            _fail(f"{path}.channel", _one_of(ConsentChannel.values, dict(ConsentChannel.choices)))
        if node.get("purpose", "marketing") not in ConsentPurpose.values:
            _fail(f"{path}.purpose", _one_of(ConsentPurpose.values, dict(ConsentPurpose.choices)))
        if node.get("state") not in CONSENT_STATES:
            _fail(f"{path}.state", _one_of(CONSENT_STATES, CONSENT_STATE_LABELS))

    def reachable(self, node: dict, path: str) -> None:
        if node.get("channel") not in REACHABLE_CHANNELS:
            _fail(f"{path}.channel", _one_of(REACHABLE_CHANNELS, REACHABLE_CHANNEL_LABELS))
        if not isinstance(node.get("value", True), bool):
            _fail(f"{path}.value", _("must be “is reachable” or “is not reachable”"))

    def segment(self, node: dict, path: str) -> None:
        from segments.models import Segment

        if node.get("match", "in") not in MATCH_IN:
            _fail(f"{path}.match", _one_of(MATCH_IN, MATCH_IN_LABELS))
        ref = node.get("segment")
        if not isinstance(ref, int) or isinstance(ref, bool):
            _fail(f"{path}.segment", _("must be a segment id"))
        if ref == self.segment_id:
            _fail(f"{path}.segment", _("a segment cannot refer to itself"), reason=CYCLE)
        target = Segment.objects.filter(pk=ref).first()
        if target is None:
            _fail(f"{path}.segment", _("unknown segment %(id)s") % {"id": ref})
        # An archived segment is no longer refreshed: reading it would read frozen membership.
        # A rule that already read it when it was archived keeps working and can still be saved.
        if target.is_archived and ref not in self.stored_refs:
            _fail(
                f"{path}.segment",
                _("segment “%(name)s” is archived: restore it first or choose another")
                % {"name": target.name},
            )
        if self.segment_id is not None and self.segment_id in segment_ancestors(target):
            _fail(
                f"{path}.segment",
                _("segment “%(name)s” already depends on this one: that would be a cycle")
                % {"name": target.name},
                reason=CYCLE,
            )

    def rfm(self, node: dict, path: str) -> None:
        from segments.models import RFMLayer

        if node.get("match", "in") not in MATCH_IN:
            _fail(f"{path}.match", _one_of(MATCH_IN, MATCH_IN_LABELS))
        layers = node.get("layers")
        if not isinstance(layers, list) or not layers:
            _fail(f"{path}.layers", _("must be a non-empty list of RFM layers"))
        bad = [v for v in layers if v not in RFMLayer.values]
        if bad:
            _fail(f"{path}.layers", _("unknown layers %(layers)s") % {"layers": bad})

    def koc(self, node: dict, path: str) -> None:
        operator = node.get("operator")
        if operator not in KOC_OPS:
            _fail(f"{path}.operator", _one_of(KOC_OPS, KOC_LABELS))
        if operator.startswith("score_") and not _is_number(node.get("value")):
            _fail(f"{path}.value", _("must be a number"))


def validate_property_filter(item: Any, path: str) -> None:
    """Check one event property filter: {"property": "amount", "operator": "gt", "value": 100}."""
    if not isinstance(item, dict):
        _fail(path, _("must be a property filter: a property, an operator and a value"))
    prop = item.get("property")
    if (
        not isinstance(prop, str)
        or not prop
        or len(prop) > 64
        or not prop.replace("_", "").isalnum()
    ):
        _fail(f"{path}.property", _("must be a property name (letters, digits, _)"))
    try:
        int(prop)
    except ValueError:
        pass
    else:
        # Django reads a key int() accepts ("12", "1_0") as an array index, never as the key.
        _fail(f"{path}.property", _("must not be a number: use a name with a letter in it"))
    operator = item.get("operator")
    if operator not in PROPERTY_OPS:
        _fail(f"{path}.operator", _one_of(PROPERTY_OPS, OPERATOR_LABELS))
    value = item.get("value")
    if operator in ("exists", "not_exists"):
        return
    if operator in NUMERIC_PROPERTY_OPS:
        if not _is_number(value):
            _fail(f"{path}.value", _("must be a number"))
    elif operator == "in":
        if (
            not isinstance(value, list)
            or not value
            or not all(isinstance(v, str | int | float) and not isinstance(v, bool) for v in value)
        ):
            _fail(f"{path}.value", _("must be a non-empty list of values"))
    elif operator == "contains":
        if not isinstance(value, str) or not value:
            _fail(f"{path}.value", _("must be non-empty text"))
    elif not isinstance(value, str | int | float) or isinstance(value, bool):
        _fail(f"{path}.value", _("must be text or a number"))


def rule_conditions(rule: Any) -> Iterator[dict]:
    """Every condition (leaf) of a rule tree, depth first; malformed nodes are skipped."""
    if not isinstance(rule, dict):
        return
    if "op" in rule:
        for child in rule.get("conditions") or []:
            yield from rule_conditions(child)
    else:
        yield rule


def rule_segment_refs(rule: Any) -> set[int]:
    """The ids of the segments a rule reads."""
    return {
        node["segment"]
        for node in rule_conditions(rule)
        if node.get("type") == "segment" and isinstance(node.get("segment"), int)
    }


def rule_tag_refs(rule: Any) -> set[int]:
    """The ids of the tags a rule reads."""
    return {
        tag
        for node in rule_conditions(rule)
        if node.get("type") == "tag" and isinstance(node.get("tags"), list)
        for tag in node["tags"]
        if isinstance(tag, int) and not isinstance(tag, bool)
    }


def segment_ancestors(segment) -> set[int]:
    """Every segment that `segment` reads, directly or through others (by stored rules)."""
    from segments.models import Segment

    seen: set[int] = set()
    frontier = rule_segment_refs(segment.rule)
    while frontier:
        seen |= frontier
        rules = Segment.objects.filter(pk__in=frontier).values_list("rule", flat=True)
        frontier = set().union(*(rule_segment_refs(r) for r in rules)) - seen if rules else set()
    return seen


def rule_has_time_window(rule: Any) -> bool:
    """True when the rule's result can change with time alone (or with data recomputed daily)."""

    def ages(node: dict) -> bool:
        kind = node.get("type")
        if kind in ("rfm", "koc"):
            return True
        if kind == "attribute" and node.get("field") == "lead_score":
            return True  # the score decays daily
        if normalise_operator(node.get("operator")) in DAYS_OPS:
            return True
        return kind == "event" and "last_days" in (node.get("window") or {})

    return any(ages(node) for node in rule_conditions(rule))
