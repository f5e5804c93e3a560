from django.db.models import Count, Q, QuerySet

from contacts.models import Contact
from membership.models import Member, PointsEntry, Tier


def tiers_with_member_counts(*, contacts: QuerySet[Contact] | None = None) -> QuerySet[Tier]:
    """Tiers in rank order with their member counts, counting only members among `contacts`
    (the contacts the user may see) when given."""
    members = Q(members__contact__in=contacts) if contacts is not None else None
    return Tier.objects.annotate(member_count=Count("members", filter=members)).order_by("rank")


def member_for_contact(*, contact: Contact) -> Member | None:
    return Member.objects.select_related("tier").filter(contact=contact).first()


def points_history(*, member: Member, limit: int = 20) -> list[PointsEntry]:
    return list(member.points_entries.order_by("-created_at", "-pk")[:limit])


def member_list(
    *, tier: Tier | None = None, contacts: QuerySet[Contact] | None = None
) -> QuerySet[Member]:
    """Members with their contact and tier, optionally of one tier and among `contacts` (the
    contacts the user may see)."""
    qs = Member.objects.select_related("contact", "tier")
    if contacts is not None:
        qs = qs.filter(contact__in=contacts)
    return qs.filter(tier=tier) if tier is not None else qs
