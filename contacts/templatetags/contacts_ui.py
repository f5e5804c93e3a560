from typing import Any

from django import template
from django.utils.translation import gettext_lazy as _

from contacts import pii, roles
from contacts.models import Event, Identity, IdentityKind

register = template.Library()

# Human labels for the event names the product itself records or documents for clients.
EVENT_LABELS = {
    "identity_conflict": _("Identity conflict"),
    "message_sent": _("Message sent"),
    "message_failed": _("Message failed"),
    "message_skipped": _("Message skipped"),
    "message_delivered": _("Message delivered"),
    "message_opened": _("Message opened"),
    "message_clicked": _("Message clicked"),
    "tag_added": _("Tag added"),
    "tag_removed": _("Tag removed"),
    "segment_entered": _("Entered segment"),
    "segment_exited": _("Left segment"),
    "stage_changed": _("Lifecycle stage changed"),
    "journey_enrolled": _("Enrolled in journey"),
    "journey_completed": _("Completed journey"),
    "purchase": _("Purchase"),
    "refund": _("Refund"),
    "page_view": _("Page view"),
    "view_product": _("Viewed product"),
    "share": _("Shared"),
    "referral_accepted": _("Accepted an invitation"),
    "sign_in": _("Daily check-in"),
    "qr_scanned": _("Scanned QR code"),
    "form_submitted": _("Submitted form"),
    "signup": _("Sign-up"),
    "login": _("Login"),
    "add_to_cart": _("Added to cart"),
    "subscribe": _("Followed"),
    "unsubscribe": _("Unfollowed"),
    "contact_merged": _("Profiles merged"),
    "merge_undone": _("Merge undone"),
    "profile_updated": _("Profile updated"),
    "note_added": _("Note added"),
    "follow_up_done": _("Follow-up done"),
    "consent_granted": _("Consent granted"),
    "consent_withdrawn": _("Consent withdrawn"),
    "points_earned": _("Points earned"),
    "tier_changed": _("Tier changed"),
}

# Property keys worth showing next to the label, in order of preference.
DETAIL_KEYS = (
    "title",
    "tag",
    "segment",
    "journey",
    "channel",
    "error_code",
    "product",
    "order_id",
    "channel_code",
    "purpose",
    "preview",
    "fields",
)


@register.filter
def event_label(name: str) -> str:
    """The operator-facing label of an event name; unknown names are shown as they are."""
    return str(EVENT_LABELS.get(name, name))


@register.filter
def event_detail(event: Event) -> str:
    """A short summary of what the event was about, e.g. the tag or journey name."""
    props: dict[str, Any] = event.properties if isinstance(event.properties, dict) else {}
    parts = [
        ", ".join(map(str, props[key])) if isinstance(props[key], list) else str(props[key])
        for key in DETAIL_KEYS
        if props.get(key) not in (None, "", [])
    ]
    if event.value is not None:
        parts.append(f"¥{event.value}")
    return " · ".join(parts[:3])


@register.filter
def identity_value(identity: Identity) -> str:
    """An identity's value as operators may see it: phones and emails masked."""
    if identity.kind == IdentityKind.PHONE:
        return pii.mask_phone(identity.value)
    if identity.kind == IdentityKind.EMAIL:
        return pii.mask_email(identity.value)
    scope = f"{identity.app_id}:" if identity.app_id else ""
    return f"{scope}{identity.value}"


@register.filter
def phone(value: str, unmasked: bool = False) -> str:
    """A phone number, masked (138****8000) unless `unmasked` (only after an audited unmask)."""
    return value if unmasked else pii.mask_phone(value)


@register.filter
def email(value: str, unmasked: bool = False) -> str:
    """An email, masked (l***@example.com) unless `unmasked`."""
    return value if unmasked else pii.mask_email(value)


@register.filter
def role_label(name: str) -> str:
    """The translated label of a role group name (store_staff → 门店导购)."""
    return roles.role_label(name)


@register.simple_tag(takes_context=True)
def user_roles(context) -> str:
    """The acting user's role labels, comma-separated (empty for superusers without a role)."""
    user = context["request"].user
    return ", ".join(roles.role_label(name) for name in roles.user_role_names(user))
