"""The sidebar shows each role exactly the screens it may open: no entry leads to a 403."""

import re

import pytest
from django.urls import reverse

from contacts import roles
from tests.factories import StoreFactory, UserFactory, user_with_role

pytestmark = pytest.mark.django_db

# Every entry the sidebar can show, by URL name.
NAV_TARGETS = (
    "dashboard",
    "contacts:list",
    "contacts:followups",
    "segments:list",
    "journeys:list",
    "membership:index",
    "channels:list",
    "admin:index",
    "api-docs",
)


@pytest.fixture(autouse=True)
def _roles(db):
    roles.roles_sync()


def _user(kind: str):
    if kind == "superuser":
        return UserFactory(username="root")
    if kind == "admin":
        # An administrator manages users and API keys in the admin site, which lets in staff only.
        user = user_with_role(roles.ADMIN)
        user.is_staff = True
        user.save(update_fields=["is_staff"])
        return user
    if kind == roles.STORE_STAFF:
        return user_with_role(kind, store=StoreFactory())
    return user_with_role(kind)


def _sidebar_links(client) -> set[str]:
    page = client.get(reverse("dashboard")).content.decode()
    sidebar = page.split('<aside class="sidebar">', 1)[1].split("</aside>", 1)[0]
    return set(re.findall(r'href="([^"]+)"', sidebar))


@pytest.mark.parametrize(
    ("kind", "hidden"),
    [
        ("superuser", set()),
        ("admin", set()),
        (roles.OPERATOR, {"admin:index"}),
        (roles.ANALYST, {"admin:index"}),
        (roles.STORE_STAFF, {"segments:list", "admin:index"}),
    ],
)
def test_each_role_sees_the_entries_it_may_open(client, kind, hidden):
    client.force_login(_user(kind))

    shown = _sidebar_links(client)

    assert {name for name in NAV_TARGETS if reverse(name) not in shown} == hidden
    for name in NAV_TARGETS:
        status = client.get(reverse(name)).status_code
        # Shown if and only if it opens: a view that tightens its check must hide its entry too.
        assert (reverse(name) in shown) == (status == 200), (name, status)


def test_store_staff_dashboard_offers_no_shortcut_they_cannot_use(client):
    client.force_login(_user(roles.STORE_STAFF))

    page = client.get(reverse("dashboard")).content.decode()

    assert reverse("segments:create") not in page
    assert f'href="{reverse("admin:index")}"' not in page
    assert f'href="{reverse("journeys:list")}"' in page


def test_operators_dashboard_keeps_the_new_segment_shortcut(client):
    client.force_login(_user(roles.OPERATOR))

    page = client.get(reverse("dashboard")).content.decode()

    assert f'href="{reverse("segments:create")}"' in page
