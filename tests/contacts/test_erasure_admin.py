"""Deleting a contact in the Django admin erases the person, as an erasure request does; the
erasures are listed there read-only, and a tombstoned phone cannot be typed back in."""

import threading

import pytest
from django.contrib import admin
from django.contrib.admin.models import LogEntry
from django.db import connection, transaction
from django.urls import reverse

from contacts.models import (
    Consent,
    ConsentRecord,
    Contact,
    ErasedContact,
    Erasure,
    Event,
    Identity,
    MergeRecord,
    SuppressedIdentity,
)
from contacts.services import (
    IdentityInput,
    consent_record,
    contact_erase,
    contact_merge,
    identify,
)
from contacts.services import erasure as erasure_services
from core.models import AuditLog
from tests.contacts.locking import (
    deadlocks,
    deadlocks_since,
    in_threads,
    try_set,
    wait_until_another_backend_waits,
)
from tests.factories import ContactFactory, EventFactory, IdentityFactory, user_with_perms

pytestmark = pytest.mark.django_db


def _person() -> tuple[Contact, Contact]:
    """A customer with events and a consent, and a visitor merged into them."""
    known = identify(
        identities=[IdentityInput("wechat_unionid", "union-1")],
        traits={"name": "林小雨", "phone": "13800138000", "email": "lin@example.cn"},
    ).contact
    visitor = identify(identities=[IdentityInput("miniprogram_openid", "o-1", "wx1")]).contact
    EventFactory(contact=known, name="purchase", value=100)
    EventFactory(contact=visitor, name="view_product")
    consent_record(contact=known, channel="sms", purpose="marketing", granted=True, source="form")
    contact_merge(survivor=known, duplicate=visitor)
    return Contact.objects.get(pk=known.pk), Contact.objects.get(pk=visitor.pk)


def _add_form(**fields) -> dict[str, str]:
    data = {
        "name": "新客户",
        "gender": "unknown",
        "lifecycle_stage": "new",
        "lead_score": "0",
        "attributes": "{}",
        "identities-TOTAL_FORMS": "0",
        "identities-INITIAL_FORMS": "0",
        "contact_tags-TOTAL_FORMS": "0",
        "contact_tags-INITIAL_FORMS": "0",
    }
    return {**data, **fields}


def test_deleting_a_contact_with_evidence_rows_erases_the_person_and_keeps_tombstones(
    admin_client, admin_user
):
    known, visitor = _person()
    bystander = ContactFactory()
    delete = reverse("admin:contacts_contact_delete", args=[known.pk])

    page = admin_client.get(delete)
    assert page.status_code == 200
    # The confirmation lists what goes, merged contact and evidence rows included, and asks
    # for no permission on the view-only models.
    assert not page.context["perms_lacking"] and not page.context["protected"]
    listed = str(page.context["deleted_objects"])
    assert f"#{visitor.pk}" in listed or str(visitor) in listed
    counts = {str(k): v for k, v in page.context["model_count"]}
    assert counts[str(ConsentRecord._meta.verbose_name_plural)] == 1
    assert counts[str(Contact._meta.verbose_name_plural)] == 2

    response = admin_client.post(delete, {"post": "yes"})

    assert response.status_code == 302
    gone = [known.pk, visitor.pk]
    assert not Contact.objects.filter(pk__in=gone).exists()
    assert Contact.objects.filter(pk=bystander.pk).exists()
    for model in (Event, ConsentRecord, Consent):
        assert not model.objects.filter(contact_id__in=gone).exists(), model
    assert not MergeRecord.objects.exists()
    erasure = Erasure.objects.get()
    assert (erasure.source, erasure.actor) == ("admin", admin_user)
    assert sorted(erasure.contacts.values_list("contact_id", flat=True)) == sorted(gone)
    assert set(SuppressedIdentity.objects.values_list("kind", flat=True)) >= {
        "phone",
        "email",
        "wechat_unionid",
        "miniprogram_openid",
    }
    entry = AuditLog.objects.get(action="contact.erase")
    assert entry.actor == admin_user and entry.ip and entry.details["source"] == "admin"
    # The admin's own history names the id, not the person.
    logged = LogEntry.objects.get(object_id=str(known.pk))
    assert "林小雨" not in logged.object_repr


def test_deleting_selected_contacts_erases_each_person_once(admin_client):
    known, visitor = _person()
    other = ContactFactory()

    admin_client.post(
        reverse("admin:contacts_contact_changelist"),
        {
            "action": "delete_selected",
            "_selected_action": [visitor.pk, known.pk, other.pk],
            "post": "yes",
        },
    )

    assert not Contact.objects.filter(pk__in=[known.pk, visitor.pk, other.pk]).exists()
    assert Erasure.objects.count() == 2
    assert ErasedContact.objects.get(contact_id=known.pk).erasure == (
        ErasedContact.objects.get(contact_id=visitor.pk).erasure
    )
    assert not LogEntry.objects.filter(object_repr__contains="林小雨").exists()


def test_deleting_contacts_needs_the_erase_permission(client):
    contact = ContactFactory()
    clerk = user_with_perms("contacts.view_contact", "contacts.delete_contact")
    clerk.is_staff = True
    clerk.save()
    client.force_login(clerk)
    delete = reverse("admin:contacts_contact_delete", args=[contact.pk])

    assert client.get(delete).status_code == 403
    assert client.post(delete, {"post": "yes"}).status_code == 403
    assert Contact.objects.filter(pk=contact.pk).exists()

    officer = user_with_perms("contacts.view_contact", "contacts.erase_contact")
    officer.is_staff = True
    officer.save()
    client.force_login(officer)
    assert client.get(delete).status_code == 200
    client.post(delete, {"post": "yes"})
    assert not Contact.objects.filter(pk=contact.pk).exists()
    assert Erasure.objects.get().actor == officer


@pytest.mark.parametrize(
    "field,typed,label",
    [("phone", "138 0013 8000", "phone"), ("email", "LIN@example.cn", "email")],
)
def test_the_add_form_refuses_an_erased_persons_phone_or_email(
    admin_client, english, field, typed, label
):
    known, _visitor = _person()
    contact_erase(contact=known, source="operator")

    response = admin_client.post(reverse("admin:contacts_contact_add"), _add_form(**{field: typed}))

    assert response.status_code == 200
    errors = response.context["adminform"].form.errors
    assert [e.code for e in errors.as_data()[field]] == ["erased"]
    assert f"This {label} belonged to a person whose data was erased" in errors[field][0]
    assert not Contact.objects.exists()


# Each identity the erased person had, as an operator would type it (normalised on save).
ERASED_IDENTITIES = [
    ("phone", "", "138 0013 8000"),
    ("email", "", "LIN@example.cn"),
    ("wechat_unionid", "", "union-1"),
    ("miniprogram_openid", "wx1", "o-1"),
    ("external_id", "", "crm-77"),
]


def _erased_person() -> None:
    known, _visitor = _person()
    IdentityFactory(contact=known, kind="external_id", value="crm-77")
    contact_erase(contact=known, source="operator")


def _identity_rows(*rows: tuple[str, str, str]) -> dict[str, str]:
    data = {"identities-TOTAL_FORMS": str(len(rows))}
    for n, (kind, app_id, value) in enumerate(rows):
        data |= {
            f"identities-{n}-kind": kind,
            f"identities-{n}-app_id": app_id,
            f"identities-{n}-value": value,
        }
    return data


def _identity_errors(response) -> dict:
    (inline,) = [
        f for f in response.context["inline_admin_formsets"] if f.formset.prefix == "identities"
    ]
    return inline.formset.forms[0].errors


@pytest.mark.parametrize("kind,app_id,typed", ERASED_IDENTITIES)
def test_the_add_form_refuses_an_erased_persons_identity_in_its_identity_rows(
    admin_client, english, kind, app_id, typed
):
    _erased_person()

    response = admin_client.post(
        reverse("admin:contacts_contact_add"), _add_form(**_identity_rows((kind, app_id, typed)))
    )

    assert response.status_code == 200
    errors = _identity_errors(response)
    assert [e.code for e in errors.as_data()["value"]] == ["erased"]
    assert "This identity belonged to a person whose data was erased" in errors["value"][0]
    assert not Contact.objects.exists()


def test_a_new_identity_row_of_an_existing_contact_is_refused_too(admin_client, english):
    _erased_person()
    other = ContactFactory(phone="")
    change = reverse("admin:contacts_contact_change", args=[other.pk])
    form = {"name": other.name, **_add_form(), **_identity_rows(("wechat_unionid", "", "union-1"))}

    response = admin_client.post(change, form)

    assert response.status_code == 200
    assert [e.code for e in _identity_errors(response).as_data()["value"]] == ["erased"]
    assert not Identity.objects.filter(contact=other).exists()


@pytest.mark.parametrize("kind,app_id,typed", ERASED_IDENTITIES)
def test_the_identity_add_form_refuses_an_erased_persons_identity(
    admin_client, english, kind, app_id, typed
):
    _erased_person()
    other = ContactFactory(phone="")
    add = reverse("admin:contacts_identity_add")

    response = admin_client.post(
        add, {"contact": other.pk, "kind": kind, "app_id": app_id, "value": typed}
    )

    assert response.status_code == 200
    errors = response.context["adminform"].form.errors
    assert [e.code for e in errors.as_data()["value"]] == ["erased"]
    assert not Identity.objects.filter(contact=other).exists()


def test_identities_nobody_erased_are_added(admin_client):
    _erased_person()
    other = ContactFactory(phone="")
    added = admin_client.post(
        reverse("admin:contacts_identity_add"),
        {"contact": other.pk, "kind": "external_id", "app_id": "", "value": "crm-78"},
    )
    assert added.status_code == 302

    response = admin_client.post(
        reverse("admin:contacts_contact_add"),
        _add_form(
            **_identity_rows(("wechat_unionid", "", "union-2"), ("phone", "", "13900139000"))
        ),
    )

    assert response.status_code == 302
    assert sorted(Identity.objects.exclude(contact=other).values_list("kind", "value")) == [
        ("phone", "+8613900139000"),
        ("wechat_unionid", "union-2"),
    ]


def test_the_add_form_takes_a_phone_nobody_erased(admin_client):
    response = admin_client.post(
        reverse("admin:contacts_contact_add"), _add_form(phone="13900139000")
    )

    assert response.status_code == 302, response.context["adminform"].form.errors
    assert Contact.objects.get().phone == "+8613900139000"


def test_erasures_are_listed_read_only_without_personal_data(admin_client, english):
    known, visitor = _person()
    erasure = contact_erase(contact=known, source="api", reference="mp-cancel-8812")

    listing = admin_client.get(reverse("admin:contacts_erasure_changelist"))
    assert listing.status_code == 200
    html = listing.content.decode()
    assert "mp-cancel-8812" in html
    assert str(visitor.pk) in html
    assert "13800138000" not in html and "林小雨" not in html
    found = admin_client.get(reverse("admin:contacts_erasure_changelist"), {"q": str(visitor.pk)})
    assert "mp-cancel-8812" in found.content.decode()
    assert (
        admin_client.get(
            reverse("admin:contacts_erasure_changelist"), {"q": "not-a-number"}
        ).status_code
        == 200
    )

    change = reverse("admin:contacts_erasure_change", args=[erasure.pk])
    page = admin_client.get(change)
    assert page.status_code == 200
    assert "Phone × 1" in page.content.decode()  # the tombstones, by kind
    digest = SuppressedIdentity.objects.filter(erasure=erasure).first().digest
    assert digest not in page.content.decode()
    assert admin_client.get(reverse("admin:contacts_erasure_add")).status_code == 403
    admin_client.post(change, {"reference": "changed"})
    delete = reverse("admin:contacts_erasure_delete", args=[erasure.pk])
    assert admin_client.post(delete, {"post": "yes"}).status_code == 403
    erasure.refresh_from_db()
    assert erasure.reference == "mp-cancel-8812"
    # The tombstones are not an admin page of their own.
    assert SuppressedIdentity not in admin.site._registry


def _contended_delete(admin_client, known: Contact, visitor: Contact):
    """Another transaction that locks the merged-away contact, waits until the erasure holds
    the person's contact and waits for it, then asks for the person's: a real deadlock, in
    which PostgreSQL aborts the erasure (its wait is the older one; the other transaction's
    detection is put off where the role may); and the admin's deletion of the person."""
    holding = threading.Event()

    def other_transaction() -> None:
        with transaction.atomic(), connection.cursor() as cursor:
            try_set(cursor, "SET LOCAL deadlock_timeout = '30s'")
            list(Contact.objects.select_for_update().filter(pk=visitor.pk))
            holding.set()
            wait_until_another_backend_waits(cursor)
            list(Contact.objects.select_for_update().filter(pk=known.pk))

    def delete():
        with transaction.atomic(), connection.cursor() as cursor:
            try_set(cursor, "SET deadlock_timeout = '3s'")
        assert holding.wait(timeout=10)
        return admin_client.post(
            reverse("admin:contacts_contact_delete", args=[known.pk]), {"post": "yes"}
        )

    return other_transaction, delete


def _postgresql_only():
    if connection.vendor != "postgresql":
        pytest.skip(
            "SQLite serialises write transactions (IMMEDIATE): an erasure and another "
            "transaction never hold row locks at the same time, so they cannot deadlock"
        )


@pytest.mark.django_db(transaction=True)
def test_a_deletion_postgresql_aborts_as_a_deadlock_victim_runs_again(admin_client):
    _postgresql_only()
    known, visitor = _person()
    other_transaction, delete = _contended_delete(admin_client, known, visitor)
    before = deadlocks()

    (_, response), errors = in_threads([other_transaction, delete])

    assert errors == []
    assert deadlocks_since(before) == 1  # a real one, which the view got over
    assert response.status_code == 302
    assert response.url == reverse("admin:contacts_contact_changelist")
    assert not Contact.objects.filter(pk__in=[known.pk, visitor.pk]).exists()
    assert Erasure.objects.count() == 1


@pytest.mark.django_db(transaction=True)
def test_a_deletion_aborted_as_a_deadlock_victim_on_every_attempt_says_so(
    admin_client, english, monkeypatch
):
    # The deadlock above, with no attempt left after it: the operator is told to try again
    # (not a server error), and nothing was erased or logged.
    _postgresql_only()
    known, visitor = _person()
    monkeypatch.setattr(erasure_services, "ERASE_ATTEMPTS", 1)
    other_transaction, delete = _contended_delete(admin_client, known, visitor)

    (_, response), errors = in_threads([other_transaction, delete])

    assert errors == []
    delete_page = reverse("admin:contacts_contact_delete", args=[known.pk])
    assert (response.status_code, response.url) == (302, delete_page)
    page = admin_client.get(delete_page)
    shown = [str(m) for m in page.context["messages"]]
    assert any("kept getting in the way, so nothing was erased" in m for m in shown)
    assert Contact.objects.filter(pk__in=[known.pk, visitor.pk]).count() == 2
    assert not Erasure.objects.exists()
    assert not SuppressedIdentity.objects.exists()
    assert not LogEntry.objects.filter(object_id=str(known.pk)).exists()
    assert not AuditLog.objects.filter(action="contact.erase").exists()
