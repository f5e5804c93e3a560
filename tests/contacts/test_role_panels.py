"""A contact's page carries only the panels the user's role may see."""

import pytest
from django.urls import reverse

from contacts import roles
from tests.factories import ContactFactory, StoreFactory, user_with_role

pytestmark = pytest.mark.django_db


@pytest.fixture(autouse=True)
def _roles(db):
    roles.roles_sync()


def test_store_staff_get_no_segments_panel(client):
    store = StoreFactory()
    clerk = user_with_role(roles.STORE_STAFF, store=store)
    contact = ContactFactory(store=store)
    client.force_login(clerk)

    page = client.get(reverse("contacts:detail", args=[contact.pk])).content.decode()

    assert reverse("segments:contact_segments", args=[contact.pk]) not in page
    assert reverse("membership:contact_card", args=[contact.pk]) in page
    assert 'class="inline-add"' in page  # their tag form is there


def test_analysts_keep_the_segments_panel_and_get_no_tag_form(client):
    contact = ContactFactory()
    client.force_login(user_with_role(roles.ANALYST))

    page = client.get(reverse("contacts:detail", args=[contact.pk])).content.decode()

    assert reverse("segments:contact_segments", args=[contact.pk]) in page
    assert 'class="inline-add"' not in page
