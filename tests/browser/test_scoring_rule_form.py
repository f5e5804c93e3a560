"""In a real browser the scoring rule form shows the fields of the kind chosen, and deleting a
rule asks for confirmation first."""

import pytest

from segments import scoring
from segments.models import LeadScoreRule

pytestmark = [pytest.mark.browser, pytest.mark.django_db(transaction=True)]


def test_the_kind_select_shows_only_its_fields(page, live_server):
    from playwright.sync_api import expect

    page.goto(f"{live_server.url}/segments/scoring/rules/new/")
    event = page.locator('fieldset[data-kind="event"]')
    fit = page.locator('fieldset[data-kind="attribute"]')
    expect(event).to_be_visible()
    expect(fit).to_be_hidden()
    page.locator("#id_event_name").fill("share")

    page.locator("#id_kind").select_option("attribute")

    expect(fit).to_be_visible()
    expect(event).to_be_hidden()
    page.locator("#id_kind").select_option("event")
    expect(event).to_be_visible()
    expect(page.locator("#id_event_name")).to_have_value("share")


def test_deleting_a_rule_asks_first(page, live_server):
    from playwright.sync_api import expect

    scoring.score_rule_create(
        data={"name": "下单", "kind": "event", "event_name": "purchase", "points": 10}
    )
    page.goto(f"{live_server.url}/segments/scoring/")
    asked: list[str] = []

    def dismiss(dialog) -> None:
        asked.append(dialog.message)
        dialog.dismiss()

    page.once("dialog", dismiss)
    page.locator("#scoring-rules").get_by_role("button", name="Delete").click()
    expect(page.locator("#scoring-rules")).to_contain_text("下单")
    assert asked and "下单" in asked[0]
    assert LeadScoreRule.objects.count() == 1

    page.once("dialog", lambda dialog: dialog.accept())
    page.locator("#scoring-rules").get_by_role("button", name="Delete").click()

    expect(page.locator("#scoring-rules")).to_contain_text("No scoring rules yet.")
    expect(page.locator("#toasts")).to_contain_text("Scoring rule “下单” deleted.")
    assert LeadScoreRule.objects.count() == 0
