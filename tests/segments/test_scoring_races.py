"""Lead scoring against concurrent edits, with real transactions on PostgreSQL: a threshold
applied while an operator moves the stage never pulls the contact back."""

import threading

import pytest
from django.db import connection, transaction

from contacts.models import Contact, Event
from contacts.services import contact_update
from segments import scoring
from segments.models import LeadScoreAward
from tests.contacts.locking import in_threads, wait_until_another_backend_waits
from tests.factories import ContactFactory
from tests.segments.scoring_data import NOW, event_at, event_rule, half_life

pytestmark = [
    pytest.mark.django_db(transaction=True),
    pytest.mark.skipif(connection.vendor != "postgresql", reason="concurrent writers"),
]


def test_a_threshold_never_overwrites_a_stage_an_operator_set_meanwhile():
    half_life(0)
    rule = event_rule(points=100)
    scoring.threshold_set(stage_key="interested", min_score=60)
    contact = ContactFactory()
    LeadScoreAward.objects.create(
        contact=contact, rule=rule, event=event_at(contact), points=100, awarded_at=NOW
    )
    operator_holds_the_row = threading.Event()
    recompute_waits = threading.Event()

    def operator():
        with transaction.atomic():
            contact_update(contact=Contact(pk=contact.pk), data={"lifecycle_stage": "repeat"})
            operator_holds_the_row.set()
            # Commit only once the recompute, having read the old stage, waits for the row.
            recompute_waits.wait(timeout=10)

    def recompute():
        operator_holds_the_row.wait(timeout=10)
        return scoring.lead_scores_recompute_contacts(contact_ids=[contact.pk], now=NOW)

    def watch():
        with connection.cursor() as cursor:
            if wait_until_another_backend_waits(cursor):
                recompute_waits.set()

    _, errors = in_threads([operator, recompute, watch])

    assert not errors
    assert recompute_waits.is_set()  # the two really met
    assert Contact.objects.get(pk=contact.pk).lifecycle_stage_id == "repeat"
    assert not Event.objects.filter(contact=contact, name=scoring.STAGE_CHANGED_EVENT).exists()
