"""Store staff keep the customers they edit within reach; errors name fields as operators know
them; the consent form's default source reads in the operator's language."""

import datetime as dt

import pytest
from django.urls import reverse
from django.utils import translation

from contacts import roles
from contacts.filters import ContactFilter
from contacts.forms import ConsentForm, ContactEditForm
from contacts.models import ConsentRecord, Contact, CustomField
from contacts.selectors import contact_visible_to
from contacts.services import contact_update
from core.errors import ValidationFailed
from tests.factories import ContactFactory, StoreFactory, UserFactory, user_with_role

pytestmark = pytest.mark.django_db

HX = {"HTTP_HX_REQUEST": "true"}


@pytest.fixture(autouse=True)
def _roles(db):
    roles.roles_sync()


def _zh(msgid: str) -> str:
    with translation.override("zh-hans"):
        return translation.gettext(msgid)


def _edit_data(contact: Contact, **overrides) -> dict:
    data = {
        "name": contact.name,
        "nickname": "",
        "gender": contact.gender,
        "birthday": "",
        "province": contact.province,
        "city": contact.city,
        "lifecycle_stage": contact.lifecycle_stage_id,
        "owner": contact.owner_id or "",
        "store": contact.store_id or "",
    }
    return {**data, **overrides}


@pytest.fixture
def shop():
    """A store with two clerks, another store with its own clerk, and an operator."""
    store, elsewhere = StoreFactory(), StoreFactory()
    return {
        "store": store,
        "elsewhere": elsewhere,
        "clerk": user_with_role("store_staff", store=store),
        "colleague": user_with_role("store_staff", store=store),
        "stranger": user_with_role("store_staff", store=elsewhere),
        "operator": user_with_role("operator"),
    }


# --- 1. Store staff cannot move a customer out of their reach --------------------------------


def test_store_staff_are_offered_only_their_store_and_its_people(shop):
    contact = ContactFactory(store=shop["store"])

    form = ContactEditForm(contact=contact, personal_data=False, user=shop["clerk"])

    assert list(form.fields["store"].queryset) == [shop["store"]]
    assert set(form.fields["owner"].queryset) == {shop["clerk"], shop["colleague"]}


def test_the_current_owner_and_store_stay_selectable_for_store_staff(shop):
    # Owned by the clerk but filed under another store: saving unchanged must not move it.
    contact = ContactFactory(store=shop["elsewhere"], owner=shop["stranger"])
    contact.owner = shop["clerk"]
    contact.save()

    form = ContactEditForm(
        _edit_data(contact), contact=contact, personal_data=False, user=shop["clerk"]
    )

    assert form.is_valid(), form.errors
    assert form.changes() == {}
    assert shop["elsewhere"] in form.fields["store"].queryset


@pytest.mark.parametrize("headers", [{}, HX], ids=["page", "inline"])
def test_store_staff_clearing_store_and_owner_is_refused_with_a_message(client, shop, headers):
    contact = ContactFactory(store=shop["store"], owner=shop["clerk"])
    client.force_login(shop["clerk"])

    response = client.post(
        reverse("contacts:edit", args=[contact.pk]),
        _edit_data(contact, owner="", store=""),
        **headers,
    )

    assert response.status_code == 200
    page = response.content.decode()
    expected = _zh(
        "You would no longer see this customer: keep yourself as the owner or "
        "keep the customer in your store."
    )
    assert expected in page
    contact.refresh_from_db()
    assert (contact.owner, contact.store) == (shop["clerk"], shop["store"])


def test_store_staff_cannot_pick_another_stores_people_or_store(client, shop):
    contact = ContactFactory(store=shop["store"], owner=shop["clerk"])
    client.force_login(shop["clerk"])

    response = client.post(
        reverse("contacts:edit", args=[contact.pk]),
        _edit_data(contact, owner=shop["stranger"].pk, store=shop["elsewhere"].pk),
    )

    assert response.status_code == 200
    assert set(response.context["form"].errors) == {"owner", "store"}
    contact.refresh_from_db()
    assert (contact.owner, contact.store) == (shop["clerk"], shop["store"])


def test_store_staff_may_hand_a_customer_to_a_colleague_within_the_store(client, shop):
    contact = ContactFactory(store=shop["store"], owner=shop["clerk"])
    client.force_login(shop["clerk"])

    response = client.post(
        reverse("contacts:edit", args=[contact.pk]),
        _edit_data(contact, owner=shop["colleague"].pk),
    )

    assert response.status_code == 302
    contact.refresh_from_db()
    assert contact.owner == shop["colleague"]
    assert contact_visible_to(user=shop["clerk"]).filter(pk=contact.pk).exists()


def test_store_staff_may_take_a_customer_out_of_the_store_if_they_keep_it(client, shop):
    contact = ContactFactory(store=shop["store"])
    client.force_login(shop["clerk"])

    response = client.post(
        reverse("contacts:edit", args=[contact.pk]),
        _edit_data(contact, owner=shop["clerk"].pk, store=""),
    )

    assert response.status_code == 302
    contact.refresh_from_db()
    assert (contact.owner, contact.store) == (shop["clerk"], None)


def test_store_staff_without_a_store_must_keep_owning_the_customer(client):
    clerk = user_with_role("store_staff")
    contact = ContactFactory(owner=clerk)
    form = ContactEditForm(
        _edit_data(contact, owner=""), contact=contact, personal_data=False, user=clerk
    )

    assert list(form.fields["owner"].queryset) == [clerk]
    assert not form.is_valid()
    assert form.non_field_errors()


def test_operators_still_pick_any_store_and_owner_and_may_clear_both(client, shop):
    contact = ContactFactory(store=shop["store"], owner=shop["clerk"])
    form = ContactEditForm(contact=contact, personal_data=False, user=shop["operator"])
    assert set(form.fields["store"].queryset) >= {shop["store"], shop["elsewhere"]}
    assert shop["stranger"] in form.fields["owner"].queryset

    client.force_login(shop["operator"])
    response = client.post(
        reverse("contacts:edit", args=[contact.pk]), _edit_data(contact, owner="", store="")
    )

    assert response.status_code == 302
    contact.refresh_from_db()
    assert (contact.owner, contact.store) == (None, None)


def test_the_list_owner_filter_offers_store_staff_only_their_stores_people(client, shop):
    admin = UserFactory(username="boss")
    filters = ContactFilter({}, queryset=Contact.objects.all(), user=shop["clerk"])
    assert set(filters.form.fields["owner"].queryset) == {shop["clerk"], shop["colleague"]}

    everyone = ContactFilter({}, queryset=Contact.objects.all(), user=shop["operator"])
    assert {shop["stranger"], admin} <= set(everyone.form.fields["owner"].queryset)

    client.force_login(shop["clerk"])
    page = client.get(reverse("contacts:list")).content.decode()
    assert shop["colleague"].username in page
    assert shop["stranger"].username not in page and "boss" not in page


# --- 2. Errors name fields by their label ------------------------------------------------------


def test_a_future_birthday_is_named_by_the_fields_verbose_name():
    contact = ContactFactory()
    future = dt.date.today() + dt.timedelta(days=3)

    with translation.override("zh-hans"), pytest.raises(ValidationFailed) as exc:
        contact_update(contact=contact, data={"birthday": future.isoformat()})

    assert "birthday" not in exc.value.message
    assert _zh("birthday") in exc.value.message
    assert (exc.value.code, exc.value.details) == ("invalid_field", {"field": "birthday"})


def test_custom_field_errors_name_the_label_and_keep_the_key_in_details():
    CustomField.objects.create(key="budget", label="预算", kind="number")
    CustomField.objects.create(
        key="interests", label="兴趣", kind="multi_choice", choices=["香水", "口红"]
    )
    contact = ContactFactory()

    for data, label in (({"budget": "lots"}, "预算"), ({"interests": ["滑雪"]}, "兴趣")):
        with translation.override("zh-hans"), pytest.raises(ValidationFailed) as exc:
            contact_update(contact=contact, data=data)
        (key,) = data
        assert label in exc.value.message and key not in exc.value.message
        assert exc.value.details == {"field": key}


def test_the_edit_form_shows_the_birthday_error_without_the_internal_name(operator_client):
    contact = ContactFactory()
    future = (dt.date.today() + dt.timedelta(days=3)).isoformat()

    response = operator_client.post(
        reverse("contacts:edit", args=[contact.pk]), _edit_data(contact, birthday=future)
    )

    page = response.content.decode()
    assert response.status_code == 200
    assert "“birthday”" not in page and "'birthday'" not in page
    assert response.context["form"].errors["birthday"]


def test_the_api_keeps_reporting_the_field_key_in_details(api):
    CustomField.objects.create(key="budget", label="预算", kind="number")
    contact = ContactFactory()

    response = api.patch(f"/api/v1/contacts/{contact.pk}", {"budget": "lots"}, format="json")

    assert response.status_code == 400
    assert response.json()["error"]["details"] == {"field": "budget"}


# --- 3. The consent source reads in the operator's language ------------------------------------


def test_the_consent_forms_default_source_is_translated_and_stored_as_its_code(operator_client):
    contact = ContactFactory()
    label = _zh("Entered by an operator")

    page = operator_client.get(reverse("contacts:detail", args=[contact.pk])).content.decode()
    assert f'value="{label}"' in page

    form = ConsentForm({"channel": "sms", "purpose": "marketing", "granted": "1", "source": label})
    with translation.override("zh-hans"):
        assert form.is_valid(), form.errors
    assert form.cleaned_data["source"] == "operator"

    operator_client.post(
        reverse("contacts:consent", args=[contact.pk]),
        {"channel": "sms", "purpose": "marketing", "granted": "1", "source": label},
    )
    assert ConsentRecord.objects.get(contact=contact).source == "operator"
    page = operator_client.get(reverse("contacts:detail", args=[contact.pk])).content.decode()
    assert f"· {label}" in page


def test_a_source_of_the_operators_own_words_stays_as_typed():
    form = ConsentForm(
        {"channel": "sms", "purpose": "marketing", "granted": "1", "source": "门店纸质表"}
    )
    assert form.is_valid(), form.errors
    assert form.cleaned_data["source"] == "门店纸质表"
