"""The operator UI at a laptop width (1280x800) in English as in Chinese: Latin text in a Latin
font, labels and values that keep to their lines, and the import's tag choice as chips.

Screenshots of every page in both languages are kept in the test's tmp_path for review."""

import datetime as dt

import pytest
from django.core.files.uploadedfile import SimpleUploadedFile
from django.utils import timezone

from contacts import importers
from contacts.models import ContactTag, Stage
from segments.models import Segment
from segments.services import segment_create, segment_refresh
from tests.browser.layout import line_count
from tests.factories import ContactFactory, TagFactory, TagGroupFactory, UserFactory

pytestmark = [pytest.mark.browser, pytest.mark.django_db(transaction=True)]

PASSWORD = "pass-1234-word"  # UserFactory's
# The browser's languages, which pick the page's (LocaleMiddleware reads Accept-Language).
LOCALES = {"en": "en-US", "zh": "zh-CN"}
CJK_FONT = "Noto Sans CJK SC"  # Debian's fonts-noto-cjk


def _log_in(browser, live_server, language: str):
    page = browser.new_page(locale=LOCALES[language], viewport={"width": 1280, "height": 800})
    page.set_default_timeout(15_000)
    page.goto(f"{live_server.url}/login/")
    page.fill("input[name=username]", "operator")
    page.fill("input[name=password]", PASSWORD)
    page.locator("form.form-stack button[type=submit]").click()
    page.wait_for_url(f"{live_server.url}/")
    return page


def _fonts(page, selector: str) -> set[str]:
    """The fonts Chromium actually rendered the element's own text with."""
    session = page.context.new_cdp_session(page)
    session.send("DOM.enable")
    session.send("CSS.enable")
    root = session.send("DOM.getDocument")["root"]["nodeId"]
    node = session.send("DOM.querySelector", {"nodeId": root, "selector": selector})["nodeId"]
    fonts = session.send("CSS.getPlatformFontsForNode", {"nodeId": node})["fonts"]
    session.detach()
    return {font["familyName"] for font in fonts}


@pytest.fixture
def world(settings, tmp_path):
    """A refreshed rule-based segment with an event filter, a contact with a stage and tags, and
    an upload waiting for its columns to be mapped."""
    settings.MEDIA_ROOT = tmp_path / "media"
    UserFactory(username="operator")
    groups = [TagGroupFactory(name=name) for name in ("兴趣", "价值", "渠道")]
    tags = [
        TagFactory(group=groups[i % 3], name=name)
        for i, name in enumerate(
            ("彩妆", "护肤", "母婴", "运动", "香水", "价格敏感", "潜力客户", "高价值", "直播间")
        )
    ]
    contact = ContactFactory(
        name="林小雨", city="上海", lifecycle_stage=Stage.objects.get(key="interested")
    )
    for tag in tags[:3]:
        ContactTag.objects.create(contact=contact, tag=tag)
    segment = segment_create(
        name="上海护肤兴趣客户",
        rule={
            "op": "and",
            "conditions": [
                {"type": "attribute", "field": "city", "operator": "eq", "value": "上海"},
                {
                    "type": "event",
                    "name": "purchase",
                    "measure": "count",
                    "operator": "gte",
                    "value": 1,
                    "window": {"last_days": 90},
                    "filters": [{"property": "sku", "operator": "eq", "value": ""}],
                },
            ],
        },
    )
    segment_refresh(segment=segment, now=timezone.now() - dt.timedelta(minutes=5))
    rows = "phone,name,email,city,tags\n13800138000,林小雨,a@example.com,上海,护肤\n"
    job = importers.import_upload(file=SimpleUploadedFile("contacts.csv", rows.encode()), user=None)
    return {"contact": contact, "segment": Segment.objects.get(pk=segment.pk), "job": job}


@pytest.mark.parametrize("language", ["en", "zh"])
def test_text_renders_in_a_font_of_the_pages_language(browser, live_server, world, language):
    page = _log_in(browser, live_server, language)
    page.goto(f"{live_server.url}/contacts/{world['contact'].pk}/")

    heading = page.locator("#contact-profile .card-header h2").first.inner_text()
    fonts = _fonts(page, "#contact-profile .card-header h2")
    if language == "en":
        assert heading == "Profile"
        assert CJK_FONT not in fonts, fonts
        # The contact's Chinese name still finds a CJK font after the Latin ones.
        assert CJK_FONT in _fonts(page, "#contact-profile dl.props dd")
    else:
        assert CJK_FONT in fonts, fonts
    page.close()


def test_curly_quotes_in_english_are_not_full_width(browser, live_server, world):
    page = _log_in(browser, live_server, "en")
    page.goto(f"{live_server.url}/segments/{world['segment'].pk}/edit/")

    hint = "fieldset p.muted.small"
    assert page.locator(hint).inner_text().startswith("“When contacts change” re-evaluates")
    assert _fonts(page, hint) == {"Liberation Sans"}  # Arial's stand-in on Debian
    page.close()


@pytest.mark.parametrize("language", ["en", "zh"])
def test_the_segment_summary_keeps_its_values_readable(
    browser, live_server, world, language, tmp_path
):
    page = _log_in(browser, live_server, language)
    page.goto(f"{live_server.url}/segments/{world['segment'].pk}/")
    page.screenshot(path=str(tmp_path / f"{language}-segment-detail-1280.png"), full_page=True)

    tiles = page.locator("#refresh-status > div")
    assert tiles.count() == 3
    refreshed, policy = tiles.nth(1).locator(".mini-value"), tiles.nth(2).locator(".mini-value")
    assert line_count(refreshed, first_text_only=True) == 1, refreshed.inner_text()  # the date
    seconds = refreshed.locator(".small")
    assert line_count(seconds) == 1, seconds.inner_text()  # "(0.0 s)", never "(0.0" and "s)"
    assert line_count(policy) == 1, policy.inner_text()  # "When contacts change"
    page.close()


@pytest.mark.parametrize("language", ["en", "zh"])
def test_contact_property_labels_stay_on_one_line(browser, live_server, world, language, tmp_path):
    page = _log_in(browser, live_server, language)
    page.goto(f"{live_server.url}/contacts/{world['contact'].pk}/")
    page.locator("#contact-profile").screenshot(
        path=str(tmp_path / f"{language}-contact-profile-1280.png")
    )

    labels = page.locator("#contact-profile dl.props dt")
    assert labels.count() >= 10
    for label in labels.all():
        assert line_count(label) == 1, label.inner_text()
    page.close()


@pytest.mark.parametrize("language", ["en", "zh"])
def test_the_property_filter_value_shows_its_whole_placeholder(
    browser, live_server, world, language, tmp_path
):
    page = _log_in(browser, live_server, language)
    page.goto(f"{live_server.url}/segments/{world['segment'].pk}/edit/")
    page.locator("#rule-builder").screenshot(path=str(tmp_path / f"{language}-builder-1280.png"))

    value = page.locator(".rule-filter input[name$='.value']").first
    fits = value.evaluate(
        """el => {
          const style = getComputedStyle(el);
          const context = document.createElement("canvas").getContext("2d");
          context.font = `${style.fontWeight} ${style.fontSize} ${style.fontFamily}`;
          const room = el.clientWidth - parseFloat(style.paddingLeft)
            - parseFloat(style.paddingRight);
          return [context.measureText(el.placeholder).width, room];
        }"""
    )
    assert fits[0] <= fits[1], fits
    page.close()


@pytest.mark.parametrize("language", ["en", "zh"])
def test_import_tags_are_chips_in_rows(browser, live_server, world, language, tmp_path):
    page = _log_in(browser, live_server, language)
    page.goto(f"{live_server.url}/contacts/import/{world['job'].pk}/mapping/")
    page.locator("form.form-card").screenshot(
        path=str(tmp_path / f"{language}-import-mapping-1280.png")
    )

    chips = page.locator("fieldset.field-chips label.chip")
    assert chips.count() == 9
    tops = {round(chip.bounding_box()["y"]) for chip in chips.all()}
    assert len(tops) <= 2  # nine chips on a row or two, not a column of nine
    chips.nth(1).click()
    assert chips.nth(1).locator("input").is_checked()
    page.close()


def test_an_admin_page_asks_for_no_missing_favicon(browser, live_server, world):
    page = _log_in(browser, live_server, "en")
    missing = []
    page.on("response", lambda r: missing.append(r.url) if r.status == 404 else None)

    page.goto(f"{live_server.url}/admin/")
    icon = page.request.get(f"{live_server.url}/favicon.ico")

    assert icon.ok and icon.headers["content-type"] in {"image/x-icon", "image/vnd.microsoft.icon"}
    assert missing == []
    page.close()
