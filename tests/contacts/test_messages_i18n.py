"""Service errors and timeline labels read in the operator's language; the API stays English."""

import datetime as dt
import re

import pytest
from django.template import Context, Template
from django.urls import reverse
from django.utils import translation

from contacts.models import CustomField, MergeRecord
from contacts.services import (
    contact_merge,
    contact_merge_undo,
    contact_update,
    custom_fields_validate,
    normalize_phone,
)
from core.errors import DomainError, ValidationFailed
from tests.factories import ContactFactory, EventFactory, IdentityFactory

pytestmark = pytest.mark.django_db

CJK = re.compile(r"[\u4e00-\u9fff]")


def _in(language: str, msgid: str, **params) -> str:
    """The text a service raises under `language`, as the catalog gives it."""
    with translation.override(language):
        text = translation.gettext(msgid)
    return text % params if params else text


def _message(language: str, call) -> str:
    with translation.override(language), pytest.raises(DomainError) as exc:
        call()
    return exc.value.message


# --- (a) services raise in the active language ----------------------------------------------


@pytest.mark.parametrize(
    ("call", "english"),
    [
        (lambda: normalize_phone("12345"), "'12345' is not a valid phone number."),
        (
            lambda: custom_fields_validate(values={"shoe_size": "big"}),
            # Named by its label, as operators know it; the key stays in the error's details.
            "Custom field '鞋码' must be a number.",
        ),
        (lambda: custom_fields_validate(values={"nope": 1}), "Unknown field 'nope'."),
    ],
)
def test_a_service_error_reads_in_english_or_chinese(call, english):
    CustomField.objects.create(key="shoe_size", label="鞋码", kind="number")

    assert _message("en", call) == english
    chinese = _message("zh-hans", call)
    assert CJK.search(chinese), chinese
    assert chinese != english


def test_profile_errors_keep_their_code_and_field_in_both_languages():
    contact = ContactFactory()
    future = (dt.date.today() + dt.timedelta(days=3)).isoformat()
    errors = {}
    for language in ("en", "zh-hans"):
        with translation.override(language), pytest.raises(ValidationFailed) as exc:
            contact_update(contact=contact, data={"birthday": future})
        errors[language] = exc.value

    assert errors["en"].message == "Field 'Birthday' is in the future."
    # The field by its name in the reader's language; its key stays in the details.
    assert errors["zh-hans"].message == _in(
        "zh-hans", "Field '%(field)s' is in the future.", field="生日"
    )
    assert CJK.search(errors["zh-hans"].message)
    for error in errors.values():
        assert (error.code, error.details) == ("invalid_field", {"field": "birthday"})


def test_a_merge_undone_twice_is_refused_in_the_operators_language():
    survivor, duplicate = ContactFactory(), ContactFactory()
    contact_merge(survivor=survivor, duplicate=duplicate)
    record = MergeRecord.objects.get(survivor=survivor)
    contact_merge_undo(record=record)

    english = _message("en", lambda: contact_merge_undo(record=record))
    chinese = _message("zh-hans", lambda: contact_merge_undo(record=record))

    assert english == "This merge was already undone."
    assert chinese == _in("zh-hans", "This merge was already undone.")
    assert CJK.search(chinese)


# --- (b) the operator UI shows the Chinese text ---------------------------------------------


def test_the_edit_form_shows_the_phone_error_in_chinese(operator_client):
    contact = ContactFactory(name="林小雨")
    data = {
        "name": contact.name,
        "nickname": "",
        "gender": contact.gender,
        "birthday": "",
        "phone": "12345",
        "email": "",
        "province": "",
        "city": "",
        "lifecycle_stage": contact.lifecycle_stage_id,
        "owner": "",
        "store": "",
    }

    response = operator_client.post(reverse("contacts:edit", args=[contact.pk]), data)

    page = response.content.decode()
    assert response.status_code == 200
    expected = _in("zh-hans", "'%(value)s' is not a valid phone number.", value="12345")
    assert CJK.search(expected) and expected in page
    assert "is not a valid phone number" not in page


def test_the_edit_form_names_the_contact_a_phone_belongs_to_in_chinese(operator_client):
    other = ContactFactory(phone="+8613900139000")
    IdentityFactory(contact=other, kind="phone", value="+8613900139000")
    contact = ContactFactory()
    data = {
        "name": contact.name,
        "gender": contact.gender,
        "phone": "13900139000",
        "lifecycle_stage": contact.lifecycle_stage_id,
    }

    page = operator_client.post(reverse("contacts:edit", args=[contact.pk]), data)

    expected = _in(
        "zh-hans",
        "This phone belongs to contact %(contact)s; merge the two contacts instead.",
        contact=other.pk,
    )
    assert CJK.search(expected) and expected in page.content.decode()


# --- (c) the API answers in English unless the client asks otherwise ------------------------


def test_the_api_answers_in_english_by_default_and_in_chinese_on_request(api):
    contact = ContactFactory()
    url = f"/api/v1/contacts/{contact.pk}"

    default = api.patch(url, {"phone": "12345"}, format="json")
    chinese = api.patch(url, {"phone": "12345"}, format="json", HTTP_ACCEPT_LANGUAGE="zh-hans")

    assert default.status_code == chinese.status_code == 400
    assert default.json()["error"] == {
        "code": "invalid_phone",
        "message": "'12345' is not a valid phone number.",
        "details": {"field": "phone"},
    }
    error = chinese.json()["error"]
    assert (error["code"], error["details"]) == ("invalid_phone", {"field": "phone"})
    assert error["message"] == _in(
        "zh-hans", "'%(value)s' is not a valid phone number.", value="12345"
    )


def test_identify_reports_a_bad_custom_field_in_english(api):
    CustomField.objects.create(key="shoe_size", label="鞋码", kind="number")

    response = api.post(
        "/api/v1/identify",
        {"identities": [{"kind": "external_id", "value": "VIP-1"}], "traits": {"shoe_size": "x"}},
        format="json",
    )

    assert response.status_code == 400
    error = response.json()["error"]
    assert error["message"] == "Custom field '鞋码' must be a number."
    assert error["details"]["field"] == "shoe_size"


# --- (d) timeline labels ----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "english"),
    [
        ("stage_changed", "Lifecycle stage changed"),
        ("message_delivered", "Message delivered"),
        ("message_opened", "Message opened"),
        ("message_clicked", "Message clicked"),
        ("referral_accepted", "Accepted an invitation"),
    ],
)
def test_timeline_labels_for_the_documented_events(name, english):
    template = Template("{% load contacts_ui %}{{ name|event_label }}")

    with translation.override("en"):
        assert template.render(Context({"name": name})) == english
    with translation.override("zh-hans"):
        chinese = template.render(Context({"name": name}))
    assert chinese == _in("zh-hans", english) and CJK.search(chinese)


def test_every_standard_event_name_has_a_label():
    from contacts.templatetags.contacts_ui import EVENT_LABELS
    from segments.selectors import STANDARD_EVENT_NAMES

    assert set(STANDARD_EVENT_NAMES) - set(EVENT_LABELS) == set()


def test_the_contact_timeline_shows_a_stage_change_in_chinese(operator_client):
    contact = ContactFactory()
    EventFactory(
        contact=contact,
        name="stage_changed",
        properties={"from": "interested", "to": "lead", "reason": "lead_score"},
    )

    page = operator_client.get(reverse("contacts:detail", args=[contact.pk])).content.decode()

    label = _in("zh-hans", "Lifecycle stage changed")
    assert f'<div class="timeline-title">{label}</div>' in page
