"""Operator-facing names for the parts of a segment rule, and a rule node described in words."""

import json
from dataclasses import dataclass, field
from typing import Any

from django.contrib.auth import get_user_model
from django.utils.text import capfirst
from django.utils.translation import gettext as _
from django.utils.translation import gettext_lazy, ngettext, pgettext, pgettext_lazy

from contacts.labels import event_label
from contacts.models import ConsentChannel, ConsentPurpose, CustomField, Gender, Stage, Store, Tag

GROUP_LABELS = {
    "and": gettext_lazy("All of the following"),
    "or": gettext_lazy("Any of the following"),
    # NOT (a AND b …): "none of" would promise NOT (a OR b …).
    "not": gettext_lazy("Not all of the following"),
}

TAG_MATCH_LABELS = {
    "any": gettext_lazy("has any of"),
    "all": gettext_lazy("has all of"),
    "none": gettext_lazy("has none of"),
}

CONDITION_TYPE_LABELS = {
    "attribute": gettext_lazy("Profile field"),
    "tag": gettext_lazy("Tags"),
    "event": gettext_lazy("Behaviour (events)"),
    "membership": gettext_lazy("Membership"),
    "consent": gettext_lazy("Consent"),
    "reachable": gettext_lazy("Reachable on a channel"),
    "segment": gettext_lazy("Another segment"),
    "rfm": gettext_lazy("RFM value layer"),
    "koc": gettext_lazy("KOC (influence)"),
}

FIELD_LABELS = {
    # A contact's name: 姓名, not the 名称 of a segment or a tag.
    "name": pgettext_lazy("person", "Name"),
    "nickname": gettext_lazy("Nickname"),
    "phone": gettext_lazy("Phone"),
    "email": gettext_lazy("Email"),
    "province": gettext_lazy("Province"),
    "city": gettext_lazy("City"),
    "source": gettext_lazy("Source"),
    "channel_code": gettext_lazy("Channel code"),
    "utm_source": gettext_lazy("UTM source"),
    "utm_medium": gettext_lazy("UTM medium"),
    "utm_campaign": gettext_lazy("UTM campaign"),
    "utm_content": gettext_lazy("UTM content"),
    "utm_term": gettext_lazy("UTM term"),
    "gender": gettext_lazy("Gender"),
    "lifecycle_stage": gettext_lazy("Lifecycle stage"),
    "owner": gettext_lazy("Owner"),
    "store": gettext_lazy("Store"),
    "birthday": gettext_lazy("Birthday"),
    "created_at": gettext_lazy("Created"),
    "first_seen_at": gettext_lazy("First seen"),
    "last_seen_at": gettext_lazy("Last seen"),
    "last_active_at": gettext_lazy("Last active"),
    "lead_score": gettext_lazy("Lead score"),
}

OPERATOR_LABELS = {
    "eq": gettext_lazy("equals"),
    "neq": gettext_lazy("does not equal"),
    "in": gettext_lazy("is one of"),
    "not_in": gettext_lazy("is none of"),
    "contains": gettext_lazy("contains"),
    "not_contains": gettext_lazy("does not contain"),
    "contains_any": gettext_lazy("contains any of"),
    "startswith": gettext_lazy("starts with"),
    "gt": gettext_lazy("is more than"),
    "gte": gettext_lazy("is at least"),
    "lt": gettext_lazy("is less than"),
    "lte": gettext_lazy("is at most"),
    "between": gettext_lazy("is between"),
    "on": gettext_lazy("is on"),
    "before": gettext_lazy("is before"),
    "after": gettext_lazy("is after"),
    "within_last_days": gettext_lazy("within the last N days"),
    "more_than_days_ago": gettext_lazy("more than N days ago"),
    "anniversary_within_days": gettext_lazy("anniversary within the next N days"),
    "is_true": gettext_lazy("is yes"),
    "is_false": gettext_lazy("is no"),
    "is_set": gettext_lazy("is filled in"),
    "not_set": gettext_lazy("is empty"),
    "exists": gettext_lazy("is present"),
    "not_exists": gettext_lazy("is absent"),
    # The first rule language's spellings, still found in stored rules.
    "within_days": gettext_lazy("within the last N days"),
    "before_days": gettext_lazy("more than N days ago"),
}

MEASURE_LABELS = {
    "performed": gettext_lazy("did it"),
    "not_performed": gettext_lazy("did not do it"),
    "count": gettext_lazy("number of times"),
    "sum": gettext_lazy("total value"),
    "avg": gettext_lazy("average value"),
    "first": gettext_lazy("first time"),
    "last": gettext_lazy("last time"),
}

MEMBERSHIP_FIELD_LABELS = {
    # Followed by the operator (is yes / is no): "是否会员 为是", not "是会员 为是".
    "is_member": pgettext_lazy("rule field", "Is a member"),
    "tier": gettext_lazy("Tier"),
    "points_balance": gettext_lazy("Points balance"),
    "growth_value": gettext_lazy("Growth value"),
    "joined_at": gettext_lazy("Joined"),
}

CONSENT_STATE_LABELS = {
    "granted": gettext_lazy("granted"),
    "withdrawn": gettext_lazy("withdrawn"),
    "unknown": gettext_lazy("never asked"),
}

REACHABLE_CHANNEL_LABELS = {
    "sms": gettext_lazy("SMS"),
    "email": gettext_lazy("Email"),
    "wechat_oa": gettext_lazy("WeChat official account"),
    "miniprogram": gettext_lazy("Mini-program"),
    "wecom": gettext_lazy("WeCom"),
}

MATCH_IN_LABELS = {"in": gettext_lazy("is in"), "not_in": gettext_lazy("is not in")}

KOC_LABELS = {
    "is_koc": gettext_lazy("is a KOC"),
    "not_koc": gettext_lazy("is not a KOC"),
    "score_gte": gettext_lazy("influence score is at least"),
    "score_lte": gettext_lazy("influence score is at most"),
}

WINDOW_LABELS = {
    "all": gettext_lazy("all time"),
    "last": gettext_lazy("in the last N days"),
    "between": gettext_lazy("between dates"),
}


def choice_value_labels() -> dict[str, dict[str, str]]:
    """Labels per choice field; lifecycle stages are brand data, so they are read each time."""
    return {
        "lifecycle_stage": dict(Stage.objects.values_list("key", "name")),
        "gender": {k: str(v) for k, v in Gender.choices},
    }


def field_label(field_path: str) -> str:
    if field_path.startswith("attributes."):
        key = field_path.removeprefix("attributes.")
        custom = CustomField.objects.filter(key=key).values_list("label", flat=True).first()
        return custom or str(_("Attribute “%(key)s”") % {"key": key})
    return str(FIELD_LABELS.get(field_path, field_path))


@dataclass
class Names:
    """Names of the rows a rule refers to by id, looked up once per rule."""

    tags: dict[int, str] = field(default_factory=dict)
    segments: dict[int, str] = field(default_factory=dict)
    stores: dict[int, str] = field(default_factory=dict)
    owners: dict[int, str] = field(default_factory=dict)
    tiers: dict[str, str] = field(default_factory=dict)
    choices: dict[str, dict[str, str]] = field(default_factory=dict)

    @classmethod
    def for_rule(cls, rule: Any) -> "Names":
        from membership.models import Tier
        from segments.models import RFMLayer, Segment

        ids: dict[str, set] = {"tag": set(), "segment": set(), "store": set(), "owner": set()}

        def walk(node: Any) -> None:
            if not isinstance(node, dict):
                return
            for child in node.get("conditions") or [] if "op" in node else []:
                walk(child)
            kind = node.get("type")
            if kind == "tag":
                ids["tag"].update(t for t in node.get("tags") or [] if isinstance(t, int))
            elif kind == "segment" and isinstance(node.get("segment"), int):
                ids["segment"].add(node["segment"])
            elif kind == "attribute" and node.get("field") in ("store", "owner"):
                values = node.get("value")
                values = values if isinstance(values, list) else [values]
                ids[node["field"]].update(v for v in values if isinstance(v, int))

        walk(rule)
        user_model = get_user_model()
        choices = choice_value_labels()
        choices["rfm"] = {k: str(v) for k, v in RFMLayer.choices}
        return cls(
            tags={
                t.pk: str(t) for t in Tag.objects.select_related("group").filter(pk__in=ids["tag"])
            },
            segments=dict(Segment.objects.filter(pk__in=ids["segment"]).values_list("pk", "name")),
            stores=dict(Store.objects.filter(pk__in=ids["store"]).values_list("pk", "name")),
            owners={
                u.pk: u.get_full_name() or u.get_username()
                for u in user_model.objects.filter(pk__in=ids["owner"])
            },
            tiers=dict(Tier.objects.values_list("code", "name")),
            choices=choices,
        )


def _join(values: Any, labels: dict | None = None) -> str:
    values = values if isinstance(values, list) else [values]
    labels = labels or {}
    return "、".join(str(labels.get(v, v)) for v in values)


def _operator_value(label: str, operator: Any, value: Any, labels: dict | None = None) -> str:
    op = str(OPERATOR_LABELS.get(operator, operator))
    if operator in ("is_set", "not_set", "is_true", "is_false", "exists", "not_exists"):
        return f"{label} {op}"
    days = value if isinstance(value, int) and not isinstance(value, bool) else None
    if operator in ("within_last_days", "within_days"):
        if days == 0:
            # Translators: a date field within the last 0 days, e.g. "Last seen is today".
            return _("%(field)s is today") % {"field": label}
        return ngettext(
            "%(field)s within the last %(days)s day",
            "%(field)s within the last %(days)s days",
            days if days is not None else 2,
        ) % {"field": label, "days": value}
    if operator in ("more_than_days_ago", "before_days"):
        return ngettext(
            "%(field)s more than %(days)s day ago",
            "%(field)s more than %(days)s days ago",
            days if days is not None else 2,
        ) % {"field": label, "days": value}
    if operator == "anniversary_within_days":
        return ngettext(
            "%(field)s anniversary within the next %(days)s day",
            "%(field)s anniversary within the next %(days)s days",
            days if days is not None else 2,
        ) % {"field": label, "days": value}
    if operator == "between" and isinstance(value, list) and len(value) == 2:
        return _("%(field)s is between %(low)s and %(high)s") % {
            "field": label,
            "low": value[0],
            "high": value[1],
        }
    return f"{label} {op} {_join(value, labels)}"


def _window_text(window: Any) -> str:
    if not isinstance(window, dict) or not window:
        return ""
    if "last_days" in window:
        if window["last_days"] == 0:
            # Translators: an event window of 0 days, e.g. "Purchase: did it today".
            return pgettext("event window", "today")
        days = window["last_days"]
        return ngettext(
            "in the last %(days)s day",
            "in the last %(days)s days",
            days if isinstance(days, int) and not isinstance(days, bool) else 2,
        ) % {"days": days}
    return _("between %(from)s and %(to)s") % {"from": window.get("from"), "to": window.get("to")}


def describe_property_filter(item: dict) -> str:
    """One event property filter in words, e.g. “amount is more than 100”. Property names are
    the client's own keys and are shown as they are."""
    return _operator_value(str(item.get("property")), item.get("operator"), item.get("value"))


def describe_score_event(name: str, filters: Any) -> str:
    """A lead-scoring event rule in words, e.g. “Purchase · amount is more than 100”."""
    parts = [event_label(name)]
    for item in filters if isinstance(filters, list) else []:
        if not isinstance(item, dict):
            continue
        if item.get("operator") == "exists" and item.get("value") is False:
            # Lead scoring spells "absent" as exists = false; segment rules say not_exists.
            item = {**item, "operator": "not_exists"}
        parts.append(describe_property_filter(item))
    return " · ".join(parts)


def describe_condition(node: dict, names: Names) -> str:
    """One condition in words, e.g. “Purchase: number of times is at least 2 in the last 30
    days”. Unknown shapes fall back to their JSON so nothing is hidden from the operator."""
    # Segment, RFM and KOC phrasings start with a lower-case verb ("is in segment …"); as a
    # line of their own they start with a capital (a no-op in Chinese). The others start with
    # a label as it is, such as a client's own event name ("coupon_redeemed").
    text = _describe_condition(node, names)
    return capfirst(text) if node.get("type") in ("segment", "rfm", "koc") else text


def _describe_condition(node: dict, names: Names) -> str:
    kind = node.get("type")
    if kind == "attribute":
        path = str(node.get("field", ""))
        labels = names.choices.get(path, {})
        if path == "store":
            labels = names.stores
        elif path == "owner":
            labels = names.owners
        return _operator_value(field_label(path), node.get("operator"), node.get("value"), labels)
    if kind == "tag":
        match = str(TAG_MATCH_LABELS.get(node.get("match"), node.get("match")))
        tags = "、".join(names.tags.get(t, f"#{t}") for t in node.get("tags") or [])
        return _("Tag %(match)s: %(tags)s") % {"match": match, "tags": tags}
    if kind == "event":
        measure = node.get("measure", "performed")
        name = event_label(str(node.get("name")))
        # Translators: an event and what of it is measured, e.g. "Purchase: number of times";
        # Chinese takes the full-width colon and no space.
        text = _("%(event)s: %(measure)s") % {
            "event": name,
            "measure": MEASURE_LABELS.get(measure, measure),
        }
        if measure in ("count", "sum", "avg", "first", "last"):
            text = _operator_value(text, node.get("operator"), node.get("value"))
        for item in node.get("filters") or []:
            if isinstance(item, dict):
                text += " · " + describe_property_filter(item)
        window = _window_text(node.get("window"))
        return f"{text} {window}".strip() if window else text
    if kind == "membership":
        membership_field = node.get("field")
        label = str(MEMBERSHIP_FIELD_LABELS.get(membership_field, membership_field))
        labels = names.tiers if membership_field == "tier" else None
        return _operator_value(label, node.get("operator"), node.get("value"), labels)
    if kind == "consent":
        return _("Consent to %(purpose)s by %(channel)s is %(state)s") % {
            "purpose": dict(ConsentPurpose.choices).get(
                node.get("purpose", "marketing"), node.get("purpose")
            ),
            "channel": dict(ConsentChannel.choices).get(node.get("channel"), node.get("channel")),
            "state": CONSENT_STATE_LABELS.get(node.get("state"), node.get("state")),
        }
    if kind == "reachable":
        channel = REACHABLE_CHANNEL_LABELS.get(node.get("channel"), node.get("channel"))
        if node.get("value", True):
            return _("Reachable by %(channel)s") % {"channel": channel}
        return _("Not reachable by %(channel)s") % {"channel": channel}
    if kind == "segment":
        name = names.segments.get(node.get("segment"), f"#{node.get('segment')}")
        match = MATCH_IN_LABELS.get(node.get("match", "in"), node.get("match"))
        return _("%(match)s segment “%(name)s”") % {"match": match, "name": name}
    if kind == "rfm":
        match = MATCH_IN_LABELS.get(node.get("match", "in"), node.get("match"))
        layers = _join(node.get("layers") or [], names.choices.get("rfm"))
        return _("%(match)s RFM layer %(layers)s") % {"match": match, "layers": layers}
    if kind == "koc":
        operator = node.get("operator")
        text = str(KOC_LABELS.get(operator, operator))
        return f"{text} {node.get('value')}" if str(operator).startswith("score_") else text
    return json.dumps(node, ensure_ascii=False, default=str)


def describe_group(node: dict) -> str:
    children = node.get("conditions") or []
    if not children:
        return _("Every contact") if node.get("op") != "or" else _("No contact")
    return str(GROUP_LABELS.get(node.get("op"), node.get("op")))
