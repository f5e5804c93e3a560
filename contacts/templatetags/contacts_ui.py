from typing import Any

from django import template
from django.contrib.auth.models import AbstractBaseUser
from django.contrib.humanize.templatetags.humanize import intcomma
from django.db.models import Q
from django.urls import reverse
from django.utils.translation import gettext as _
from django.utils.translation import pgettext

from contacts import labels, pii, roles, selectors
from contacts.labels import EVENT_LABELS as EVENT_LABELS  # read from here by older code and tests
from contacts.models import (
    ConsentChannel,
    ConsentPurpose,
    Contact,
    Event,
    Identity,
    IdentityKind,
    Stage,
)
from core import jobs

register = template.Library()

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
    "preview",
)
CONSENT_EVENTS = ("consent_granted", "consent_withdrawn")


@register.filter
def event_label(name: str) -> str:
    """The operator-facing label of an event name; unknown names are shown as they are."""
    return labels.event_label(name)


@register.filter(name="source_label")
def source_label_filter(value: str) -> str:
    """The label of a source the product writes (api → API, import → 导入); others as they are."""
    return labels.source_label(value)


@register.filter
def merge_reason(reason: str) -> str:
    """The label of a merge or never-merge reason (identify → 自动：身份相同)."""
    return labels.merge_reason_label(reason)


@register.filter(name="contact_ref")
def contact_ref_filter(contact: Contact) -> str:
    """A contact's name with its id (刘雨 #602), for pages that show two contacts side by side."""
    return labels.contact_ref(contact)


class _Lookups:
    """What the timeline's details name by key or id, read once per page render."""

    def __init__(self, user: AbstractBaseUser | None) -> None:
        self._user = user
        self._custom: dict[str, str] | None = None
        self._contacts: dict[int, str] = {}
        self._stages: dict[str, str] | None = None
        self._jobs: dict[int, bool] = {}
        self._segments_visible: bool | None = None

    def segments_visible(self) -> bool:
        if self._segments_visible is None:
            user = self._user
            self._segments_visible = user is not None and user.has_perm(
                roles.SEGMENT_VIEW_PERMISSION
            )
        return self._segments_visible

    def custom(self) -> dict[str, str]:
        if self._custom is None:
            self._custom = labels.custom_field_labels()
        return self._custom

    def load_contacts(self, ids: set[int]) -> None:
        missing = ids - self._contacts.keys()
        if not missing:
            return
        # Named only when the user may see them (store staff must not learn the names of
        # another store's customers from a conflict or a merge); a merged-away contact when
        # its survivor is visible, as the timeline names whom a merge concerned.
        if self._user is not None:
            visible = selectors.contact_visible_to(user=self._user)
            rows = Contact.objects.filter(pk__in=missing).filter(
                Q(pk__in=visible.values("pk")) | Q(merged_into__in=visible.values("pk"))
            )
            for other in rows.only("name", "nickname", "phone"):
                self._contacts[other.pk] = labels.contact_ref(other)
        self._contacts.update((pk, f"#{pk}") for pk in missing - self._contacts.keys())

    def contact(self, pk: int) -> str:
        self.load_contacts({pk})
        return self._contacts[pk]

    def load_jobs(self, ids: set[int]) -> None:
        """Which of the import jobs the page names the user may open (jobs_visible_to)."""
        missing = ids - self._jobs.keys()
        if not missing:
            return
        visible: set[int] = set()
        if self._user is not None and self._user.is_authenticated:
            visible = set(
                jobs.jobs_visible_to(user=self._user)
                .filter(pk__in=missing)
                .values_list("pk", flat=True)
            )
        self._jobs.update((pk, pk in visible) for pk in missing)

    def job_visible(self, pk: int) -> bool:
        self.load_jobs({pk})
        return self._jobs[pk]

    def stage(self, key: str) -> str:
        """A lifecycle stage's name by its key (the key itself for a stage deleted since)."""
        if self._stages is None:
            self._stages = dict(Stage.objects.values_list("key", "name"))
        return self._stages.get(key, key)


def _id(value: Any) -> int | None:
    return value if isinstance(value, int) and not isinstance(value, bool) else None


# The properties of the events that name another contact by id.
CONTACT_ID_KEYS = {
    "contact_merged": ("duplicate_id",),
    "identity_conflict": ("other_contact_id",),
    "merge_undone": ("survivor_id", "duplicate_id"),
}
# The entries that name an import job (`job_id`): the page links to it for those who may see it.
IMPORT_ENTRIES = ("contact_imported", "contact_created")


def _lookups(context: template.Context) -> _Lookups:
    lookups = context.render_context.get(_Lookups)
    if lookups is None:
        request = context.get("request")
        user = getattr(request, "user", None)
        lookups = context.render_context[_Lookups] = _Lookups(user)
    return lookups


@register.simple_tag(takes_context=True)
def timeline_prefetch(context: template.Context, events: list[Event]) -> str:
    """Read the contacts and the import jobs a page of events names, in one query each (before
    event_detail and event_job_url run)."""
    ids = set()
    job_ids = set()
    for event in events:
        props = event.properties if isinstance(event.properties, dict) else {}
        for key in CONTACT_ID_KEYS.get(event.name, ()):
            pk = _id(props.get(key))
            if pk is not None:
                ids.add(pk)
        if event.name in IMPORT_ENTRIES and _id(props.get("job_id")) is not None:
            job_ids.add(props["job_id"])
    lookups = _lookups(context)
    lookups.load_contacts(ids)
    lookups.load_jobs(job_ids)
    return ""


@register.simple_tag(takes_context=True)
def event_job_url(context: template.Context, event: Event) -> str:
    """The page of the import job an import entry names, when the user may open it ("" if not)."""
    props = event.properties if isinstance(event.properties, dict) else {}
    job_id = _id(props.get("job_id"))
    if event.name not in IMPORT_ENTRIES or job_id is None:
        return ""
    if not _lookups(context).job_visible(job_id):
        return ""
    return reverse("contacts_io:job", args=[job_id])


def _import_parts(event: Event, props: dict[str, Any], lookups: _Lookups) -> list[str]:
    """The file, then what an import changed: fields and identities, then the tags it added."""
    file = str(props.get("file") or "")
    if event.name == "contact_created":
        return [labels.source_label(event.source or "import"), *([file] if file else [])]
    parts = [file] if file else []
    fields = [str(f) for f in props.get("fields") or [] if f]
    custom = lookups.custom() if fields else {}
    names = [labels.contact_field_label(f, custom=custom) for f in fields]
    kinds = dict(IdentityKind.choices)
    # A changed phone or email is named once, as the field.
    names += [
        str(kinds.get(kind, kind))
        for kind in props.get("identities") or []
        if isinstance(kind, str) and kind not in fields
    ]
    if names:
        parts.append(_list(names))
    tags = [str(t) for t in props.get("tags") or [] if t]
    if tags:
        parts.append(_("tags added: %(tags)s") % {"tags": _list(tags)})
    return parts


def _list(words) -> str:
    """Words listed as the language lists them (姓名、生日; Name, Birthday)."""
    return pgettext("list separator", ", ").join(map(str, words))


def _detail_parts(event: Event, props: dict[str, Any], lookups: _Lookups) -> list[str]:
    name = event.name
    if name in IMPORT_ENTRIES:
        return _import_parts(event, props, lookups)
    if name in CONSENT_EVENTS:
        return [
            str(choices.get(props[key], props[key]))
            for key, choices in (
                ("channel", dict(ConsentChannel.choices)),
                ("purpose", dict(ConsentPurpose.choices)),
            )
            if props.get(key)
        ]
    if name == "profile_updated":
        fields = props.get("fields")
        if not isinstance(fields, list) or not fields:
            return []
        custom = lookups.custom()
        return [_list(labels.contact_field_label(str(f), custom=custom) for f in fields)]
    if name in ("contact_merged", "identity_conflict"):
        other = _id(props.get("duplicate_id" if name == "contact_merged" else "other_contact_id"))
        parts = [lookups.contact(other)] if other is not None else []
        if props.get("reason"):
            parts.append(labels.merge_reason_label(str(props["reason"])))
        return parts
    if name == "stage_changed":
        ends = [props.get("from"), props.get("to")]
        if not all(isinstance(key, str) and key for key in ends):
            return []
        return [" → ".join(lookups.stage(key) for key in ends)]
    if name == "merge_undone":
        # Both contacts get this event: each names the other one.
        ids = [_id(props.get("survivor_id")), _id(props.get("duplicate_id"))]
        return [lookups.contact(pk) for pk in ids if pk is not None and pk != event.contact_id]
    # A role without the segments panel (store staff) is not told segment names either.
    hidden = () if lookups.segments_visible() else ("segment",)
    return [
        ", ".join(map(str, props[key])) if isinstance(props[key], list) else str(props[key])
        for key in DETAIL_KEYS
        if props.get(key) not in (None, "", []) and key not in hidden
    ]


@register.simple_tag(takes_context=True)
def event_detail(context: template.Context, event: Event) -> str:
    """A short summary of what the event was about: the tag or journey name, the consent's
    channel and purpose, the fields a profile update changed, the other contact of a merge."""
    lookups = _lookups(context)
    props: dict[str, Any] = event.properties if isinstance(event.properties, dict) else {}
    parts = _detail_parts(event, props, lookups)
    if event.value is not None:
        # Grouped like every other figure of the page (¥1,650.00), in either language.
        parts.append(f"¥{intcomma(event.value)}")
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
    return _list(roles.role_label(name) for name in roles.user_role_names(user))


@register.filter
def import_cell(value: Any) -> Any:
    """A value of the import preview as it is shown: yes / no, a choice list joined, "" for
    none; other values (texts, numbers) as they are."""
    if value is True:
        return _("Yes")
    if value is False:
        return _("No")
    if value is None or value == "" or value == []:
        return ""
    if isinstance(value, list | tuple):
        return ", ".join(str(v) for v in value)
    return value
