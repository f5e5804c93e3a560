from django.db.models import Count, QuerySet

from contacts.models import Contact
from membership.models import Member, PointsEntry, Tier


def tiers_with_member_counts() -> QuerySet[Tier]:
    return Tier.objects.annotate(member_count=Count("members")).order_by("rank")


def member_for_contact(*, contact: Contact) -> Member | None:
    return Member.objects.select_related("tier").filter(contact=contact).first()


def points_history(*, member: Member, limit: int = 20) -> list[PointsEntry]:
    return list(member.points_entries.order_by("-created_at", "-pk")[:limit])


def member_list(*, tier: Tier | None = None) -> QuerySet[Member]:
    """Members with their contact and tier, optionally of one tier."""
    qs = Member.objects.select_related("contact", "tier")
    return qs.filter(tier=tier) if tier is not None else qs
