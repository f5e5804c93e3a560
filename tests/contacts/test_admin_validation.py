import pytest
from django.forms import MultiWidget
from django.urls import reverse

from contacts.models import (
    Contact,
    ContactTag,
    CustomField,
    CustomFieldKind,
    Event,
    Identity,
    IdentityKind,
)
from contacts.services.custom_fields import custom_field_save
from core.errors import ValidationFailed
from segments import scoring
from segments.services import segment_create, segment_update, segments_tick
from tests.factories import ContactFactory, IdentityFactory, TagFactory

pytestmark = pytest.mark.django_db


def _form_as_posted(response) -> dict[str, str]:
    """The admin change form's fields as the browser would post them unchanged (no inline rows)."""
    data: dict[str, str] = {}
    for field in response.context["adminform"].form:
        value, widget = field.value(), field.field.widget
        if isinstance(widget, MultiWidget):
            for i, part in enumerate(widget.decompress(value)):
                data[f"{field.html_name}_{i}"] = "" if part is None else str(part)
        elif isinstance(value, bool):
            if value:
                data[field.html_name] = "on"
        else:
            data[field.html_name] = "" if value is None else str(value)
    for inline in response.context["inline_admin_formsets"]:
        prefix = inline.formset.prefix
        data.update({f"{prefix}-TOTAL_FORMS": "0", f"{prefix}-INITIAL_FORMS": "0"})
    return data


def _post_change(client, contact, **changes):
    url = reverse("admin:contacts_contact_change", args=[contact.pk])
    data = {**_form_as_posted(client.get(url)), **changes}
    return client.post(url, data)


def _phone_identities(contact) -> list[str]:
    return list(
        Identity.objects.filter(contact=contact, kind=IdentityKind.PHONE).values_list(
            "value", flat=True
        )
    )


@pytest.fixture
def contact():
    contact = ContactFactory(phone="+8613800138000", attributes={"wx_city": "杭州"})
    IdentityFactory(contact=contact, kind=IdentityKind.PHONE, value="+8613800138000")
    return contact


def test_an_invalid_phone_is_refused_and_nothing_changes(operator_client, contact):
    response = _post_change(operator_client, contact, phone="12345", name="改了名字")

    assert response.status_code == 200
    assert "phone" in response.context["adminform"].form.errors
    contact.refresh_from_db()
    assert contact.phone == "+8613800138000" and contact.name != "改了名字"
    assert _phone_identities(contact) == ["+8613800138000"]


def test_a_phone_is_stored_in_e164_and_replaces_the_phone_identity(operator_client, contact):
    response = _post_change(operator_client, contact, phone="139 0013 9000", city="杭州")

    assert response.status_code == 302
    contact.refresh_from_db()
    assert contact.phone == "+8613900139000"
    assert contact.city == "杭州"
    assert _phone_identities(contact) == ["+8613900139000"]
    event = Event.objects.get(contact=contact, name="profile_updated")
    assert event.properties["fields"] == ["phone"] and event.source == "admin"


def test_a_phone_of_another_contact_is_refused(operator_client, contact):
    other = ContactFactory(phone="+8613900139000")
    IdentityFactory(contact=other, kind=IdentityKind.PHONE, value="+8613900139000")

    response = _post_change(operator_client, contact, phone="13900139000")

    assert response.status_code == 200
    assert "phone" in response.context["adminform"].form.errors
    contact.refresh_from_db()
    assert contact.phone == "+8613800138000"


def test_an_email_is_lowercased_and_becomes_an_identity(operator_client, contact):
    assert _post_change(operator_client, contact, email="Lin@Example.COM").status_code == 302

    contact.refresh_from_db()
    assert contact.email == "lin@example.com"
    assert Identity.objects.filter(contact=contact, kind="email", value="lin@example.com").exists()


def test_a_contact_added_in_the_admin_gets_a_normalised_phone_and_its_identity(operator_client):
    url = reverse("admin:contacts_contact_add")
    data = {**_form_as_posted(operator_client.get(url)), "name": "新客户", "phone": "13700137000"}

    assert operator_client.post(url, data).status_code == 302

    contact = Contact.objects.get(name="新客户")
    assert contact.phone == "+8613700137000"
    assert _phone_identities(contact) == ["+8613700137000"]


@pytest.mark.parametrize(
    "attributes",
    ['{"wx_city": "杭州", "age": "很老"}', '{"wx_city": "杭州", "unknown_key": 1}', '["a"]'],
    ids=["ill-typed", "unknown", "not-an-object"],
)
def test_unknown_or_ill_typed_custom_fields_are_refused(operator_client, contact, attributes):
    CustomField.objects.create(key="age", label="年龄", kind=CustomFieldKind.NUMBER)

    response = _post_change(operator_client, contact, attributes=attributes)

    assert response.status_code == 200
    assert "attributes" in response.context["adminform"].form.errors
    contact.refresh_from_db()
    assert contact.attributes == {"wx_city": "杭州"}


def test_every_wrong_custom_field_value_is_listed_at_once(operator_client, contact):
    CustomField.objects.create(key="age", label="年龄", kind=CustomFieldKind.NUMBER)
    CustomField.objects.create(key="vip", label="贵宾", kind=CustomFieldKind.BOOLEAN)

    response = _post_change(
        operator_client, contact, attributes='{"age": "很老", "vip": "也许", "nope": 1}'
    )

    assert response.status_code == 200
    errors = response.context["adminform"].form.errors["attributes"]
    assert len(errors) == 3
    assert any("年龄" in e for e in errors)
    assert any("贵宾" in e for e in errors)
    assert any("nope" in e for e in errors)
    contact.refresh_from_db()
    assert contact.attributes == {"wx_city": "杭州"}


def test_custom_fields_are_stored_cleaned_and_free_traits_are_kept(operator_client, contact):
    CustomField.objects.create(key="age", label="年龄", kind=CustomFieldKind.NUMBER)
    CustomField.objects.create(key="vip", label="贵宾", kind=CustomFieldKind.BOOLEAN)

    response = _post_change(
        operator_client, contact, attributes='{"wx_city": "杭州", "age": "42", "vip": "是"}'
    )

    assert response.status_code == 302
    contact.refresh_from_db()
    assert contact.attributes == {"wx_city": "杭州", "age": 42, "vip": True}


def test_identities_added_in_the_admin_are_normalised(operator_client, contact):
    url = reverse("admin:contacts_identity_add")
    base = {"contact": contact.pk, "kind": IdentityKind.PHONE, "app_id": ""}

    refused = operator_client.post(url, {**base, "value": "not a phone"})
    assert refused.status_code == 200
    assert not Identity.objects.filter(value="not a phone").exists()

    assert operator_client.post(url, {**base, "value": "137 0013 7000"}).status_code == 302
    assert Identity.objects.filter(contact=contact, value="+8613700137000").exists()


def test_removing_custom_fields_and_free_traits(operator_client, contact):
    CustomField.objects.create(key="age", label="年龄", kind=CustomFieldKind.NUMBER)
    Contact.objects.filter(pk=contact.pk).update(attributes={"wx_city": "杭州", "age": 30})

    assert _post_change(operator_client, contact, attributes="{}").status_code == 302

    contact.refresh_from_db()
    assert contact.attributes == {}
    event = Event.objects.get(contact=contact, name="profile_updated")
    assert event.properties["fields"] == ["age"]


def _with_inline_rows(response, data: dict[str, str]) -> dict[str, str]:
    """Add the inline rows (identities, tags) as the browser posts them, unchanged."""
    for inline in response.context["inline_admin_formsets"]:
        formset = inline.formset
        data[f"{formset.prefix}-TOTAL_FORMS"] = str(len(formset.forms))
        data[f"{formset.prefix}-INITIAL_FORMS"] = str(formset.initial_form_count())
        for form in formset.forms:
            for field in form:
                value = field.value()
                if value is not None and not isinstance(value, bool):
                    data[field.html_name] = str(value)
    return data


def test_a_legacy_value_left_as_it_is_does_not_block_saving(operator_client):
    """Stored before validation existed: a phone and a phone identity that do not normalise."""
    contact = ContactFactory(phone="12345")
    IdentityFactory(contact=contact, kind=IdentityKind.PHONE, value="12345")
    url = reverse("admin:contacts_contact_change", args=[contact.pk])
    page = operator_client.get(url)
    data = _with_inline_rows(page, {**_form_as_posted(page), "name": "改了名字"})

    response = operator_client.post(url, data)

    assert response.status_code == 302
    contact.refresh_from_db()
    assert contact.name == "改了名字" and contact.phone == "12345"


def test_tags_edited_inline_reach_the_segments(operator_client, django_capture_on_commit_callbacks):
    from segments.models import DirtyContact

    tag = TagFactory(name="VIP")
    segment = segment_create(
        name="VIP",
        rule={"op": "and", "conditions": [{"type": "tag", "match": "any", "tags": [tag.pk]}]},
    )
    contact = ContactFactory()
    url = reverse("admin:contacts_contact_change", args=[contact.pk])
    page = operator_client.get(url)
    data = _form_as_posted(page)
    prefix = next(
        i.formset.prefix
        for i in page.context["inline_admin_formsets"]
        if i.formset.model is ContactTag
    )
    data.update(
        {
            f"{prefix}-TOTAL_FORMS": "1",
            f"{prefix}-0-tag": str(tag.pk),
            f"{prefix}-0-source": "manual",
        }
    )

    with django_capture_on_commit_callbacks(execute=True):
        response = operator_client.post(url, data)

    assert response.status_code == 302
    assert contact.contact_tags.filter(tag=tag).exists()
    assert set(segment.memberships.values_list("contact_id", flat=True)) == {contact.pk}
    assert not DirtyContact.objects.filter(contact_id=contact.pk).exists()


# --- a custom field that rules read --------------------------------------------------------------


def _skin_rule() -> dict:
    return {
        "op": "and",
        "conditions": [
            {"type": "attribute", "field": "attributes.skin", "operator": "eq", "value": "dry"}
        ],
    }


def _post_field(client, field, **changes):
    url = reverse("admin:contacts_customfield_change", args=[field.pk])
    data = {**_form_as_posted(client.get(url)), **changes}
    return client.post(url, data)


@pytest.fixture
def skin():
    return CustomField.objects.create(key="skin", label="肤质", kind=CustomFieldKind.TEXT)


def test_a_field_a_segment_reads_cannot_be_renamed_in_the_admin(admin_client, skin):
    contact = ContactFactory(attributes={"skin": "dry"})
    segment = segment_create(name="干性肌肤", rule=_skin_rule())

    response = _post_field(admin_client, skin, key="skin_type")

    assert response.status_code == 200  # the form again, saying why
    errors = response.context["adminform"].form.errors["key"]
    assert "干性肌肤" in errors[0]
    skin.refresh_from_db()
    assert skin.key == "skin"
    segments_tick()
    segment.refresh_from_db()
    assert segment.refresh_error == ""
    assert list(segment.memberships.values_list("contact_id", flat=True)) == [contact.pk]


def test_a_field_a_lead_score_rule_reads_keeps_its_type(admin_client, skin):
    scoring.score_rule_create(
        data={"name": "干性肌肤加分", "kind": "attribute", "condition": _skin_rule(), "points": 5}
    )

    response = _post_field(admin_client, skin, kind=CustomFieldKind.NUMBER)

    assert "干性肌肤加分" in response.context["adminform"].form.errors["kind"][0]
    skin.refresh_from_db()
    assert skin.kind == CustomFieldKind.TEXT


def test_a_field_rules_read_can_still_be_relabelled_and_deactivated(admin_client, skin):
    segment_create(name="干性肌肤", rule=_skin_rule())

    response = _post_field(admin_client, skin, label="皮肤类型", is_active="")

    assert response.status_code == 302
    skin.refresh_from_db()
    assert (skin.key, skin.label, skin.is_active) == ("skin", "皮肤类型", False)


def test_a_field_nothing_reads_can_be_renamed(admin_client, skin):
    response = _post_field(
        admin_client,
        skin,
        key="skin_type",
        kind=CustomFieldKind.SINGLE_CHOICE,
        choices='["干性", "油性"]',
    )

    assert response.status_code == 302
    skin.refresh_from_db()
    assert (skin.key, skin.kind) == ("skin_type", CustomFieldKind.SINGLE_CHOICE)


def test_the_service_refuses_a_rename_while_a_segment_reads_the_field(skin):
    segment = segment_create(name="干性肌肤", rule=_skin_rule())
    skin.key = "skin_type"

    with pytest.raises(ValidationFailed) as refused:
        custom_field_save(field=skin)

    assert refused.value.code == "field_in_use"
    assert "干性肌肤" in refused.value.message
    assert CustomField.objects.get(pk=skin.pk).key == "skin"
    segment_update(segment=segment, rule={"op": "and", "conditions": []})
    custom_field_save(field=skin)
    assert CustomField.objects.get(pk=skin.pk).key == "skin_type"
