import pytest
from django.urls import reverse

from membership.models import Member, PointsEntry
from tests.factories import ContactFactory, TierFactory

pytestmark = pytest.mark.django_db

HX = {"HTTP_HX_REQUEST": "true"}


def test_anonymous_users_are_sent_to_login(client):
    contact = ContactFactory()
    for url in (
        reverse("membership:index"),
        reverse("membership:contact_card", args=[contact.pk]),
    ):
        response = client.get(url)
        assert response.status_code == 302
        assert response["Location"].startswith(reverse("login"))


def test_index_shows_tiers_and_members(operator_client):
    silver, gold = TierFactory(name="银卡"), TierFactory(name="金卡")
    Member.objects.create(contact=ContactFactory(name="银卡客户"), tier=silver)
    Member.objects.create(contact=ContactFactory(name="金卡客户"), tier=gold, points_balance=1200)

    page = operator_client.get(reverse("membership:index")).content.decode()

    assert "<html" in page
    assert "银卡" in page and "金卡" in page
    assert "银卡客户" in page and "金卡客户" in page and "1,200" in page


def test_member_table_filters_by_tier(operator_client):
    silver, gold = TierFactory(name="银卡"), TierFactory(name="金卡")
    Member.objects.create(contact=ContactFactory(name="银卡客户"), tier=silver)
    Member.objects.create(contact=ContactFactory(name="金卡客户"), tier=gold)

    response = operator_client.get(reverse("membership:index"), {"tier": gold.pk}, **HX)

    fragment = response.content.decode()
    assert fragment.lstrip().startswith('<section id="member-table"')
    assert "金卡客户" in fragment and "银卡客户" not in fragment


def test_contact_card_for_a_member(operator_client):
    contact = ContactFactory()
    member = Member.objects.create(
        contact=contact, tier=TierFactory(name="金卡"), points_balance=320, growth_value=800
    )
    PointsEntry.objects.create(
        member=member,
        delta=320,
        balance_after=320,
        reason=PointsEntry.Reason.PURCHASE,
        idempotency_key="test:1",
    )
    url = reverse("membership:contact_card", args=[contact.pk])

    fragment = operator_client.get(url, **HX).content.decode()
    page = operator_client.get(url).content.decode()

    assert fragment.lstrip().startswith('<section id="member-card"')
    assert "金卡" in fragment and "320" in fragment and "800" in fragment and "+320" in fragment
    assert "<html" not in fragment
    assert "<html" in page and "金卡" in page


def test_contact_card_for_a_non_member(operator_client):
    contact = ContactFactory()

    response = operator_client.get(reverse("membership:contact_card", args=[contact.pk]), **HX)

    assert response.status_code == 200
    assert 'id="member-card"' in response.content.decode()
    assert "points_balance" not in response.content.decode()


def test_contact_card_404_for_unknown_contact(operator_client):
    url = reverse("membership:contact_card", args=[999999])
    assert operator_client.get(url, **HX).status_code == 404
