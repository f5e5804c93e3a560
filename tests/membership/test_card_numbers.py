"""The membership card on the contact 360 page groups its numbers by thousands, as the rest of
the UI does (humanize's intcomma), in Chinese as well as in English."""

import pytest
from django.urls import reverse

from membership.models import Member, PointsEntry
from tests.factories import ContactFactory, TierFactory

pytestmark = pytest.mark.django_db

HX = {"HTTP_HX_REQUEST": "true"}
LANGUAGES = ["zh-hans", "en"]


def _member(**kwargs) -> Member:
    return Member.objects.create(contact=ContactFactory(), tier=TierFactory(name="金卡"), **kwargs)


def _entry(member: Member, *, delta: int, balance_after: int, key: str) -> PointsEntry:
    return PointsEntry.objects.create(
        member=member,
        delta=delta,
        balance_after=balance_after,
        reason=PointsEntry.Reason.PURCHASE,
        idempotency_key=key,
    )


@pytest.mark.parametrize("language", LANGUAGES)
def test_points_and_growth_value_have_thousands_separators(operator_client, language):
    member = _member(points_balance=12345, growth_value=1234567)
    url = reverse("membership:contact_card", args=[member.contact_id])

    fragment = operator_client.get(url, HTTP_ACCEPT_LANGUAGE=language, **HX).content.decode()
    page = operator_client.get(url, HTTP_ACCEPT_LANGUAGE=language).content.decode()

    for html in (fragment, page):
        assert '<span class="mini-value">12,345</span>' in html
        assert '<span class="mini-value">1,234,567</span>' in html
        assert "12345" not in html and "1234567" not in html
    assert fragment.lstrip().startswith('<section id="member-card"')
    assert f'<html lang="{language}">' in page


@pytest.mark.parametrize("language", LANGUAGES)
def test_recent_points_are_grouped_with_their_sign(operator_client, language):
    member = _member(points_balance=10345)
    _entry(member, delta=12345, balance_after=12345, key="test:earn")
    _entry(member, delta=-2000, balance_after=10345, key="test:spend")
    url = reverse("membership:contact_card", args=[member.contact_id])

    html = operator_client.get(url, HTTP_ACCEPT_LANGUAGE=language, **HX).content.decode()

    assert '<span class="pos mono">+12,345</span>' in html
    assert '<span class="neg mono">-2,000</span>' in html


def test_small_numbers_are_left_alone(operator_client):
    member = _member(points_balance=320, growth_value=0)
    url = reverse("membership:contact_card", args=[member.contact_id])

    html = operator_client.get(url, **HX).content.decode()

    assert '<span class="mini-value">320</span>' in html
    assert '<span class="mini-value">0</span>' in html


@pytest.mark.parametrize("language", LANGUAGES)
def test_the_card_and_the_member_list_show_a_balance_alike(operator_client, language):
    member = _member(points_balance=98765, growth_value=4321)

    card = operator_client.get(
        reverse("membership:contact_card", args=[member.contact_id]),
        HTTP_ACCEPT_LANGUAGE=language,
        **HX,
    ).content.decode()
    listing = operator_client.get(
        reverse("membership:index"), HTTP_ACCEPT_LANGUAGE=language
    ).content.decode()

    for html in (card, listing):
        assert "98,765" in html and "4,321" in html
