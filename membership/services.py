from decimal import ROUND_DOWN, Decimal

from django.conf import settings
from django.db import IntegrityError, transaction
from django.db.models import F

from contacts.models import Contact, Event
from core.errors import DomainError
from membership.models import Member, PointsEntry, Tier


class NoTiersConfigured(DomainError):
    code = "no_tiers"


def tier_for_growth(*, growth_value: int) -> Tier:
    tier = Tier.objects.filter(min_growth__lte=growth_value).order_by("-min_growth").first()
    if tier is None:
        raise NoTiersConfigured("Create at least one tier with a minimum growth value of 0.")
    return tier


def member_get_or_create(*, contact: Contact) -> Member:
    """Enrol a contact in the lowest tier if they are not a member yet."""
    member = Member.objects.filter(contact=contact).first()
    if member:
        return member
    try:
        with transaction.atomic():
            return Member.objects.create(contact=contact, tier=tier_for_growth(growth_value=0))
    except IntegrityError:
        return Member.objects.get(contact=contact)


@transaction.atomic
def points_apply(
    *,
    member: Member,
    delta: int,
    reason: str,
    idempotency_key: str,
    source_event: Event | None = None,
    growth: int = 0,
    note: str = "",
) -> PointsEntry | None:
    """Add (or spend) points once per idempotency key; None when that key was already applied."""
    if PointsEntry.objects.filter(idempotency_key=idempotency_key).exists():
        return None
    # Row lock: concurrent spends serialise here, so the balance check below cannot be raced.
    locked = Member.objects.select_for_update().get(pk=member.pk)
    if locked.points_balance + delta < 0:
        raise DomainError(
            "Not enough points.",
            code="insufficient_points",
            details={"balance": locked.points_balance, "requested": -delta},
        )
    Member.objects.filter(pk=member.pk).update(
        points_balance=F("points_balance") + delta, growth_value=F("growth_value") + growth
    )
    locked.refresh_from_db(fields=["points_balance", "growth_value"])
    entry = PointsEntry.objects.create(
        member=locked,
        delta=delta,
        balance_after=locked.points_balance,
        reason=reason,
        idempotency_key=idempotency_key,
        source_event=source_event,
        note=note,
    )
    new_tier = tier_for_growth(growth_value=locked.growth_value)
    if new_tier.pk != locked.tier_id:
        Member.objects.filter(pk=member.pk).update(tier=new_tier)
    member.refresh_from_db()
    return entry


def points_for_amount(amount: Decimal) -> int:
    rate = Decimal(str(settings.MEMBERSHIP_POINTS_PER_YUAN))
    return int((amount * rate).to_integral_value(rounding=ROUND_DOWN))


def purchase_reward(*, event: Event) -> PointsEntry | None:
    """Earn points and growth value for a purchase event, once per event."""
    if event.name != "purchase" or not event.value or event.value <= 0:
        return None
    if not Tier.objects.exists():
        return None
    points = points_for_amount(event.value)
    if points <= 0:
        return None
    member = member_get_or_create(contact=event.contact)
    return points_apply(
        member=member,
        delta=points,
        growth=points,
        reason=PointsEntry.Reason.PURCHASE,
        idempotency_key=f"event:{event.event_id}",
        source_event=event,
        note=str(event.properties.get("order_id", ""))[:200],
    )
