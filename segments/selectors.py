from dataclasses import dataclass
from typing import Any

from django.db.models import QuerySet
from django.utils.translation import gettext as _

from contacts.models import Contact, Tag
from segments.models import Segment, SegmentMembership
from segments.rule_labels import (
    GROUP_LABELS,
    OPERATOR_LABELS,
    TAG_MATCH_LABELS,
    choice_value_labels,
    field_label,
)


def segment_list(*, include_archived: bool = False) -> QuerySet[Segment]:
    qs = Segment.objects.all()
    return qs if include_archived else qs.filter(is_archived=False)


def segment_members(*, segment: Segment) -> QuerySet[Contact]:
    return Contact.objects.filter(segment_memberships__segment=segment).select_related(
        "lifecycle_stage"
    )


def segments_for_contact(*, contact: Contact) -> QuerySet[SegmentMembership]:
    return SegmentMembership.objects.filter(contact=contact).select_related("segment")


def segment_name_taken(*, name: str, exclude: Segment | None = None) -> bool:
    qs = Segment.objects.filter(name=name)
    if exclude is not None:
        qs = qs.exclude(pk=exclude.pk)
    return qs.exists()


@dataclass
class RuleLine:
    depth: int
    text: str


def _tag_ids(node: Any) -> set[int]:
    if not isinstance(node, dict):
        return set()
    if "op" in node:
        ids: set[int] = set()
        for child in node.get("conditions") or []:
            ids |= _tag_ids(child)
        return ids
    if node.get("type") == "tag":
        return {t for t in node.get("tags") or [] if isinstance(t, int)}
    return set()


def _value_text(field: str, value: Any) -> str:
    labels = choice_value_labels().get(field, {})
    values = value if isinstance(value, list) else [value]
    return "、".join(str(labels.get(v, v)) for v in values)


def _describe(node: dict, depth: int, tags: dict[int, str], out: list[RuleLine]) -> None:
    if "op" in node:
        children = node.get("conditions") or []
        if not children:
            text = _("Every contact") if node["op"] == "and" else _("No contact")
            out.append(RuleLine(depth, text))
            return
        out.append(RuleLine(depth, str(GROUP_LABELS.get(node["op"], node["op"]))))
        for child in children:
            _describe(child, depth + 1, tags, out)
        return
    if node.get("type") == "tag":
        names = "、".join(tags.get(t, f"#{t}") for t in node.get("tags") or [])
        match = str(TAG_MATCH_LABELS.get(node.get("match"), node.get("match")))
        out.append(RuleLine(depth, _("Tag %(match)s: %(tags)s") % {"match": match, "tags": names}))
        return
    field = str(node.get("field", ""))
    operator = node.get("operator")
    label = field_label(field)
    value = node.get("value")
    if operator == "within_days":
        text = _("%(field)s within the last %(days)s days") % {"field": label, "days": value}
    elif operator == "before_days":
        text = _("%(field)s more than %(days)s days ago") % {"field": label, "days": value}
    elif operator in ("is_set", "not_set"):
        text = f"{label} {OPERATOR_LABELS[operator]}"
    else:
        op = OPERATOR_LABELS.get(operator, operator)
        text = f"{label} {op} {_value_text(field, value)}"
    out.append(RuleLine(depth, text))


def segment_rule_describe(*, rule: Any) -> list[RuleLine]:
    """The rule as indented, human-readable lines (tag ids resolved to names)."""
    tags = {t.pk: str(t) for t in Tag.objects.select_related("group").filter(pk__in=_tag_ids(rule))}
    out: list[RuleLine] = []
    try:
        _describe(rule, 0, tags, out)
    except (AttributeError, KeyError, TypeError):
        # A rule stored without validation (e.g. by hand in the admin): show it raw.
        return [RuleLine(0, str(rule))]
    return out
