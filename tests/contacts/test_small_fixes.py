"""Bulk tag with an expiry, whole-sentence service errors, the edit form's inactive stage and
the custom-field definition checks."""

import datetime as dt
import re

import pytest
from django.core.exceptions import ValidationError
from django.urls import reverse
from django.utils import timezone, translation

from contacts import bulk
from contacts.forms import ContactEditForm
from contacts.models import Contact, ContactTag, CustomField, CustomFieldKind, Event, Stage
from contacts.services import note_add
from core.errors import ValidationFailed
from core.models import Job, JobStatus
from tests.factories import ContactFactory, TagFactory

pytestmark = pytest.mark.django_db

CJK = re.compile(r"[\u4e00-\u9fff]")


def _local_minute(days: float) -> dt.datetime:
    """A time `days` away, to the minute, as a datetime-local input sends it."""
    return timezone.localtime(timezone.now() + dt.timedelta(days=days)).replace(
        second=0, microsecond=0
    )


def _field(when: dt.datetime) -> str:
    return timezone.localtime(when).strftime("%Y-%m-%dT%H:%M")


def _expiries(tag) -> dict[int, dt.datetime | None]:
    return dict(ContactTag.objects.filter(tag=tag).values_list("contact_id", "expires_at"))


# --- 1. Bulk tag with an expiry ---------------------------------------------------------------


def test_bulk_tag_from_the_list_sets_the_expiry_and_a_re_tag_replaces_it(operator_client):
    tag = TagFactory(name="限时")
    first, second = ContactFactory(), ContactFactory()
    until = _local_minute(7)
    url = reverse("contacts:bulk_tag")

    response = operator_client.post(
        url,
        {
            "bulk_tag": tag.pk,
            "op": "add",
            "scope": "selected",
            "ids": [first.pk],
            "expires_at": _field(until),
        },
    )

    assert response.status_code == 302
    assert _expiries(tag) == {first.pk: until}
    added = Event.objects.get(contact=first, name="tag_added")
    assert added.properties["expires_at"] == until.isoformat() and added.properties["bulk"]

    # Again over both: the new contact gets the tag, the tagged one only a new expiry.
    later = _local_minute(30)
    operator_client.post(
        url,
        {
            "bulk_tag": tag.pk,
            "op": "add",
            "scope": "selected",
            "ids": [first.pk, second.pk],
            "expires_at": _field(later),
        },
    )

    assert _expiries(tag) == {first.pk: later, second.pk: later}
    assert Event.objects.filter(name="tag_added", contact=first).count() == 1
    assert Event.objects.filter(name="tag_added", contact=second).count() == 1

    # Without an expiry an existing one is left as it is, as for a single tag-add.
    operator_client.post(
        url, {"bulk_tag": tag.pk, "op": "add", "scope": "selected", "ids": [first.pk]}
    )
    assert _expiries(tag)[first.pk] == later


def test_bulk_tag_with_a_past_expiry_is_refused_and_nothing_is_tagged(operator_client, operator):
    tag = TagFactory()
    contact = ContactFactory()
    url = reverse("contacts:bulk_tag")
    data = {"bulk_tag": tag.pk, "op": "add", "scope": "selected", "ids": [contact.pk]}

    response = operator_client.post(url, {**data, "expires_at": _field(_local_minute(-1))})

    assert response.status_code == 302
    page = operator_client.get(response["Location"]).content.decode()
    assert "toast-error" in page
    with translation.override("zh-hans"):
        assert translation.gettext("The tag's expiry must be in the future.") in page
    assert not ContactTag.objects.exists()
    assert not Event.objects.filter(name="tag_added").exists()

    # The service refuses it too, before anything is queued.
    with pytest.raises(ValidationFailed) as exc:
        bulk.contacts_bulk_tag_start(
            tag=tag,
            add=True,
            actor=operator,
            contact_ids=[contact.pk],
            expires_at=timezone.now() - dt.timedelta(minutes=1),
        )
    assert exc.value.code == "invalid_expiry"
    assert not ContactTag.objects.exists() and not Job.objects.exists()


def test_bulk_untag_ignores_the_expiry_field(operator_client):
    tag = TagFactory()
    contact = ContactFactory()
    ContactTag.objects.create(contact=contact, tag=tag)

    operator_client.post(
        reverse("contacts:bulk_tag"),
        {
            "bulk_tag": tag.pk,
            "op": "remove",
            "scope": "selected",
            "ids": [contact.pk],
            "expires_at": _field(_local_minute(-1)),
        },
    )

    assert not ContactTag.objects.exists()
    assert "expires_at" not in Event.objects.get(name="tag_removed").properties


def test_the_list_offers_the_expiry_in_the_bulk_form(operator_client):
    ContactFactory()

    page = operator_client.get(reverse("contacts:list")).content.decode()
    form = page.split('id="bulk-form"', 1)[1].split("</form>", 1)[0]

    assert 'name="expires_at"' in form and 'type="datetime-local"' in form


def test_a_background_bulk_job_keeps_the_expiry_in_its_params(
    operator, monkeypatch, django_capture_on_commit_callbacks
):
    monkeypatch.setattr(bulk, "INLINE_LIMIT", 2)
    monkeypatch.setattr(bulk, "BATCH_SIZE", 2)
    tag = TagFactory()
    contacts = ContactFactory.create_batch(5)
    ContactTag.objects.create(contact=contacts[0], tag=tag, expires_at=_local_minute(1))
    until = _local_minute(14)

    with django_capture_on_commit_callbacks(execute=True):
        started = bulk.contacts_bulk_tag_start(
            tag=tag, add=True, actor=operator, filter_params={}, expires_at=until
        )

    job = Job.objects.get(pk=started.job.pk)
    assert job.params["expires_at"] == until.isoformat()
    assert job.status == JobStatus.SUCCEEDED and job.result["changed"] == 4
    assert _expiries(tag) == {c.pk: until for c in contacts}


# --- 2. Whole translatable sentences --------------------------------------------------------


def test_an_empty_note_is_refused_in_the_operators_language():
    contact = ContactFactory()

    for body in ("", "   "):
        with translation.override("zh-hans"), pytest.raises(ValidationFailed) as exc:
            note_add(contact=contact, author=None, body=body)
        assert CJK.search(exc.value.message), exc.value.message
        assert "Field" not in exc.value.message and "body" not in exc.value.message
        assert exc.value.details == {"field": "body"}

    with translation.override("en"), pytest.raises(ValidationFailed) as exc:
        note_add(contact=contact, author=None, body="x" * 5001)
    assert exc.value.message == "The note is longer than 5000 characters."
    with translation.override("zh-hans"), pytest.raises(ValidationFailed) as exc:
        note_add(contact=contact, author=None, body="x" * 5001)
    assert CJK.search(exc.value.message) and "5000" in exc.value.message


def test_the_note_form_shows_chinese_errors_only(operator_client):
    contact = ContactFactory()

    page = operator_client.post(
        reverse("contacts:note_add", args=[contact.pk]), {"body": "   "}, HTTP_HX_REQUEST="true"
    ).content.decode()

    assert "has-error" in page or "alert-error" in page
    assert "Field '" not in page and "is empty" not in page


def test_event_api_reasons_stay_english_by_default_and_follow_accept_language(api):
    contact = ContactFactory()
    base = {"name": "page_view", "occurred_at": "2024-01-01T00:00:00+08:00"}
    gone = contact.pk + 1000

    def post(suffix: str, **headers) -> list[str]:
        events = [
            {**base, "event_id": f"gone-{suffix}", "contact_id": gone},
            {**base, "event_id": f"nobody-{suffix}"},
        ]
        answer = api.post("/api/v1/events", {"events": events}, format="json", **headers).json()
        assert [r["status"] for r in answer["results"]] == ["rejected", "rejected"]
        return [r["reason"] for r in answer["results"]]

    assert post("en") == [
        f"Contact {gone} does not exist.",
        "Either contact_id or identities is required.",
    ]
    for reason in post("zh", HTTP_ACCEPT_LANGUAGE="zh-hans"):
        assert CJK.search(reason), reason
    too_many = api.post(
        "/api/v1/events",
        {"events": [{**base, "event_id": f"e{i}", "contact_id": contact.pk} for i in range(501)]},
        format="json",
    )
    assert too_many.status_code == 400
    assert "500" in str(too_many.json())


# --- 3. The edit form keeps an inactive stage -----------------------------------------------


def test_the_edit_form_keeps_the_contacts_inactive_stage(operator_client):
    contact = ContactFactory(lifecycle_stage_id="dormant")
    Stage.objects.filter(key__in=["dormant", "churned"]).update(is_active=False)
    url = reverse("contacts:edit", args=[contact.pk])

    form = ContactEditForm(contact=contact, personal_data=True)
    keys = set(form.fields["lifecycle_stage"].queryset.values_list("key", flat=True))
    assert "dormant" in keys and "churned" not in keys
    page = operator_client.get(url).content.decode()
    assert re.search(r'<option value="dormant"[^>]*selected', page)

    response = operator_client.post(
        url,
        {
            "name": "改了名字",
            "nickname": "",
            "gender": contact.gender,
            "birthday": "",
            "phone": contact.phone,
            "email": "",
            "province": contact.province,
            "city": contact.city,
            "lifecycle_stage": "dormant",
            "owner": "",
            "store": "",
        },
    )

    assert response.status_code == 302
    contact.refresh_from_db()
    assert contact.name == "改了名字" and contact.lifecycle_stage_id == "dormant"
    # Another inactive stage still cannot be chosen.
    refused = operator_client.post(
        url, {"gender": contact.gender, "lifecycle_stage": "churned", "name": "x"}
    )
    assert refused.status_code == 200
    contact.refresh_from_db()
    assert contact.lifecycle_stage_id == "dormant"


def test_a_contact_on_an_active_stage_sees_active_stages_only():
    Stage.objects.filter(key="churned").update(is_active=False)
    form = ContactEditForm(contact=Contact.objects.create(), personal_data=True)

    assert "churned" not in set(
        form.fields["lifecycle_stage"].queryset.values_list("key", flat=True)
    )


# --- 4. Custom field definitions --------------------------------------------------------------


@pytest.mark.parametrize(
    ("kind", "choices", "code"),
    [
        (CustomFieldKind.SINGLE_CHOICE, [], "no_choices"),
        (CustomFieldKind.MULTI_CHOICE, None, "no_choices"),
        (CustomFieldKind.SINGLE_CHOICE, "S,M,L", "invalid_choices"),
        (CustomFieldKind.SINGLE_CHOICE, {"S": "小"}, "invalid_choices"),
        (CustomFieldKind.MULTI_CHOICE, ["跑步", ""], "invalid_choices"),
        (CustomFieldKind.MULTI_CHOICE, ["跑步", "  "], "invalid_choices"),
        (CustomFieldKind.SINGLE_CHOICE, ["S", 42], "invalid_choices"),
        (CustomFieldKind.SINGLE_CHOICE, ["S", "M", "S"], "duplicate_choices"),
        (CustomFieldKind.TEXT, ["S"], "choices_not_allowed"),
        (CustomFieldKind.NUMBER, {"a": 1}, "choices_not_allowed"),
    ],
)
def test_custom_field_choices_are_checked(kind, choices, code):
    field = CustomField(key="size", label="尺码", kind=kind, choices=choices)

    with pytest.raises(ValidationError) as exc:
        field.full_clean()

    assert [e.code for e in exc.value.error_dict["choices"]] == [code]


def test_good_custom_field_definitions_pass():
    CustomField(
        key="size", label="尺码", kind="single_choice", choices=["S", "M", "L"]
    ).full_clean()
    CustomField(key="hobby", label="爱好", kind="multi_choice", choices=["跑步"]).full_clean()
    text = CustomField(key="remark", label="备注", kind="text", choices=None)
    text.full_clean()
    assert text.choices == []


def test_the_admin_refuses_a_choice_field_without_choices(operator_client):
    url = reverse("admin:contacts_customfield_add")
    data = {"key": "size", "label": "尺码", "kind": "single_choice", "position": 0}

    refused = operator_client.post(url, {**data, "choices": "[]"})
    assert refused.status_code == 200
    assert "choices" in refused.context["adminform"].form.errors
    duplicate = operator_client.post(url, {**data, "choices": '["S", "S"]'})
    assert "choices" in duplicate.context["adminform"].form.errors
    assert not CustomField.objects.exists()

    assert operator_client.post(url, {**data, "choices": '["S", "M"]'}).status_code == 302
    assert CustomField.objects.get(key="size").choices == ["S", "M"]
