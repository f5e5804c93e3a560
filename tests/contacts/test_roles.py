import pytest
from django.contrib.auth.models import Group
from django.core.management import call_command
from django.urls import reverse

from contacts import roles
from contacts.models import Contact, ContactTag, Note
from contacts.selectors import contact_visible_to
from core.models import AuditLog
from tests.factories import ContactFactory, StoreFactory, TagFactory, UserFactory, user_with_role

pytestmark = pytest.mark.django_db

HX = {"HTTP_HX_REQUEST": "true"}


@pytest.fixture(autouse=True)
def _roles(db):
    roles.roles_sync()


def _perms(group: str) -> set[str]:
    return {
        f"{app}.{codename}"
        for app, codename in Group.objects.get(name=group).permissions.values_list(
            "content_type__app_label", "codename"
        )
    }


def test_setup_roles_is_idempotent_and_grants_fitting_permissions(capsys):
    call_command("setup_roles")
    before = {name: _perms(name) for name in roles.ROLES}
    call_command("setup_roles")

    assert Group.objects.filter(name__in=roles.ROLES).count() == 4
    assert {name: _perms(name) for name in roles.ROLES} == before
    operator, staff, analyst = before["operator"], before["store_staff"], before["analyst"]
    assert {
        "contacts.export_contact",
        "contacts.merge_contact",
        "contacts.view_personal_data",
        "segments.change_segment",
        "journeys.add_journey",
    } <= operator
    assert "core.view_auditlog" in before["admin"] and "core.view_auditlog" not in operator
    assert {"contacts.change_contact", "contacts.add_note", "contacts.add_contacttag"} <= staff
    assert not {"contacts.export_contact", "contacts.merge_contact"} & staff
    assert all(p.split(".", 1)[1].startswith("view_") for p in analyst)
    assert "contacts.view_contact" in analyst
    assert "contacts.view_personal_data" not in analyst | staff
    # Every permission named one by one exists (a typo would silently grant nothing).
    assert len(staff) == len(roles.ROLES["store_staff"].permissions)
    assert "store_staff" in capsys.readouterr().out


def test_a_group_edited_by_hand_is_put_back():
    group = Group.objects.get(name="analyst")
    group.permissions.clear()

    roles.roles_sync()

    assert "contacts.view_contact" in _perms("analyst")


def test_store_staff_see_only_their_own_and_their_stores_contacts():
    store, other_store = StoreFactory(), StoreFactory()
    clerk = user_with_role("store_staff", store=store)
    owned = ContactFactory(owner=clerk, store=other_store)
    in_store = ContactFactory(store=store)
    ContactFactory(store=other_store)
    ContactFactory()

    assert set(contact_visible_to(user=clerk)) == {owned, in_store}


def test_store_staff_without_a_store_see_only_their_own():
    clerk = user_with_role("store_staff")
    owned = ContactFactory(owner=clerk)
    ContactFactory(store=StoreFactory())

    assert list(contact_visible_to(user=clerk)) == [owned]


def test_operators_and_analysts_see_all_but_merged_contacts():
    survivor, duplicate = ContactFactory(), ContactFactory()
    Contact.objects.filter(pk=duplicate.pk).update(merged_into=survivor)

    for user in (user_with_role("operator"), user_with_role("analyst"), UserFactory()):
        assert list(contact_visible_to(user=user)) == [survivor]


def test_store_staff_get_404_outside_their_visibility(client):
    store = StoreFactory()
    clerk = user_with_role("store_staff", store=store)
    client.force_login(clerk)
    mine, theirs = ContactFactory(store=store), ContactFactory()
    tag = TagFactory()

    assert client.get(reverse("contacts:detail", args=[mine.pk])).status_code == 200
    assert client.get(reverse("contacts:detail", args=[theirs.pk])).status_code == 404
    response = client.post(reverse("contacts:tag_add", args=[theirs.pk]), {"tag": tag.pk})
    assert response.status_code == 404
    assert (
        client.post(reverse("contacts:tag_add", args=[mine.pk]), {"tag": tag.pk}).status_code == 302
    )
    assert ContactTag.objects.filter(contact=mine, tag=tag).exists()

    page = client.get(reverse("contacts:list")).content.decode()
    assert mine.name in page and theirs.name not in page


def test_analysts_read_but_cannot_change_anything(client):
    analyst = user_with_role("analyst")
    client.force_login(analyst)
    contact = ContactFactory(name="林小雨")
    tag = TagFactory()
    ContactTag.objects.create(contact=contact, tag=tag)
    note = Note.objects.create(contact=contact, body="call back", follow_up_at=contact.created_at)

    page = client.get(reverse("contacts:detail", args=[contact.pk])).content.decode()
    assert "林小雨" in page
    # No controls for what they may not do.
    assert reverse("contacts:edit", args=[contact.pk]) not in page
    assert reverse("contacts:tag_add", args=[contact.pk]) not in page
    assert reverse("contacts:unmask", args=[contact.pk]) not in page

    posts = [
        (reverse("contacts:tag_add", args=[contact.pk]), {"tag": tag.pk}),
        (reverse("contacts:tag_remove", args=[contact.pk, tag.pk]), {}),
        (reverse("contacts:edit", args=[contact.pk]), {"name": "x"}),
        (reverse("contacts:note_add", args=[contact.pk]), {"body": "hi"}),
        (reverse("contacts:note_done", args=[contact.pk, note.pk]), {}),
        (reverse("contacts:consent", args=[contact.pk]), {"channel": "sms"}),
        (reverse("contacts:unmask", args=[contact.pk]), {}),
        (reverse("contacts:bulk_tag"), {"bulk_tag": tag.pk, "op": "add", "scope": "all"}),
    ]
    for url, data in posts:
        assert client.post(url, data).status_code == 403, url
        assert client.post(url, data, **HX).status_code == 403, url
    assert client.get(reverse("contacts:edit", args=[contact.pk])).status_code == 403
    assert client.get(reverse("contacts:merge", args=[contact.pk])).status_code == 403
    contact.refresh_from_db()
    assert contact.name == "林小雨"
    assert ContactTag.objects.filter(contact=contact).count() == 1
    assert Note.objects.filter(contact=contact).count() == 1


def test_phone_and_email_are_masked_on_the_list_and_the_360_page(client):
    client.force_login(user_with_role("analyst"))
    contact = ContactFactory(phone="+8613800138000", email="lin@example.com")

    listing = client.get(reverse("contacts:list")).content.decode()
    detail = client.get(reverse("contacts:detail", args=[contact.pk])).content.decode()

    for page in (listing, detail):
        assert "13800138000" not in page and "lin@example.com" not in page
    assert "+86138****8000" in listing
    assert "+86138****8000" in detail and "l***@example.com" in detail


def test_unmasking_reveals_and_is_audit_logged(client):
    operator = user_with_role("operator")
    client.force_login(operator)
    contact = ContactFactory(phone="+8613800138000", email="lin@example.com")
    url = reverse("contacts:unmask", args=[contact.pk])

    detail = client.get(reverse("contacts:detail", args=[contact.pk])).content.decode()
    assert url in detail and "13800138000" not in detail

    fragment = client.post(url, **HX)
    page = fragment.content.decode()
    assert fragment.status_code == 200
    assert page.lstrip().startswith('<section id="contact-profile"')
    assert "+8613800138000" in page and "lin@example.com" in page

    full = client.post(url).content.decode()
    assert "<html" in full and "+8613800138000" in full

    logs = AuditLog.objects.filter(action="contact.unmask", object_id=str(contact.pk))
    assert logs.count() == 2
    assert logs.first().actor == operator and logs.first().ip == "127.0.0.1"
    assert logs.first().object_type == "contacts.contact"


def test_unmask_refuses_get_and_invisible_contacts(client):
    store = StoreFactory()
    clerk = user_with_role("store_staff", store=store)
    clerk.user_permissions.add(
        *Group.objects.get(name="operator").permissions.filter(codename="view_personal_data")
    )
    client.force_login(clerk)
    theirs = ContactFactory()

    assert client.get(reverse("contacts:unmask", args=[theirs.pk])).status_code == 405
    assert client.post(reverse("contacts:unmask", args=[theirs.pk])).status_code == 404
    assert not AuditLog.objects.exists()


def test_role_labels_are_translated(client):
    client.force_login(user_with_role("store_staff", username="clerk"))
    chinese = client.get(reverse("contacts:list")).content.decode()
    client.cookies["django_language"] = "en"
    english = client.get(reverse("contacts:list")).content.decode()
    assert "您的角色：门店导购" in chinese and "Store staff" not in chinese
    assert "Your role: Store staff" in english and "门店导购" not in english


def test_import_and_export_links_follow_permissions(client):
    ContactFactory(city="上海")
    client.force_login(user_with_role("operator"))
    page = client.get(reverse("contacts:list"), {"city": "上海"}).content.decode()
    assert reverse("contacts_io:export") + "?city=" in page
    assert reverse("contacts_io:import") in page

    client.force_login(user_with_role("store_staff"))
    page = client.get(reverse("contacts:list")).content.decode()
    assert reverse("contacts_io:export") not in page
    assert reverse("contacts_io:import") not in page
