"""Erasing a person ends their journeys (their enrollments go) and leaves everyone else's
running; their copy of their data lists the journeys they were in."""

import datetime as dt

import pytest
from django.utils import timezone

from channels.models import Delivery
from contacts.models import Contact
from contacts.services import contact_erase
from contacts.signals import contact_data_requested
from journeys.models import Enrollment, EnrollmentStatus
from journeys.selectors import journey_list
from journeys.services import enrollment_create, enrollments_advance_due, journey_activate
from tests.factories import ChannelFactory, ContactFactory, JourneyFactory, JourneyStepFactory

pytestmark = pytest.mark.django_db


def live_journey(name: str = "新客欢迎"):
    """A wait, then a message."""
    journey = JourneyFactory(name=name)
    JourneyStepFactory(journey=journey, position=0, kind="wait", wait_seconds=60)
    JourneyStepFactory(
        journey=journey, position=1, kind="send", channel=ChannelFactory(), title="欢迎", body="hi"
    )
    return journey_activate(journey=journey)


def make_due() -> None:
    Enrollment.objects.update(next_run_at=timezone.now() - dt.timedelta(seconds=1))


def sections(contact_ids: list[int]) -> dict:
    merged: dict = {}
    for _receiver, answer in contact_data_requested.send(sender=Contact, contact_ids=contact_ids):
        merged.update(answer or {})
    return merged


def test_erasure_deletes_the_persons_enrollments_and_the_others_run_on():
    journey = live_journey()
    person, other = ContactFactory(), ContactFactory()
    for contact in (person, other):
        enrollment_create(journey=journey, contact_id=contact.pk)
    enrollments_advance_due()  # both now wait
    assert Enrollment.objects.filter(status=EnrollmentStatus.ACTIVE).count() == 2

    erasure = contact_erase(contact=person, source="operator")

    assert erasure.summary["journeys.enrollment"] == 1
    assert list(Enrollment.objects.values_list("contact_id", flat=True)) == [other.pk]
    counted = journey_list().get(pk=journey.pk)
    assert counted.active_count == 1
    make_due()
    assert enrollments_advance_due() == (1, 1)
    assert list(Delivery.objects.values_list("contact_id", flat=True)) == [other.pk]


def test_the_copy_of_a_persons_data_lists_their_enrollments():
    first, second = live_journey("新客欢迎"), live_journey("生日关怀")
    person = ContactFactory()
    enrollment_create(journey=first, contact_id=person.pk)
    enrollments_advance_due()
    make_due()
    enrollments_advance_due()  # the first is over: both steps ran
    enrollment_create(journey=second, contact_id=person.pk)

    rows = sections([person.pk])["journeys.enrollments"]

    by_journey = {row["journey"]: row for row in rows}
    assert set(by_journey) == {"新客欢迎", "生日关怀"}
    done = Enrollment.objects.get(journey=first)
    assert by_journey["新客欢迎"] == {
        "contact_id": person.pk,
        "journey": "新客欢迎",
        "occurrence": 1,
        "status": "completed",
        "enrolled_at": done.enrolled_at.isoformat(),
        "next_run_at": None,
        "finished_at": done.finished_at.isoformat(),
    }
    assert by_journey["生日关怀"]["status"] == "active"
