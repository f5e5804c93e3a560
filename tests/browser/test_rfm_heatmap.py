"""The RFM heat-map's labels stay readable: no text of the chart runs into another one."""

import datetime as dt
import uuid
from decimal import Decimal

import pytest
from django.utils import timezone

from segments import rfm
from tests.factories import ContactFactory, EventFactory, UserFactory

pytestmark = [pytest.mark.browser, pytest.mark.django_db(transaction=True)]

# Every text node the SVG renderer drew, as a box in page coordinates.
TEXT_BOXES = """
(el) => Array.from(el.querySelectorAll("svg text"))
  .filter((t) => t.textContent.trim() !== "")
  .map((t) => {
    const r = t.getBoundingClientRect();
    return {text: t.textContent, left: r.left, top: r.top, right: r.right, bottom: r.bottom};
  })
"""


def _overlap(a: dict, b: dict) -> bool:
    # A pixel of tolerance: glyph boxes of neighbouring labels may touch without colliding.
    return (
        min(a["right"], b["right"]) - max(a["left"], b["left"]) > 1
        and min(a["bottom"], b["bottom"]) - max(a["top"], b["top"]) > 1
    )


@pytest.fixture
def scored_buyers():
    """Forty buyers with spread-out recency, frequency and spend, scored by one RFM run."""
    now = timezone.now()
    for i in range(40):
        contact = ContactFactory()
        for k in range(1 + i % 6):
            EventFactory(
                contact=contact,
                name="purchase",
                occurred_at=now - dt.timedelta(days=1 + i * 3 + k),
                value=Decimal(50 + i * 37),
                properties={"order_id": uuid.uuid4().hex[:8]},
            )
    return rfm.rfm_compute(now=now)


@pytest.mark.parametrize("lang", ["zh-hans", "en"])
@pytest.mark.parametrize("viewport", [(1280, 800), (1920, 1080)])
def test_heatmap_labels_do_not_overlap(browser, live_server, scored_buyers, lang, viewport):
    UserFactory(username="yunying")
    width, height = viewport
    context = browser.new_context(viewport={"width": width, "height": height})
    context.add_cookies([{"name": "django_language", "value": lang, "url": live_server.url}])
    page = context.new_page()
    page.set_default_timeout(15_000)
    page.goto(f"{live_server.url}/login/")
    page.fill("input[name=username]", "yunying")
    page.fill("input[name=password]", "pass-1234-word")
    page.locator("form button[type=submit]").first.click()
    page.wait_for_url(f"{live_server.url}/")

    page.goto(f"{live_server.url}/segments/rfm/")
    chart = page.locator("[data-chart='rfm-heatmap'][data-chart-ready]")
    chart.locator("svg").wait_for()
    boxes = chart.evaluate(TEXT_BOXES)
    texts = [box["text"] for box in boxes]

    x_name = "R 分（5 = 最近购买）" if lang == "zh-hans" else "R score (5 = bought most recently)"
    assert any(x_name in text for text in texts), texts
    # Every R × F cell carries its buyer count, empty ones included: 25 cells in all.
    assert sum(1 for box in boxes if box["text"].isdigit()) >= 25
    frame = chart.bounding_box()
    for box in boxes:
        assert box["left"] >= frame["x"] - 1 and box["right"] <= frame["x"] + frame["width"] + 1
        assert box["top"] >= frame["y"] - 1 and box["bottom"] <= frame["y"] + frame["height"] + 1
    collisions = [
        (a["text"], b["text"])
        for i, a in enumerate(boxes)
        for b in boxes[i + 1 :]
        if _overlap(a, b)
    ]
    assert collisions == []
    context.close()
