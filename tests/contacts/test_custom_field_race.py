"""Another admin saves something between the custom-field form's checks and its save.

The form checked that no rule reads the field and that its key is free; the save checks again
with the row locked and, when that now refuses, the admin shows the form (or the delete page)
again with the reason: no error page, nothing saved, nothing logged.

On PostgreSQL the other admin is a real concurrent transaction (another thread and connection)
that commits while this request waits between validation and save. On SQLite this request's
transaction holds the database's write lock from before its form is validated, so no other
connection can write in between; the other admin's change is made inside the request's
transaction instead, which shows what the admin does with the refusal.
"""

import threading

import pytest
from django.contrib import admin
from django.contrib.admin.models import LogEntry
from django.contrib.messages import get_messages
from django.db import connection, connections
from django.urls import reverse

from contacts.models import CustomField, CustomFieldKind
from segments import scoring
from segments.services import segment_create

pytestmark = pytest.mark.django_db(transaction=True)

CONCURRENT = connection.vendor == "postgresql"


@pytest.fixture
def skin():
    return CustomField.objects.create(key="skin", label="肤质", kind=CustomFieldKind.TEXT)


def _skin_rule() -> dict:
    return {
        "op": "and",
        "conditions": [
            {"type": "attribute", "field": "attributes.skin", "operator": "eq", "value": "dry"}
        ],
    }


def _as_another_admin(action) -> None:
    if not CONCURRENT:
        action()
        return
    errors: list[Exception] = []

    def run() -> None:
        try:
            action()
        except Exception as exc:  # reported by the test, not swallowed
            errors.append(exc)
        finally:
            connections.close_all()

    thread = threading.Thread(target=run)
    thread.start()
    thread.join(timeout=30)
    assert not thread.is_alive(), "the other admin's save hung"
    assert errors == []


def _meanwhile(monkeypatch, hook: str, action) -> None:
    """Run `action` as another admin would, once, right after the custom field admin's `hook`
    (a step between this request's checks and its write)."""
    model_admin = type(admin.site._registry[CustomField])
    original = getattr(model_admin, hook)
    done: list[bool] = []

    def hook_then_act(self, *args, **kwargs):
        result = original(self, *args, **kwargs)
        if not done:
            done.append(True)
            _as_another_admin(action)
        return result

    monkeypatch.setattr(model_admin, hook, hook_then_act)


def _field_form(client, field=None) -> tuple[str, dict[str, str]]:
    if field is None:
        url = reverse("admin:contacts_customfield_add")
        data = {"label": "会员等级", "kind": "text", "choices": "[]", "position": "0"}
        return url, {**data, "key": "tier", "is_active": "on"}
    url = reverse("admin:contacts_customfield_change", args=[field.pk])
    data = {
        "key": field.key,
        "label": field.label,
        "kind": field.kind,
        "choices": "[]",
        "position": str(field.position),
        "is_active": "on",
    }
    return url, data


def test_a_segment_saved_meanwhile_keeps_the_field_from_being_renamed(
    admin_client, skin, monkeypatch
):
    _meanwhile(monkeypatch, "save_form", lambda: segment_create(name="干性肌肤", rule=_skin_rule()))
    url, data = _field_form(admin_client, skin)
    logged = LogEntry.objects.count()

    response = admin_client.post(url, {**data, "key": "skin_type"})

    assert response.status_code == 200  # the form again, saying why
    assert "干性肌肤" in response.context["adminform"].form.errors["key"][0]
    skin.refresh_from_db()
    assert skin.key == "skin"
    assert LogEntry.objects.count() == logged
    if CONCURRENT:
        assert list(skin.segment_refs.values_list("segment__name", flat=True)) == ["干性肌肤"]


def test_a_lead_score_rule_saved_meanwhile_keeps_the_field_from_being_retyped(
    admin_client, skin, monkeypatch
):
    _meanwhile(
        monkeypatch,
        "save_form",
        lambda: scoring.score_rule_create(
            data={
                "name": "干性肌肤加分",
                "kind": "attribute",
                "condition": _skin_rule(),
                "points": 5,
            }
        ),
    )
    url, data = _field_form(admin_client, skin)

    response = admin_client.post(url, {**data, "kind": CustomFieldKind.NUMBER})

    assert response.status_code == 200
    assert "干性肌肤加分" in response.context["adminform"].form.errors["kind"][0]
    skin.refresh_from_db()
    assert skin.kind == CustomFieldKind.TEXT


def test_two_admins_adding_a_field_with_the_same_key(admin_client, monkeypatch):
    _meanwhile(
        monkeypatch,
        "save_form",
        lambda: CustomField.objects.create(key="tier", label="等级", kind=CustomFieldKind.TEXT),
    )
    url, data = _field_form(admin_client)

    response = admin_client.post(url, data)

    assert response.status_code == 200
    # Refused on the key: by the form checking again (the other field is committed) or by
    # the refusal the save met, whichever comes first.
    assert len(response.context["adminform"].form.errors["key"]) == 1
    assert not CustomField.objects.filter(label="会员等级").exists()
    assert CustomField.objects.filter(key="tier").count() == (1 if CONCURRENT else 0)


def test_a_rename_to_a_key_another_admin_took_meanwhile(admin_client, skin, monkeypatch):
    _meanwhile(
        monkeypatch,
        "save_form",
        lambda: CustomField.objects.create(key="skin_type", label="皮肤", kind="text"),
    )
    url, data = _field_form(admin_client, skin)

    response = admin_client.post(url, {**data, "key": "skin_type", "label": "肤质类型"})

    assert response.status_code == 200
    assert len(response.context["adminform"].form.errors["key"]) == 1
    skin.refresh_from_db()
    assert (skin.key, skin.label) == ("skin", "肤质")


def test_the_form_still_saves_when_nothing_happened_meanwhile(admin_client, skin, monkeypatch):
    _meanwhile(monkeypatch, "save_form", lambda: None)
    url, data = _field_form(admin_client, skin)

    response = admin_client.post(url, {**data, "key": "skin_type"})

    assert response.status_code == 302
    skin.refresh_from_db()
    assert skin.key == "skin_type"


def test_a_segment_saved_after_the_delete_page_checked_keeps_the_field(
    admin_client, skin, monkeypatch
):
    _meanwhile(
        monkeypatch,
        "get_deleted_objects",
        lambda: segment_create(name="干性肌肤", rule=_skin_rule()),
    )
    url = reverse("admin:contacts_customfield_delete", args=[skin.pk])
    logged = LogEntry.objects.count()

    response = admin_client.post(url, {"post": "yes"})

    assert response.status_code == 302
    assert response["Location"] == url  # the confirmation page, now listing the rule
    shown = [str(m) for m in get_messages(response.wsgi_request)]
    assert len(shown) == 1
    assert "干性肌肤" in shown[0]
    assert CustomField.objects.filter(pk=skin.pk).exists()
    assert LogEntry.objects.count() == logged


def test_a_segment_saved_after_the_bulk_delete_checked_keeps_the_field(
    admin_client, skin, monkeypatch
):
    _meanwhile(
        monkeypatch,
        "get_deleted_objects",
        lambda: segment_create(name="干性肌肤", rule=_skin_rule()),
    )
    url = reverse("admin:contacts_customfield_changelist")
    logged = LogEntry.objects.count()

    response = admin_client.post(
        url, {"action": "delete_selected", "_selected_action": [skin.pk], "post": "yes"}
    )

    assert response.status_code == 302
    shown = [str(m) for m in get_messages(response.wsgi_request)]
    assert len(shown) == 1
    assert "干性肌肤" in shown[0]
    assert CustomField.objects.filter(pk=skin.pk).exists()
    assert LogEntry.objects.count() == logged  # the deletion the action logged went too
