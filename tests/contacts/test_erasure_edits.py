"""An erased person's phone or email cannot be typed onto another contact either: not in the
edit form, not by a PATCH, not in the admin's change form (the add forms and the import already
refuse them). Only the person, signing up again by themselves, brings them back (identify)."""

import pytest
from django.urls import reverse

from contacts.models import Contact, Event, SuppressedIdentity
from contacts.services import IdentityInput, contact_erase, contact_update, identify
from core.errors import ValidationFailed
from tests.contacts.editing import edit_form_data
from tests.factories import ContactFactory

pytestmark = pytest.mark.django_db

PHONE, EMAIL = "+8613800138000", "lin@example.cn"


@pytest.fixture
def erased():
    """A person erased at their request; their phone and email are tombstones now."""
    person = identify(
        identities=[IdentityInput("wechat_unionid", "union-1")],
        traits={"name": "林小雨", "phone": PHONE, "email": EMAIL},
    ).contact
    contact_erase(contact=person, source="operator")
    assert SuppressedIdentity.objects.count() == 3


@pytest.fixture
def other():
    return ContactFactory(name="王芳", phone="", email="", city="上海")


def _unchanged(contact: Contact) -> None:
    contact.refresh_from_db()
    assert (contact.phone, contact.email, contact.city) == ("", "", "上海")
    assert not contact.identities.exists()
    assert not Event.objects.filter(contact=contact, name="profile_updated").exists()


@pytest.mark.parametrize(
    "field,typed,label", [("phone", "138 0013 8000", "phone"), ("email", "LIN@example.cn", "email")]
)
def test_the_service_refuses_an_erased_persons_phone_or_email_and_changes_nothing(
    erased, other, english, field, typed, label
):
    with pytest.raises(ValidationFailed) as caught:
        contact_update(contact=other, data={field: typed, "city": "北京"})

    assert caught.value.code == "erased"
    assert caught.value.details == {"field": field}
    assert f"This {label} belonged to a person whose data was erased" in caught.value.message
    _unchanged(other)


def test_the_edit_form_shows_the_refusal_on_the_field(erased, other, operator_client, english):
    url = reverse("contacts:edit", args=[other.pk])

    response = operator_client.post(url, edit_form_data(other, phone="13800138000", city="北京"))

    assert response.status_code == 200
    errors = response.context["form"].errors
    assert "This phone belonged to a person whose data was erased" in errors["phone"][0]
    _unchanged(other)


def test_a_patch_is_refused_with_its_code_and_field(erased, other, api, english):
    response = api.patch(
        f"/api/v1/contacts/{other.pk}", {"email": EMAIL, "city": "北京"}, format="json"
    )

    assert response.status_code == 400, response.json()
    error = response.json()["error"]
    assert (error["code"], error["details"]["field"]) == ("erased", "email")
    _unchanged(other)


def test_the_admin_change_form_refuses_it_too(erased, other, admin_client, english):
    url = reverse("admin:contacts_contact_change", args=[other.pk])
    form = admin_client.get(url).context["adminform"].form
    data = {
        name: value
        for name, value in form.initial.items()
        if value is not None and not isinstance(value, list | dict)
    }
    data |= {
        "phone": "13800138000",
        "city": "北京",
        "attributes": "{}",
        "identities-TOTAL_FORMS": "0",
        "identities-INITIAL_FORMS": "0",
    }
    for prefix in ("tags", "notes", "consents"):
        data |= {f"{prefix}-TOTAL_FORMS": "0", f"{prefix}-INITIAL_FORMS": "0"}

    response = admin_client.post(url, data)

    assert response.status_code == 200
    errors = response.context["adminform"].form.errors
    assert [e.code for e in errors.as_data()["phone"]] == ["erased"]
    _unchanged(other)


def test_a_phone_or_email_nobody_erased_is_taken(erased, other):
    contact_update(contact=other, data={"phone": "13900139000", "email": "wang@example.cn"})

    other.refresh_from_db()
    assert (other.phone, other.email) == ("+8613900139000", "wang@example.cn")


def test_a_contact_whose_stored_phone_was_erased_elsewhere_can_still_be_edited(erased):
    """Only a phone or email being changed is checked: a contact holding the value in its
    column (stored before the erasure, never an identity) keeps it and stays editable."""
    holder = ContactFactory(phone=PHONE, email="", city="上海")

    contact_update(contact=holder, data={"city": "北京"})

    holder.refresh_from_db()
    assert (holder.phone, holder.city) == (PHONE, "北京")
