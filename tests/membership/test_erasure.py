"""Erasing a member deletes their card and points ledger and nobody else's, referrals
included, and their copy of their data holds the card and the ledger."""

import datetime as dt
from decimal import Decimal

import pytest
from django.utils import timezone

from contacts.models import Contact
from contacts.services import EventInput, contact_erase, events_record
from contacts.signals import contact_data_requested
from membership.models import Member, PointsEntry
from membership.services import member_get_or_create, points_apply
from segments.influence import influence_compute
from segments.models import Influence
from tests.factories import ContactFactory, TierFactory

pytestmark = pytest.mark.django_db


@pytest.fixture
def tiers():
    return [
        TierFactory(name="普通会员", code="basic", rank=1, min_growth=0),
        TierFactory(name="银卡会员", code="silver", rank=2, min_growth=500),
    ]


def _event(event_id, contact, name, *, value=None, **properties) -> EventInput:
    return EventInput(
        event_id=event_id,
        name=name,
        occurred_at=timezone.now() - dt.timedelta(minutes=1),
        contact_id=contact.pk,
        value=Decimal(value) if value is not None else None,
        properties=properties,
    )


def sections(contact_ids: list[int]) -> dict:
    merged: dict = {}
    for _receiver, answer in contact_data_requested.send(sender=Contact, contact_ids=contact_ids):
        merged.update(answer or {})
    return merged


def test_erasing_a_member_referred_by_another_keeps_the_others_points(tiers):
    referrer, person, invited = ContactFactory(), ContactFactory(), ContactFactory()
    events_record(
        items=[
            _event("r1", referrer, "purchase", value="120", order_id="r1"),
            # The person came through the referrer's invitation and bought through it ...
            _event("ref-1", person, "referral_accepted", referrer_contact_id=referrer.pk),
            _event(
                "p1",
                person,
                "purchase",
                value="600",
                order_id="p1",
                referrer_contact_id=referrer.pk,
            ),
            # ... and invited someone in turn.
            _event("ref-2", invited, "referral_accepted", referrer_contact_id=person.pk),
            _event(
                "i1", invited, "purchase", value="80", order_id="i1", referrer_contact_id=person.pk
            ),
        ]
    )
    points_apply(
        member=Member.objects.get(contact=person),
        delta=-100,
        reason=PointsEntry.Reason.REDEMPTION,
        idempotency_key="redeem-1",
    )
    influence_compute()
    assert Influence.objects.filter(contact=person).exists()
    others = {
        m.contact_id: (m.points_balance, m.growth_value, m.tier_id)
        for m in Member.objects.exclude(contact=person)
    }
    other_entries = list(
        PointsEntry.objects.exclude(member__contact=person).values_list(
            "pk", "delta", "balance_after", "source_event_id"
        )
    )

    erasure = contact_erase(contact=person, source="operator")

    assert not Member.objects.filter(contact_id=person.pk).exists()
    assert erasure.summary["membership.member"] == 1
    assert erasure.summary["membership.pointsentry"] == 2
    assert {
        m.contact_id: (m.points_balance, m.growth_value, m.tier_id) for m in Member.objects.all()
    } == others
    assert (
        list(PointsEntry.objects.values_list("pk", "delta", "balance_after", "source_event_id"))
        == other_entries
    )
    # The ranking that reads referrals runs on without the person, and credits nobody gone.
    influence_compute()
    assert set(Influence.objects.values_list("contact_id", flat=True)) <= {
        referrer.pk,
        invited.pk,
    }


def test_erasing_a_merged_member_deletes_every_card_of_the_person(tiers):
    from contacts.services import contact_merge

    person, duplicate = ContactFactory(), ContactFactory()
    member_get_or_create(contact=duplicate)
    contact_merge(survivor=person, duplicate=duplicate)
    assert Member.objects.filter(contact=person).exists()

    erasure = contact_erase(contact=duplicate, source="api")

    assert not Member.objects.exists()
    assert erasure.summary["membership.member"] == 1


def test_the_copy_of_a_members_data_holds_the_card_and_the_ledger(tiers):
    person = ContactFactory()
    events_record(items=[_event("o1", person, "purchase", value="550.50", order_id="o1")])
    member = Member.objects.get(contact=person)

    data = sections([person.pk])

    assert data["membership.members"] == [
        {
            "contact_id": person.pk,
            "tier": "银卡会员",
            "points_balance": 550,
            "growth_value": 550,
            "member_since": member.joined_at.isoformat(),
        }
    ]
    [entry] = data["membership.points_entries"]
    assert entry["points"] == 550
    assert entry["balance_after"] == 550
    assert entry["reason"] == "purchase"
    assert entry["note"] == "o1"
    assert entry["event_id"] == "o1"


def test_someone_who_never_joined_has_empty_membership_sections(tiers):
    assert sections([ContactFactory().pk])["membership.members"] == []
