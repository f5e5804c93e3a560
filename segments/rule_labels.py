"""Operator-facing names for the parts of a segment rule (fields, operators, match modes)."""

from django.utils.translation import gettext_lazy as _

from contacts.models import Gender, Stage

GROUP_LABELS = {"and": _("All of the following"), "or": _("Any of the following")}

TAG_MATCH_LABELS = {"any": _("has any of"), "all": _("has all of"), "none": _("has none of")}

FIELD_LABELS = {
    "name": _("Name"),
    "nickname": _("Nickname"),
    "phone": _("Phone"),
    "email": _("Email"),
    "province": _("Province"),
    "city": _("City"),
    "source": _("Source"),
    "channel_code": _("Channel code"),
    "lifecycle_stage": _("Lifecycle stage"),
    "gender": _("Gender"),
    "created_at": _("Created"),
    "last_seen_at": _("Last seen"),
}

OPERATOR_LABELS = {
    "eq": _("equals"),
    "neq": _("does not equal"),
    "in": _("is one of"),
    "contains": _("contains"),
    "startswith": _("starts with"),
    "is_set": _("is filled in"),
    "not_set": _("is empty"),
    "within_days": _("within the last N days"),
    "before_days": _("more than N days ago"),
}


# Human labels for the values of choice fields, so a rule reads "生命周期阶段 等于 忠诚".
def choice_value_labels() -> dict[str, dict[str, str]]:
    """Labels per choice field; lifecycle stages are brand data, so they are read each time."""
    return {
        "lifecycle_stage": dict(Stage.objects.values_list("key", "name")),
        "gender": {k: str(v) for k, v in Gender.choices},
    }


def field_label(field: str) -> str:
    if field.startswith("attributes."):
        return str(_("Attribute “%(key)s”") % {"key": field.removeprefix("attributes.")})
    return str(FIELD_LABELS.get(field, field))
