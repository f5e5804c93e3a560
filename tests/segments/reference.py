"""A plain-Python evaluation of segment rules, written independently of the SQL compiler.

It loads every row a rule can read into dicts and evaluates the rule contact by contact: slow,
obvious, and the oracle the property-based tests compare the compiled SQL against. It follows
the semantics documented in segments/rules/compiler.py and docs/segments.md.
"""

import calendar
import datetime as dt
import re
from collections import defaultdict
from decimal import ROUND_HALF_UP, Decimal
from typing import Any

from django.utils import timezone

from contacts.models import Consent, Contact, ContactTag, CustomField, Event, Identity
from contacts.services import MAX_CLOCK_SKEW
from membership.models import Member
from segments.models import Influence, RFMScore, SegmentMembership

LEGACY = {"within_days": "within_last_days", "before_days": "more_than_days_ago"}
REF_ATTR = {"owner": "owner_id", "store": "store_id", "lifecycle_stage": "lifecycle_stage_id"}
# An average is compared rounded to the value's own precision (a cent), halves away from zero.
CENT = Decimal(1).scaleb(-Event._meta.get_field("value").decimal_places)
IDENTITY_FOR = {
    "wechat_oa": "wechat_openid",
    "miniprogram": "miniprogram_openid",
    "wecom": "wecom_external_userid",
}


class World:
    """Everything a rule may read, in memory."""

    def __init__(self, now: dt.datetime) -> None:
        self.now = now
        self.today = timezone.localdate(now)
        self.contacts = list(Contact.objects.filter(merged_into__isnull=True))
        self.custom = {f.key: f.kind for f in CustomField.objects.all()}
        self.tags = defaultdict(list)
        for ct in ContactTag.objects.all():
            self.tags[ct.contact_id].append(ct)
        self.events = defaultdict(list)
        for e in Event.objects.all():
            self.events[e.contact_id].append(e)
        self.members = {m.contact_id: m for m in Member.objects.select_related("tier")}
        self.consents = {
            (c.contact_id, c.channel, c.purpose): c.granted for c in Consent.objects.all()
        }
        self.identity_kinds = defaultdict(set)
        for i in Identity.objects.all():
            self.identity_kinds[i.contact_id].add(i.kind)
        self.segments = defaultdict(set)
        for m in SegmentMembership.objects.all():
            self.segments[m.segment_id].add(m.contact_id)
        self.rfm = {r.contact_id: r.layer for r in RFMScore.objects.all()}
        self.influence = {i.contact_id: i for i in Influence.objects.all()}

    def matching(self, rule: dict) -> set[int]:
        return {c.pk for c in self.contacts if self.eval(rule, c)}

    # ------------------------------------------------------------------------------------------

    def eval(self, node: dict, c: Contact) -> bool:
        if "op" in node:
            results = [self.eval(child, c) for child in node["conditions"]]
            if node["op"] == "or":
                return any(results)
            return not all(results) if node["op"] == "not" else all(results)
        return getattr(self, "c_" + node["type"])(node, c)

    def local_date(self, moment: dt.datetime) -> dt.date:
        return timezone.localtime(moment).date()

    def in_last_days(self, moment: dt.datetime, days: int) -> bool:
        """From this time N days ago (0 days: from local midnight) until now, and the few
        minutes ahead that the event ingest accepts from a fast client clock."""
        if days:
            since = self.now - dt.timedelta(days=days)
        else:
            since = timezone.localtime(self.now).replace(hour=0, minute=0, second=0, microsecond=0)
        return since <= moment <= self.now + MAX_CLOCK_SKEW

    def c_attribute(self, node: dict, c: Contact) -> bool:
        field, op, value = (
            node["field"],
            LEGACY.get(node["operator"], node["operator"]),
            node.get("value"),
        )
        if field.startswith("attributes."):
            key = field[11:]
            kind = self.custom[key]
            raw = c.attributes.get(key)
            return self.custom_value(kind, raw, op, value)
        raw = getattr(c, REF_ATTR.get(field, field))
        if field == "birthday":
            return self.date_value(raw, op, value)
        if field in ("created_at", "first_seen_at", "last_seen_at", "last_active_at"):
            return self.datetime_value(raw, op, value)
        if field == "lead_score":
            return self.number_value(raw, op, value)
        return self.text_value(raw, op, value)

    def custom_value(self, kind: str, raw: Any, op: str, value: Any) -> bool:
        if kind == "number":
            ok = isinstance(raw, int | float) and not isinstance(raw, bool)
            return self.number_value(raw if ok else None, op, value)
        if kind == "boolean":
            ok = isinstance(raw, bool)
            if op == "is_set":
                return ok
            if op == "not_set":
                return not ok
            return ok and raw is (op == "is_true")
        if kind == "multi_choice":
            items = raw if isinstance(raw, list) else []
            present = bool(items)
            if op == "is_set":
                return present
            if op == "not_set":
                return not present
            wanted = value if isinstance(value, list) else [value]
            has = any(w in items for w in wanted)
            return not has if op == "not_contains" else has
        text = raw if isinstance(raw, str) and raw != "" else None
        if kind == "date":
            return self.date_value(dt.date.fromisoformat(text) if text else None, op, value)
        return self.text_value(text, op, value)

    def text_value(self, raw: Any, op: str, value: Any) -> bool:
        present = raw is not None and raw != ""
        if op == "is_set":
            return present
        if op == "not_set":
            return not present
        negate = op in ("neq", "not_in", "not_contains")
        op = {"neq": "eq", "not_in": "in", "not_contains": "contains"}.get(op, op)
        if not present:
            result = False
        elif op == "eq":
            result = raw == value
        elif op == "in":
            result = raw in value
        elif op == "contains":
            result = str(value).lower() in str(raw).lower()
        elif op == "startswith":
            result = str(raw).lower().startswith(str(value).lower())
        else:
            raise AssertionError(op)
        return not result if negate else result

    def number_value(self, raw: Any, op: str, value: Any) -> bool:
        if op == "is_set":
            return raw is not None
        if op == "not_set":
            return raw is None
        if op == "neq":
            return raw is None or raw != value
        if raw is None:
            return False
        return compare(raw, op, value)

    def date_bounds(self, op: str, value: Any) -> tuple[dt.date | None, dt.date | None]:
        """Inclusive local-date bounds of an absolute date operator."""
        if op == "between":
            return dt.date.fromisoformat(value[0]), dt.date.fromisoformat(value[1])
        day = dt.date.fromisoformat(value)
        return {
            "on": (day, day),
            "before": (None, day - dt.timedelta(days=1)),
            "after": (day + dt.timedelta(days=1), None),
        }[op]

    def date_value(self, raw: dt.date | None, op: str, value: Any) -> bool:
        if op == "is_set":
            return raw is not None
        if op == "not_set":
            return raw is None
        if raw is None:
            return False
        if op == "within_last_days":
            return self.today - dt.timedelta(days=value) <= raw <= self.today
        if op == "more_than_days_ago":
            return raw < self.today - dt.timedelta(days=value)
        if op == "anniversary_within_days":
            for i in range(min(value, 366) + 1):
                day = self.today + dt.timedelta(days=i)
                if (raw.month, raw.day) == (day.month, day.day):
                    return True
                # Born on Feb 29: the anniversary is Feb 28 in a year without Feb 29.
                leap_day_moved = (raw.month, raw.day) == (2, 29) and not calendar.isleap(day.year)
                if leap_day_moved and (day.month, day.day) == (2, 28):
                    return True
            return False
        low, high = self.date_bounds(op, value)
        return (low is None or raw >= low) and (high is None or raw <= high)

    def datetime_value(self, raw: dt.datetime | None, op: str, value: Any) -> bool:
        if op == "is_set":
            return raw is not None
        if op == "not_set":
            return raw is None
        if raw is None:
            return False
        if op == "within_last_days":
            return self.in_last_days(raw, value)
        if op == "more_than_days_ago":
            return raw < self.now - dt.timedelta(days=value)
        low, high = self.date_bounds(op, value)
        day = self.local_date(raw)
        return (low is None or day >= low) and (high is None or day <= high)

    def c_tag(self, node: dict, c: Contact) -> bool:
        live = {
            ct.tag_id for ct in self.tags[c.pk] if ct.expires_at is None or ct.expires_at > self.now
        }
        wanted = set(node["tags"])
        if node["match"] == "any":
            return bool(live & wanted)
        if node["match"] == "none":
            return not live & wanted
        return wanted <= live

    def c_event(self, node: dict, c: Contact) -> bool:
        events = [e for e in self.events[c.pk] if e.name == node["name"]]
        window = node.get("window") or {}
        if "last_days" in window:
            events = [e for e in events if self.in_last_days(e.occurred_at, window["last_days"])]
        elif window:
            first = dt.date.fromisoformat(window["from"])
            last = dt.date.fromisoformat(window["to"])
            events = [e for e in events if first <= self.local_date(e.occurred_at) <= last]
        for item in node.get("filters") or []:
            events = [e for e in events if property_matches(e.properties, item)]
        measure = node.get("measure", "performed")
        if measure == "performed":
            return bool(events)
        if measure == "not_performed":
            return not events
        op, value = LEGACY.get(node["operator"], node["operator"]), node["value"]
        if measure in ("first", "last"):
            if not events:
                return False
            moments = [e.occurred_at for e in events]
            return self.datetime_value(
                min(moments) if measure == "first" else max(moments), op, value
            )
        value = [Decimal(str(v)) for v in value] if isinstance(value, list) else Decimal(str(value))
        if measure == "count":
            return compare(Decimal(len(events)), op, value)
        values = [e.value for e in events if e.value is not None]
        if measure == "sum":
            return compare(sum(values, Decimal(0)), op, value)
        if not values:
            return False
        average = (sum(values, Decimal(0)) / len(values)).quantize(CENT, rounding=ROUND_HALF_UP)
        return compare(average, op, value)

    def c_membership(self, node: dict, c: Contact) -> bool:
        member = self.members.get(c.pk)
        field, op = node["field"], LEGACY.get(node["operator"], node["operator"])
        if field == "is_member":
            return (member is not None) is (op == "is_true")
        if member is None:
            return False
        if field == "tier":
            return self.text_value(member.tier.code, op, node.get("value"))
        if field == "joined_at":
            return self.datetime_value(member.joined_at, op, node.get("value"))
        return self.number_value(getattr(member, field), op, node.get("value"))

    def c_consent(self, node: dict, c: Contact) -> bool:
        state = self.consents.get((c.pk, node["channel"], node.get("purpose", "marketing")))
        return {"granted": state is True, "withdrawn": state is False, "unknown": state is None}[
            node["state"]
        ]

    def c_reachable(self, node: dict, c: Contact) -> bool:
        channel = node["channel"]
        if channel == "sms":
            address = c.phone != ""
        elif channel == "email":
            address = c.email != ""
        else:
            address = IDENTITY_FOR[channel] in self.identity_kinds[c.pk]
        reachable = address and self.consents.get((c.pk, channel, "marketing")) is not False
        return reachable is node.get("value", True)

    def c_segment(self, node: dict, c: Contact) -> bool:
        inside = c.pk in self.segments[node["segment"]]
        return inside if node.get("match", "in") == "in" else not inside

    def c_rfm(self, node: dict, c: Contact) -> bool:
        inside = self.rfm.get(c.pk) in node["layers"]
        return inside if node.get("match", "in") == "in" else not inside

    def c_koc(self, node: dict, c: Contact) -> bool:
        influence = self.influence.get(c.pk)
        is_koc = influence is not None and influence.is_koc
        score = influence.score if influence is not None else 0
        return {
            "is_koc": is_koc,
            "not_koc": not is_koc,
            "score_gte": influence is not None and score >= node.get("value", 0),
            "score_lte": score <= node.get("value", 0),
        }[node["operator"]]


def compare(x: Any, op: str, value: Any) -> bool:
    if op == "between":
        return value[0] <= x <= value[1]
    return {
        "eq": lambda: x == value,
        "gt": lambda: x > value,
        "gte": lambda: x >= value,
        "lt": lambda: x < value,
        "lte": lambda: x <= value,
    }[op]()


def property_matches(properties: dict, item: dict) -> bool:
    prop, op, value = item["property"], item["operator"], item.get("value")
    present = prop in properties
    raw = properties.get(prop)
    if op == "exists":
        return present
    if op == "not_exists":
        return not present
    if op == "neq":
        return not (present and same_text(raw, value))
    if not present:
        return False
    if op == "eq":
        return same_text(raw, value)
    if op == "in":
        return any(same_text(raw, v) for v in value)
    if op == "contains":
        return isinstance(raw, str) and value.lower() in raw.lower()
    is_number = isinstance(raw, int | float) and not isinstance(raw, bool)
    return is_number and compare(raw, op, value)


def text_form(value: Any) -> str | None:
    """How an event property reads as text: text itself, a number in plain decimal digits
    (1001.0 reads "1001", 1e-7 reads "0.0000001"), true/false as "true"/"false"."""
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, str):
        return value
    if isinstance(value, int | float):
        number = Decimal(str(value))
        if number == number.to_integral_value():
            return str(int(number))
        return format(number.normalize(), "f")
    return None


def same_text(raw: Any, value: Any) -> bool:
    """Property equality: a rule value (text, or a number in an old rule) and the event's
    property read the same as text; a number also equals text that spells it with decimals
    ("12.50" and 12.5), but never text with a leading zero, a sign + or an exponent ("021")."""
    wanted = text_form(value) if not isinstance(value, bool) else None
    if wanted is None or raw is None or isinstance(raw, list | dict):
        return False
    if isinstance(raw, int | float) and not isinstance(raw, bool):
        plain = re.fullmatch(r"-?(0|[1-9]\d*)(\.\d+)?", wanted)
        if plain is None:
            return False
        # Typed decimals are read as floating point numbers (as JSON numbers are), whole ones
        # exactly.
        spelled = Decimal(wanted) if plain.group(2) is None else Decimal(str(float(wanted)))
        return Decimal(str(raw)) == spelled
    return text_form(raw) == wanted
