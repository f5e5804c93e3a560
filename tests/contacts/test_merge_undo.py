"""Undoing a merge after the world moved on: consent changed, a store or an owner deleted."""

import pytest
from django.urls import reverse

from contacts.models import Consent, ConsentRecord, Contact, Event
from contacts.services import consent_record, contact_merge, contact_merge_undo
from core.models import AuditLog
from tests.factories import ContactFactory, StoreFactory, UserFactory

pytestmark = pytest.mark.django_db


def _states(contact: Contact) -> dict[tuple[str, str], tuple[bool, str]]:
    """The current consent per channel and purpose, with the source of the record behind it."""
    return {
        (c.channel, c.purpose): (c.granted, c.record.source)
        for c in Consent.objects.select_related("record").filter(contact=contact)
    }


def _states_follow_own_records(contact: Contact) -> bool:
    return all(c.record.contact_id == c.contact_id for c in Consent.objects.filter(contact=contact))


def _sms(contact: Contact, *, granted: bool, source: str) -> None:
    consent_record(
        contact=contact, channel="sms", purpose="marketing", granted=granted, source=source
    )


def test_a_withdrawal_made_after_the_merge_survives_its_undo():
    survivor, duplicate = ContactFactory(), ContactFactory()
    _sms(survivor, granted=True, source="form")
    _sms(duplicate, granted=True, source="store")
    record = contact_merge(survivor=survivor, duplicate=duplicate)
    _sms(survivor, granted=False, source="customer withdrew")

    contact_merge_undo(record=record)

    assert _states(survivor) == {("sms", "marketing"): (False, "customer withdrew")}
    assert _states(duplicate) == {("sms", "marketing"): (True, "store")}
    assert _states_follow_own_records(survivor) and _states_follow_own_records(duplicate)


def test_a_withdrawal_on_a_state_the_duplicate_brought_stays_with_the_survivor():
    # The survivor had no SMS consent: the duplicate's state moved over whole, and the
    # withdrawal after the merge updated that very row.
    survivor, duplicate = ContactFactory(), ContactFactory()
    _sms(duplicate, granted=True, source="store")
    record = contact_merge(survivor=survivor, duplicate=duplicate)
    _sms(survivor, granted=False, source="customer withdrew")

    contact_merge_undo(record=record)

    assert _states(survivor) == {("sms", "marketing"): (False, "customer withdrew")}
    assert _states(duplicate) == {("sms", "marketing"): (True, "store")}
    assert _states_follow_own_records(survivor) and _states_follow_own_records(duplicate)
    # The evidence stays where it was made.
    assert ConsentRecord.objects.get(source="customer withdrew").contact_id == survivor.pk


def test_undo_without_later_consent_changes_gives_back_the_states_from_before():
    survivor, duplicate = ContactFactory(), ContactFactory()
    _sms(survivor, granted=True, source="form")
    _sms(duplicate, granted=False, source="sms_reply")
    consent_record(
        contact=duplicate, channel="email", purpose="marketing", granted=True, source="form"
    )
    before = {
        c.pk: list(Consent.objects.filter(contact=c).values_list("pk", "granted", "record_id"))
        for c in (survivor, duplicate)
    }
    record = contact_merge(survivor=survivor, duplicate=duplicate)
    assert _states(survivor)[("sms", "marketing")] == (False, "sms_reply")

    contact_merge_undo(record=record)

    after = {
        c.pk: list(Consent.objects.filter(contact=c).values_list("pk", "granted", "record_id"))
        for c in (survivor, duplicate)
    }
    assert after == before


def test_undo_clears_a_store_and_an_owner_deleted_since_the_merge():
    store, owner = StoreFactory(), UserFactory()
    survivor = ContactFactory()
    duplicate = ContactFactory(store=store, owner=owner)
    record = contact_merge(survivor=survivor, duplicate=duplicate)
    store.delete()
    owner.delete()

    restored = contact_merge_undo(record=record)

    restored = Contact.objects.get(pk=restored.pk)
    assert restored.merged_into_id is None
    assert (restored.store_id, restored.owner_id) == (None, None)
    assert restored.name == duplicate.name  # the rest comes back as it was
    audit = AuditLog.objects.get(action="contact.merge_undo")
    assert audit.details["not_restored"] == {str(duplicate.pk): ["owner", "store"]}
    event = Event.objects.get(contact=duplicate, name="merge_undone")
    assert event.properties["not_restored"] == ["owner", "store"]
    assert "not_restored" not in Event.objects.get(contact=survivor, name="merge_undone").properties


def test_the_undo_button_works_after_the_duplicates_store_was_deleted(operator_client):
    store = StoreFactory()
    survivor, duplicate = ContactFactory(), ContactFactory(store=store)
    record = contact_merge(survivor=survivor, duplicate=duplicate)
    store.delete()

    response = operator_client.post(reverse("contacts:merge_undo", args=[record.pk]))

    assert response.status_code == 302
    assert Contact.objects.get(pk=duplicate.pk).merged_into_id is None
    record.refresh_from_db()
    assert record.undone_at is not None
