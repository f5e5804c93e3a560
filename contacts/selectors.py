import datetime as dt

from django.contrib.auth.models import AbstractBaseUser
from django.db.models import Count, Prefetch, Q, QuerySet
from django.db.models.functions import TruncDate
from django.utils import timezone

from contacts.models import Contact, ContactTag, Event, Identity, Tag


def contact_visible_to(*, user: AbstractBaseUser) -> QuerySet[Contact]:
    """Contacts the user may see: staff and superusers see all, others only those they own."""
    qs = Contact.objects.all()
    if user.is_superuser or user.has_perm("contacts.view_contact"):
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
    return row.contact if row else None


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
        Contact.objects.filter(created_at__gte=start_at)
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
        "total": Contact.objects.count(),
        "new_this_week": Contact.objects.filter(created_at__gte=week_ago).count(),
    }


def tags_grouped() -> QuerySet[Tag]:
    return Tag.objects.select_related("group").all()


def contact_list(*, user: AbstractBaseUser) -> QuerySet[Contact]:
    """Contacts the user may see, with their tags prefetched for list rows."""
    return (
        contact_visible_to(user=user)
        .select_related("lifecycle_stage")
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
