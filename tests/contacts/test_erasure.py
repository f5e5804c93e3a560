"""Erasing a person at their request (contacts.services.erasure), and the tombstones that keep
imports and replayed events from bringing them back."""

import datetime as dt
import json
import threading

import pytest
from django.db import connection
from django.utils import timezone

from contacts.models import (
    Consent,
    ConsentRecord,
    Contact,
    ContactTag,
    ErasedContact,
    Erasure,
    Event,
    Identity,
    MergeBlock,
    MergeRecord,
    Note,
    SuppressedIdentity,
)
from contacts.services import (
    EventInput,
    IdentityInput,
    consent_record,
    contact_erase,
    contact_merge,
    erasure_of_contact,
    events_record,
    identify,
    identities_suppressed,
    merge_block_add,
    note_add,
)
from contacts.services.identity import ErasedIdentity
from core.errors import NotFound
from core.models import AuditLog
from tests.contacts.locking import in_threads
from tests.factories import ContactFactory, TagFactory, UserFactory

pytestmark = pytest.mark.django_db(transaction=True)

PHONE = "+8613800138000"


def _person() -> tuple[Contact, Contact]:
    """A customer with a little of everything, and a mini-program visitor merged into them."""
    known = identify(
        identities=[IdentityInput("wechat_unionid", "union-1")],
        traits={"name": "张三", "phone": "13800138000", "email": "Zhang@Example.com"},
    ).contact
    visitor = identify(
        identities=[IdentityInput("miniprogram_openid", "o-1", app_id="wxa")]
    ).contact
    Event.objects.create(contact=visitor, name="page_view", occurred_at=timezone.now())
    contact_merge(survivor=known, duplicate=visitor)
    ContactTag.objects.create(contact=known, tag=TagFactory())
    note_add(contact=known, body="住在上海市静安区", author=None)
    consent_record(contact=known, channel="sms", purpose="marketing", granted=True, source="form")
    return Contact.objects.get(pk=known.pk), Contact.objects.get(pk=visitor.pk)


def test_erasure_deletes_the_person_and_their_merged_contacts_and_keeps_no_personal_data():
    known, visitor = _person()
    bystander = ContactFactory(phone="+8613900139000")
    merge_block_add(contact=known, other=bystander, actor=None)
    actor = UserFactory()

    erasure = contact_erase(
        contact=known, source="operator", actor=actor, reference="REQ-7", ip="10.0.0.9"
    )

    assert not Contact.objects.filter(pk__in=[known.pk, visitor.pk]).exists()
    for model in (Identity, Event, ContactTag, Note, ConsentRecord, Consent):
        assert not model.objects.filter(contact_id__in=[known.pk, visitor.pk]).exists(), model
    assert not MergeRecord.objects.exists()
    assert not MergeBlock.objects.exists()
    assert Contact.objects.filter(pk=bystander.pk).exists()
    assert erasure.summary["contacts.contact"] == 2
    assert erasure.summary["contacts.note"] == 1
    assert erasure.summary["contacts.consentrecord"] == 1
    assert erasure.summary["contacts.event"] >= 2  # the page view and the merge
    assert sorted(ErasedContact.objects.values_list("contact_id", flat=True)) == sorted(
        [known.pk, visitor.pk]
    )
    assert erasure_of_contact(contact_id=visitor.pk) == erasure
    assert erasure.reference == "REQ-7" and erasure.actor == actor

    entry = AuditLog.objects.get(action="contact.erase")
    assert entry.object_id == str(known.pk) and entry.ip == "10.0.0.9"
    assert entry.details["erasure"] == erasure.pk
    # What survives the person names nobody: no phone, email, name or identity value.
    kept = json.dumps(
        [
            list(Erasure.objects.values()),
            list(SuppressedIdentity.objects.values()),
            list(AuditLog.objects.filter(action="contact.erase").values("details")),
        ],
        default=str,
        ensure_ascii=False,
    )
    for value in ("13800138000", "zhang@example.com", "张三", "union-1", "o-1", "静安"):
        assert value not in kept.lower()


def test_the_tombstones_match_every_identity_the_person_had():
    _known, visitor = _person()
    contact_erase(contact=visitor, source="api")  # a merged-away id erases the whole person

    probes = {
        ("phone", "", PHONE),
        ("email", "", "zhang@example.com"),
        ("wechat_unionid", "", "union-1"),
        ("miniprogram_openid", "wxa", "o-1"),
        ("miniprogram_openid", "other-app", "o-1"),
        ("phone", "", "+8613900139000"),
    }
    assert identities_suppressed(probes) == probes - {
        ("miniprogram_openid", "other-app", "o-1"),
        ("phone", "", "+8613900139000"),
    }


def test_erasing_a_contact_that_is_gone_is_not_found_and_the_erasure_answers_the_retry():
    known, _visitor = _person()
    erasure = contact_erase(contact=known, source="operator")
    with pytest.raises(NotFound):
        contact_erase(contact=known, source="operator")
    assert Erasure.objects.count() == 1
    assert erasure_of_contact(contact_id=known.pk) == erasure
    assert erasure_of_contact(contact_id=known.pk + 1000) is None


def test_a_person_who_signs_in_again_is_a_new_customer_and_their_tombstones_are_lifted():
    known, _visitor = _person()
    contact_erase(contact=known, source="operator")

    back = identify(identities=[IdentityInput("wechat_unionid", "union-1")])

    assert back.created and back.previously_erased
    assert back.contact.pk != known.pk
    assert not Consent.objects.filter(contact=back.contact).exists()
    assert identities_suppressed({("wechat_unionid", "", "union-1")}) == set()
    # Identities they did not come back with stay suppressed.
    assert identities_suppressed({("phone", "", PHONE)}) == {("phone", "", PHONE)}
    again = identify(identities=[IdentityInput("wechat_unionid", "union-1")])
    assert not again.created and not again.previously_erased


def test_identify_can_refuse_an_erased_person():
    known, _visitor = _person()
    contact_erase(contact=known, source="operator")
    with pytest.raises(ErasedIdentity) as refused:
        identify(identities=[IdentityInput("phone", "13800138000")], erased="refuse")
    assert refused.value.code == "erased"
    assert refused.value.details == {"kinds": ["phone"]}
    assert not Contact.objects.exists()
    assert SuppressedIdentity.objects.filter(kind="phone").exists()


def test_replayed_events_about_an_erased_person_are_rejected_and_the_rest_are_kept(english):
    known, _visitor = _person()
    contact_erase(contact=known, source="operator")
    now = timezone.now()

    outcomes = events_record(
        items=[
            EventInput(
                event_id="e-1",
                name="page_view",
                occurred_at=now,
                identities=[IdentityInput("wechat_unionid", "union-1")],
            ),
            EventInput(event_id="e-2", name="page_view", occurred_at=now, contact_id=known.pk),
            EventInput(
                event_id="e-3",
                name="page_view",
                occurred_at=now,
                identities=[IdentityInput("wechat_unionid", "someone-else")],
            ),
        ]
    )

    assert [o.status for o in outcomes] == ["rejected", "rejected", "accepted"]
    assert "erased at their request" in outcomes[0].reason
    assert outcomes[1].reason == f"Contact {known.pk} was erased at the person's request."
    assert Contact.objects.count() == 1
    assert not Event.objects.filter(event_id__in=["e-1", "e-2"]).exists()
    assert SuppressedIdentity.objects.filter(kind="wechat_unionid").exists()


def test_a_replayed_event_does_not_attach_an_erased_identity_to_a_live_contact():
    known, _visitor = _person()
    contact_erase(contact=known, source="operator")
    stranger = identify(identities=[IdentityInput("anonymous_id", "device-7")]).contact

    outcomes = events_record(
        items=[
            EventInput(
                event_id="pair-1",
                name="page_view",
                occurred_at=timezone.now(),
                identities=[
                    IdentityInput("anonymous_id", "device-7"),
                    IdentityInput("phone", "13800138000"),
                ],
            )
        ]
    )

    assert [o.status for o in outcomes] == ["accepted"]
    assert Event.objects.get(event_id="pair-1").contact_id == stranger.pk
    assert not Identity.objects.filter(kind="phone").exists()
    assert Contact.objects.get(pk=stranger.pk).phone == ""
    assert identities_suppressed({("phone", "", PHONE)}) == {("phone", "", PHONE)}


def test_tombstones_keep_working_when_the_secret_key_is_rotated_as_documented(settings):
    # Made with the default keys (SECRET_KEY); then SECRET_KEY is rotated with the old value
    # listed after a new erasure key, as docs/deployment.md says.
    settings.SCRM_ERASURE_KEYS = []
    known, _visitor = _person()
    contact_erase(contact=known, source="operator")
    old = settings.SECRET_KEY

    settings.SECRET_KEY, settings.SECRET_KEY_FALLBACKS = "a-new-key" * 6, []
    assert identities_suppressed({("phone", "", PHONE)}) == set()  # blind without the old key
    settings.SCRM_ERASURE_KEYS = ["an-erasure-key" * 4, old]
    assert identities_suppressed({("phone", "", PHONE)}) == {("phone", "", PHONE)}
    with pytest.raises(ErasedIdentity):
        identify(identities=[IdentityInput("phone", PHONE)], erased="refuse")

    # New tombstones are hashed with the first key alone.
    other = identify(identities=[IdentityInput("wechat_unionid", "union-2")]).contact
    contact_erase(contact=other, source="operator")
    settings.SCRM_ERASURE_KEYS = ["an-erasure-key" * 4]
    assert identities_suppressed({("wechat_unionid", "", "union-2")}) == {
        ("wechat_unionid", "", "union-2")
    }
    assert identities_suppressed({("phone", "", PHONE)}) == set()


def test_erasing_the_same_person_twice_keeps_one_tombstone_per_identity():
    # They come back by themselves with their unionid (its tombstone is lifted); a record with
    # their old phone reaches the new contact (an operator's edit), and they are erased again:
    # the phone's tombstone is the same one, and now names the latest erasure.
    first = identify(
        identities=[IdentityInput("wechat_unionid", "union-9")], traits={"phone": PHONE}
    ).contact
    first_erasure = contact_erase(contact=first, source="operator")
    back = identify(identities=[IdentityInput("wechat_unionid", "union-9")])
    assert back.previously_erased
    Contact.objects.filter(pk=back.contact.pk).update(phone=PHONE)
    second = contact_erase(contact=back.contact, source="operator")

    phone = SuppressedIdentity.objects.get(kind="phone")
    assert phone.erasure == second != first_erasure
    assert SuppressedIdentity.objects.filter(kind="wechat_unionid").get().erasure == second
    assert Erasure.objects.count() == 2


@pytest.mark.skipif("connection.vendor != 'postgresql'")
def test_an_event_batch_racing_the_erasure_never_brings_the_person_back():
    # The batch either lands first (and is erased with the person) or meets the tombstones;
    # it never recreates the contact and never fails.
    assert connection.vendor == "postgresql"
    known, _visitor = _person()
    start = threading.Barrier(2)

    def erase():
        start.wait(timeout=10)
        return contact_erase(contact=Contact.objects.get(pk=known.pk), source="api")

    def send(n: int):
        start.wait(timeout=10)
        return events_record(
            items=[
                EventInput(
                    event_id=f"race-{n}-{i}",
                    name="page_view",
                    occurred_at=timezone.now() - dt.timedelta(seconds=i),
                    identities=[IdentityInput("phone", PHONE)],
                )
                for i in range(20)
            ]
        )

    results, errors = in_threads([erase, lambda: send(1)])

    assert errors == []
    outcomes = results[1]
    assert {o.status for o in outcomes} <= {"accepted", "rejected"}
    assert not Identity.objects.filter(kind="phone", value=PHONE).exists()
    assert not Contact.objects.exists()


def test_events_whose_contact_is_erased_after_the_batch_resolved_it_are_rejected(
    monkeypatch, english
):
    # The batch looks its contacts up without a lock; an erasure committing before it stores
    # them must turn those events into rejections, not a foreign-key failure of the batch.
    from contacts.services import ingest

    known, _visitor = _person()
    other = ContactFactory()
    store = ingest._store_events

    def erase_first(rows):
        _results, errors = in_threads(
            [lambda: contact_erase(contact=Contact.objects.get(pk=known.pk), source="api")]
        )
        assert errors == []
        return store(rows)

    monkeypatch.setattr(ingest, "_store_events", erase_first)
    now = timezone.now()
    outcomes = events_record(
        items=[
            EventInput(event_id="k-1", name="page_view", occurred_at=now, contact_id=known.pk),
            EventInput(event_id="o-1", name="page_view", occurred_at=now, contact_id=other.pk),
        ]
    )

    assert [(o.status, o.reason) for o in outcomes] == [
        ("rejected", f"Contact {known.pk} was erased at the person's request."),
        ("accepted", ""),
    ]
    assert list(Event.objects.filter(contact=other).values_list("event_id", flat=True)) == ["o-1"]
    assert not Contact.objects.filter(pk=known.pk).exists()


def test_the_admin_history_of_the_persons_rows_names_them_by_id_only():
    from django.contrib.admin.models import CHANGE, LogEntry
    from django.contrib.contenttypes.models import ContentType

    known, visitor = _person()
    bystander = ContactFactory(name="李四")
    user = UserFactory()
    note = Note.objects.get(contact=known)
    for obj, text in ((known, "张三"), (visitor, "#2"), (note, note.body), (bystander, "李四")):
        LogEntry.objects.log_actions(
            user_id=user.pk, queryset=[obj], action_flag=CHANGE, change_message=text
        )

    contact_erase(contact=known, source="admin")

    contact_type = ContentType.objects.get_for_model(Contact).pk
    left = sorted(LogEntry.objects.values_list("content_type", "object_repr", "change_message"))
    assert left == sorted(
        [
            (contact_type, f"#{known.pk}", ""),
            (contact_type, f"#{visitor.pk}", ""),
            (ContentType.objects.get_for_model(Note).pk, f"#{note.pk}", ""),
            (contact_type, "李四", "李四"),
        ]
    )


@pytest.mark.skipif("connection.vendor != 'postgresql'", reason="SQLite: one writer at a time")
def test_an_undo_committing_while_the_erasure_reads_the_family_keeps_the_restored_contact(
    monkeypatch,
):
    # The erasure reads who the person's contacts are before locking them; an undo of one of
    # the merges commits in between. The erasure notices, reads again, and erases the person
    # without the contact the undo restored (an operator just said it is someone else).
    from contacts.services import contact_merge_undo
    from contacts.services import erasure as erasure_module

    known, visitor = _person()
    record = MergeRecord.objects.get()
    family_ids = erasure_module.contact_family_ids
    calls = []

    def undo_after_first_read(*, contact_id):
        family = family_ids(contact_id=contact_id)
        if not calls:
            _results, errors = in_threads([lambda: contact_merge_undo(record=record)])
            assert errors == []
        calls.append(family)
        return family

    monkeypatch.setattr(erasure_module, "contact_family_ids", undo_after_first_read)

    erasure = contact_erase(contact=known, source="operator")

    assert calls[0] == sorted([known.pk, visitor.pk])
    assert list(erasure.contacts.values_list("contact_id", flat=True)) == [known.pk]
    restored = Contact.objects.get(pk=visitor.pk)
    assert restored.merged_into_id is None
    assert Identity.objects.filter(contact=restored, kind="miniprogram_openid").exists()
