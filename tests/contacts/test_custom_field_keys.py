"""A custom field's key is read by filters and rules as `attributes__<key>`: keys Django would
read as nesting, a lookup or an array index are refused wherever a field is saved."""

import pytest
from django.urls import reverse

from contacts.models import CustomField, CustomFieldKind
from contacts.services.custom_fields import custom_field_save
from core.errors import ValidationFailed

pytestmark = pytest.mark.django_db

REFUSED = ["contains", "in", "exact", "gt", "isnull", "has_key", "size__cm", "1st_store", "_x"]


@pytest.mark.parametrize("key", REFUSED)
def test_the_service_refuses_a_key_queries_would_misread(key):
    with pytest.raises(ValidationFailed) as refused:
        custom_field_save(field=CustomField(key=key, label="x", kind=CustomFieldKind.TEXT))

    assert refused.value.code == "invalid_key"
    assert refused.value.details == {"field": "key"}
    assert not CustomField.objects.exists()


@pytest.mark.parametrize("key", ["skin_type", "store2", "contains_code", "in_store", "x_1"])
def test_ordinary_keys_are_saved(key):
    custom_field_save(field=CustomField(key=key, label="x", kind=CustomFieldKind.TEXT))

    assert CustomField.objects.filter(key=key).exists()


def test_the_admin_shows_the_refusal_at_the_key(operator_client):
    url = reverse("admin:contacts_customfield_add")
    data = {"label": "编码", "kind": "text", "position": 0, "choices": "[]"}

    refused = operator_client.post(url, {**data, "key": "contains"})

    assert refused.status_code == 200
    assert "key" in refused.context["adminform"].form.errors
    assert not CustomField.objects.exists()
    assert operator_client.post(url, {**data, "key": "coupon_code"}).status_code == 302


def test_a_field_saved_before_keys_were_checked_can_still_be_edited(operator_client):
    # As an older version saved it, without the check.
    legacy = CustomField.objects.create(key="1st_store", label="首店", kind=CustomFieldKind.TEXT)

    legacy.label = "首次到店"
    custom_field_save(field=legacy)
    response = operator_client.post(
        reverse("admin:contacts_customfield_change", args=[legacy.pk]),
        {"key": "1st_store", "label": "首次门店", "kind": "text", "position": 0, "choices": "[]"},
    )

    assert response.status_code == 302
    assert CustomField.objects.get(pk=legacy.pk).label == "首次门店"
    with pytest.raises(ValidationFailed):
        legacy.key = "2nd_store"
        custom_field_save(field=legacy)
