"""Membership's part of erasing a person (contacts.services.erasure) and of the copy of their
data.

No member row of anyone else points at a member (referrals are events, whose properties name
the referrer; the contacts app holds them), so erasing one person takes no points from anyone.
"""

from typing import Any

from contacts.models import Erasure
from contacts.services import erasure_rows_delete
from membership.models import Member, PointsEntry


def members_erase(*, erasure: Erasure, contact_ids: list[int]) -> None:
    """Delete the erased contacts' memberships and, with them, their points ledgers.

    The member rows are locked first, as points_apply locks them: a points adjustment running
    now finishes first and its ledger line goes too, or it starts after and finds no member. The
    admin's history names a member "<contact's name> · <tier>": it is made to name the id."""
    erasure_rows_delete(
        erasure=erasure,
        rows=Member.objects.filter(contact_id__in=contact_ids),
        forget_history=True,
    )


def members_personal_data(*, contact_ids: list[int]) -> dict[str, list[dict[str, Any]]]:
    """The person's member card and points ledger, as sections of their copy of their data."""
    cards = [
        {
            "contact_id": member.contact_id,
            "tier": member.tier.name,
            "points_balance": member.points_balance,
            "growth_value": member.growth_value,
            "member_since": member.joined_at.isoformat(),
        }
        for member in Member.objects.filter(contact_id__in=contact_ids)
        .select_related("tier")
        .order_by("pk")
    ]
    ledger = [
        {
            "contact_id": entry.member.contact_id,
            "points": entry.delta,
            "balance_after": entry.balance_after,
            "reason": entry.reason,
            "note": entry.note,
            "event_id": entry.source_event.event_id if entry.source_event_id else None,
            "created_at": entry.created_at.isoformat(),
        }
        for entry in PointsEntry.objects.filter(member__contact_id__in=contact_ids)
        .select_related("member", "source_event")
        .order_by("created_at", "pk")
    ]
    return {"membership.members": cards, "membership.points_entries": ledger}
