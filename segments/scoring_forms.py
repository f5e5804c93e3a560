import json
import re
from typing import Any

from django import forms
from django.utils.translation import gettext_lazy as _
from django.utils.translation import pgettext_lazy

from contacts.models import Stage
from core.errors import ValidationFailed
from segments.forms import ROOT, rule_error_message, rule_from_post
from segments.models import CapPeriod, LeadScoreRule, ScoreRuleKind
from segments.scoring import MAX_PROPERTY_FILTERS, PROPERTY_OPERATORS, threshold_stages

# Rows of property filters the form shows at least. A rule's page shows all of its filters plus
# an empty row (up to the service's MAX_PROPERTY_FILTERS), "+ Property filter" adds one, and a
# post is read up to its last row: no filter is left out of a save.
FILTER_ROWS = 4
# A filter row's posted field (f0_property …); at most six digits, so the index is cheap to read.
FILTER_FIELD_RE = re.compile(r"^f(0|[1-9]\d{0,5})_(?:property|operator|value)$")
# The "+ Property filter" button's action: the view re-renders the form (an action the profile
# builder does not know leaves its condition as it is) and the form shows one more row.
ADD_FILTER_ACTION = "add-score-filter"
LIST_SPLIT_RE = re.compile(r"[,，、]")
FILTER_PATH_RE = re.compile(r"^property_filters\[(\d+)\](?:\.(\w+))?")
NUMERIC_OPERATORS = ("gt", "gte", "lt", "lte")

OPERATOR_LABELS = {
    "eq": _("equals"),
    "neq": _("does not equal"),
    "gt": _("greater than"),
    "gte": _("at least"),
    "lt": _("less than"),
    "lte": _("at most"),
    "in": _("is one of"),
    "contains": _("contains"),
    "exists": _("is present"),
    "not_exists": _("is absent"),
}


def _typed(text: str) -> Any:
    """A number when the text is one, so that JSON shows 100 rather than "100"."""
    try:
        number = float(text)
    except ValueError:
        return text
    return int(number) if number.is_integer() and "." not in text else number


class ScoreRuleForm(forms.Form):
    name = forms.CharField(label=_("Name"), max_length=100)
    kind = forms.ChoiceField(
        label=_("Kind"), choices=ScoreRuleKind.choices, initial=ScoreRuleKind.EVENT
    )
    event_name = forms.CharField(
        label=_("Event name"),
        max_length=64,
        required=False,
        # The builder's list of known event names (rendered with the profile-fit rows).
        widget=forms.TextInput(attrs={"list": "event-names"}),
        help_text=_("For per-event rules, e.g. purchase, page_view, share."),
    )
    # The page edits the profile condition with the segment builder's rows (fields named
    # r.…); a post without them (a script) may still send the rule as JSON here.
    condition = forms.CharField(label=_("Profile condition"), required=False)
    points = forms.IntegerField(
        label=_("Points"),
        min_value=-100000,
        max_value=100000,
        help_text=_("Negative points lower the score (e.g. an unsubscribe)."),
    )
    cap_points = forms.IntegerField(label=_("Cap (points)"), min_value=1, required=False)
    cap_period = forms.ChoiceField(
        label=_("Cap period"), choices=CapPeriod.choices, initial=CapPeriod.NONE
    )
    # A switch the operator sets, not a state the rule is in ("Active" reads 进行中).
    is_active = forms.BooleanField(
        label=pgettext_lazy("scoring rule checkbox", "Enabled"),
        required=False,
        initial=True,
        help_text=_("A rule that is not enabled gives no points until you enable it."),
    )

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        operator_choices = [("", _("Operator…"))]
        operator_choices += [(op, OPERATOR_LABELS[op]) for op in PROPERTY_OPERATORS]
        self.filter_count = self._filter_count()
        for i in range(self.filter_count):
            self.fields[f"f{i}_property"] = forms.CharField(
                label=_("Property"),
                max_length=100,
                required=False,
                widget=forms.TextInput(attrs={"placeholder": _("Property, e.g. amount")}),
            )
            self.fields[f"f{i}_operator"] = forms.ChoiceField(
                label=_("Operator"), choices=operator_choices, required=False
            )
            self.fields[f"f{i}_value"] = forms.CharField(
                label=_("Value"),
                max_length=200,
                required=False,
                widget=forms.TextInput(attrs={"placeholder": _("Value (comma-separate lists)")}),
            )
        self._row_of_filter: dict[int, int] = {}
        # A rule error the builder shows at the condition it names.
        self.rule_error: ValidationFailed | None = None

    def _filter_rows_in(self, data: Any) -> int:
        """How many filter rows `data` holds: up to the last row it names."""
        indexes = [int(m.group(1)) for key in data if (m := FILTER_FIELD_RE.match(str(key)))]
        return max(indexes, default=-1) + 1

    def _filter_count(self) -> int:
        if self.is_bound:
            rows = self._filter_rows_in(self.data)
            if self.data.get("action") == ADD_FILTER_ACTION:
                rows += 1
            # Past the service's limit a row cannot be saved: clean() says so if one is filled.
            return max(FILTER_ROWS, min(rows, MAX_PROPERTY_FILTERS))
        stored = self._filter_rows_in(self.initial)
        # A stored rule over the limit (written around the service) still shows every filter.
        return max(FILTER_ROWS, min(stored + 1, MAX_PROPERTY_FILTERS), stored)

    @property
    def can_add_filter(self) -> bool:
        return self.filter_count < MAX_PROPERTY_FILTERS

    @property
    def add_filter_action(self) -> str:
        return ADD_FILTER_ACTION

    def _filters_past_limit(self) -> bool:
        """Whether the post fills a filter row past the rows the form reads."""
        for key in self.data:
            match = FILTER_FIELD_RE.match(str(key))
            past = match is not None and int(match.group(1)) >= self.filter_count
            if past and str(self.data.get(key) or "").strip():
                return True
        return False

    @property
    def kind_shown(self) -> str:
        """The kind whose fields the form shows: as posted, else the rule's own."""
        kind = self["kind"].value()
        return kind if kind in ScoreRuleKind.values else ScoreRuleKind.EVENT

    @property
    def builder_posted(self) -> bool:
        return self.is_bound and f"{ROOT}.kind" in self.data

    @property
    def fit_rule(self) -> dict[str, Any]:
        """The profile condition the builder shows: as posted, else the rule's own."""
        if self.builder_posted:
            return rule_from_post(self.data)
        if self.is_bound:
            try:
                rule = json.loads(self.data.get("condition") or "{}")
            except json.JSONDecodeError:
                rule = {}
        else:
            rule = self.initial.get("fit_rule") or {}
        return rule if isinstance(rule, dict) and rule else {"op": "and", "conditions": []}

    @classmethod
    def initial_from_rule(cls, rule: LeadScoreRule) -> dict[str, Any]:
        initial: dict[str, Any] = {
            "name": rule.name,
            "kind": rule.kind,
            "event_name": rule.event_name,
            "fit_rule": rule.condition,
            "points": rule.points,
            "cap_points": rule.cap_points,
            "cap_period": rule.cap_period,
            "is_active": rule.is_active,
        }
        for i, row in enumerate(rule.property_filters):
            value = row.get("value")
            if isinstance(value, list):
                value = ", ".join(str(v) for v in value)
            elif isinstance(value, bool):
                value = "true" if value else "false"
            initial[f"f{i}_property"] = row.get("property", "")
            initial[f"f{i}_operator"] = row.get("operator", "")
            initial[f"f{i}_value"] = "" if value is None else str(value)
        return initial

    @property
    def filter_rows(self) -> list[tuple[forms.BoundField, forms.BoundField, forms.BoundField]]:
        return [
            (self[f"f{i}_property"], self[f"f{i}_operator"], self[f"f{i}_value"])
            for i in range(self.filter_count)
        ]

    def clean(self) -> dict[str, Any]:
        data = super().clean()
        text = (data.get("condition") or "").strip()
        data["condition_json"] = {}
        if data.get("kind") != ScoreRuleKind.ATTRIBUTE:
            if self._filters_past_limit():
                self.add_error(
                    None,
                    _("A rule takes at most %(max)s property filters.")
                    % {"max": MAX_PROPERTY_FILTERS},
                )
            return data
        # The event fields are hidden for a profile-fit rule and the service ignores them: what
        # was typed there before the kind changed must not hold up the save unseen.
        event_fields = ["event_name", "cap_points", "cap_period"]
        event_fields += [name for row in self.filter_rows for name in (f.name for f in row)]
        for name in event_fields:
            self._errors.pop(name, None)
        if self.builder_posted:
            rule = rule_from_post(self.data)
            # An empty group matches everyone: no condition, which the service refuses.
            data["condition_json"] = rule if rule.get("conditions") else {}
        elif text:
            try:
                data["condition_json"] = json.loads(text)
            except json.JSONDecodeError as exc:
                self.add_error(
                    "condition",
                    _("Not valid JSON (line %(line)s, column %(col)s): %(msg)s")
                    % {"line": exc.lineno, "col": exc.colno, "msg": exc.msg},
                )
        return data

    def build_filters(self) -> list[dict[str, Any]]:
        filters: list[dict[str, Any]] = []
        self._row_of_filter = {}
        for i in range(self.filter_count):
            prop = self.cleaned_data.get(f"f{i}_property", "").strip()
            operator = self.cleaned_data.get(f"f{i}_operator", "")
            raw = self.cleaned_data.get(f"f{i}_value", "").strip()
            if not prop and not operator and not raw:
                continue
            value: Any
            # Equality compares the text forms in segment rules, as here: what was typed stays
            # text (the segment builder does the same), so a code like 021 is not read as 21.
            if operator == "in":
                value = [v.strip() for v in LIST_SPLIT_RE.split(raw) if v.strip()]
            elif operator == "exists":
                value = raw.lower() not in ("false", "no", "0", "否")
            elif operator == "not_exists":
                value = None
            elif operator in NUMERIC_OPERATORS:
                value = _typed(raw)
            else:
                value = raw
            self._row_of_filter[len(filters)] = i
            filters.append({"property": prop, "operator": operator, "value": value})
        return filters

    def service_data(self) -> dict[str, Any]:
        data = self.cleaned_data
        if data["kind"] == ScoreRuleKind.ATTRIBUTE:
            # Only the chosen kind's fields are shown; the hidden event fields say nothing.
            return {
                "name": data["name"],
                "kind": data["kind"],
                "condition": data.get("condition_json") or {},
                "points": data["points"],
                "is_active": data.get("is_active", False),
            }
        return {
            "name": data["name"],
            "kind": data["kind"],
            "event_name": data.get("event_name", ""),
            "property_filters": self.build_filters(),
            "condition": {},
            "points": data["points"],
            "cap_points": data.get("cap_points"),
            "cap_period": data.get("cap_period"),
            "is_active": data.get("is_active", False),
        }

    def add_service_error(self, exc: ValidationFailed) -> None:
        """Attach a service error to the field (or filter row) its path names."""
        message = exc.message
        path = (exc.details or {}).get("path", "") if isinstance(exc.details, dict) else ""
        match = FILTER_PATH_RE.match(path or message)
        if match:
            row = self._row_of_filter.get(int(match.group(1)), 0)
            part = match.group(2) or "property"
            self.add_error(f"f{row}_{part}", message.split(": ", 1)[-1])
            return
        if (path or message).startswith("rule"):
            self.rule_error = exc
            self.add_error("condition", rule_error_message(exc))
            return
        field = message.split(":", 1)[0]
        if field in self.fields and ":" in message:
            self.add_error(field, message.split(": ", 1)[1])
        else:
            self.add_error(None, message)


class HalfLifeForm(forms.Form):
    half_life_days = forms.IntegerField(
        label=_("Half-life (days)"),
        min_value=0,
        max_value=3650,
        help_text=_("Event points lose half their weight after this many days. 0 = never."),
    )


class ThresholdForm(forms.Form):
    min_score = forms.FloatField(label=_("Minimum score"), min_value=0.01)
    stage = forms.ModelChoiceField(
        label=_("Move to stage"),
        queryset=Stage.objects.none(),
        to_field_name="key",
        empty_label=_("Choose a stage…"),
    )

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        # Only stages on the customer's path: never 沉睡 (dormant) or 流失 (churned).
        self.fields["stage"].queryset = threshold_stages()
