import re
from typing import Any

from django import forms
from django.utils.translation import gettext_lazy as _

from contacts.selectors import tags_grouped
from core.errors import ValidationFailed
from segments.models import Segment
from segments.rule_labels import (
    FIELD_LABELS,
    GROUP_LABELS,
    OPERATOR_LABELS,
    TAG_MATCH_LABELS,
    choice_value_labels,
)
from segments.rules import DATE_FIELDS, DATE_OPERATORS
from segments.selectors import segment_name_taken

# The simple editor offers this many attribute rows; richer rules need the builder (or the API).
CONDITION_ROWS = 3
NO_VALUE_OPERATORS = ("is_set", "not_set")
LIST_SPLIT_RE = re.compile(r"[,，、]")
CONDITION_PATH_RE = re.compile(r"^rule\.conditions\[(\d+)\](?:\.(\w+))?")


class SegmentForm(forms.Form):
    """Name, description and a flat rule: one tag condition plus a few attribute conditions."""

    name = forms.CharField(label=_("Name"), max_length=100)
    description = forms.CharField(
        label=_("Description"), required=False, widget=forms.Textarea(attrs={"rows": 2})
    )
    match = forms.ChoiceField(
        label=_("Contacts must match"),
        choices=list(GROUP_LABELS.items()),
        initial="and",
        widget=forms.RadioSelect,
    )
    tag_match = forms.ChoiceField(
        label=_("Tags"), choices=list(TAG_MATCH_LABELS.items()), initial="any"
    )
    tags = forms.ModelMultipleChoiceField(
        label=_("Tags"),
        queryset=tags_grouped(),
        required=False,
        widget=forms.CheckboxSelectMultiple,
    )

    def __init__(self, *args, segment: Segment | None = None, rule_editable: bool = True, **kwargs):
        self.segment = segment
        self.rule_editable = rule_editable
        super().__init__(*args, **kwargs)
        # Maps a condition's index in the built rule back to the form row that produced it.
        self._row_of_condition: dict[int, int | None] = {}
        if not rule_editable:
            for name in ("match", "tag_match", "tags"):
                del self.fields[name]
            return
        # The queryset is evaluated per form so that new tags show up without a restart.
        self.fields["tags"].queryset = tags_grouped()
        field_choices = [("", _("Field…")), *FIELD_LABELS.items()]
        operator_choices = [("", _("Operator…")), *OPERATOR_LABELS.items()]
        for i in range(CONDITION_ROWS):
            self.fields[f"c{i}_field"] = forms.ChoiceField(
                label=_("Field"), choices=field_choices, required=False
            )
            self.fields[f"c{i}_operator"] = forms.ChoiceField(
                label=_("Operator"), choices=operator_choices, required=False
            )
            self.fields[f"c{i}_value"] = forms.CharField(
                label=_("Value"),
                required=False,
                max_length=200,
                widget=forms.TextInput(attrs={"placeholder": _("Value (comma-separate lists)")}),
            )

    @property
    def condition_rows(self) -> list[tuple[forms.BoundField, forms.BoundField, forms.BoundField]]:
        if not self.rule_editable:
            return []
        return [
            (self[f"c{i}_field"], self[f"c{i}_operator"], self[f"c{i}_value"])
            for i in range(CONDITION_ROWS)
        ]

    def clean_name(self) -> str:
        name = self.cleaned_data["name"].strip()
        if segment_name_taken(name=name, exclude=self.segment):
            raise forms.ValidationError(_("A segment with this name already exists."))
        return name

    def build_rule(self) -> dict[str, Any] | None:
        """The JSON rule described by the cleaned form (not yet validated); None if read-only."""
        if not self.rule_editable:
            return None
        data = self.cleaned_data
        conditions: list[dict[str, Any]] = []
        self._row_of_condition = {}
        if data.get("tags"):
            self._row_of_condition[len(conditions)] = None
            conditions.append(
                {"type": "tag", "match": data["tag_match"], "tags": [t.pk for t in data["tags"]]}
            )
        for i in range(CONDITION_ROWS):
            field = data.get(f"c{i}_field", "")
            operator = data.get(f"c{i}_operator", "")
            raw = (data.get(f"c{i}_value") or "").strip()
            if not (field or operator or raw):
                continue
            node: dict[str, Any] = {"type": "attribute", "field": field, "operator": operator}
            if operator not in NO_VALUE_OPERATORS:
                node["value"] = _parse_value(field, operator, raw)
            self._row_of_condition[len(conditions)] = i
            conditions.append(node)
        return {"op": data.get("match") or "and", "conditions": conditions}

    def add_rule_error(self, exc: ValidationFailed) -> None:
        """Attach a rule validation error to the form row it concerns, or to the whole form."""
        path = (exc.details or {}).get("path", "") if isinstance(exc.details, dict) else ""
        message = exc.message.split(": ", 1)[-1] if ": " in exc.message else exc.message
        found = CONDITION_PATH_RE.match(path)
        if found and int(found.group(1)) in self._row_of_condition:
            row = self._row_of_condition[int(found.group(1))]
            attr = found.group(2)
            if row is None:
                self.add_error("tags", message)
                return
            if attr in ("field", "operator", "value"):
                self.add_error(f"c{row}_{attr}", self._row_message(row, attr, message))
                return
        self.add_error(None, _("The rule is invalid: %(error)s") % {"error": exc.message})

    def _row_message(self, row: int, attr: str, fallback: str) -> str:
        """Say what the operator should enter, in their language, rather than the engine's words."""
        field = self.cleaned_data.get(f"c{row}_field", "")
        operator = self.cleaned_data.get(f"c{row}_operator", "")
        if attr == "field":
            return _("Choose a field.")
        if attr == "operator":
            if field in DATE_FIELDS:
                return _("Dates take “within the last N days” or “more than N days ago”.")
            if operator in DATE_OPERATORS:
                return _("“%(operator)s” only applies to date fields.") % {
                    "operator": OPERATOR_LABELS[operator]
                }
            return _("Choose an operator.")
        if field in DATE_FIELDS:
            return _("Enter a whole number of days.")
        value_labels = choice_value_labels()
        if field in value_labels:
            choices = "、".join(
                f"{value}（{label}）" for value, label in value_labels[field].items()
            )
            return _("Enter one of: %(choices)s") % {"choices": choices}
        if operator == "in":
            return _("Enter one or more values, separated by commas.")
        return _("Enter a value.") if fallback.startswith("must be") else fallback

    @classmethod
    def initial_from_rule(cls, rule: Any) -> dict[str, Any] | None:
        """Form data for a rule the simple editor can show, or None when it is too complex."""
        if not isinstance(rule, dict) or rule.get("op") not in GROUP_LABELS:
            return None
        initial: dict[str, Any] = {"match": rule["op"]}
        rows = 0
        for node in rule.get("conditions") or []:
            if not isinstance(node, dict):
                return None
            if node.get("type") == "tag" and "tags" not in initial:
                initial["tag_match"] = node.get("match")
                initial["tags"] = node.get("tags") or []
            elif node.get("type") == "attribute" and node.get("field") in FIELD_LABELS:
                if rows >= CONDITION_ROWS:
                    return None
                value = node.get("value", "")
                initial[f"c{rows}_field"] = node["field"]
                initial[f"c{rows}_operator"] = node.get("operator", "")
                initial[f"c{rows}_value"] = (
                    ", ".join(str(v) for v in value) if isinstance(value, list) else value
                )
                rows += 1
            else:
                return None
        return initial


def _parse_value(field: str, operator: str, raw: str) -> Any:
    if operator == "in":
        return [part.strip() for part in LIST_SPLIT_RE.split(raw) if part.strip()]
    if field in DATE_FIELDS and raw.isdigit():
        return int(raw)
    return raw
