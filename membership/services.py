import datetime as dt
from decimal import ROUND_DOWN, Decimal

from django.conf import settings
from django.db import IntegrityError, transaction
from django.db.models import F
from django.utils.translation import gettext as _

from contacts.models import Contact, Event, MergeRecord
from core.errors import DomainError
from membership.models import Member, PointsEntry, Tier
from membership.signals import membership_changed


class NoTiersConfigured(DomainError):
    code = "no_tiers"


def tier_for_growth(*, growth_value: int) -> Tier:
    tier = Tier.objects.filter(min_growth__lte=growth_value).order_by("-min_growth").first()
    if tier is None:
        raise NoTiersConfigured(_("Create at least one tier with a minimum growth value of 0."))
    return tier


def member_get_or_create(*, contact: Contact) -> Member:
    """Enrol a contact in the lowest tier if they are not a member yet."""
    member = Member.objects.filter(contact=contact).first()
    if member:
        return member
    try:
        with transaction.atomic():
            member = Member.objects.create(contact=contact, tier=tier_for_growth(growth_value=0))
            membership_changed.send(sender=Member, contact_ids=[contact.pk])
            return member
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
            _("Not enough points."),
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
    membership_changed.send(sender=Member, contact_ids=[member.contact_id])
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


def _member_retier(member_id: int) -> None:
    member = Member.objects.get(pk=member_id)
    tier = tier_for_growth(growth_value=member.growth_value)
    if tier.pk != member.tier_id:
        Member.objects.filter(pk=member_id).update(tier=tier)


@transaction.atomic
def members_merge(*, record: MergeRecord, survivor: Contact, duplicate: Contact) -> None:
    """Move the duplicate's membership to the survivor (fold the two when both are members).

    Folding moves the duplicate's ledger entries to the survivor's member, adds its balance and
    growth value (so the balance stays the sum of the entries), re-tiers, and deletes the
    duplicate's emptied member row. What was done is kept in record.moved for members_unmerge.
    """
    theirs = Member.objects.select_for_update().filter(contact=duplicate).first()
    if theirs is None:
        return
    mine = Member.objects.select_for_update().filter(contact=survivor).first()
    if mine is None:
        Member.objects.filter(pk=theirs.pk).update(contact=survivor)
        record.moved["membership.member"] = [theirs.pk]
    else:
        entries = list(theirs.points_entries.order_by("pk").values_list("pk", flat=True))
        PointsEntry.objects.filter(pk__in=entries).update(member=mine)
        Member.objects.filter(pk=mine.pk).update(
            points_balance=F("points_balance") + theirs.points_balance,
            growth_value=F("growth_value") + theirs.growth_value,
            joined_at=min(mine.joined_at, theirs.joined_at),
        )
        theirs_pk = theirs.pk
        theirs.delete()
        _member_retier(mine.pk)
        record.moved["membership.pointsentry"] = entries
        record.moved["membership.member_fold"] = {
            "survivor_member": mine.pk,
            "survivor_joined_at": mine.joined_at.isoformat(),
            "duplicate_member": theirs_pk,
            "points": theirs.points_balance,
            "growth": theirs.growth_value,
            "tier": theirs.tier_id,
            "joined_at": theirs.joined_at.isoformat(),
        }
    record.save(update_fields=["moved"])


@transaction.atomic
def members_unmerge(*, record: MergeRecord, survivor: Contact, duplicate: Contact) -> None:
    """Give the duplicate back the membership that members_merge moved or folded."""
    moved = record.moved
    if moved.get("membership.member"):
        Member.objects.filter(pk__in=moved["membership.member"]).update(contact=duplicate)
    fold = moved.get("membership.member_fold")
    if not fold:
        return
    mine = Member.objects.select_for_update().get(pk=fold["survivor_member"])
    if mine.points_balance < fold["points"]:
        raise DomainError(
            _("The survivor has spent points since the merge; the merge cannot be undone."),
            code="points_spent",
            details={"balance": mine.points_balance, "needed": fold["points"]},
        )
    Member.objects.create(
        pk=fold["duplicate_member"],
        contact=duplicate,
        tier_id=fold["tier"],
        points_balance=fold["points"],
        growth_value=fold["growth"],
        joined_at=dt.datetime.fromisoformat(fold["joined_at"]),
    )
    PointsEntry.objects.filter(pk__in=moved.get("membership.pointsentry", [])).update(
        member_id=fold["duplicate_member"]
    )
    Member.objects.filter(pk=mine.pk).update(
        points_balance=F("points_balance") - fold["points"],
        growth_value=F("growth_value") - min(fold["growth"], mine.growth_value),
        joined_at=dt.datetime.fromisoformat(fold["survivor_joined_at"]),
    )
    _member_retier(mine.pk)
