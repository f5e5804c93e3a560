"""Error pages speak the operator's language, sit in the app's layout, and say what to do next."""

import pytest
from django.test import Client, RequestFactory
from django.urls import reverse
from django.utils import translation
from django.utils.translation import gettext
from django.views import defaults

from contacts import roles
from tests.factories import ContactFactory, StoreFactory, user_with_role

pytestmark = pytest.mark.django_db

SIDEBAR = '<aside class="sidebar">'
ASK_ADMIN = (
    "If your work needs it, ask an administrator to give your account the permission or a role "
    "that has it."
)
RELOAD_AND_RESEND = (
    "Go back, reload the page, and send the form again. If this keeps happening, make sure your "
    "browser accepts cookies from this site."
)


@pytest.fixture(autouse=True)
def _roles(db):
    roles.roles_sync()


@pytest.fixture
def clerk(client):
    user = user_with_role(roles.STORE_STAFF, store=StoreFactory(name="静安店"))
    client.force_login(user)
    return user


def zh(msgid: str) -> str:
    with translation.override("zh-hans"):
        return gettext(msgid)


def test_a_refused_page_explains_itself_in_the_layout_and_in_chinese(client, clerk):
    response = client.get(reverse("segments:list"))

    page = response.content.decode()
    assert response.status_code == 403
    assert '<html lang="zh-hans">' in page
    assert SIDEBAR in page  # the operator can carry on from the navigation
    assert zh("You don't have access to this page") in page
    assert "您的角色：门店导购" in page  # what to tell the administrator
    assert zh(ASK_ADMIN) in page
    assert f'href="{reverse("dashboard")}"' in page
    assert "Forbidden" not in page


def test_a_refused_action_shows_the_same_page(client):
    client.force_login(user_with_role(roles.ANALYST))
    response = client.post(reverse("journeys:activate", args=[1]))

    assert response.status_code == 403
    assert 'data-error="403"' in response.content.decode()


def test_the_refused_page_offers_the_way_back_only_to_a_page_of_this_site(client, clerk):
    came_from = "http://testserver" + reverse("contacts:list") + "?city=上海"

    back = client.get(reverse("segments:list"), HTTP_REFERER=came_from).content.decode()
    foreign = client.get(reverse("segments:list"), HTTP_REFERER="https://evil.example/x")

    assert f'href="{came_from}"' in back and zh("Go back") in back
    assert "evil.example" not in foreign.content.decode()
    assert zh("Go back") not in foreign.content.decode()


def test_english_operators_get_the_page_in_english(client, clerk):
    client.cookies["django_language"] = "en"

    page = client.get(reverse("segments:list")).content.decode()

    assert '<html lang="en">' in page
    assert "You don't have access to this page" in page
    assert "Your role: Store staff" in page


def test_a_form_sent_with_a_stale_token_gets_the_layouts_csrf_page(clerk):
    contact = ContactFactory(owner=clerk)
    client = Client(enforce_csrf_checks=True)
    client.force_login(clerk)

    response = client.post(reverse("contacts:note_add", args=[contact.pk]), {"body": "回访"})

    page = response.content.decode()
    assert response.status_code == 403
    assert 'data-error="403-csrf"' in page and SIDEBAR in page
    assert zh("The form could not be sent") in page
    assert zh(RELOAD_AND_RESEND) in page
    assert not contact.notes.exists()


def test_a_stale_login_form_gets_the_csrf_page_without_the_layout(db):
    client = Client(enforce_csrf_checks=True)

    response = client.post(reverse("login"), {"username": "x", "password": "y"})

    page = response.content.decode()
    assert response.status_code == 403
    assert 'data-error="403-csrf"' in page
    assert SIDEBAR not in page  # no navigation for someone not logged in
    assert f'href="{reverse("login")}"' in page


def test_a_missing_page_in_the_layout_for_operators(client, clerk):
    response = client.get(reverse("contacts:detail", args=[987654]))

    page = response.content.decode()
    assert response.status_code == 404
    assert SIDEBAR in page and 'data-error="404"' in page
    assert zh("Page not found") in page


def test_a_missing_page_asks_visitors_to_log_in(client):
    response = client.get("/no-such-page/")

    page = response.content.decode()
    assert response.status_code == 404
    assert SIDEBAR not in page
    assert f'href="{reverse("login")}?next=/no-such-page/"' in page


def test_the_server_error_page_needs_no_database_and_no_request_context(
    django_assert_num_queries,
):
    request = RequestFactory().get("/")
    with translation.override("zh-hans"), django_assert_num_queries(0):
        response = defaults.server_error(request)

    page = response.content.decode()
    assert response.status_code == 500
    assert '<html lang="zh-hans">' in page and 'data-error="500"' in page
    assert zh("Something went wrong on our side") in page
    assert f'href="{reverse("dashboard")}"' in page


def test_a_bad_request_page_in_the_same_style():
    request = RequestFactory().get("/")
    request.user = user_with_role(roles.OPERATOR)

    with translation.override("zh-hans"):
        response = defaults.bad_request(request, Exception("bad"))

    page = response.content.decode()
    assert response.status_code == 400
    assert 'data-error="400"' in page and zh("The request could not be handled") in page


def test_an_actions_address_opened_in_the_browser_explains_itself(client, clerk):
    contact = ContactFactory(owner=clerk, phone="+8613800138000")
    came_from = "http://testserver" + reverse("contacts:detail", args=[contact.pk])

    response = client.get(reverse("contacts:unmask", args=[contact.pk]), HTTP_REFERER=came_from)

    page = response.content.decode()
    assert response.status_code == 405
    assert response["Allow"] == "POST"
    assert SIDEBAR in page and 'data-error="405"' in page
    assert zh("This address performs an action") in page
    assert f'href="{came_from}"' in page  # back to the contact the button is on
    assert "13800138000" not in page  # nothing was unmasked


def test_api_and_htmx_keep_their_own_405(client, clerk, api):
    htmx = client.get(reverse("contacts:unmask", args=[1]), HTTP_HX_REQUEST="true")
    api_answer = api.get("/api/v1/identify")

    assert htmx.status_code == 405 and htmx.content == b""
    assert api_answer.status_code == 405
    assert api_answer.json()["error"]["code"] == "method_not_allowed"
