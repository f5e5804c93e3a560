"""A contact name of the full 100 characters keeps the 360 page and the merge preview usable at
laptop widths, in Chinese and in English: the title stays one line (cut, whole in its tooltip),
the language switch keeps its size, and the merge table keeps "After the merge" on the screen.
A long imported value is cut in the mapping preview instead of widening the table.

Screenshots of each page are kept in the test's tmp_path for review."""

import pytest
from django.urls import reverse

from contacts.models import CustomField, CustomFieldKind
from tests.browser.layout import line_count
from tests.contacts.importing import upload
from tests.factories import ContactFactory, UserFactory

pytestmark = [pytest.mark.browser, pytest.mark.django_db(transaction=True)]

PASSWORD = "pass-1234-word"  # UserFactory's
LONG_NAME = "超长名字测试" * 16 + "末尾甲乙"  # 100 characters, the most a name may have
LONG_LATIN = "Averyveryverylongnamewithoutanyspaces" * 2 + "End"
WIDTHS = (1280, 1400)
LANGUAGES = ("zh-hans", "en")


def _log_in(browser, live_server, *, width: int, language: str):
    page = browser.new_page(viewport={"width": width, "height": 900})
    page.context.add_cookies(
        [{"name": "django_language", "value": language, "url": live_server.url}]
    )
    page.set_default_timeout(15_000)
    page.goto(f"{live_server.url}/login/")
    page.fill("input[name=username]", "operator")
    page.fill("input[name=password]", PASSWORD)
    page.locator("form.form-stack button[type=submit]").click()
    page.wait_for_url(f"{live_server.url}/")
    return page


@pytest.fixture
def long_named(settings, tmp_path):
    settings.MEDIA_ROOT = tmp_path / "media"
    UserFactory(username="operator")
    CustomField.objects.create(key="hobbies", label="爱好", kind=CustomFieldKind.TEXT)
    survivor = ContactFactory(name=LONG_NAME, city="乌鲁木齐市天山区很长很长的城市名称测试测试")
    duplicate = ContactFactory(
        name=LONG_LATIN, nickname="🌸Nickname_without_spaces_" * 3, attributes={"hobbies": "瑜伽"}
    )
    assert len(survivor.name) == 100
    return survivor, duplicate


def _box(page, selector: str) -> dict:
    box = page.locator(selector).first.bounding_box()
    assert box is not None, selector
    return box


@pytest.mark.parametrize("language", LANGUAGES)
@pytest.mark.parametrize("width", WIDTHS)
def test_the_360_header_keeps_a_long_name_on_one_line(
    browser, live_server, long_named, tmp_path, width, language
):
    survivor, _duplicate = long_named
    page = _log_in(browser, live_server, width=width, language=language)

    page.goto(f"{live_server.url}/contacts/{survivor.pk}/")
    page.screenshot(path=str(tmp_path / f"detail-{language}-{width}.png"))

    title = page.locator(".topbar-title h1")
    assert line_count(title, first_text_only=True) == 1  # the name, cut
    assert title.locator("[title]").first.get_attribute("title") == LONG_NAME
    topbar, switch = _box(page, ".topbar"), _box(page, ".lang-switch")
    assert topbar["height"] < 80  # breadcrumb and one title line: nothing covers the cards
    assert _box(page, "#contact-profile")["y"] >= topbar["y"] + topbar["height"]
    for option in page.locator(".lang-option").all():
        assert line_count(option) == 1  # 中文 on one line, not squeezed to a character a line
    badge = _box(page, ".topbar-title h1 .badge")
    assert badge["x"] + badge["width"] <= switch["x"]
    assert switch["x"] + switch["width"] <= width
    page.close()


@pytest.mark.parametrize("language", LANGUAGES)
@pytest.mark.parametrize("width", WIDTHS)
def test_the_merge_preview_keeps_its_columns_on_screen(
    browser, live_server, long_named, tmp_path, width, language
):
    survivor, duplicate = long_named
    page = _log_in(browser, live_server, width=width, language=language)

    page.goto(f"{live_server.url}/contacts/{survivor.pk}/merge/{duplicate.pk}/")
    page.screenshot(path=str(tmp_path / f"merge-{language}-{width}.png"), full_page=True)

    table = page.locator("main section.card table").first
    box = table.bounding_box()
    assert box["x"] + box["width"] <= width
    card = page.locator("main section.card:has(table)").first
    assert card.evaluate("el => el.scrollWidth <= el.clientWidth")
    after = table.locator("thead th").nth(3).bounding_box()
    assert after["x"] + after["width"] <= box["x"] + box["width"] + 1
    assert after["width"] >= 150  # a real column, not a sliver
    for i, name in ((1, LONG_NAME), (2, LONG_LATIN)):
        heading = table.locator("thead th").nth(i)
        assert line_count(heading, first_text_only=True) == 1
        assert name in heading.locator("[title]").get_attribute("title")
    labels = table.locator("tbody tr td:first-child")
    for i in range(labels.count()):
        # 手机号, "Lifecycle stage", "Consent records": each label on one line.
        assert line_count(labels.nth(i)) == 1, labels.nth(i).inner_text()
    page.close()


def test_a_long_import_value_is_cut_in_the_mapping_preview(
    browser, live_server, settings, tmp_path
):
    settings.MEDIA_ROOT = tmp_path / "media"
    operator = UserFactory(username="operator")
    long_value = "这是一段非常非常长的备注，" * 20
    job = upload([{"手机号": "13800138000", "城市": long_value, "姓名": "林"}], user=operator)
    page = _log_in(browser, live_server, width=1280, language="zh-hans")

    page.goto(live_server.url + reverse("contacts_io:import_mapping", args=[job.pk]))
    page.locator("#import-preview").screenshot(path=str(tmp_path / "mapping-preview.png"))

    cell = page.locator(f'#import-preview .cell-clip[title="{long_value}"]')
    assert cell.count() == 1
    assert line_count(cell) == 1
    assert cell.bounding_box()["width"] <= 16 * 14 + 1  # .cell-clip's 16em of the 14px table font
    wrap = page.locator("#import-preview .table-wrap")
    assert wrap.evaluate("el => el.scrollWidth <= el.clientWidth")  # no sideways scrolling
    page.close()
