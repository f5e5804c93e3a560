"""A tag given until a time: set by the service, the API and the 360 page; removed when due."""

import datetime as dt

import pytest
import yaml
from django.urls import reverse
from django.utils import timezone

from contacts.forms import TagAddForm
from contacts.models import ContactTag, Event
from contacts.services import contact_tag_add, contact_tags_add, contact_tags_expire
from core.errors import ValidationFailed
from tests.factories import ContactFactory, TagFactory

pytestmark = pytest.mark.django_db


def _in(days: float) -> dt.datetime:
    return (timezone.now() + dt.timedelta(days=days)).replace(microsecond=0)


# --- The service ------------------------------------------------------------------------------


def test_a_tag_added_with_an_expiry_keeps_it_and_is_removed_when_it_passes():
    contact, tag = ContactFactory(), TagFactory()
    until = _in(7)
    assert contact_tag_add(contact=contact, tag=tag, expires_at=until)
    assert ContactTag.objects.get(contact=contact, tag=tag).expires_at == until
    added = Event.objects.get(contact=contact, name="tag_added")
    assert added.properties["expires_at"] == until.isoformat()

    assert contact_tags_expire(now=until - dt.timedelta(seconds=1)) == 0
    assert contact_tags_expire(now=until) == 1
    assert not ContactTag.objects.filter(contact=contact).exists()


def test_an_expiry_that_is_not_in_the_future_is_refused_and_nothing_is_tagged():
    contact, tag = ContactFactory(), TagFactory()
    for past in (timezone.now(), _in(-1)):
        with pytest.raises(ValidationFailed) as exc:
            contact_tag_add(contact=contact, tag=tag, expires_at=past)
        assert exc.value.code == "invalid_expiry"
        assert exc.value.details == {"field": "expires_at"}
    assert not ContactTag.objects.exists()
    assert not Event.objects.filter(name="tag_added").exists()


def test_re_adding_a_tag_with_a_new_expiry_updates_it_and_is_idempotent():
    contact, tag = ContactFactory(), TagFactory()
    contact_tag_add(contact=contact, tag=tag, expires_at=_in(1))
    later = _in(30)
    assert not contact_tag_add(contact=contact, tag=tag, expires_at=later)
    assert not contact_tag_add(contact=contact, tag=tag, expires_at=later)
    assignment = ContactTag.objects.get(contact=contact, tag=tag)
    assert assignment.expires_at == later
    assert Event.objects.filter(contact=contact, name="tag_added").count() == 1


def test_re_adding_a_tag_without_an_expiry_keeps_the_one_it_has():
    contact, tag = ContactFactory(), TagFactory()
    until = _in(3)
    contact_tag_add(contact=contact, tag=tag, expires_at=until)
    assert not contact_tag_add(contact=contact, tag=tag)
    assert ContactTag.objects.get(contact=contact, tag=tag).expires_at == until


def test_a_naive_expiry_is_read_in_the_current_time_zone():
    contact, tag = ContactFactory(), TagFactory()
    naive = timezone.localtime(_in(2)).replace(tzinfo=None)
    contact_tag_add(contact=contact, tag=tag, expires_at=naive)
    stored = ContactTag.objects.get(contact=contact, tag=tag).expires_at
    assert stored == timezone.make_aware(naive)


def test_several_tags_with_a_past_expiry_add_none():
    contact = ContactFactory()
    with pytest.raises(ValidationFailed):
        contact_tags_add(contact=contact, tags=[TagFactory(), TagFactory()], expires_at=_in(-1))
    assert not ContactTag.objects.exists()


# --- The API ----------------------------------------------------------------------------------


def _tag_url(contact) -> str:
    return f"/api/v1/contacts/{contact.pk}/tags"


def test_api_tags_a_contact_until_a_time(api):
    contact, tag = ContactFactory(), TagFactory()
    until = _in(5)
    response = api.post(
        _tag_url(contact), {"tags": [tag.pk], "expires_at": until.isoformat()}, format="json"
    )
    assert response.status_code == 200
    assert response.json()["added"] == [str(tag)]
    assert ContactTag.objects.get(contact=contact, tag=tag).expires_at == until


def test_api_re_adding_a_tag_with_a_new_expiry_updates_it(api):
    contact, tag = ContactFactory(), TagFactory()
    api.post(_tag_url(contact), {"tags": [tag.pk], "expires_at": _in(1).isoformat()}, format="json")
    later = _in(10)
    body = {"tags": [str(tag)], "expires_at": later.isoformat()}
    for _attempt in range(2):
        response = api.post(_tag_url(contact), body, format="json")
        assert response.status_code == 200
        assert response.json() == {"added": [], "tags": [str(tag)]}
    assert ContactTag.objects.get(contact=contact, tag=tag).expires_at == later


def test_api_without_an_expiry_adds_a_tag_that_never_expires(api):
    contact, tag = ContactFactory(), TagFactory()
    response = api.post(_tag_url(contact), {"tags": [tag.pk], "expires_at": None}, format="json")
    assert response.status_code == 200
    assert ContactTag.objects.get(contact=contact, tag=tag).expires_at is None


def test_api_refuses_an_expiry_in_the_past_and_adds_nothing(api):
    contact = ContactFactory()
    tags = [TagFactory().pk, TagFactory().pk]
    response = api.post(
        _tag_url(contact), {"tags": tags, "expires_at": _in(-1).isoformat()}, format="json"
    )
    assert response.status_code == 400
    error = response.json()["error"]
    assert error["code"] == "invalid_expiry"
    assert error["details"] == {"field": "expires_at"}
    assert not ContactTag.objects.exists()


def test_api_refuses_an_expiry_that_is_not_a_time(api):
    contact, tag = ContactFactory(), TagFactory()
    response = api.post(
        _tag_url(contact), {"tags": [tag.pk], "expires_at": "next week"}, format="json"
    )
    assert response.status_code == 400
    assert response.json()["error"]["code"] == "invalid"
    assert "expires_at" in response.json()["error"]["message"]
    assert not ContactTag.objects.exists()


def test_schema_documents_the_tag_expiry_with_an_example(client):
    schema = yaml.safe_load(client.get("/api/schema/").content)
    operation = schema["paths"]["/api/v1/contacts/{contact_id}/tags"]["post"]
    body = operation["requestBody"]["content"]["application/json"]
    component = body["schema"]["$ref"].rsplit("/", 1)[-1]
    properties = schema["components"]["schemas"][component]["properties"]
    assert properties["expires_at"]["format"] == "date-time"
    assert properties["expires_at"]["nullable"] is True
    assert any("expires_at" in example["value"] for example in body["examples"].values())


# --- The 360 page -----------------------------------------------------------------------------


def test_tag_form_takes_an_optional_future_expiry():
    tag = TagFactory()
    until = timezone.localtime(_in(3))
    form = TagAddForm({"tag": tag.pk, "expires_at": until.strftime("%Y-%m-%dT%H:%M")})
    assert form.is_valid(), form.errors
    assert form.cleaned_data["expires_at"] == until.replace(second=0)

    blank = TagAddForm({"tag": tag.pk, "expires_at": ""})
    assert blank.is_valid()
    assert blank.cleaned_data["expires_at"] is None


def test_tag_form_refuses_an_expiry_in_the_past():
    past = timezone.localtime(_in(-1)).strftime("%Y-%m-%dT%H:%M")
    form = TagAddForm({"tag": TagFactory().pk, "expires_at": past})
    assert not form.is_valid()
    assert form.has_error("expires_at", code="invalid_expiry")


def test_360_page_offers_the_expiry_and_shows_a_tag_s_expiry(operator_client):
    contact, tag = ContactFactory(), TagFactory(name="双11意向")
    contact_tag_add(contact=contact, tag=tag, expires_at=_in(2))
    response = operator_client.get(reverse("contacts:detail", args=[contact.pk]))
    html = response.content.decode()
    assert 'type="datetime-local"' in html
    assert 'name="expires_at"' in html
    until = timezone.localtime(ContactTag.objects.get().expires_at).strftime("%Y-%m-%d %H:%M")
    assert until in html


def test_360_page_tags_a_contact_until_a_time(operator_client):
    contact, tag = ContactFactory(), TagFactory()
    until = timezone.localtime(_in(4)).replace(second=0)
    operator_client.post(
        reverse("contacts:tag_add", args=[contact.pk]),
        {"tag": tag.pk, "expires_at": until.strftime("%Y-%m-%dT%H:%M")},
    )
    assert ContactTag.objects.get(contact=contact, tag=tag).expires_at == until


def test_a_tag_an_auto_tag_rule_keeps_takes_no_expiry():
    """The rule tags on entry only: an expiry would take the tag off a member for good."""
    from contacts.models import TagSource

    contact, tag = ContactFactory(), TagFactory()
    contact_tag_add(contact=contact, tag=tag, source=TagSource.RULE)
    assert not contact_tag_add(contact=contact, tag=tag, expires_at=_in(3))
    assert ContactTag.objects.get(contact=contact, tag=tag).expires_at is None
