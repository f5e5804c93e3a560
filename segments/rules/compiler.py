"""Compile a validated rule tree into one Q over Contact: a segment is always one SQL query.

Conditions on related rows become EXISTS / NOT EXISTS or `id IN (SELECT contact_id ... GROUP BY
... HAVING ...)` sub-queries over indexed columns; nothing loops over contacts in Python. The
meaning of every operator is defined here and mirrored, independently, by the plain-Python
reference evaluator in tests/segments/reference.py, which property-based tests compare against.

Semantics worth knowing (docs/segments.md says the same for operators):
- a negative operator (neq, not_in, not_contains) also matches contacts whose value is unset;
- text matching with contains/startswith ignores case; eq/in are exact;
- dates compare in the brand's time zone (settings.TIME_ZONE): "on 2026-05-01" is that local day;
- "in the last N days" is the span from now − N days (from local midnight today when N is 0)
  until now plus the clock skew the event ingest accepts (MAX_CLOCK_SKEW); a date is in it when
  any part of its day is, i.e. today and the N days before. "More than N days ago" is before
  now − N days (a date: before today − N) and never matches an unset value;
- an anniversary on Feb 29 falls on Feb 28 in a year without Feb 29;
- event count and sum treat a contact without matching events as 0 (so "spent < 100" includes
  non-buyers); avg, first and last never match a contact without matching events;
- sums and averages of event values are exact: computed in whole cents (the value column's
  smallest unit), the average rounded to a cent, halves away from zero;
- expired tag assignments do not count.
"""

import calendar
import datetime as dt
import json
import math
from decimal import Decimal
from typing import Any

from django.db import NotSupportedError
from django.db.models import (
    BigIntegerField,
    BooleanField,
    Count,
    Exists,
    F,
    Func,
    JSONField,
    Max,
    Min,
    OuterRef,
    Q,
    Sum,
    Value,
)
from django.db.models.fields.json import KeyTransform
from django.db.models.functions import Coalesce
from django.utils import timezone
from django.utils.translation import gettext as _

from contacts.models import Consent, ContactTag, Event, Identity, IdentityKind
from contacts.services import MAX_CLOCK_SKEW
from segments.rules.schema import (
    BOOL,
    CHOICE,
    DATE,
    DATETIME,
    MULTI,
    NUMBER,
    REF,
    STRING,
    FieldSpec,
    field_spec,
    normalise_operator,
    numeral_value,
    parse_date,
    property_text,
    rule_error,
)

REF_LOOKUPS = {"owner": "owner_id", "store": "store_id", "lifecycle_stage": "lifecycle_stage_id"}
REACHABLE_IDENTITY = {
    "wechat_oa": IdentityKind.WECHAT_OPENID,
    "miniprogram": IdentityKind.MINIPROGRAM_OPENID,
    "wecom": IdentityKind.WECOM_EXTERNAL_USERID,
}
NOTHING = Q(pk__in=[])
# Event values are compared in whole units of the value column's last decimal place (cents).
VALUE_SCALE = 10 ** Event._meta.get_field("value").decimal_places
# Bounds of a 64-bit integer: SQLite cannot take a bigger parameter.
BIGINT_MIN, BIGINT_MAX = -(2**63), 2**63 - 1


class JSONKeyIs(Func):
    """True when a JSON object's key holds a value of the given kind ("number" or "string").

    Numeric comparisons are only made between JSON numbers: PostgreSQL orders jsonb strings
    below numbers while SQLite orders text above them, so without this guard `"150" > 100`
    would differ between the two databases.
    """

    output_field = BooleanField()
    SQLITE_TYPES = {
        "number": "('integer', 'real')",
        "string": "('text')",
        "true": "('true')",
        "false": "('false')",
    }

    def __init__(self, field: str, key: str, kind: str) -> None:
        self.key, self.kind = key, kind
        super().__init__(F(field))

    def as_postgresql(self, compiler, connection, **extra):
        sql, params = compiler.compile(self.source_expressions[0])
        if self.kind in ("true", "false"):
            return f"(({sql} -> %s) = %s::jsonb)", (*params, self.key, self.kind)
        return f"(JSONB_TYPEOF({sql} -> %s) = %s)", (*params, self.key, self.kind)

    def as_sqlite(self, compiler, connection, **extra):
        sql, params = compiler.compile(self.source_expressions[0])
        types = self.SQLITE_TYPES[self.kind]
        # The key quoted as Django's own JSON paths quote it (json.dumps): the column holds
        # non-ASCII keys escaped (\uXXXX), and a key may hold a quote.
        return f"(JSON_TYPE({sql}, %s) IN {types})", (*params, f"$.{json.dumps(self.key)}")

    def as_sql(self, compiler, connection, **extra):
        raise NotSupportedError("Segment rules support PostgreSQL and SQLite.")


class Cents(Func):
    """A decimal column in whole units of its last decimal place, as a 64-bit integer.

    SQLite keeps decimals as floating point: its SUM of ten 49.90 is 498.99999999999994, so
    "spent ≥ 499" would differ from PostgreSQL's exact numeric. Whole numbers add up exactly on
    both (a value has at most `decimal_places` decimals, so the rounding only removes the float
    error).
    """

    template = "CAST(ROUND(%(expressions)s * %(scale)s) AS BIGINT)"
    output_field = BigIntegerField()

    def __init__(self, field: str, scale: int) -> None:
        super().__init__(F(field), scale=int(scale))


class RoundedQuotient(Func):
    """numerator / denominator (whole numbers) rounded to a whole number, halves away from zero,
    in integer arithmetic on both databases; NULL when the denominator is 0."""

    output_field = BigIntegerField()

    def as_sql(self, compiler, connection, **extra):
        (num, num_params), (den, den_params) = (
            compiler.compile(expression) for expression in self.source_expressions
        )
        den = f"NULLIF({den}, 0)"
        # SQLite's / on integers and PostgreSQL's DIV both truncate towards zero (there, a SUM
        # of bigints is numeric, whose / keeps the fraction).
        quotient = "DIV({}, {})" if connection.vendor == "postgresql" else "(({}) / ({}))"
        away_up = quotient.format(f"2 * ({num}) + {den}", f"2 * {den}")
        away_down = quotient.format(f"2 * ({num}) - {den}", f"2 * {den}")
        sql = f"(CASE WHEN ({num}) >= 0 THEN {away_up} ELSE {away_down} END)"
        params = (
            *num_params,
            *num_params,
            *den_params,
            *den_params,
            *num_params,
            *den_params,
            *den_params,
        )
        return sql, params


def compile_rule(rule: dict, *, now: dt.datetime | None = None, scope: Any = None) -> Q:
    """Compile a validated rule into a Q over Contact (evaluated as of `now`).

    `scope` (a query of contact ids) says the caller only asks about those contacts: grouped
    event sub-queries are then restricted to them instead of aggregating every contact's events
    (the incremental refresh re-evaluates a few thousand contacts out of millions).
    """
    return Compiler(now, scope).node(rule)


class Compiler:
    def __init__(self, now: dt.datetime | None = None, scope: Any = None) -> None:
        self.now = now or timezone.now()
        self.today = timezone.localdate(self.now)
        self.scope = scope

    # Structure ---------------------------------------------------------------------------------

    def node(self, node: dict, path: str = "rule") -> Q:
        """`path` names the node in errors, as the validator does (`rule.conditions[2]`)."""
        if "op" in node:
            parts = [
                self.node(child, f"{path}.conditions[{i}]")
                for i, child in enumerate(node["conditions"])
            ]
            if node["op"] == "or":
                return _any(parts)
            combined = _all(parts)
            return ~combined if node["op"] == "not" else combined
        if node["type"] == "attribute":
            return self.attribute(node, path)
        return getattr(self, node["type"])(node)

    # Time helpers ------------------------------------------------------------------------------

    def day_start(self, day: dt.date) -> dt.datetime:
        return timezone.make_aware(dt.datetime.combine(day, dt.time.min))

    def days_ago(self, days: int) -> dt.datetime:
        return self.now - dt.timedelta(days=days)

    def last_days(self, days: int) -> tuple[dt.datetime, dt.datetime]:
        """[low, high) of "in the last N days" for moments; "the last 0 days" is today so far
        (as a date field's is today), not an empty instant."""
        low = self.days_ago(days) if days else self.day_start(self.today)
        # Events are accepted up to MAX_CLOCK_SKEW ahead of the server's clock (a client whose
        # clock runs fast); they happened "now" and must count at once, not after a full refresh.
        return low, self.now + MAX_CLOCK_SKEW + dt.timedelta(microseconds=1)

    # Condition kinds ---------------------------------------------------------------------------

    def attribute(self, node: dict, path: str = "rule") -> Q:
        spec = field_spec(node["field"])
        if spec is None:
            # A stored rule can outlive the custom field it reads (validation ran when it was
            # saved): say which condition to change instead of failing somewhere inside.
            raise rule_error(
                f"{path}.field",
                _("field '%(field)s' no longer exists: change or remove this condition")
                % {"field": node["field"]},
            )
        if spec.custom is not None:
            return self.json_field(
                "attributes", spec.custom.key, spec, node["operator"], node.get("value")
            )
        lookup = REF_LOOKUPS.get(spec.path, spec.path)
        return self.column(lookup, spec.type, node["operator"], node.get("value"))

    def column(self, lookup: str, kind: str, operator: str, value: Any) -> Q:
        """A condition on a real column (never JSON) of the queried model."""
        operator = normalise_operator(operator)
        if kind in (DATE, DATETIME):
            return self.dates(lookup, kind, operator, value)
        if operator == "is_set":
            q = Q(**{f"{lookup}__isnull": False})
            return q & ~Q(**{lookup: ""}) if kind == STRING else q
        if operator == "not_set":
            return ~self.column(lookup, kind, "is_set", value)
        if operator == "is_true":
            return Q(**{lookup: True})
        if operator == "is_false":
            return Q(**{lookup: False})
        return _compare(lookup, operator, value)

    def dates(self, lookup: str, kind: str, operator: str, value: Any) -> Q:
        if operator == "is_set":
            return Q(**{f"{lookup}__isnull": False})
        if operator == "not_set":
            return Q(**{f"{lookup}__isnull": True})
        if operator == "anniversary_within_days":
            return self.anniversary(lookup, value)
        low, high = self.date_bounds(kind, operator, value)
        q = Q(**{f"{lookup}__isnull": False})
        if low is not None:
            q &= Q(**{f"{lookup}__gte": low})
        if high is not None:
            q &= Q(**{f"{lookup}__lt": high})
        return q

    def date_bounds(self, kind: str, operator: str, value: Any) -> tuple[Any, Any]:
        """[low, high) for a date operator, as dates (DATE) or aware datetimes (DATETIME)."""
        if kind == DATE:
            one = dt.timedelta(days=1)
            if operator == "within_last_days":
                return self.today - dt.timedelta(days=value), self.today + one
            if operator == "more_than_days_ago":
                return None, self.today - dt.timedelta(days=value)
            first, last = self._date_range(operator, value)
            return first, (last + one if last is not None else None)
        if operator == "within_last_days":
            return self.last_days(value)
        if operator == "more_than_days_ago":
            return None, self.days_ago(value)
        first, last = self._date_range(operator, value)
        return (
            self.day_start(first) if first is not None else None,
            self.day_start(last + dt.timedelta(days=1)) if last is not None else None,
        )

    @staticmethod
    def _date_range(operator: str, value: Any) -> tuple[dt.date | None, dt.date | None]:
        """Inclusive first and last day an absolute date operator accepts."""
        if operator == "between":
            return parse_date(value[0]), parse_date(value[1])
        day = parse_date(value)
        if operator == "on":
            return day, day
        if operator == "before":
            return None, day - dt.timedelta(days=1)
        return day + dt.timedelta(days=1), None  # after

    def anniversary_days(self, days: int) -> list[tuple[int, int]]:
        """(month, day) of today and the next `days` days, in order; in a year without Feb 29,
        Feb 28 also stands for it (whoever was born on Feb 29 celebrates on Feb 28)."""
        out = []
        for i in range(min(days, 366) + 1):
            day = self.today + dt.timedelta(days=i)
            out.append((day.month, day.day))
            if (day.month, day.day) == (2, 28) and not calendar.isleap(day.year):
                out.append((2, 29))
        return out

    def anniversary(self, lookup: str, days: int) -> Q:
        """Month and day within the next `days` days, whatever the year (birthdays)."""
        # One day range per run of consecutive days in a month: a window of nearly a year
        # starts and ends in the same month, with a gap between that must not match.
        runs: list[list[int]] = []
        for month, day in self.anniversary_days(days):
            if runs and runs[-1][0] == month and runs[-1][2] == day - 1:
                runs[-1][2] = day
            else:
                runs.append([month, day, day])
        return _any(
            [
                Q(
                    **{
                        f"{lookup}__month": month,
                        f"{lookup}__day__gte": first,
                        f"{lookup}__day__lte": last,
                    }
                )
                for month, first, last in runs
            ]
        )

    def json_field(self, field: str, key: str, spec: FieldSpec, operator: str, value: Any) -> Q:
        """A condition on a custom field stored in a JSON object under `key`."""
        operator = normalise_operator(operator)
        path = f"{field}__{key}"
        present = Q(**{f"{field}__has_key": key}) & ~Q(**{path: None})
        if spec.type == MULTI:
            present &= ~Q(**{path: []})
        elif spec.type in (STRING, CHOICE, DATE):
            present &= Q(JSONKeyIs(field, key, "string")) & ~Q(**{path: ""})
        elif spec.type == NUMBER:
            present &= Q(JSONKeyIs(field, key, "number"))
        if operator == "is_set":
            return present
        if operator == "not_set":
            return ~present
        if operator == "is_true":
            return present & Q(**{path: True})
        if operator == "is_false":
            return present & Q(**{path: False})
        if spec.type == MULTI:
            items = value if isinstance(value, list) else [value]
            # A stored value lists distinct choices, so it has at most len(choices) elements:
            # compare each position exactly (text search in the JSON would depend on how each
            # database escapes non-ASCII characters).
            width = max(len(spec.custom.choices), 1)
            # Each comparison is guarded by the element's existence so that a missing element
            # gives false, not NULL (NULL would make "does not contain" drop the contact).
            has = _any(
                [
                    Q(**{f"{path}__{i}__isnull": False, f"{path}__{i}": v})
                    for v in items
                    for i in range(width)
                ]
            )
            return ~(present & has) if operator == "not_contains" else present & has
        if spec.type == DATE:
            if operator == "anniversary_within_days":
                suffixes = {f"-{m:02d}-{d:02d}" for m, d in self.anniversary_days(value)}
                return present & _any([Q(**{f"{path}__endswith": s}) for s in sorted(suffixes)])
            low, high = self.date_bounds(DATE, operator, value)
            q = present
            if low is not None:
                q &= Q(**{f"{path}__gte": low.isoformat()})
            if high is not None:
                q &= Q(**{f"{path}__lt": high.isoformat()})
            return q
        negated = operator in ("neq", "not_in", "not_contains")
        positive = {"neq": "eq", "not_in": "in", "not_contains": "contains"}.get(operator, operator)
        q = present & _compare(path, positive, value)
        return ~q if negated else q

    def tag(self, node: dict) -> Q:
        live = Q(expires_at__isnull=True) | Q(expires_at__gt=self.now)

        def has(tag_ids: list[int]) -> Q:
            return Q(
                Exists(
                    ContactTag.objects.filter(live, contact_id=OuterRef("pk"), tag_id__in=tag_ids)
                )
            )

        tags = node["tags"]
        if node["match"] == "any":
            return has(tags)
        if node["match"] == "none":
            return ~has(tags)
        return _all([has([t]) for t in tags])

    def event(self, node: dict) -> Q:
        events = Event.objects.filter(name=node["name"])
        window = node.get("window") or {}
        if "last_days" in window:
            low, high = self.last_days(window["last_days"])
            events = events.filter(occurred_at__gte=low, occurred_at__lt=high)
        elif window:
            first, last = parse_date(window["from"]), parse_date(window["to"])
            events = events.filter(
                occurred_at__gte=self.day_start(first),
                occurred_at__lt=self.day_start(last + dt.timedelta(days=1)),
            )
        for item in node.get("filters") or []:
            events = events.filter(self.property_filter(item))
        measure = node.get("measure", "performed")
        if measure in ("performed", "not_performed"):
            exists = Q(Exists(events.filter(contact_id=OuterRef("pk"))))
            return exists if measure == "performed" else ~exists
        operator, value = normalise_operator(node["operator"]), node["value"]
        if self.scope is not None:
            events = events.filter(contact_id__in=self.scope)
        grouped = events.order_by().values("contact_id")
        if measure in ("first", "last"):
            aggregate = Min("occurred_at") if measure == "first" else Max("occurred_at")
            test = self.dates("m", DATETIME, operator, value)
            return Q(pk__in=grouped.annotate(m=aggregate).filter(test).values("contact_id"))
        if measure == "count":
            aggregate, scale = Count("id"), 1
        elif measure == "sum":
            aggregate = Coalesce(
                Sum(Cents("value", VALUE_SCALE)), Value(0), output_field=BigIntegerField()
            )
            scale = VALUE_SCALE
        else:
            aggregate = RoundedQuotient(Sum(Cents("value", VALUE_SCALE)), Count("value"))
            scale = VALUE_SCALE
        low, high = _whole_bounds(operator, value, scale)
        test = Q(m__isnull=False)
        if low is not None:
            test &= Q(m__gte=low)
        if high is not None:
            test &= Q(m__lte=high)
        matching = grouped.annotate(m=aggregate)
        zero_holds = (low is None or low <= 0) and (high is None or high >= 0)
        if measure != "avg" and zero_holds:
            # Zero satisfies the test, so contacts without events match: exclude the others.
            return ~Q(pk__in=matching.filter(~test).values("contact_id"))
        return Q(pk__in=matching.filter(test).values("contact_id"))

    @staticmethod
    def property_filter(item: dict) -> Q:
        # The property is a key, never part of a lookup path: a property named "contains",
        # "in" or "a__b" is that key (json_key_lookup), not a Django lookup or nested path.
        prop, operator, value = item["property"], item["operator"], item.get("value")
        present = Q(properties__has_key=prop)
        if operator == "exists":
            return present
        if operator == "not_exists":
            return ~present
        if operator in ("gt", "gte", "lt", "lte"):
            return (
                present
                & Q(JSONKeyIs("properties", prop, "number"))
                & json_key_lookup("properties", prop, operator, value)
            )
        if operator == "contains":
            return (
                present
                & Q(JSONKeyIs("properties", prop, "string"))
                & json_key_lookup("properties", prop, "icontains", value)
            )
        if operator == "in":
            return present & _any([json_text_equals("properties", prop, v) for v in value])
        if operator == "neq":
            return ~(present & json_text_equals("properties", prop, value))
        return present & json_text_equals("properties", prop, value)

    def membership(self, node: dict) -> Q:
        from membership.models import Member

        field = node["field"]
        members = Member.objects.filter(contact_id=OuterRef("pk"))
        if field == "is_member":
            exists = Q(Exists(members))
            return exists if normalise_operator(node["operator"]) == "is_true" else ~exists
        kind = {"tier": CHOICE, "joined_at": DATETIME}.get(field, NUMBER)
        lookup = "tier__code" if field == "tier" else field
        condition = self.column(lookup, kind, node["operator"], node.get("value"))
        return Q(Exists(members.filter(condition)))

    def consent(self, node: dict) -> Q:
        records = Consent.objects.filter(
            contact_id=OuterRef("pk"),
            channel=node["channel"],
            purpose=node.get("purpose", "marketing"),
        )
        state = node["state"]
        if state == "unknown":
            return ~Q(Exists(records))
        return Q(Exists(records.filter(granted=state == "granted")))

    def reachable(self, node: dict) -> Q:
        channel = node["channel"]
        if channel == "sms":
            address = ~Q(phone="")
        elif channel == "email":
            address = ~Q(email="")
        else:
            address = Q(
                Exists(
                    Identity.objects.filter(
                        contact_id=OuterRef("pk"), kind=REACHABLE_IDENTITY[channel]
                    )
                )
            )
        withdrawn = Exists(
            Consent.objects.filter(
                contact_id=OuterRef("pk"), channel=channel, purpose="marketing", granted=False
            )
        )
        q = address & ~Q(withdrawn)
        return q if node.get("value", True) else ~q

    def segment(self, node: dict) -> Q:
        from segments.models import SegmentMembership

        exists = Q(
            Exists(
                SegmentMembership.objects.filter(
                    segment_id=node["segment"], contact_id=OuterRef("pk")
                )
            )
        )
        return exists if node.get("match", "in") == "in" else ~exists

    def rfm(self, node: dict) -> Q:
        from segments.models import RFMScore

        exists = Q(Exists(RFMScore.objects.filter(pk=OuterRef("pk"), layer__in=node["layers"])))
        return exists if node.get("match", "in") == "in" else ~exists

    def koc(self, node: dict) -> Q:
        from segments.models import Influence

        influence = Influence.objects.filter(pk=OuterRef("pk"))
        operator = node["operator"]
        if operator == "is_koc":
            return Q(Exists(influence.filter(is_koc=True)))
        if operator == "not_koc":
            return ~Q(Exists(influence.filter(is_koc=True)))
        lookup = "score__gte" if operator == "score_gte" else "score__lte"
        q = Q(Exists(influence.filter(**{lookup: node["value"]})))
        # Without an influence row the score is 0.
        if operator == "score_lte" and node["value"] >= 0:
            q |= ~Q(Exists(influence))
        return q


def json_key_lookup(field: str, key: str, lookup: str, value: Any) -> Q:
    """`lookup` ("exact", "gt", "icontains", …) on the value the JSON object in `field` holds
    under the literal `key`. Built from a KeyTransform expression, never a `field__key` path
    string, which Django would read as lookups or nested keys when the key is named like one
    ("contains", "in", "exact", "gt") or holds "__". The same SQL as the path on both
    databases."""
    # An explicit output field: the lookup prepares its value as a JSON one (as the path
    # would) before the expression is resolved against the model.
    lhs = KeyTransform(key, field, output_field=JSONField())
    return Q(lhs.get_lookup(lookup)(lhs, value))


def json_text_equals(field: str, key: str, value: Any) -> Q:
    """True where the JSON object in `field` holds, under `key`, a value whose text form is
    `value`'s (schema.property_value_equals says it in Python): the text itself, a number when
    `value` is a plain numeral of it ("1001", or 1001 in an older rule), true/false for
    "true"/"false". The same on PostgreSQL and SQLite: each kind of JSON value is compared
    with its own kind, never through a database's own text conversion of numbers."""
    text = property_text(value) if not isinstance(value, bool) else None
    if text is None:
        return NOTHING
    q = Q(JSONKeyIs(field, key, "string")) & json_key_lookup(field, key, "exact", text)
    number = numeral_value(text)
    if number is not None:
        q |= Q(JSONKeyIs(field, key, "number")) & json_key_lookup(field, key, "exact", number)
    if text in ("true", "false"):
        q |= Q(JSONKeyIs(field, key, text))
    return q


def _any(parts: list[Q]) -> Q:
    if not parts:
        return NOTHING
    combined = parts[0]
    for part in parts[1:]:
        combined |= part
    return combined


def _all(parts: list[Q]) -> Q:
    combined = Q()
    for part in parts:
        combined &= part
    return combined


def _compare(lookup: str, operator: str, value: Any) -> Q:
    if operator == "eq":
        return Q(**{lookup: value})
    if operator == "neq":
        return ~Q(**{lookup: value})
    if operator == "in":
        return Q(**{f"{lookup}__in": value})
    if operator == "not_in":
        return ~Q(**{f"{lookup}__in": value})
    if operator == "contains":
        return Q(**{f"{lookup}__icontains": value})
    if operator == "not_contains":
        return ~Q(**{f"{lookup}__icontains": value})
    if operator == "startswith":
        return Q(**{f"{lookup}__istartswith": value})
    if operator == "between":
        return Q(**{f"{lookup}__gte": value[0], f"{lookup}__lte": value[1]})
    if operator in ("gt", "gte", "lt", "lte"):
        return Q(**{f"{lookup}__{operator}": value})
    raise ValueError(f"unknown operator {operator}")


def _whole_bounds(operator: str, value: Any, scale: int) -> tuple[int | None, int | None]:
    """Inclusive bounds on n of the numbers n / scale (n whole) that satisfy `operator value`.

    Comparing whole numbers with whole numbers is exact on both databases, whatever decimals
    the rule's value has: "sum ≥ 49.905" is n ≥ 4991 cents, "sum = 49.905" matches nothing.
    None is unbounded; low > high matches nothing.
    """
    if operator == "between":
        low, high = _ceil(value[0], scale), _floor(value[1], scale)
    else:
        low, high = {
            "eq": (_ceil(value, scale), _floor(value, scale)),
            "gt": (_floor(value, scale) + 1, None),
            "gte": (_ceil(value, scale), None),
            "lt": (None, _ceil(value, scale) - 1),
            "lte": (None, _floor(value, scale)),
        }[operator]
    # No 64-bit sum lies beyond these, and SQLite takes no bigger parameter.
    if (low is not None and low > BIGINT_MAX) or (high is not None and high < BIGINT_MIN):
        return 1, 0
    low = None if low is not None and low < BIGINT_MIN else low
    high = None if high is not None and high > BIGINT_MAX else high
    return low, high


def _ceil(value: Any, scale: int) -> int:
    return math.ceil(Decimal(str(value)) * scale)


def _floor(value: Any, scale: int) -> int:
    return math.floor(Decimal(str(value)) * scale)


__all__ = ["BOOL", "REF", "Compiler", "compile_rule", "json_key_lookup", "json_text_equals"]
