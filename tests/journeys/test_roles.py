import pytest
from django.urls import reverse

from contacts import roles
from journeys.models import Enrollment, JourneyStatus, StepKind
from tests.factories import (
    ChannelFactory,
    ContactFactory,
    JourneyFactory,
    JourneyStepFactory,
    StoreFactory,
    user_with_role,
)

pytestmark = pytest.mark.django_db

HX = {"HTTP_HX_REQUEST": "true"}


@pytest.fixture(autouse=True)
def _roles(db):
    roles.roles_sync()


def _ready_journey(**kwargs):
    journey = JourneyFactory(**kwargs)
    JourneyStepFactory(journey=journey, kind=StepKind.SEND, channel=ChannelFactory())
    return journey


def test_store_staff_see_only_enrollments_of_their_stores_and_their_own_contacts(client):
    jingan, xuhui = StoreFactory(name="静安店"), StoreFactory(name="徐汇店")
    clerk = user_with_role("store_staff", store=jingan)
    journey = JourneyFactory()
    for name, kwargs in (
        ("静安客户", {"store": jingan}),
        ("自己的客户", {"owner": clerk}),
        ("徐汇客户", {"store": xuhui}),
        ("无店客户", {}),
    ):
        Enrollment.objects.create(journey=journey, contact=ContactFactory(name=name, **kwargs))
    client.force_login(clerk)
    url = reverse("journeys:detail", args=[journey.pk])

    page = client.get(url).content.decode()
    fragment = client.get(url, **HX).content.decode()

    for html in (page, fragment):
        assert "静安客户" in html and "自己的客户" in html
        assert "徐汇客户" not in html and "无店客户" not in html


@pytest.mark.parametrize(
    ("action", "status"),
    [("activate", JourneyStatus.DRAFT), ("pause", JourneyStatus.LIVE)],
)
@pytest.mark.parametrize("role", ["analyst", "store_staff"])
def test_read_only_roles_cannot_activate_or_pause_a_journey(client, role, action, status):
    journey = _ready_journey(status=status)
    client.force_login(user_with_role(role))

    response = client.post(reverse(f"journeys:{action}", args=[journey.pk]))

    assert response.status_code == 403
    journey.refresh_from_db()
    assert journey.status == status


def test_an_operator_still_activates_and_pauses(client):
    journey = _ready_journey()
    client.force_login(user_with_role("operator"))

    assert client.post(reverse("journeys:activate", args=[journey.pk])).status_code == 302
    journey.refresh_from_db()
    assert journey.status == JourneyStatus.LIVE

    assert client.post(reverse("journeys:pause", args=[journey.pk])).status_code == 302
    journey.refresh_from_db()
    assert journey.status == JourneyStatus.PAUSED


def test_analysts_still_read_journeys(client):
    journey = _ready_journey(name="新客欢迎")
    Enrollment.objects.create(journey=journey, contact=ContactFactory(name="林小雨"))
    client.force_login(user_with_role("analyst"))

    assert "新客欢迎" in client.get(reverse("journeys:list")).content.decode()
    assert "林小雨" in client.get(reverse("journeys:detail", args=[journey.pk])).content.decode()


@pytest.mark.parametrize("role", ["store_staff", "analyst", "operator"])
def test_links_into_the_admin_are_offered_only_to_staff_who_may_change_journeys(client, role):
    # The admin turns away users without staff status: its links looked like a sign-out.
    journey = _ready_journey()
    client.force_login(user_with_role(role, store=StoreFactory()))

    listing = client.get(reverse("journeys:list")).content.decode()
    detail = client.get(reverse("journeys:detail", args=[journey.pk])).content.decode()

    assert "/admin/" not in listing and "/admin/" not in detail


def test_staff_operators_get_the_admin_links(client):
    journey = _ready_journey()
    operator = user_with_role("operator")
    operator.is_staff = True
    operator.save(update_fields=["is_staff"])
    client.force_login(operator)

    listing = client.get(reverse("journeys:list")).content.decode()
    detail = client.get(reverse("journeys:detail", args=[journey.pk])).content.decode()

    assert reverse("admin:journeys_journey_add") in listing
    assert reverse("admin:journeys_journey_change", args=[journey.pk]) in detail
