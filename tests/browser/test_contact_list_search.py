"""In a real browser a search on the contact list reloads the table once: the tick an operator
makes right after typing stays, where a second reload on leaving the search box used to drop it."""

import pytest

from tests.factories import ContactFactory

pytestmark = [pytest.mark.browser, pytest.mark.django_db(transaction=True)]


def _table_loads(page) -> list[str]:
    """The URLs of the table reloads (htmx requests of the list) from now on."""
    loads: list[str] = []
    page.on(
        "request",
        lambda request: (
            loads.append(request.url)
            if "/contacts/?" in request.url and request.headers.get("hx-request")
            else None
        ),
    )
    return loads


def test_a_tick_made_after_a_search_survives(page, live_server):
    from playwright.sync_api import expect

    lin = ContactFactory(name="林小雨")
    ContactFactory(name="林大山")
    ContactFactory(name="王刚")
    page.goto(f"{live_server.url}/contacts/")
    loads = _table_loads(page)

    page.locator("#id_q").press_sequentially("林", delay=50)
    expect(page.locator("#contact-table")).not_to_contain_text("王刚")
    assert len(loads) == 1
    tick = page.locator(f'input[name=ids][value="{lin.pk}"]')
    tick.check()  # the search box loses focus: its "change" must not reload the table
    page.wait_for_timeout(1_200)

    assert tick.is_checked()
    assert len(loads) == 1, loads
    page.get_by_label("All contacts matching the filter").check()
    page.wait_for_timeout(600)
    assert page.get_by_label("All contacts matching the filter").is_checked()
    assert len(loads) == 1, loads


def test_enter_and_the_pickers_still_reload_the_table(page, live_server):
    from playwright.sync_api import expect

    ContactFactory(name="林小雨", city="杭州")
    ContactFactory(name="王刚", city="北京")
    page.goto(f"{live_server.url}/contacts/")
    loads = _table_loads(page)

    search = page.locator("#id_q")
    search.fill("王")
    search.press("Enter")  # at once, not after the typing delay; and only once
    expect(page.locator("#contact-table")).not_to_contain_text("林小雨")
    page.wait_for_timeout(800)
    assert len(loads) == 1, loads

    search.fill("")
    expect(page.locator("#contact-table")).to_contain_text("林小雨")
    page.locator("select[name=lifecycle_stage]").select_option("churned")
    expect(page.locator("#contact-table")).not_to_contain_text("林小雨")
    assert "lifecycle_stage=churned" in loads[-1]
