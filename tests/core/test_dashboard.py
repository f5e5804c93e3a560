import json

import pytest
from django.urls import reverse

from membership.models import Member
from tests.factories import ContactFactory, TierFactory

pytestmark = pytest.mark.django_db


def test_anonymous_users_are_sent_to_login(client):
    response = client.get(reverse("dashboard"))
    assert response.status_code == 302
    assert response["Location"].startswith(reverse("login"))


def test_login_page_renders(client):
    response = client.get(reverse("login"))
    page = response.content.decode()
    assert response.status_code == 200
    assert 'name="username"' in page and 'name="password"' in page
    assert reverse("set_language") in page


def test_dashboard_shows_stats_tiers_and_chart_data(operator_client):
    ContactFactory.create_batch(3)
    gold = TierFactory(name="金卡")
    Member.objects.create(contact=ContactFactory(), tier=gold)

    response = operator_client.get(reverse("dashboard"))

    page = response.content.decode()
    assert response.status_code == 200
    assert '<span class="stat-value">4</span>' in page
    assert "金卡" in page
    # The chart reads its data from json_script, never from inline JavaScript.
    start = page.index('<script id="chart-new-contacts" type="application/json">')
    raw = page[start:].split(">", 1)[1].split("</script>", 1)[0]
    chart = json.loads(raw)
    assert len(chart["days"]) == 30 and chart["counts"][-1] == 4
    assert 'data-chart-source="chart-new-contacts"' in page
    assert "vendor/echarts/echarts.min.js" in page and "vendor/htmx/htmx.min.js" in page


def test_layout_has_navigation_csrf_header_logout_and_language_switch(operator_client):
    page = operator_client.get(reverse("dashboard")).content.decode()

    for name in (
        "contacts:list",
        "segments:list",
        "journeys:list",
        "membership:index",
        "channels:list",
        "admin:index",
        "api-docs",
    ):
        assert f'href="{reverse(name)}"' in page
    assert 'hx-headers=\'{"X-CSRFToken": "' in page
    assert f'action="{reverse("logout")}" method="post"' in page
    assert f'action="{reverse("set_language")}" method="post"' in page
    assert 'id="toasts"' in page
    assert "<script>" not in page  # no inline JavaScript


def test_logout_is_a_post(operator_client):
    response = operator_client.post(reverse("logout"))
    assert response.status_code == 302
    assert operator_client.get(reverse("dashboard")).status_code == 302


def test_switching_to_english(operator_client):
    response = operator_client.post(
        reverse("set_language"), {"language": "en", "next": reverse("dashboard")}, follow=True
    )
    page = response.content.decode()
    assert '<html lang="en">' in page
    assert "Dashboard" in page and "Total contacts" in page


def test_store_staff_dashboard_counts_only_the_customers_they_may_see(client):
    # Store staff see their own store's customers; the dashboard's totals, tier counts, chart
    # and messages sent must not reveal the size of the others' pools either.
    from django.utils import timezone

    from channels.models import Delivery, DeliveryStatus
    from contacts import roles
    from contacts.roles import roles_sync
    from tests.factories import ChannelFactory, StoreFactory, user_with_role

    roles_sync()
    mine, other = StoreFactory(), StoreFactory()
    ours = ContactFactory.create_batch(2, store=mine)
    ContactFactory.create_batch(5, store=other)
    gold = TierFactory(name="金卡")
    Member.objects.create(contact=ours[0], tier=gold)
    Member.objects.create(contact=ContactFactory(store=other), tier=gold)
    channel = ChannelFactory()
    for n, contact in enumerate((ours[0], ContactFactory(store=other))):
        Delivery.objects.create(
            channel=channel,
            contact=contact,
            status=DeliveryStatus.SENT,
            sent_at=timezone.now(),
            idempotency_key=f"dashboard-{n}",
        )
    client.force_login(user_with_role(roles.STORE_STAFF, store=mine))

    response = client.get(reverse("dashboard"))

    page = response.content.decode()
    assert response.context["stats"] == {"total": 2, "new_this_week": 2}
    assert response.context["sent_today"] == 1
    assert [t.member_count for t in response.context["tiers"] if t.pk == gold.pk] == [1]
    assert sum(response.context["chart"]["counts"]) == 2
    assert '<span class="stat-value">2</span>' in page
