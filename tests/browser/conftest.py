"""Shared fixtures for the browser tests: one Chromium per module, driven by Playwright."""

import os
import shutil
import subprocess
from pathlib import Path

import pytest

from tests.factories import UserFactory

CHROMIUM = os.environ.get("CHROMIUM_PATH", "/usr/bin/chromium")
# The fonts the layout checks measure text in, and the Debian package of each (make
# system-packages installs them). Without them Chromium falls back to wider fonts and the
# layout tests fail far from the cause.
FONTS = {"Noto Sans CJK SC": "fonts-noto-cjk", "Liberation Sans": "fonts-liberation"}


def _missing_fonts() -> list[str]:
    if shutil.which("fc-list") is None:
        return []  # nothing to ask; the layout tests say what they see
    listed = subprocess.run(
        ["fc-list", ":", "family"], capture_output=True, text=True, check=False
    ).stdout
    return [package for family, package in FONTS.items() if family not in listed]


@pytest.fixture(scope="module")
def browser():
    if not Path(CHROMIUM).exists():
        pytest.fail(f"Chromium not found at {CHROMIUM}: apt-get install chromium (see .ci/run)")
    if missing := _missing_fonts():
        pytest.fail(f"fonts missing: apt-get install {' '.join(missing)} (make system-packages)")
    from playwright.sync_api import sync_playwright

    # Playwright's sync API keeps an event loop in this thread; the test's ORM calls are still
    # plain synchronous calls, so Django's async-safety guard does not apply here.
    os.environ["DJANGO_ALLOW_ASYNC_UNSAFE"] = "true"
    with sync_playwright() as p:
        browser = p.chromium.launch(
            executable_path=CHROMIUM,
            args=["--no-sandbox", "--disable-gpu", "--disable-background-networking"],
        )
        yield browser
        browser.close()
    os.environ.pop("DJANGO_ALLOW_ASYNC_UNSAFE", None)


@pytest.fixture
def page(browser, live_server):
    """A page logged in as a superuser (the factory's default user), in English, wide enough
    for the contact list and the builder; a module may define its own."""
    from playwright.sync_api import expect

    UserFactory(username="yunying")
    context = browser.new_context(viewport={"width": 1400, "height": 1000})
    context.add_cookies([{"name": "django_language", "value": "en", "url": live_server.url}])
    page = context.new_page()
    page.set_default_timeout(15_000)
    expect.set_options(timeout=15_000)
    page.goto(f"{live_server.url}/login/")
    page.fill("input[name=username]", "yunying")
    page.fill("input[name=password]", "pass-1234-word")
    page.locator("form button[type=submit], form input[type=submit]").first.click()
    page.wait_for_url(f"{live_server.url}/")
    yield page
    context.close()
