"""What an operator meets on the lead-scoring screens: the rule form shows the fields of the kind
chosen, names its switch "enabled", and says after saving when the scores follow; deleting a rule
asks first; a threshold's stage starts on a prompt, not on "---------"."""

import html
import re

import pytest
from django.contrib.messages import get_messages
from django.urls import reverse

from segments import scoring
from segments.models import LeadScoreRule

pytestmark = pytest.mark.django_db

HX = {"HTTP_HX_REQUEST": "true"}
CITY_RULE = {"type": "attribute", "field": "city", "operator": "eq", "value": "上海"}


@pytest.fixture
def english(settings, operator_client):
    """The operator's client with the UI in English (the messages added here are not compiled
    into zh-Hans until the catalogue is merged; the English text is what the code says)."""
    operator_client.cookies[settings.LANGUAGE_COOKIE_NAME] = "en"
    return operator_client


def _page(response) -> str:
    return html.unescape(response.content.decode())


def _fieldsets(page: str) -> dict[str, bool]:
    """Per kind, whether its fieldset shows (True) or is hidden."""
    return {
        kind: hidden != " hidden"
        for kind, hidden in re.findall(
            r'<fieldset class="rule-box" data-kind="(\w+)"( hidden)?>', page
        )
    }


def _form(**overrides) -> dict:
    data = {
        "name": "大额订单",
        "kind": "event",
        "event_name": "purchase",
        "condition": "",
        "points": "10",
        "cap_points": "",
        "cap_period": "none",
        "is_active": "on",
    }
    data.update(overrides)
    return data


def _messages(response) -> list[str]:
    return [str(message) for message in get_messages(response.wsgi_request)]


def test_the_switch_reads_enabled_not_in_progress(operator_client, english):
    page = _page(english.get(reverse("segments:scoring_rule_create")))
    assert re.search(r'name="is_active"[^>]*> Enabled</label>', page)


def test_the_switch_reads_qiyong_in_chinese(operator_client):
    page = _page(operator_client.get(reverse("segments:scoring_rule_create")))

    label = re.search(r'name="is_active"[^>]*> ([^<]+)</label>', page).group(1)
    assert label == "启用"


def test_a_new_rule_shows_the_event_fields_only(english):
    page = _page(english.get(reverse("segments:scoring_rule_create")))

    assert _fieldsets(page) == {"event": True, "attribute": False}


def test_a_profile_fit_rule_shows_its_condition_only(english):
    rule = scoring.score_rule_create(
        data={"name": "上海", "kind": "attribute", "condition": CITY_RULE, "points": 5}
    )

    page = _page(english.get(reverse("segments:scoring_rule_edit", args=[rule.pk])))

    assert _fieldsets(page) == {"event": False, "attribute": True}


def test_changing_the_kind_swaps_the_fields_and_keeps_what_was_typed(english):
    url = reverse("segments:scoring_rule_create")
    page = _page(english.get(url))
    # The kind select re-renders this region, and only it.
    assert 'hx-target="#rule-kind"' in page and 'hx-trigger="change from:#id_kind"' in page

    fragment = _page(
        english.post(
            url,
            _form(kind="attribute", f0_property="amount", f0_operator="gt", f0_value="100"),
            HTTP_HX_TARGET="rule-kind",
            **HX,
        )
    )

    assert fragment.lstrip().startswith('<div id="rule-kind"')
    assert _fieldsets(fragment) == {"event": False, "attribute": True}
    # The event's fields are hidden, not dropped: switching back finds them as they were.
    assert 'value="amount"' in fragment and 'value="purchase"' in fragment
    assert "This field is required" not in fragment
    back = _page(english.post(url, _form(kind="event"), HTTP_HX_TARGET="rule-kind", **HX))
    assert _fieldsets(back) == {"event": True, "attribute": False}
    assert not LeadScoreRule.objects.exists()


def test_what_the_hidden_event_fields_hold_does_not_stop_a_profile_fit_rule(english):
    condition = '{"type": "attribute", "field": "city", "operator": "eq", "value": "上海"}'

    response = english.post(
        reverse("segments:scoring_rule_create"),
        # A cap of 0 typed before the kind was switched: invalid, but hidden and not used.
        _form(kind="attribute", condition=condition, cap_points="0", cap_period="day"),
    )

    assert response.status_code == 302
    rule = LeadScoreRule.objects.get()
    assert (rule.kind, rule.cap_points, rule.event_name) == ("attribute", None, "")


def test_the_builder_buttons_still_re_render_the_builder(english):
    fragment = _page(
        english.post(
            reverse("segments:scoring_rule_create"),
            {**_form(kind="attribute"), "action": "add-condition:r"},
            HTTP_HX_TARGET="rule-builder",
            **HX,
        )
    )

    assert fragment.lstrip().startswith('<div id="rule-builder"')


@pytest.mark.parametrize(
    ("overrides", "says"),
    [
        ({}, "Its points for past events of the last 180 days are being worked out"),
        (
            {
                "kind": "attribute",
                "condition": '{"type": "attribute", "field": "city", '
                '"operator": "eq", "value": "上海"}',
            },
            "Contacts who match it get its points in the background, usually within a few minutes",
        ),
        ({"is_active": ""}, "It is not enabled, so it gives no points."),
    ],
    ids=["event", "profile-fit", "disabled"],
)
def test_saving_a_rule_says_when_the_scores_follow(english, overrides, says):
    response = english.post(reverse("segments:scoring_rule_create"), _form(**overrides))

    assert response.status_code == 302
    (message,) = _messages(response)
    assert message.startswith("Scoring rule “大额订单” saved.") and says in message


def test_deleting_a_rule_asks_first(english):
    rule = scoring.score_rule_create(
        data={"name": "下单", "kind": "event", "event_name": "purchase", "points": 10}
    )
    page = _page(english.get(reverse("segments:scoring")))
    delete_url = reverse("segments:scoring_rule_delete", args=[rule.pk])

    form = re.search(rf'<form method="post" action="{delete_url}"[^>]*>', page).group(0)
    assert f'hx-post="{delete_url}"' in form
    assert (
        'hx-confirm="Delete the scoring rule “下单”? The points it gave are taken back from every '
        'contact."' in form
    )

    response = english.post(delete_url, **HX)

    assert response.status_code == 204 and response["HX-Redirect"] == reverse("segments:scoring")
    assert not LeadScoreRule.objects.exists()
    assert _messages(response) == ["Scoring rule “下单” deleted."]


def test_deleting_without_htmx_still_redirects(english):
    rule = scoring.score_rule_create(
        data={"name": "下单", "kind": "event", "event_name": "purchase", "points": 10}
    )

    response = english.post(reverse("segments:scoring_rule_delete", args=[rule.pk]))

    assert response.status_code == 302 and response["Location"] == reverse("segments:scoring")


def test_the_threshold_stage_starts_on_a_prompt_and_is_required(english):
    page = _page(english.get(reverse("segments:scoring")))

    select = re.search(
        r'<select name="stage"[^>]*>\s*<option value="" selected>([^<]*)</option>', page
    )
    assert select and select.group(1) == "Choose a stage…"
    assert "---------" not in page
    assert re.search(r'<select name="stage"[^>]*required', page)
    response = english.post(
        reverse("segments:scoring_threshold_set"), {"min_score": "60", "stage": ""}
    )
    assert response.status_code == 422
