"""The segment rule language (first version): nested AND/OR groups over tags and attributes.

A rule is JSON:

    {"op": "and", "conditions": [
        {"type": "tag", "match": "any", "tags": [3, 7]},
        {"type": "attribute", "field": "city", "operator": "eq", "value": "上海"},
        {"op": "or", "conditions": [...]}
    ]}

`compile_rule` turns it into one Q object, so a segment is always a single SQL query.
"""

import datetime as dt
from typing import Any

from django.db.models import Exists, OuterRef, Q
from django.utils import timezone

from contacts.models import ContactTag, Gender, Stage, Tag
from core.errors import ValidationFailed

GROUP_OPS = ("and", "or")
TAG_MATCHES = ("any", "all", "none")
STRING_FIELDS = ("name", "nickname", "phone", "email", "province", "city", "source", "channel_code")
CHOICE_FIELDS = ("lifecycle_stage", "gender")
STRING_OPERATORS = ("eq", "neq", "in", "contains", "startswith", "is_set", "not_set")
DATE_FIELDS = ("created_at", "last_seen_at")
DATE_OPERATORS = ("within_days", "before_days")
MAX_DEPTH = 6
MAX_CONDITIONS = 100


def _fail(path: str, message: str) -> None:
    raise ValidationFailed(f"{path}: {message}", code="invalid_rule", details={"path": path})


def validate_rule(rule: Any) -> None:
    """Raise ValidationFailed naming the offending condition's path, e.g. `conditions[2].value`."""
    count = [0]
    _validate_node(rule, "rule", 0, count)


def _validate_node(node: Any, path: str, depth: int, count: list[int]) -> None:
    if not isinstance(node, dict):
        _fail(path, "must be an object")
    if depth > MAX_DEPTH:
        _fail(path, f"groups nest deeper than {MAX_DEPTH} levels")
    count[0] += 1
    if count[0] > MAX_CONDITIONS:
        _fail(path, f"a rule may hold at most {MAX_CONDITIONS} conditions")
    if "op" in node:
        if node["op"] not in GROUP_OPS:
            _fail(f"{path}.op", f"must be one of {', '.join(GROUP_OPS)}")
        children = node.get("conditions")
        if not isinstance(children, list):
            _fail(f"{path}.conditions", "must be a list")
        for i, child in enumerate(children):
            _validate_node(child, f"{path}.conditions[{i}]", depth + 1, count)
        return
    kind = node.get("type")
    if kind == "tag":
        if node.get("match") not in TAG_MATCHES:
            _fail(f"{path}.match", f"must be one of {', '.join(TAG_MATCHES)}")
        tags = node.get("tags")
        if not isinstance(tags, list) or not tags or not all(isinstance(t, int) for t in tags):
            _fail(f"{path}.tags", "must be a non-empty list of tag ids")
        missing = set(tags) - set(Tag.objects.filter(pk__in=tags).values_list("pk", flat=True))
        if missing:
            _fail(f"{path}.tags", f"unknown tag ids {sorted(missing)}")
    elif kind == "attribute":
        _validate_attribute(node, path)
    else:
        _fail(
            f"{path}.type", "must be 'tag' or 'attribute' (or the node must be a group with 'op')"
        )


def _validate_attribute(node: dict, path: str) -> None:
    field = node.get("field")
    operator = node.get("operator")
    value = node.get("value")
    if field in STRING_FIELDS or field in CHOICE_FIELDS or _is_custom(field):
        if operator not in STRING_OPERATORS:
            _fail(f"{path}.operator", f"must be one of {', '.join(STRING_OPERATORS)}")
        if operator in ("is_set", "not_set"):
            return
        if operator == "in":
            if not isinstance(value, list) or not value:
                _fail(f"{path}.value", "must be a non-empty list")
            values = value
        else:
            if not isinstance(value, str | int | float) or isinstance(value, bool):
                _fail(f"{path}.value", "must be a string or number")
            values = [value]
        if field in CHOICE_FIELDS:
            allowed = (
                set(Stage.objects.values_list("key", flat=True))
                if field == "lifecycle_stage"
                else set(Gender.values)
            )
            bad = [v for v in values if v not in allowed]
            if bad:
                _fail(f"{path}.value", f"unknown {field} {bad}")
    elif field in DATE_FIELDS:
        if operator not in DATE_OPERATORS:
            _fail(f"{path}.operator", f"must be one of {', '.join(DATE_OPERATORS)}")
        if not isinstance(value, int) or isinstance(value, bool) or value < 0:
            _fail(f"{path}.value", "must be a whole number of days")
    else:
        _fail(f"{path}.field", f"unknown field '{field}'")


def _is_custom(field: Any) -> bool:
    return isinstance(field, str) and field.startswith("attributes.") and len(field) > 11


def compile_rule(rule: dict) -> Q:
    """Compile a validated rule into a Q over Contact."""
    if "op" in rule:
        parts = [compile_rule(child) for child in rule["conditions"]]
        if not parts:
            # An empty AND matches everyone; an empty OR matches no one.
            return Q() if rule["op"] == "and" else Q(pk__in=[])
        combined = parts[0]
        for part in parts[1:]:
            combined = combined & part if rule["op"] == "and" else combined | part
        return combined
    if rule["type"] == "tag":
        return _compile_tag(rule)
    return _compile_attribute(rule)


def _has_tag(tag_ids: list[int]) -> Exists:
    return Exists(ContactTag.objects.filter(contact_id=OuterRef("pk"), tag_id__in=tag_ids))


def _compile_tag(node: dict) -> Q:
    tags = node["tags"]
    if node["match"] == "any":
        return Q(_has_tag(tags))
    if node["match"] == "none":
        return ~Q(_has_tag(tags))
    q = Q()
    for tag in tags:
        q &= Q(_has_tag([tag]))
    return q


def _compile_attribute(node: dict) -> Q:
    field = node["field"]
    operator = node["operator"]
    value = node.get("value")
    if field in DATE_FIELDS:
        since = timezone.now() - dt.timedelta(days=value)
        if operator == "within_days":
            return Q(**{f"{field}__gte": since})
        return Q(**{f"{field}__lt": since})
    # The stage is a foreign key on its key column: compare the stored key itself.
    lookup = "lifecycle_stage_id" if field == "lifecycle_stage" else field.replace(".", "__")
    if operator == "is_set":
        return Q(**{f"{lookup}__isnull": False}) & ~Q(**{lookup: ""})
    if operator == "not_set":
        return Q(**{f"{lookup}__isnull": True}) | Q(**{lookup: ""})
    if operator == "eq":
        return Q(**{lookup: value})
    if operator == "neq":
        return ~Q(**{lookup: value})
    if operator == "in":
        return Q(**{f"{lookup}__in": value})
    if operator == "contains":
        return Q(**{f"{lookup}__icontains": value})
    return Q(**{f"{lookup}__startswith": value})
