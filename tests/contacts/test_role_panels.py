"""A contact's page carries only the panels the user's role may see."""

import pytest
from django.urls import reverse
from django.utils import translation

from contacts import roles
from contacts.services import event_record
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


@pytest.mark.parametrize("role, named", [(roles.STORE_STAFF, False), (roles.OPERATOR, True)])
def test_only_roles_that_see_segments_see_segment_names_in_the_timeline(client, role, named):
    store = StoreFactory()
    contact = ContactFactory(store=store)
    event_record(
        contact=contact,
        name="segment_entered",
        properties={"segment_id": 7, "segment": "高价值复购客户"},
    )
    client.force_login(user_with_role(role, store=store))

    with translation.override("zh-hans"):
        page = client.get(reverse("contacts:detail", args=[contact.pk])).content.decode()

    assert "进入分群" in page  # the entry itself is there for both
    assert ("高价值复购客户" in page) is named
