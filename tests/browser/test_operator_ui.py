"""A real browser (Debian's Chromium driven by Playwright) walks the operator's first steps."""

import pytest

from tests.factories import ContactFactory, UserFactory

pytestmark = [pytest.mark.browser, pytest.mark.django_db(transaction=True)]


def test_login_dashboard_contacts_and_language_switch(browser, live_server, tmp_path):
    UserFactory(username="yunying")
    ContactFactory(name="林小雨", city="杭州")
    page = browser.new_page(locale="zh-CN", viewport={"width": 1400, "height": 900})
    page.set_default_timeout(15_000)

    page.goto(f"{live_server.url}/")
    assert "/login/" in page.url  # anonymous operators are sent to the login page
    page.fill("input[name=username]", "yunying")
    page.fill("input[name=password]", "pass-1234-word")
    page.locator("form button[type=submit], form input[type=submit]").first.click()

    page.wait_for_url(f"{live_server.url}/")
    assert page.locator("html").get_attribute("lang") == "zh-hans"
    nav_contacts = page.locator("nav a[href='/contacts/']")
    assert nav_contacts.inner_text().strip() == "客户"
    # The chart is drawn by the vendored ECharts (SVG renderer).
    page.locator("[data-chart][data-chart-ready] svg").first.wait_for()
    page.screenshot(path=str(tmp_path / "dashboard-zh.png"), full_page=True)

    nav_contacts.click()
    page.wait_for_url("**/contacts/")
    assert page.get_by_text("林小雨").first.is_visible()

    page.locator(".lang-switch button[value=en]").click()
    page.wait_for_function("document.documentElement.lang === 'en'")
    assert page.url.endswith("/contacts/")
    assert page.locator("nav a[href='/contacts/']").inner_text().strip() == "Contacts"
    assert page.locator("nav a[href='/']").inner_text().strip() == "Dashboard"
    page.screenshot(path=str(tmp_path / "contacts-en.png"), full_page=True)
    page.close()
