"""The 360 page's "personal data requests" panel: a copy of the person's data and the erasure
of it, and the erasure log; each only for the roles that may."""

import json

import pytest
from django.contrib.auth.models import Permission
from django.test import Client
from django.urls import reverse
from django.utils import translation

from contacts import roles
from contacts.models import Contact, Erasure, ErasureSource
from contacts.services import IdentityInput, contact_erase, contact_merge, identify
from core.models import AuditLog
from tests.factories import ContactFactory, StoreFactory, user_with_perms, user_with_role

pytestmark = pytest.mark.django_db

PHONE = "+8613800138000"


@pytest.fixture(autouse=True)
def _roles(db):
    roles.roles_sync()


@pytest.fixture
def admin_client(client):
    client.force_login(user_with_role(roles.ADMIN))
    return client


@pytest.fixture
def person():
    """张三, with a mini-program visitor merged into them."""
    contact = identify(
        identities=[IdentityInput("wechat_unionid", "union-1")],
        traits={"name": "张三", "phone": "13800138000"},
    ).contact
    visitor = identify(
        identities=[IdentityInput("miniprogram_openid", "o-1", app_id="wxa")]
    ).contact
    contact_merge(survivor=contact, duplicate=visitor)
    return contact, visitor


def _page(client, contact) -> str:
    return client.get(reverse("contacts:detail", args=[contact.pk])).content.decode()


def test_administrators_see_both_requests_on_the_360_page(admin_client, person):
    contact, _visitor = person

    page = _page(admin_client, contact)

    assert 'id="contact-data-requests"' in page
    assert reverse("contacts:data_copy", args=[contact.pk]) in page
    assert reverse("contacts:erase", args=[contact.pk]) in page
    assert reverse("contacts:erasures") in page  # the navigation's log link


def test_operators_may_download_a_copy_but_not_erase(client, person):
    contact, _visitor = person
    client.force_login(user_with_role(roles.OPERATOR))

    page = _page(client, contact)
    refused = [
        client.get(reverse("contacts:erase", args=[contact.pk])),
        client.post(reverse("contacts:erase", args=[contact.pk]), {"confirm": str(contact.pk)}),
    ]

    assert reverse("contacts:data_copy", args=[contact.pk]) in page
    assert reverse("contacts:erase", args=[contact.pk]) not in page
    assert [r.status_code for r in refused] == [403, 403]
    assert Contact.objects.filter(pk=contact.pk).exists()


def test_without_the_personal_data_permission_there_is_no_copy(client, person):
    contact, _visitor = person
    client.force_login(user_with_perms("contacts.view_contact", "contacts.export_contact"))

    page = _page(client, contact)
    response = client.post(reverse("contacts:data_copy", args=[contact.pk]))

    assert 'id="contact-data-requests"' not in page
    assert response.status_code == 403
    assert not AuditLog.objects.filter(action="contact.data_copy").exists()


def test_store_staff_see_no_panel_and_reach_nothing_even_when_granted_the_permissions(client):
    store = StoreFactory()
    contact = ContactFactory(store=store)
    clerk = user_with_role(roles.STORE_STAFF, store=store)
    for codename in ("view_personal_data", "export_contact", "erase_contact", "view_erasure"):
        clerk.user_permissions.add(
            Permission.objects.get(content_type__app_label="contacts", codename=codename)
        )
    client.force_login(clerk)

    page = _page(client, contact)
    answers = [
        client.post(reverse("contacts:data_copy", args=[contact.pk])).status_code,
        client.get(reverse("contacts:erase", args=[contact.pk])).status_code,
        client.post(
            reverse("contacts:erase", args=[contact.pk]), {"confirm": str(contact.pk)}
        ).status_code,
        client.get(reverse("contacts:erasures")).status_code,
    ]

    assert 'id="contact-data-requests"' not in page
    assert answers == [403, 403, 403, 403]
    assert Contact.objects.filter(pk=contact.pk).exists()


def test_the_copy_is_a_json_file_with_the_phone_unmasked_and_is_audited(admin_client, person):
    contact, visitor = person

    response = admin_client.post(reverse("contacts:data_copy", args=[contact.pk]))

    assert response.status_code == 200
    assert response["Content-Type"] == "application/json; charset=utf-8"
    assert response["Content-Disposition"].startswith("attachment; filename=")
    assert "no-store" in response["Cache-Control"]
    data = json.loads(response.content)
    assert data["contact_ids"] == sorted([contact.pk, visitor.pk])
    assert PHONE in [row["phone"] for row in data["sections"]["contacts.profile"]]
    assert "张三".encode() in response.content  # UTF-8, not \u escapes
    entry = AuditLog.objects.get(action="contact.data_copy")
    assert entry.object_id == str(contact.pk)
    assert PHONE not in json.dumps(entry.details) and "张三" not in json.dumps(entry.details)


def test_the_copy_is_not_served_to_a_get(admin_client, person):
    contact, _visitor = person

    response = admin_client.get(reverse("contacts:data_copy", args=[contact.pk]))

    assert response.status_code == 405
    assert not AuditLog.objects.filter(action="contact.data_copy").exists()


def test_the_confirmation_page_says_what_goes_and_what_stays(admin_client, person, english):
    contact, visitor = person

    page = admin_client.get(reverse("contacts:erase", args=[contact.pk])).content.decode()

    assert "What is deleted" in page and "What is kept" in page
    assert f"#{visitor.pk}" in page  # the merged contact goes too
    assert "new customer" in page
    assert 'name="csrfmiddlewaretoken"' in page
    assert 'name="reference"' in page and 'maxlength="100"' in page


def test_erasing_deletes_the_person_and_their_merged_contact_and_lands_on_the_log(
    admin_client, person, english
):
    contact, visitor = person

    response = admin_client.post(
        reverse("contacts:erase", args=[contact.pk]),
        {"reference": "工单-2024-0042", "confirm": str(contact.pk)},
        follow=True,
    )

    assert response.redirect_chain == [(reverse("contacts:erasures"), 302)]
    assert not Contact.objects.filter(pk__in=[contact.pk, visitor.pk]).exists()
    erasure = Erasure.objects.get()
    assert erasure.source == ErasureSource.OPERATOR
    assert erasure.reference == "工单-2024-0042"
    page = response.content.decode()
    assert f"erasure record #{erasure.pk}" in page  # the toast
    assert f'id="erasure-{erasure.pk}"' in page
    assert f"#{contact.pk}, #{visitor.pk}" in page
    assert "工单-2024-0042" in page
    assert "张三" not in page


def test_a_wrong_confirmation_erases_nothing_and_says_why(admin_client, person, english):
    contact, visitor = person

    response = admin_client.post(
        reverse("contacts:erase", args=[contact.pk]),
        {"reference": "R-1", "confirm": str(contact.pk + 1)},
    )

    assert response.status_code == 200
    assert "This is not the contact" in response.content.decode()
    assert Contact.objects.filter(pk__in=[contact.pk, visitor.pk]).count() == 2
    assert not Erasure.objects.exists()


def test_the_erasure_form_needs_the_csrf_token(person):
    contact, _visitor = person
    client = Client(enforce_csrf_checks=True)
    client.force_login(user_with_role(roles.ADMIN))

    response = client.post(reverse("contacts:erase", args=[contact.pk]), {"confirm": contact.pk})

    assert response.status_code == 403
    assert Contact.objects.filter(pk=contact.pk).exists()


def test_an_erased_contact_leads_to_the_erasure_that_erased_it(admin_client, person, english):
    contact, visitor = person
    erasure = contact_erase(contact=contact, source=ErasureSource.API, reference="R-9")

    again = admin_client.post(
        reverse("contacts:erase", args=[visitor.pk]), {"confirm": str(visitor.pk)}, follow=True
    )
    detail = admin_client.get(reverse("contacts:detail", args=[contact.pk]))

    log = reverse("contacts:erasures") + f"#erasure-{erasure.pk}"
    assert again.redirect_chain == [(log, 302)]
    assert f"erasure record #{erasure.pk}" in again.content.decode()
    assert detail.status_code == 302 and detail["Location"] == log
    assert Erasure.objects.count() == 1


def test_users_who_may_not_see_the_log_get_a_404_for_an_erased_contact(client, person):
    contact, _visitor = person
    contact_erase(contact=contact, source=ErasureSource.API)
    client.force_login(user_with_perms("contacts.view_contact"))

    assert client.get(reverse("contacts:detail", args=[contact.pk])).status_code == 404


def test_the_log_is_for_holders_of_the_erase_or_view_permission(client, person):
    contact, _visitor = person
    contact_erase(contact=contact, source=ErasureSource.OPERATOR, reference="R-7")
    viewer = user_with_perms("contacts.view_erasure")
    nobody = user_with_perms("contacts.view_contact")

    client.force_login(viewer)
    with translation.override("zh-hans"):
        shown = client.get(reverse("contacts:erasures"))
    client.force_login(nobody)
    refused = client.get(reverse("contacts:erasures"))
    home = client.get(reverse("contacts:list")).content.decode()

    assert shown.status_code == 200
    assert "R-7" in shown.content.decode()
    assert refused.status_code == 403
    assert reverse("contacts:erasures") not in home


def test_the_log_table_is_a_fragment_for_htmx(admin_client, person):
    contact, _visitor = person
    erasure = contact_erase(contact=contact, source=ErasureSource.OPERATOR)

    fragment = admin_client.get(reverse("contacts:erasures"), headers={"HX-Request": "true"})

    body = fragment.content.decode()
    assert body.lstrip().startswith('<section id="erasure-table"')
    assert f'id="erasure-{erasure.pk}"' in body
    assert "<html" not in body
