"""Creating, editing and revoking API keys is audited: a key allowed personal data requests can
erase people, so who granted it, and when, must be on record."""

import pytest
from django.core.management import call_command
from django.urls import reverse

from core.models import ApiKey, AuditLog

pytestmark = pytest.mark.django_db


def test_a_key_created_in_the_admin_is_audited_with_its_grant(admin_client, admin_user):
    response = admin_client.post(
        reverse("admin:core_apikey_add"),
        {
            "name": "account deletion",
            "throttle_rate": "",
            "is_active": "on",
            "personal_data_requests": "on",
        },
    )

    assert response.status_code == 302
    key = ApiKey.objects.get()
    assert key.personal_data_requests
    entry = AuditLog.objects.get(action="api_key.create")
    assert (entry.object_id, entry.actor, entry.ip) == (str(key.pk), admin_user, "127.0.0.1")
    assert entry.details == {"name": "account deletion", "personal_data_requests": True}
    assert key.hashed_key not in str(entry.details)


def test_granting_and_revoking_are_audited_with_old_and_new_values(admin_client, admin_user):
    call_command("create_api_key", "pos")
    key = ApiKey.objects.get()
    change = reverse("admin:core_apikey_change", args=[key.pk])

    admin_client.post(
        change,
        {"name": "pos", "throttle_rate": "", "is_active": "on", "personal_data_requests": "on"},
    )
    admin_client.post(
        reverse("admin:core_apikey_changelist"),
        {"action": "revoke", "_selected_action": [key.pk]},
    )

    entries = list(AuditLog.objects.filter(action="api_key.change").order_by("pk"))
    assert [e.details for e in entries] == [
        {"personal_data_requests": {"from": False, "to": True}},
        {"is_active": {"from": True, "to": False}},
    ]
    assert all(e.actor == admin_user and e.object_id == str(key.pk) for e in entries)
    # Saving without a change writes nothing.
    admin_client.post(
        change,
        {"name": "pos", "throttle_rate": "", "personal_data_requests": "on"},
    )
    assert AuditLog.objects.filter(action="api_key.change").count() == 2


def test_the_command_can_grant_personal_data_requests(capsys):
    call_command("create_api_key", "account deletion", "--personal-data-requests")
    key = ApiKey.objects.get()
    assert key.personal_data_requests
    assert AuditLog.objects.get(action="api_key.create").details["personal_data_requests"]
    call_command("create_api_key", "orders")
    assert not ApiKey.objects.get(name="orders").personal_data_requests
