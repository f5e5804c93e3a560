import pytest
from django.urls import reverse

from contacts import roles
from membership.models import Member
from tests.factories import ContactFactory, StoreFactory, TierFactory, UserFactory, user_with_role

pytestmark = pytest.mark.django_db

HX = {"HTTP_HX_REQUEST": "true"}


@pytest.fixture(autouse=True)
def _roles(db):
    roles.roles_sync()


@pytest.fixture
def two_stores():
    """A clerk of the 静安 store, and members in their store, of their own and elsewhere."""
    jingan, xuhui = StoreFactory(name="静安店"), StoreFactory(name="徐汇店")
    clerk = user_with_role("store_staff", store=jingan)
    tier = TierFactory(name="金卡")
    for name, kwargs in (
        ("静安会员", {"store": jingan}),
        ("自己的会员", {"owner": clerk}),
        ("徐汇会员", {"store": xuhui}),
        ("无店会员", {}),
    ):
        Member.objects.create(contact=ContactFactory(name=name, **kwargs), tier=tier)
    return clerk


def test_store_staff_see_only_the_members_of_their_store_and_their_own(client, two_stores):
    client.force_login(two_stores)

    page = client.get(reverse("membership:index")).content.decode()
    fragment = client.get(reverse("membership:index"), **HX).content.decode()

    for html in (page, fragment):
        assert "静安会员" in html and "自己的会员" in html
        assert "徐汇会员" not in html and "无店会员" not in html


def test_tier_counts_count_only_the_members_the_user_may_see(client, two_stores):
    client.force_login(two_stores)
    tiers = client.get(reverse("membership:index")).context["tiers"]
    assert [(t.name, t.member_count) for t in tiers if t.name == "金卡"] == [("金卡", 2)]

    client.force_login(user_with_role("operator"))
    tiers = client.get(reverse("membership:index")).context["tiers"]
    assert [(t.name, t.member_count) for t in tiers if t.name == "金卡"] == [("金卡", 4)]


def test_store_staff_cannot_open_the_card_of_another_stores_member(client, two_stores):
    elsewhere = Member.objects.get(contact__name="徐汇会员").contact
    client.force_login(two_stores)

    response = client.get(reverse("membership:contact_card", args=[elsewhere.pk]), **HX)

    assert response.status_code == 404


@pytest.mark.parametrize("role", ["analyst", "operator"])
def test_analysts_and_operators_see_every_member(client, two_stores, role):
    client.force_login(user_with_role(role))

    page = client.get(reverse("membership:index")).content.decode()

    assert all(name in page for name in ("静安会员", "自己的会员", "徐汇会员", "无店会员"))


def test_a_member_merged_away_is_not_listed(operator_client):
    tier = TierFactory()
    survivor = ContactFactory(name="留下的客户")
    Member.objects.create(
        contact=ContactFactory(name="并走的客户", merged_into=survivor), tier=tier
    )

    page = operator_client.get(reverse("membership:index")).content.decode()

    assert "并走的客户" not in page


def test_membership_pages_need_the_view_member_permission(client):
    contact = ContactFactory(name="某客户")
    Member.objects.create(contact=contact, tier=TierFactory())
    # Logged in but in no role: not even the contacts they own open the membership pages.
    nobody = UserFactory(username="nobody", is_staff=False, is_superuser=False)
    contact.owner = nobody
    contact.save()
    client.force_login(nobody)

    assert client.get(reverse("membership:index")).status_code == 403
    assert client.get(reverse("membership:contact_card", args=[contact.pk])).status_code == 403
