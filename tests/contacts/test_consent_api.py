"""Consent calls: a NUL character is refused by name, and a retried call records nothing new."""

import threading

import pytest
from django.db import connections
from django.urls import reverse

from contacts.models import Consent, ConsentRecord, Event
from contacts.services import consent_record
from core.errors import ValidationFailed
from tests.factories import ContactFactory, EventFactory, UserFactory

pytestmark = pytest.mark.django_db

BODY = {
    "channel": "sms",
    "purpose": "marketing",
    "granted": True,
    "source": "miniprogram_register",
    "notice_version": "2026-01",
    "evidence": {"page": "/pages/register", "checkbox": "agree_sms"},
}


def _post(api, contact, **changes):
    return api.post(f"/api/v1/contacts/{contact.pk}/consents", {**BODY, **changes}, format="json")


def _consent_events(contact) -> list[str]:
    return list(
        Event.objects.filter(contact=contact, name__startswith="consent_")
        .order_by("pk")
        .values_list("name", flat=True)
    )


# --- NUL characters ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    "evidence",
    [{"note": "a\x00b"}, {"k\x00": "v"}, {"list": ["ok", {"deep": "\x00"}]}],
)
def test_evidence_with_a_nul_character_is_refused_by_name(api, evidence):
    contact = ContactFactory()
    response = _post(api, contact, evidence=evidence)
    assert response.status_code == 400
    error = response.json()["error"]
    assert error["code"] == "invalid_field"
    assert error["details"] == {"field": "evidence"}
    assert "NUL" in error["message"]
    assert not ConsentRecord.objects.exists()
    assert not Consent.objects.exists()
    assert not Event.objects.exists()


@pytest.mark.parametrize("field", ["source", "notice_version", "request_id"])
def test_the_service_refuses_a_nul_character_in_any_text(field):
    contact = ContactFactory()
    call = dict(BODY)
    call[field] = "form\x00"
    with pytest.raises(ValidationFailed) as exc:
        consent_record(contact=contact, **call)
    assert exc.value.details == {"field": field}
    assert not ConsentRecord.objects.exists()


# --- Retries without a key --------------------------------------------------------------------


def test_a_retried_call_answers_the_first_record_and_stores_nothing(api):
    contact = ContactFactory()
    first = _post(api, contact)
    again = _post(api, contact)
    assert (first.status_code, again.status_code) == (201, 201)
    assert again.json() == first.json()
    assert ConsentRecord.objects.count() == 1
    assert _consent_events(contact) == ["consent_granted"]


@pytest.mark.parametrize(
    "changes",
    [
        {"granted": False},
        {"source": "store"},
        {"notice_version": "2026-02"},
        {"evidence": {"page": "/pages/register", "checkbox": "agree_all"}},
        {"evidence": {}},
    ],
)
def test_a_call_that_differs_from_the_current_record_is_appended(api, changes):
    contact = ContactFactory()
    _post(api, contact)
    response = _post(api, contact, **changes)
    assert response.status_code == 201
    assert ConsentRecord.objects.count() == 2
    state = Consent.objects.get(contact=contact)
    assert state.record_id == response.json()["id"]


def test_granting_again_after_a_withdrawal_is_recorded(api):
    contact = ContactFactory()
    _post(api, contact)
    _post(api, contact, granted=False)
    regrant = _post(api, contact)
    assert ConsentRecord.objects.count() == 3
    assert Consent.objects.get(contact=contact).granted is True
    assert Consent.objects.get(contact=contact).record_id == regrant.json()["id"]
    assert _consent_events(contact) == ["consent_granted", "consent_withdrawn", "consent_granted"]


def test_the_same_consent_on_another_channel_or_contact_is_its_own_record(api):
    contact, other = ContactFactory(), ContactFactory()
    _post(api, contact)
    _post(api, contact, channel="email")
    _post(api, other)
    assert ConsentRecord.objects.count() == 3


def test_an_operator_submitting_the_form_twice_records_once(operator_client, operator):
    contact = ContactFactory()
    url = reverse("contacts:consent", args=[contact.pk])
    data = {"channel": "sms", "purpose": "marketing", "granted": "1", "source": "门店纸质表"}
    operator_client.post(url, {**data, "evidence": "表单 #12"})
    operator_client.post(url, {**data, "evidence": "表单 #12"})
    assert ConsentRecord.objects.count() == 1
    # The same words from another operator are their own statement.
    consent_record(
        contact=contact,
        channel="sms",
        purpose="marketing",
        granted=True,
        source="门店纸质表",
        evidence={"note": "表单 #12"},
        actor=UserFactory(username="another"),
    )
    assert ConsentRecord.objects.count() == 2


# --- Retries with a request_id ----------------------------------------------------------------


def test_a_late_retry_with_its_request_id_does_not_undo_a_later_withdrawal(api):
    contact = ContactFactory()
    granted = _post(api, contact, request_id="reg-7f3c")
    withdrawn = _post(api, contact, granted=False, source="sms_reply_TD")
    late = _post(api, contact, request_id="reg-7f3c")
    assert late.status_code == 201
    assert late.json() == granted.json()
    assert ConsentRecord.objects.count() == 2
    state = Consent.objects.get(contact=contact)
    assert (state.granted, state.record_id) == (False, withdrawn.json()["id"])
    assert _consent_events(contact) == ["consent_granted", "consent_withdrawn"]


def test_a_new_request_id_records_even_the_same_consent(api):
    contact = ContactFactory()
    _post(api, contact, request_id="a-1")
    _post(api, contact, request_id="a-2")
    assert ConsentRecord.objects.count() == 2


def test_a_request_id_answers_for_a_merged_away_contact(api, operator):
    from contacts.services import contact_merge

    survivor, duplicate = ContactFactory(), ContactFactory()
    first = _post(api, duplicate, request_id="r-merge")
    contact_merge(survivor=survivor, duplicate=duplicate, actor=operator)
    again = _post(api, duplicate, request_id="r-merge")
    assert again.json()["id"] == first.json()["id"]
    assert ConsentRecord.objects.count() == 1


@pytest.mark.parametrize(
    "changes",
    [{"granted": False}, {"channel": "email"}, {"evidence": {"page": "/other"}}],
)
def test_a_request_id_reused_for_another_consent_is_refused(api, changes):
    contact = ContactFactory()
    _post(api, contact, request_id="r-1")
    response = _post(api, contact, request_id="r-1", **changes)
    assert response.status_code == 400
    error = response.json()["error"]
    assert error["code"] == "request_id_reused"
    assert error["details"] == {"field": "request_id"}
    assert ConsentRecord.objects.count() == 1


def test_a_request_id_reused_for_another_contact_is_refused(api):
    _post(api, ContactFactory(), request_id="r-1")
    response = _post(api, ContactFactory(), request_id="r-1")
    assert response.json()["error"]["code"] == "request_id_reused"
    assert ConsentRecord.objects.count() == 1


def test_a_request_id_that_is_a_clients_own_event_id_is_refused(api):
    contact = ContactFactory()
    EventFactory(contact=contact, event_id="consent:r-1", name="page_view")
    response = _post(api, contact, request_id="r-1")
    assert response.json()["error"]["code"] == "request_id_reused"
    assert not ConsentRecord.objects.exists()


def test_a_too_long_request_id_is_refused(api):
    response = _post(api, ContactFactory(), request_id="r" * 51)
    assert response.status_code == 400
    assert "request_id" in response.json()["error"]["details"]
    assert not ConsentRecord.objects.exists()


# --- Concurrent retries -----------------------------------------------------------------------


@pytest.mark.django_db(transaction=True)
@pytest.mark.parametrize("request_id", ["", "r-concurrent"])
def test_concurrent_copies_of_one_call_record_once(request_id):
    contact = ContactFactory()
    barrier = threading.Barrier(4)
    records: list[int] = []
    errors: list[Exception] = []

    def call() -> None:
        try:
            barrier.wait(timeout=10)
            records.append(consent_record(contact=contact, request_id=request_id, **BODY).pk)
        except Exception as exc:  # reported by the test, not swallowed
            errors.append(exc)
        finally:
            connections.close_all()

    threads = [threading.Thread(target=call) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
    assert not errors
    assert len(set(records)) == 1 and len(records) == 4
    assert ConsentRecord.objects.count() == 1
    assert _consent_events(contact) == ["consent_granted"]
