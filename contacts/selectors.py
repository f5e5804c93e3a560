import datetime as dt

from django.contrib.auth.models import AbstractBaseUser
from django.db.models import Count, Prefetch, Q, QuerySet
from django.db.models.functions import TruncDate
from django.utils import timezone

from contacts import roles
from contacts.models import (
    Consent,
    ConsentRecord,
    Contact,
    ContactTag,
    CustomField,
    Event,
    Identity,
    MergeRecord,
    Note,
    StaffProfile,
    Store,
    Tag,
)


def contact_visible_to(*, user: AbstractBaseUser) -> QuerySet[Contact]:
    """Contacts the user may see; merged-away contacts are hidden from everyone.

    Superusers and holders of `contacts.view_contact` see all, except store staff, who see the
    contacts they own or that belong to their store; anyone else only the contacts they own.
    """
    qs = Contact.objects.filter(merged_into__isnull=True)
    if user.is_superuser:
        return qs
    if not user.is_authenticated:
        return qs.none()
    if roles.is_store_staff(user):
        own_store = StaffProfile.objects.filter(user=user, store__isnull=False).values("store_id")
        return qs.filter(Q(owner=user) | Q(store_id__in=own_store))
    if user.has_perm("contacts.view_contact"):
        return qs
    return qs.filter(owner=user)


def contact_search(*, qs: QuerySet[Contact], query: str) -> QuerySet[Contact]:
    query = query.strip()
    if not query:
        return qs
    cond = Q(name__icontains=query) | Q(nickname__icontains=query)
    digits = "".join(ch for ch in query if ch.isdigit())
    if len(digits) >= 4:
        cond |= Q(phone__contains=digits)
    if "@" in query:
        cond |= Q(email__iexact=query)
    return qs.filter(cond)


def contact_get_by_identity(*, kind: str, value: str, app_id: str = "") -> Contact | None:
    row = (
        Identity.objects.select_related("contact")
        .filter(kind=kind, app_id=app_id, value=value)
        .first()
    )
    return contact_follow_merges(contact=row.contact) if row else None


def contact_follow_merges(*, contact: Contact) -> Contact:
    """The contact that absorbed `contact` through merges (itself when it was never merged)."""
    seen = {contact.pk}
    while contact.merged_into_id is not None:
        contact = Contact.objects.get(pk=contact.merged_into_id)
        if contact.pk in seen:  # a cycle would be a bug; stop rather than loop forever
            break
        seen.add(contact.pk)
    return contact


def contact_timeline(
    *, contact: Contact, before: int | None = None, limit: int = 50
) -> list[Event]:
    """A contact's events, newest first; `before` is the id of the last event already shown.

    The cursor is (occurred_at, id), the same as the sort, so events recorded out of order
    (imported history, late mobile batches) are neither skipped nor repeated.
    """
    qs = Event.objects.filter(contact=contact)
    if before:
        cursor = qs.filter(pk=before).values("occurred_at", "pk").first()
        if cursor is None:
            return []
        qs = qs.filter(
            Q(occurred_at__lt=cursor["occurred_at"])
            | Q(occurred_at=cursor["occurred_at"], pk__lt=cursor["pk"])
        )
    return list(qs.order_by("-occurred_at", "-pk")[:limit])


def contacts_new_per_day(*, days: int = 30) -> list[tuple[dt.date, int]]:
    """Count of contacts created per local day over the last `days` days, zero-filled."""
    today = timezone.localdate()
    start = today - dt.timedelta(days=days - 1)
    start_at = timezone.make_aware(dt.datetime.combine(start, dt.time.min))
    rows = (
        Contact.objects.filter(created_at__gte=start_at, merged_into__isnull=True)
        .annotate(day=TruncDate("created_at", tzinfo=timezone.get_current_timezone()))
        .values("day")
        .annotate(n=Count("id"))
    )
    counts = {r["day"]: r["n"] for r in rows}
    return [
        (start + dt.timedelta(days=i), counts.get(start + dt.timedelta(days=i), 0))
        for i in range(days)
    ]


def contact_stats() -> dict[str, int]:
    week_ago = timezone.now() - dt.timedelta(days=7)
    return {
        "total": Contact.objects.filter(merged_into__isnull=True).count(),
        "new_this_week": Contact.objects.filter(
            created_at__gte=week_ago, merged_into__isnull=True
        ).count(),
    }


def tags_grouped() -> QuerySet[Tag]:
    return Tag.objects.select_related("group").all()


def contact_list(*, user: AbstractBaseUser) -> QuerySet[Contact]:
    """Contacts the user may see, with their tags prefetched for list rows."""
    return (
        contact_visible_to(user=user)
        .select_related("lifecycle_stage", "owner", "store")
        .prefetch_related(
            Prefetch("contact_tags", queryset=ContactTag.objects.select_related("tag"))
        )
    )


def contact_tags(*, contact: Contact) -> QuerySet[ContactTag]:
    return (
        ContactTag.objects.filter(contact=contact)
        .select_related("tag__group")
        .order_by("tag__group__position", "tag__group__name", "tag__name")
    )


def contact_identities(*, contact: Contact) -> QuerySet[Identity]:
    return Identity.objects.filter(contact=contact).order_by("kind", "pk")


def contact_merged_into_visible(*, user: AbstractBaseUser, pk: int) -> Contact | None:
    """The visible survivor a merged-away contact now lives in, for redirecting old links."""
    survivor_id = Contact.objects.filter(pk=pk).values_list("merged_into_id", flat=True).first()
    if survivor_id is None:
        return None
    return contact_visible_to(user=user).filter(pk=survivor_id).first()


def contact_custom_fields() -> QuerySet[CustomField]:
    return CustomField.objects.filter(is_active=True).order_by("position", "key")


def contact_profile_attributes(*, contact: Contact) -> list[tuple[str, object]]:
    """(label, value) of the contact's custom fields in field order, then other traits by key."""
    attributes = contact.attributes if isinstance(contact.attributes, dict) else {}
    rows: list[tuple[str, object]] = []
    seen: set[str] = set()
    for field in contact_custom_fields():
        seen.add(field.key)
        value = attributes.get(field.key)
        if isinstance(value, list):
            value = ", ".join(str(v) for v in value)
        elif isinstance(value, bool):
            value = "✓" if value else "✗"
        rows.append((field.label, value))
    rows.extend((key, attributes[key]) for key in sorted(attributes) if key not in seen)
    return rows


def stores_active() -> QuerySet[Store]:
    return Store.objects.filter(is_active=True).order_by("code")


def staff_users() -> QuerySet:
    """Users who may own contacts (active accounts), for owner pickers."""
    from django.contrib.auth import get_user_model

    return get_user_model().objects.filter(is_active=True).order_by("username")


def contact_notes(*, contact: Contact, limit: int = 50) -> list[Note]:
    """Open follow-ups first (soonest due first), then the other notes newest first."""
    base = Note.objects.filter(contact=contact).select_related("author")
    open_follow_ups = list(
        base.filter(follow_up_at__isnull=False, done_at__isnull=True).order_by("follow_up_at")[
            :limit
        ]
    )
    others = list(
        base.exclude(pk__in=[n.pk for n in open_follow_ups]).order_by("-created_at", "-pk")[
            : max(limit - len(open_follow_ups), 0)
        ]
    )
    return open_follow_ups + others


def contact_consents(*, contact: Contact) -> QuerySet[Consent]:
    return (
        Consent.objects.filter(contact=contact)
        .select_related("record")
        .order_by("channel", "purpose")
    )


def contact_consent_records(*, contact: Contact, limit: int = 20) -> QuerySet[ConsentRecord]:
    return (
        ConsentRecord.objects.filter(contact=contact)
        .select_related("actor")
        .order_by("-recorded_at", "-pk")[:limit]
    )


def contact_merges(*, contact: Contact) -> QuerySet[MergeRecord]:
    """Merges that folded another contact into this one, newest first."""
    return (
        MergeRecord.objects.filter(survivor=contact)
        .select_related("duplicate", "actor")
        .order_by("-created_at", "-pk")
    )


def merge_record_visible_to(*, user: AbstractBaseUser) -> QuerySet[MergeRecord]:
    """Merge records whose survivor the user may see."""
    return MergeRecord.objects.filter(survivor__in=contact_visible_to(user=user)).select_related(
        "survivor", "duplicate"
    )


def contact_merge_candidates(
    *, user: AbstractBaseUser, contact: Contact, query: str, limit: int = 20
) -> list[Contact]:
    """Contacts the user may see that match `query`, other than `contact` itself."""
    if not query.strip():
        return []
    qs = contact_search(qs=contact_visible_to(user=user), query=query).exclude(pk=contact.pk)
    return list(qs.select_related("lifecycle_stage").order_by("-pk")[:limit])


# Fields compared side by side in the merge preview, in display order.
MERGE_PREVIEW_FIELDS = (
    "name",
    "nickname",
    "gender",
    "birthday",
    "phone",
    "email",
    "province",
    "city",
    "source",
    "channel_code",
    "utm_source",
    "utm_campaign",
    "lifecycle_stage",
    "owner",
    "store",
)


def contact_merge_preview(*, survivor: Contact, duplicate: Contact) -> dict:
    """What a merge of `duplicate` into `survivor` keeps: field by field, and row counts.

    The survivor keeps its own values and fills its empty fields from the duplicate.
    """
    rows = []
    for name in MERGE_PREVIEW_FIELDS:
        field = Contact._meta.get_field(name)
        mine = getattr(survivor, field.attname)
        theirs = getattr(duplicate, field.attname)
        empty = mine in (None, "") or (name == "gender" and mine == "unknown")
        result, from_duplicate = (
            (theirs, True)
            if empty and theirs not in (None, "")
            else (
                mine,
                False,
            )
        )
        rows.append(
            {
                "name": name,
                "label": field.verbose_name,
                "survivor": _display(survivor, field, mine),
                "duplicate": _display(duplicate, field, theirs),
                "result": _display(duplicate if from_duplicate else survivor, field, result),
                "from_duplicate": from_duplicate,
                "personal": name in ("phone", "email"),
                "raw_survivor": mine,
                "raw_duplicate": theirs,
                "raw_result": result,
            }
        )
    counts = {}
    for key, model in (
        ("identities", Identity),
        ("events", Event),
        ("tags", ContactTag),
        ("notes", Note),
        ("consent_records", ConsentRecord),
    ):
        per_contact = dict(
            model.objects.filter(contact__in=[survivor.pk, duplicate.pk])
            .values_list("contact_id")
            .annotate(n=Count("pk"))
            .values_list("contact_id", "n")
        )
        counts[key] = {
            "survivor": per_contact.get(survivor.pk, 0),
            "duplicate": per_contact.get(duplicate.pk, 0),
        }
    return {"fields": rows, "counts": counts}


def _display(contact: Contact, field, value) -> object:
    if value in (None, ""):
        return ""
    if field.choices:
        return dict(field.flatchoices).get(value, value)
    if field.is_relation:
        return getattr(contact, field.name)
    if isinstance(value, dt.datetime):
        return timezone.localtime(value).strftime("%Y-%m-%d %H:%M")
    if isinstance(value, dt.date):
        return value.isoformat()
    return value
