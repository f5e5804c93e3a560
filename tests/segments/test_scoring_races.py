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


def test_a_threshold_never_overwrites_a_stage_an_operator_set_meanwhile(monkeypatch):
    """The recompute stores scores batch by batch and applies thresholds after the last one:
    the stage it read then can be changed by the time it writes."""
    monkeypatch.setattr(scoring, "RECOMPUTE_BATCH", 1)
    half_life(0)
    rule = event_rule(points=100)
    scoring.threshold_set(stage_key="interested", min_score=60)
    scored, other = ContactFactory(), ContactFactory()  # scored first: its batch commits first
    LeadScoreAward.objects.create(
        contact=scored, rule=rule, event=event_at(scored), points=100, awarded_at=NOW
    )
    other_locked, other_released = threading.Event(), threading.Event()
    release_other = threading.Event()
    met = threading.Event()

    def hold_other():
        # Keeps the recompute waiting at its second batch, after the first one committed.
        with transaction.atomic():
            list(Contact.objects.select_for_update().filter(pk=other.pk))
            other_locked.set()
            release_other.wait(timeout=10)
        other_released.set()

    def recompute():
        other_locked.wait(timeout=10)
        scoring.lead_scores_recompute_contacts(contact_ids=[scored.pk, other.pk], now=NOW)

    def operator():
        with connection.cursor() as cursor:
            assert wait_until_another_backend_waits(cursor)  # the recompute, at `other`
            with transaction.atomic():
                contact_update(contact=Contact(pk=scored.pk), data={"lifecycle_stage": "repeat"})
                release_other.set()
                other_released.wait(timeout=10)
                # Commit once the recompute, past its batches, waits for this row.
                if wait_until_another_backend_waits(cursor):
                    met.set()

    _, errors = in_threads([hold_other, recompute, operator])

    assert not errors
    assert met.is_set()
    assert Contact.objects.get(pk=scored.pk).lifecycle_stage_id == "repeat"
    assert not Event.objects.filter(contact=scored, name=scoring.STAGE_CHANGED_EVENT).exists()
