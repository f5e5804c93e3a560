"""The one real path through all five apps, with a real Celery worker and beat.

identify via the API → an operator tags the contact in the UI → the contact enters the segment →
the journey enrolls it → after the wait, the beat tick sends through the webhook adapter → the
message shows on the contact's timeline.
"""

import time

import pytest
from django.urls import reverse
from rest_framework.test import APIClient

from channels.models import Delivery, DeliveryStatus
from channels.services import channel_create
from contacts.models import Contact
from contacts.selectors import contact_timeline
from core.services import api_key_create
from journeys.models import Enrollment, EnrollmentStatus, JourneyStep
from journeys.services import journey_activate
from segments.models import SegmentMembership
from segments.services import segment_create
from tests.factories import JourneyFactory, TagFactory

pytestmark = [pytest.mark.e2e, pytest.mark.django_db(transaction=True)]

WAIT_SECONDS = 3


def wait_for(predicate, *, timeout: float, what: str, processes) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.3)
    pytest.fail(f"timed out waiting for {what}\n{processes.logs()[-6000:]}")


def test_identify_tag_segment_journey_webhook_timeline(
    processes, webhook_receiver, operator_client
):
    # The brand's set-up, as an operator would have done it.
    vip = TagFactory(name="高价值")
    segment = segment_create(
        name="VIP",
        rule={"op": "and", "conditions": [{"type": "tag", "match": "any", "tags": [vip.pk]}]},
    )
    hook = channel_create(
        name="brand webhook",
        kind="webhook",
        config={"url": webhook_receiver.url, "secret": webhook_receiver.secret},
    )
    journey = JourneyFactory(name="VIP 关怀", trigger_segment=segment)
    JourneyStep.objects.create(journey=journey, position=0, kind="wait", wait_seconds=WAIT_SECONDS)
    JourneyStep.objects.create(
        journey=journey,
        position=1,
        kind="send",
        channel=hook,
        title="专属关怀",
        body="本周到店有礼",
    )
    journey_activate(journey=journey)

    # Worker and beat, with the periodic ticks written by the deploy command.
    processes.run("manage.py", "setup_periodic_tasks")
    if not processes.env["CELERY_BROKER_URL"].startswith("filesystem"):
        processes.run("-m", "celery", "-A", "config", "purge", "-f", "-Q", "realtime,bulk,default")
    processes.start(
        "worker",
        "-m", "celery", "-A", "config", "worker", "-Q", "realtime,bulk,default",
        "--pool", "threads", "--concurrency", "2", "-l", "info", "--without-mingle",
        "--without-gossip",
    )  # fmt: skip
    processes.start(
        "beat", "-m", "celery", "-A", "config", "beat", "-l", "info",
        "--schedule", str(processes.tmp_path / "beat-schedule"),
    )  # fmt: skip

    # 1. A mini-program backend identifies the customer.
    _, raw = api_key_create(name="mini-program")
    api = APIClient()
    api.credentials(HTTP_AUTHORIZATION=f"Api-Key {raw}")
    response = api.post(
        "/api/v1/identify",
        {
            "identities": [{"kind": "miniprogram_openid", "app_id": "wxmini", "value": "o-42"}],
            "traits": {"name": "林小雨", "phone": "13800138000", "city": "上海"},
        },
        format="json",
    )
    assert response.status_code == 201, response.content
    contact = Contact.objects.get(pk=response.json()["contact_id"])

    # 2. An operator adds the tag in the UI.
    response = operator_client.post(reverse("contacts:tag_add", args=[contact.pk]), {"tag": vip.pk})
    assert response.status_code in (200, 302)

    # 3. The contact entered the segment and 4. the journey enrolled it.
    assert SegmentMembership.objects.filter(segment=segment, contact=contact).exists()
    enrollment = Enrollment.objects.get(journey=journey, contact=contact)
    tagged_at = time.monotonic()

    # 5. After the wait, beat's tick sends through the webhook adapter.
    wait_for(lambda: webhook_receiver.calls, timeout=60, what="the webhook", processes=processes)
    assert time.monotonic() - tagged_at >= WAIT_SECONDS - 1
    call = webhook_receiver.calls[0]
    assert webhook_receiver.signature_valid(call)
    assert call.json["message"]["title"] == "专属关怀"
    assert call.json["recipient"]["phone"] == "+8613800138000"

    wait_for(
        lambda: Delivery.objects.filter(status=DeliveryStatus.SENT).exists(),
        timeout=20,
        what="the delivery to be recorded as sent",
        processes=processes,
    )
    enrollment.refresh_from_db()
    assert enrollment.status == EnrollmentStatus.COMPLETED

    # 6. The message shows on the contact's timeline, in the data and on the 360 page.
    names = [e.name for e in contact_timeline(contact=contact)]
    assert "message_sent" in names
    page = operator_client.get(reverse("contacts:detail", args=[contact.pk])).content.decode()
    assert "专属关怀" in page

    # More ticks pass: nothing is sent twice.
    time.sleep(3)
    assert len(webhook_receiver.calls) == 1
    assert Delivery.objects.count() == 1
