import datetime as dt
from decimal import Decimal

import pytest
from django.db import IntegrityError
from django.utils import timezone

from contacts.services import EventInput, events_record
from core.errors import DomainError
from membership.models import Member, PointsEntry
from membership.services import member_get_or_create, points_apply
from tests.factories import ContactFactory, TierFactory

pytestmark = pytest.mark.django_db


@pytest.fixture
def tiers():
    return [
        TierFactory(name="普通会员", code="basic", rank=1, min_growth=0),
        TierFactory(name="银卡会员", code="silver", rank=2, min_growth=500),
        TierFactory(name="金卡会员", code="gold", rank=3, min_growth=2000),
    ]


def _purchase(event_id, contact, amount):
    return EventInput(
        event_id=event_id,
        name="purchase",
        occurred_at=timezone.now() - dt.timedelta(minutes=1),
        contact_id=contact.pk,
        value=Decimal(amount),
        properties={"order_id": event_id},
    )


def test_purchase_earns_points_and_growth_once(tiers):
    contact = ContactFactory()
    events_record(items=[_purchase("o1", contact, "299.90")])
    events_record(items=[_purchase("o1", contact, "299.90")])  # retried
    member = Member.objects.get(contact=contact)
    assert member.points_balance == 299
    assert member.growth_value == 299
    assert member.tier.code == "basic"
    assert PointsEntry.objects.filter(member=member).count() == 1


def test_growth_moves_the_member_up_a_tier(tiers):
    contact = ContactFactory()
    events_record(items=[_purchase("o1", contact, "300"), _purchase("o2", contact, "250")])
    member = Member.objects.get(contact=contact)
    assert member.growth_value == 550
    assert member.tier.code == "silver"
    assert [e.balance_after for e in member.points_entries.order_by("pk")] == [300, 550]


def test_purchases_without_tiers_earn_nothing():
    contact = ContactFactory()
    events_record(items=[_purchase("o1", contact, "300")])
    assert not Member.objects.exists()


def test_spending_more_than_the_balance_is_refused(tiers):
    member = member_get_or_create(contact=ContactFactory())
    points_apply(member=member, delta=100, reason="adjustment", idempotency_key="k1")
    with pytest.raises(DomainError) as exc:
        points_apply(member=member, delta=-101, reason="redemption", idempotency_key="k2")
    assert exc.value.code == "insufficient_points"
    member.refresh_from_db()
    assert member.points_balance == 100
    assert not PointsEntry.objects.filter(idempotency_key="k2").exists()


def test_database_refuses_a_negative_balance(tiers):
    member = member_get_or_create(contact=ContactFactory())
    with pytest.raises(IntegrityError):
        Member.objects.filter(pk=member.pk).update(points_balance=-1)
