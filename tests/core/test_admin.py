import re

import pytest
from django.contrib import admin
from django.urls import reverse
from rest_framework.test import APIClient

from core.models import ApiKey
from tests.factories import (
    ChannelFactory,
    ContactFactory,
    EventFactory,
    JourneyStepFactory,
    TagFactory,
)

pytestmark = pytest.mark.django_db

OUR_APPS = {"core", "contacts", "membership", "segments", "channels", "journeys"}


# Models the admin cannot show, with where their rows are seen instead.
NOT_IN_ADMIN = {
    # Keyed by (segment, contact), which Django's admin does not support; derived data, listed
    # and exported on the segment page, static lists edited there.
    "segments.SegmentMembership",
    # Derived from the segments' rules by the services (an admin page would only let someone
    # desynchronise them); deleting a tag a rule reads lists them as what protects it. Not
    # registered, so deleting a segment needs no permission on them.
    "segments.SegmentTagRef",
    "segments.LeadScoreRuleTagRef",  # the same, for lead-score profile-fit rules
    "segments.SegmentFieldRef",  # the same, for the custom fields rules read
    "segments.LeadScoreRuleFieldRef",
    # Shown on their erasure's admin page; a digest alone means nothing to read.
    "contacts.ErasedContact",
    "contacts.SuppressedIdentity",
}


def test_every_model_of_ours_is_in_the_admin():
    from django.apps import apps

    missing = [
        m._meta.label
        for m in apps.get_models()
        if m._meta.app_label in OUR_APPS and m not in admin.site._registry
    ]
    assert sorted(missing) == sorted(NOT_IN_ADMIN)
    assert apps.get_model("segments.SegmentMembership")._meta.is_composite_pk


@pytest.mark.parametrize(
    "model_admin", [a for m, a in admin.site._registry.items() if m._meta.app_label in OUR_APPS]
)
def test_changelists_render_with_search(operator_client, model_admin):
    ContactFactory()
    EventFactory()
    TagFactory()
    JourneyStepFactory(kind="send", channel=ChannelFactory())
    opts = model_admin.model._meta
    url = reverse(f"admin:{opts.app_label}_{opts.model_name}_changelist")
    assert operator_client.get(url).status_code == 200
    if model_admin.search_fields:
        assert operator_client.get(url, {"q": "138"}).status_code == 200


def test_api_key_created_in_the_admin_is_shown_once_and_works(operator_client):
    response = operator_client.post(
        reverse("admin:core_apikey_add"),
        {"name": "ERP", "throttle_rate": "", "is_active": "on"},
        follow=True,
    )
    assert response.status_code == 200
    text = " ".join(str(m) for m in response.context["messages"])
    raw = re.search(r"([A-Za-z0-9_\-]{40,})", text).group(1)
    key = ApiKey.objects.get(name="ERP")
    assert key.hashed_key != raw
    client = APIClient()
    client.credentials(HTTP_AUTHORIZATION=f"Api-Key {raw}")
    assert client.get("/api/v1/contacts/999").status_code == 404
    # The change page never shows the key again.
    page = operator_client.get(reverse("admin:core_apikey_change", args=[key.pk]))
    assert raw not in page.content.decode()


def test_the_change_queue_shows_what_changed(operator_client):
    from segments.services import mark_dirty

    contact = ContactFactory()
    mark_dirty(contact_ids=[contact.pk], topics=["city", "tags"])
    html = operator_client.get(reverse("admin:segments_dirtycontact_changelist")).content.decode()
    assert "city, tags" in html
