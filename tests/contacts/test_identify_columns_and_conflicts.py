"""identify: phone and email identities reach the profile, a new phone replaces the old one as
a PATCH does, and conflicts are recorded for operators."""

import pytest
from django.utils import timezone

from contacts.models import Contact, Event, Identity, MergeRecord
from contacts.selectors import contact_get_by_identity, contact_search
from contacts.services import (
    EventInput,
    IdentityInput,
    contact_merge_undo,
    contact_update,
    events_record,
    identify,
)

pytestmark = pytest.mark.django_db

CONFLICT_EVENT = "identity_conflict"


def _identities(contact: Contact) -> set[tuple[str, str, str]]:
    return set(Identity.objects.filter(contact=contact).values_list("kind", "app_id", "value"))


# --- Phone and email sent as identities ---------------------------------------------------------


def test_a_phone_sent_as_an_identity_fills_the_phone_column():
    # What a mini-program backend sends after getPhoneNumber.
    result = identify(
        identities=[
            IdentityInput("miniprogram_openid", "o-1", app_id="wxapp"),
            IdentityInput("phone", "138 0013 8011"),
        ]
    )

    contact = Contact.objects.get(pk=result.contact.pk)
    assert contact.phone == "+8613800138011"
    assert list(contact_search(qs=Contact.objects.all(), query="13800138011")) == [contact]
    assert ("phone", "", "+8613800138011") in _identities(contact)


def test_an_email_sent_as_an_identity_fills_the_email_column_normalised():
    result = identify(identities=[IdentityInput("email", " Lin@Example.CN ")])

    contact = Contact.objects.get(pk=result.contact.pk)
    assert contact.email == "lin@example.cn"
    assert _identities(contact) == {("email", "", "lin@example.cn")}


def test_a_known_contact_without_a_phone_gets_it_from_a_phone_identity():
    contact = identify(identities=[IdentityInput("wechat_unionid", "u-1")]).contact
    identify(
        identities=[IdentityInput("wechat_unionid", "u-1"), IdentityInput("phone", "13800138012")]
    )

    assert Contact.objects.get(pk=contact.pk).phone == "+8613800138012"


def test_a_phone_identity_never_overwrites_a_phone_already_there():
    contact = identify(
        identities=[IdentityInput("wechat_unionid", "u-2")], traits={"phone": "13800138013"}
    ).contact
    identify(
        identities=[IdentityInput("wechat_unionid", "u-2"), IdentityInput("phone", "13900139013")]
    )

    contact.refresh_from_db()
    assert contact.phone == "+8613800138013"
    # The second number is still one of the customer's identities.
    assert {v for k, _a, v in _identities(contact) if k == "phone"} == {
        "+8613800138013",
        "+8613900139013",
    }


def test_a_phone_trait_wins_over_a_phone_identity():
    result = identify(
        identities=[IdentityInput("phone", "13900139014")], traits={"phone": "13800138014"}
    )

    assert Contact.objects.get(pk=result.contact.pk).phone == "+8613800138014"


def test_a_weakly_linked_contacts_phone_does_not_fill_the_chosen_contact(settings):
    settings.SCRM_STRONG_IDENTITY_KINDS = ["wechat_unionid"]
    chosen = identify(identities=[IdentityInput("anonymous_id", "dev-1")]).contact
    other = identify(identities=[IdentityInput("phone", "13800138015")]).contact

    result = identify(
        identities=[IdentityInput("anonymous_id", "dev-1"), IdentityInput("phone", "13800138015")]
    )

    assert result.contact.pk == chosen.pk and result.conflicts == [other.pk]
    assert Contact.objects.get(pk=chosen.pk).phone == ""


# --- A new phone or email replaces the old identity, as in a PATCH ---------------------------


def test_a_new_phone_trait_replaces_the_old_phone_identity():
    contact = identify(
        identities=[IdentityInput("wechat_unionid", "u-3")], traits={"phone": "13800138016"}
    ).contact

    identify(identities=[IdentityInput("wechat_unionid", "u-3")], traits={"phone": "13900139016"})

    contact.refresh_from_db()
    assert contact.phone == "+8613900139016"
    assert _identities(contact) == {
        ("wechat_unionid", "", "u-3"),
        ("phone", "", "+8613900139016"),
    }
    assert contact_get_by_identity(kind="phone", value="+8613800138016") is None


def test_identify_and_patch_leave_the_same_identities_after_a_new_phone_and_email():
    by_identify = identify(
        identities=[IdentityInput("external_id", "crm-1")],
        traits={"phone": "13800138017", "email": "old@example.cn"},
    ).contact
    by_patch = identify(
        identities=[IdentityInput("external_id", "crm-2")],
        traits={"phone": "13800138018", "email": "old2@example.cn"},
    ).contact

    identify(
        identities=[IdentityInput("external_id", "crm-1")],
        traits={"phone": "13900139017", "email": "new@example.cn"},
    )
    contact_update(
        contact=Contact.objects.get(pk=by_patch.pk),
        data={"phone": "13900139018", "email": "new2@example.cn"},
    )

    assert _identities(by_identify) == {
        ("external_id", "", "crm-1"),
        ("phone", "", "+8613900139017"),
        ("email", "", "new@example.cn"),
    }
    assert _identities(by_patch) == {
        ("external_id", "", "crm-2"),
        ("phone", "", "+8613900139018"),
        ("email", "", "new2@example.cn"),
    }


def test_clearing_the_phone_trait_drops_the_phone_identity():
    contact = identify(
        identities=[IdentityInput("external_id", "crm-3")], traits={"phone": "13800138019"}
    ).contact

    identify(identities=[IdentityInput("external_id", "crm-3")], traits={"phone": ""})

    contact.refresh_from_db()
    assert contact.phone == ""
    assert _identities(contact) == {("external_id", "", "crm-3")}


# --- Conflicts are recorded for operators ------------------------------------------------------


def _conflicts(contact: Contact) -> list[dict]:
    return list(
        Event.objects.filter(contact=contact, name=CONFLICT_EVENT).values_list(
            "properties", flat=True
        )
    )


def test_a_weak_conflict_is_recorded_on_both_timelines_once():
    oa = identify(identities=[IdentityInput("wechat_openid", "oa-1", app_id="wxoa")]).contact
    mp = identify(identities=[IdentityInput("miniprogram_openid", "mp-1", app_id="wxmp")]).contact
    call = [
        IdentityInput("wechat_openid", "oa-1", app_id="wxoa"),
        IdentityInput("miniprogram_openid", "mp-1", app_id="wxmp"),
        IdentityInput("anonymous_id", "dev-9"),
    ]

    for _retry in range(3):
        result = identify(identities=call)

    assert result.contact.pk == oa.pk and result.conflicts == [mp.pk]
    assert _conflicts(oa) == [
        {
            "other_contact_id": mp.pk,
            "identities": [{"kind": "miniprogram_openid", "app_id": "wxmp"}],
            "reason": "weak_identity",
            "source": "api",
            "via": "identify",
        }
    ]
    assert [p["other_contact_id"] for p in _conflicts(mp)] == [oa.pk]


def test_a_conflict_found_by_the_events_api_is_recorded_once_per_retried_batch():
    oa = identify(identities=[IdentityInput("wechat_openid", "oa-2", app_id="wxoa")]).contact
    other = identify(identities=[IdentityInput("anonymous_id", "dev-2")]).contact
    batch = [
        EventInput(
            name="page_view",
            occurred_at=timezone.now(),
            event_id="view-1",
            identities=[
                IdentityInput("wechat_openid", "oa-2", app_id="wxoa"),
                IdentityInput("anonymous_id", "dev-2"),
            ],
        )
    ]

    events_record(items=batch)
    events_record(items=batch)  # the client retries the whole batch

    assert Event.objects.get(event_id="view-1").contact_id == oa.pk
    conflicts = _conflicts(oa)
    assert len(conflicts) == 1
    assert conflicts[0]["other_contact_id"] == other.pk
    assert conflicts[0]["via"] == "events"
    assert len(_conflicts(other)) == 1


def test_a_conflict_with_a_contact_marked_not_the_same_person_is_recorded():
    older = identify(identities=[IdentityInput("wechat_unionid", "u-twin")]).contact
    newer = identify(identities=[IdentityInput("phone", "13800138020")]).contact
    call = [IdentityInput("wechat_unionid", "u-twin"), IdentityInput("phone", "13800138020")]
    identify(identities=call)
    contact_merge_undo(record=MergeRecord.objects.get())

    identify(identities=call)
    identify(identities=call)

    [properties] = _conflicts(older)
    assert properties["other_contact_id"] == newer.pk
    assert properties["reason"] == "not_same_person"
    assert properties["identities"] == [{"kind": "phone", "app_id": ""}]
    # The number itself is nowhere in the event.
    event = Event.objects.get(contact=older, name=CONFLICT_EVENT)
    assert "13800138020" not in str(event.properties) + event.event_id
    assert len(_conflicts(newer)) == 1
