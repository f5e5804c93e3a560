import pytest
from django.urls import reverse

from journeys.models import Enrollment, EnrollmentStatus, JourneyStatus, StepKind
from tests.factories import ChannelFactory, ContactFactory, JourneyFactory, JourneyStepFactory

pytestmark = pytest.mark.django_db

HX = {"HTTP_HX_REQUEST": "true"}


def test_anonymous_users_are_sent_to_login(client):
    journey = JourneyFactory()
    for url in (reverse("journeys:list"), reverse("journeys:detail", args=[journey.pk])):
        response = client.get(url)
        assert response.status_code == 302
        assert response["Location"].startswith(reverse("login"))


def test_list_shows_status_trigger_and_counts(operator_client):
    journey = JourneyFactory(name="新客欢迎", status=JourneyStatus.LIVE)
    for _ in range(2):
        Enrollment.objects.create(journey=journey, contact=ContactFactory())
    Enrollment.objects.create(
        journey=journey, contact=ContactFactory(), status=EnrollmentStatus.COMPLETED
    )

    page = operator_client.get(reverse("journeys:list")).content.decode()
    fragment = operator_client.get(reverse("journeys:list"), **HX).content.decode()

    assert "<html" in page and "新客欢迎" in page and journey.trigger_segment.name in page
    assert '<td class="num">2</td>' in page and '<td class="num">1</td>' in page
    assert fragment.lstrip().startswith('<section id="journey-table"')
    assert "新客欢迎" in fragment and "<html" not in fragment


def test_detail_shows_steps_and_enrollments(operator_client):
    channel = ChannelFactory(name="短信")
    journey = JourneyFactory()
    JourneyStepFactory(journey=journey, position=0, kind=StepKind.WAIT, wait_seconds=2 * 86400)
    JourneyStepFactory(
        journey=journey, position=1, kind=StepKind.SEND, channel=channel, title="专属关怀"
    )
    contact = ContactFactory(name="林小雨")
    Enrollment.objects.create(journey=journey, contact=contact)
    url = reverse("journeys:detail", args=[journey.pk])

    page = operator_client.get(url).content.decode()
    fragment = operator_client.get(url, **HX).content.decode()

    assert "专属关怀" in page and "短信" in page and "林小雨" in page
    assert reverse("journeys:activate", args=[journey.pk]) in page
    assert fragment.lstrip().startswith('<section id="journey-enrollments"')
    assert "林小雨" in fragment and "专属关怀" not in fragment


def test_activate_without_steps_shows_an_error(operator_client):
    journey = JourneyFactory()

    response = operator_client.post(reverse("journeys:activate", args=[journey.pk]), follow=True)

    journey.refresh_from_db()
    assert journey.status == JourneyStatus.DRAFT
    page = response.content.decode()
    assert "toast-error" in page
    assert "至少" in page or "at least one step" in page


def test_activate_and_pause(operator_client):
    journey = JourneyFactory()
    JourneyStepFactory(journey=journey, kind=StepKind.SEND, channel=ChannelFactory())

    response = operator_client.post(reverse("journeys:activate", args=[journey.pk]))
    assert response.status_code == 302
    journey.refresh_from_db()
    assert journey.status == JourneyStatus.LIVE
    assert (
        reverse("journeys:pause", args=[journey.pk])
        in operator_client.get(response["Location"]).content.decode()
    )

    operator_client.post(reverse("journeys:pause", args=[journey.pk]))
    journey.refresh_from_db()
    assert journey.status == JourneyStatus.PAUSED


def test_activate_with_an_inactive_channel_shows_an_error(operator_client):
    journey = JourneyFactory()
    JourneyStepFactory(journey=journey, kind=StepKind.SEND, channel=ChannelFactory(is_active=False))

    response = operator_client.post(reverse("journeys:activate", args=[journey.pk]), follow=True)

    journey.refresh_from_db()
    assert journey.status == JourneyStatus.DRAFT
    assert "toast-error" in response.content.decode()


def test_activate_with_an_archived_trigger_segment_shows_an_error(operator_client):
    from segments.models import Segment

    journey = JourneyFactory()
    JourneyStepFactory(journey=journey, kind=StepKind.SEND, channel=ChannelFactory())
    Segment.objects.filter(pk=journey.trigger_segment_id).update(is_archived=True)
    operator_client.cookies["django_language"] = "en"

    response = operator_client.post(reverse("journeys:activate", args=[journey.pk]), follow=True)

    journey.refresh_from_db()
    assert journey.status == JourneyStatus.DRAFT
    page = response.content.decode()
    assert "toast-error" in page and "is archived; restore it first" in page


def test_state_changes_need_post(operator_client):
    journey = JourneyFactory()
    assert operator_client.get(reverse("journeys:activate", args=[journey.pk])).status_code == 405
    assert operator_client.get(reverse("journeys:pause", args=[journey.pk])).status_code == 405


def test_contact_enrollments_panel(operator_client):
    journey = JourneyFactory(name="复购提醒")
    contact = ContactFactory()
    Enrollment.objects.create(journey=journey, contact=contact)
    url = reverse("journeys:contact_enrollments", args=[contact.pk])

    fragment = operator_client.get(url, **HX).content.decode()
    page = operator_client.get(url).content.decode()

    assert fragment.lstrip().startswith('<section id="contact-enrollments"')
    assert "复购提醒" in fragment
    assert "<html" in page and "复购提醒" in page
