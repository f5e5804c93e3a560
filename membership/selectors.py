import datetime as dt
from dataclasses import dataclass

from django.db.models import Count, Q, QuerySet

from contacts.models import Contact
from membership.models import Member, PointsEntry, Tier
from membership.services import NoTiersConfigured, tier_for_growth


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


# What members_merge does with the two memberships (the merge preview names it).
MERGE_NONE = "none"  # neither is a member
MERGE_KEPT = "kept"  # only the survivor is: nothing changes
MERGE_MOVED = "moved"  # only the duplicate is: its member row goes to the survivor as it is
MERGE_FOLDED = "folded"  # both are: one member with the sums, re-tiered


@dataclass(frozen=True)
class MemberSnapshot:
    """A membership as the merge preview shows it: a contact's own, or the merged result."""

    tier: Tier | None
    points_balance: int
    growth_value: int
    joined_at: dt.datetime
    entries: int


@dataclass(frozen=True)
class MemberMergePreview:
    survivor: MemberSnapshot | None
    duplicate: MemberSnapshot | None
    after: MemberSnapshot | None
    outcome: str
    # Why the merge will be refused (no tier fits the summed growth value), else empty.
    error: str = ""


def member_merge_preview(*, survivor: Contact, duplicate: Contact) -> MemberMergePreview:
    """What a merge of `duplicate` into `survivor` makes of their memberships.

    Mirrors membership.services.members_merge: a lone membership moves (or stays) unchanged;
    two are folded into the survivor's, points and growth value added up, the earlier join
    date kept, the ledger entries moved and the tier recomputed from the summed growth value.
    """
    rows = {
        m.contact_id: MemberSnapshot(
            tier=m.tier,
            points_balance=m.points_balance,
            growth_value=m.growth_value,
            joined_at=m.joined_at,
            entries=m.entries,
        )
        for m in Member.objects.filter(contact__in=[survivor.pk, duplicate.pk])
        .select_related("tier")
        .annotate(entries=Count("points_entries"))
    }
    mine, theirs = rows.get(survivor.pk), rows.get(duplicate.pk)
    if theirs is None:
        return MemberMergePreview(
            survivor=mine,
            duplicate=None,
            after=mine,
            outcome=MERGE_NONE if mine is None else MERGE_KEPT,
        )
    if mine is None:
        return MemberMergePreview(
            survivor=None, duplicate=theirs, after=theirs, outcome=MERGE_MOVED
        )
    growth = mine.growth_value + theirs.growth_value
    error = ""
    try:
        tier: Tier | None = tier_for_growth(growth_value=growth)
    except NoTiersConfigured as exc:
        # members_merge raises the same error, which refuses the whole merge.
        tier, error = None, exc.message
    after = MemberSnapshot(
        tier=tier,
        points_balance=mine.points_balance + theirs.points_balance,
        growth_value=growth,
        joined_at=min(mine.joined_at, theirs.joined_at),
        entries=mine.entries + theirs.entries,
    )
    return MemberMergePreview(
        survivor=mine, duplicate=theirs, after=after, outcome=MERGE_FOLDED, error=error
    )
