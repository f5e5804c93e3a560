import datetime as dt

import pytest
from django.utils import timezone

from channels.models import Delivery, DeliveryStatus
from channels.services import deliveries_dispatch_due
from contacts.services import contact_tag_add
from core.errors import ValidationFailed
from journeys.models import Enrollment, EnrollmentStatus, JourneyStatus
from journeys.services import enrollment_create, enrollments_advance_due, journey_activate
from segments.services import segment_create
from tests.factories import (
    ChannelFactory,
    ContactFactory,
    JourneyFactory,
    JourneyStepFactory,
    TagFactory,
)

pytestmark = pytest.mark.django_db


@pytest.fixture
def vip_journey():
    tag = TagFactory(name="高价值")
    segment = segment_create(
        name="VIP",
        rule={"op": "and", "conditions": [{"type": "tag", "match": "any", "tags": [tag.pk]}]},
    )
    journey = JourneyFactory(name="VIP 关怀", trigger_segment=segment)
    channel = ChannelFactory()
    JourneyStepFactory(journey=journey, position=0, kind="wait", wait_seconds=60)
    JourneyStepFactory(
        journey=journey, position=1, kind="send", channel=channel, title="专属关怀", body="感谢"
    )
    journey_activate(journey=journey)
    return journey, tag


def _advance_clock(enrollment_qs, seconds):
    for e in enrollment_qs:
        Enrollment.objects.filter(pk=e.pk).update(
            next_run_at=e.next_run_at - dt.timedelta(seconds=seconds)
        )


def test_entering_the_segment_enrolls_then_the_wait_then_the_send(
    vip_journey, django_capture_on_commit_callbacks
):
    journey, tag = vip_journey
    contact = ContactFactory()
    with django_capture_on_commit_callbacks(execute=True):
        contact_tag_add(contact=contact, tag=tag)
    enrollment = Enrollment.objects.get(journey=journey, contact=contact)
    assert enrollment.status == EnrollmentStatus.ACTIVE

    # First tick runs the wait step: nothing is planned yet.
    assert enrollments_advance_due() == (1, 0)
    enrollment.refresh_from_db()
    assert enrollment.next_run_at > timezone.now() + dt.timedelta(seconds=50)
    assert enrollments_advance_due() == (0, 0)
    assert not Delivery.objects.exists()

    _advance_clock(Enrollment.objects.filter(pk=enrollment.pk), 61)
    with django_capture_on_commit_callbacks(execute=True):
        assert enrollments_advance_due() == (1, 1)
    enrollment.refresh_from_db()
    assert enrollment.status == EnrollmentStatus.COMPLETED
    # The wake-up ran the dispatcher eagerly in tests; the message went out once.
    delivery = Delivery.objects.get()
    assert delivery.status == DeliveryStatus.SENT
    assert deliveries_dispatch_due() == 0
    timeline = list(contact.events.order_by("pk").values_list("name", flat=True))
    assert timeline == ["tag_added", "segment_entered", "journey_enrolled", "message_sent"]


def test_a_contact_is_not_enrolled_twice_without_reentry(vip_journey):
    journey, _ = vip_journey
    contact = ContactFactory()
    assert enrollment_create(journey=journey, contact_id=contact.pk)
    assert enrollment_create(journey=journey, contact_id=contact.pk) is None
    Enrollment.objects.update(status=EnrollmentStatus.COMPLETED)
    assert enrollment_create(journey=journey, contact_id=contact.pk) is None
    journey.allow_reentry = True
    journey.save()
    again = enrollment_create(journey=journey, contact_id=contact.pk)
    assert again.occurrence == 2


def test_paused_journeys_do_not_advance(vip_journey, django_capture_on_commit_callbacks):
    journey, tag = vip_journey
    with django_capture_on_commit_callbacks(execute=True):
        contact_tag_add(contact=ContactFactory(), tag=tag)
    journey.status = JourneyStatus.PAUSED
    journey.save()
    assert enrollments_advance_due() == (0, 0)


def test_journey_without_steps_cannot_go_live():
    journey = JourneyFactory()
    with pytest.raises(ValidationFailed):
        journey_activate(journey=journey)
    journey.refresh_from_db()
    assert journey.status == JourneyStatus.DRAFT


def test_a_large_segment_entry_enrolls_everyone_in_batches(vip_journey):
    from contacts.models import Contact, ContactTag, Event
    from segments.services import segment_refresh

    journey, tag = vip_journey
    n = 4500  # more than two insert batches
    Contact.objects.bulk_create([Contact(name=f"c{i}") for i in range(n)])
    ids = list(Contact.objects.values_list("pk", flat=True))
    ContactTag.objects.bulk_create([ContactTag(contact_id=i, tag=tag) for i in ids])
    assert segment_refresh(segment=journey.trigger_segment) == (n, 0)
    assert Enrollment.objects.filter(journey=journey).count() == n
    assert Event.objects.filter(name="segment_entered").count() == n
    assert Event.objects.filter(name="journey_enrolled").count() == n
    # A second refresh changes nothing and enrolls nobody again.
    assert segment_refresh(segment=journey.trigger_segment) == (0, 0)
    assert Enrollment.objects.filter(journey=journey).count() == n
