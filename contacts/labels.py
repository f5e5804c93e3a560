"""Operator-facing labels for the codes contacts store: event names, sources, merge reasons and
profile field names. Every page that shows one of these codes reads its label from here."""

from django.conf import settings
from django.core.exceptions import FieldDoesNotExist
from django.utils import translation
from django.utils.text import capfirst
from django.utils.translation import gettext_lazy as _

from contacts.models import ConsentChannel, Contact, CustomField, TagSource

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
    "contact_imported": _("Updated by import"),
    # Derived from the import job on the timeline (contacts.selectors.contact_import_origin).
    "contact_created": _("Contact created"),
    "note_added": _("Note added"),
    "follow_up_done": _("Follow-up done"),
    "consent_granted": _("Consent granted"),
    "consent_withdrawn": _("Consent withdrawn"),
    "points_earned": _("Points earned"),
    "tier_changed": _("Tier changed"),
}

# The sources the product itself writes (contact, consent and event `source`). Clients may send
# any other word, which is theirs and shown as it is.
SOURCE_LABELS = {
    TagSource.API.value: TagSource.API.label,
    TagSource.IMPORT.value: TagSource.IMPORT.label,
    TagSource.MANUAL.value: TagSource.MANUAL.label,
    "admin": _("Administration"),
    # What the consent form on the 360 page suggests: an operator wrote the decision down.
    "operator": _("Entered by an operator"),
    ConsentChannel.WECHAT_OA.value: ConsentChannel.WECHAT_OA.label,
    ConsentChannel.MINIPROGRAM.value: ConsentChannel.MINIPROGRAM.label,
    ConsentChannel.WECOM.value: ConsentChannel.WECOM.label,
}

# Why two contacts were merged or declared distinct (MergeRecord / MergeBlock `reason`, and the
# `reason` of identity_conflict events), as contacts.services write them.
MERGE_REASON_LABELS = {
    "manual": _("Manual"),
    "identify": _("Automatic: same identity"),
    "merge undone": _("Merge undone"),
    "not_same_person": _("Not the same person"),
    "weak_identity": _("Only weak identities match"),
}


def event_label(name: str) -> str:
    """The operator-facing label of an event name; unknown (client) names are shown as they are."""
    return str(EVENT_LABELS.get(name, name))


def source_label(value: str) -> str:
    return str(SOURCE_LABELS.get(value, value))


def source_from_label(value: str) -> str:
    """The code of a source typed as its label (the consent form shows the label); any other
    text is the operator's own word and stays as it is.

    A label of any of the site's languages counts, not only the active one: a filter saved by
    an operator working in English is run again by a worker in the default language."""
    for code, label in SOURCE_LABELS.items():
        if value == str(label):
            return code
    for language, _name in settings.LANGUAGES:
        with translation.override(language):
            for code, label in SOURCE_LABELS.items():
                if value == str(label):
                    return code
    return value


def merge_reason_label(reason: str) -> str:
    return str(MERGE_REASON_LABELS.get(reason, reason))


def custom_field_labels() -> dict[str, str]:
    """Label per custom field key, retired fields included: old events still name them."""
    return dict(CustomField.objects.values_list("key", "label"))


def contact_field_label(key: str, *, custom: dict[str, str]) -> str:
    """A profile field's verbose name as a label ("Name", "姓名"), a custom field's label, or
    the key for any other trait."""
    try:
        # Capitalised: lower-case English verbose names ("name", "phone") read as raw keys.
        return capfirst(str(Contact._meta.get_field(key).verbose_name))
    except FieldDoesNotExist:
        return custom.get(key, key)


def contact_ref(contact: Contact) -> str:
    """A contact's name with its id, which tells two contacts of the same name apart."""
    name = contact.display_name
    return name if name == f"#{contact.pk}" else f"{name} #{contact.pk}"
