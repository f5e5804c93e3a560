"""Removing a lead-score stage threshold asks first, like deleting a scoring rule, and happens
only on a POST by someone who may change scoring."""

import html
import re

import pytest
from django.contrib.messages import get_messages
from django.urls import reverse

from contacts import roles
from contacts.models import Stage
from segments import scoring
from segments.models import LeadStageThreshold
from tests.factories import user_with_role

pytestmark = pytest.mark.django_db

HX = {"HTTP_HX_REQUEST": "true"}
SCORING = reverse("segments:scoring")


@pytest.fixture
def english(settings, operator_client):
    """The operator's client in English: the confirmation is new text, not yet in the zh-Hans
    catalogue until the lead merges it, so the English wording is what the code says."""
    operator_client.cookies[settings.LANGUAGE_COOKIE_NAME] = "en"
    return operator_client


def _delete_url(threshold: LeadStageThreshold) -> str:
    return reverse("segments:scoring_threshold_delete", args=[threshold.pk])


def _delete_form(page: str, threshold: LeadStageThreshold) -> str | None:
    found = re.search(rf'<form method="post" action="{_delete_url(threshold)}"[^>]*>', page)
    return found.group(0) if found else None


def _messages(response) -> list[str]:
    return [str(message) for message in get_messages(response.wsgi_request)]


def test_the_remove_button_asks_first_naming_the_stage_and_score(english):
    threshold = scoring.threshold_set(stage_key="interested", min_score=60.25)
    stage = Stage.objects.get(key="interested").name

    form = _delete_form(html.unescape(english.get(SCORING).content.decode()), threshold)

    assert form is not None
    assert f'hx-post="{_delete_url(threshold)}"' in form
    assert (
        f'hx-confirm="Remove the threshold that moves contacts scoring 60.25 or more to “{stage}”? '
        'Scores stop moving anyone there; contacts already moved keep their stage."' in form
    )


def test_the_confirmation_shows_in_chinese_too(operator_client):
    threshold = scoring.threshold_set(stage_key="interested", min_score=60)
    stage = Stage.objects.get(key="interested").name

    page = operator_client.get(SCORING).content.decode()

    form = _delete_form(page, threshold)
    assert '<html lang="zh-hans">' in page and form is not None
    confirm = re.search(r'hx-confirm="([^"]+)"', form).group(1)
    assert stage in confirm and "60" in confirm


def test_a_stage_name_cannot_break_out_of_the_confirmation(english):
    Stage.objects.create(key="vip", name='VIP" onclick="x', position=9)
    threshold = scoring.threshold_set(stage_key="vip", min_score=500)

    page = english.get(SCORING).content.decode()

    form = _delete_form(page, threshold)
    assert 'onclick="x' not in form and "VIP&quot; onclick=&quot;x" in form


def test_confirming_removes_it_and_reloads_the_page(english):
    threshold = scoring.threshold_set(stage_key="interested", min_score=60)
    stage = Stage.objects.get(key="interested").name

    response = english.post(_delete_url(threshold), **HX)

    assert response.status_code == 204 and response["HX-Redirect"] == SCORING
    assert not LeadStageThreshold.objects.exists()
    assert _messages(response) == [f"Threshold for “{stage}” removed."]


def test_without_htmx_the_form_still_works_and_redirects(english):
    threshold = scoring.threshold_set(stage_key="interested", min_score=60)

    response = english.post(_delete_url(threshold))

    assert response.status_code == 302 and response["Location"] == SCORING
    assert not LeadStageThreshold.objects.exists()


def test_a_get_removes_nothing(english):
    threshold = scoring.threshold_set(stage_key="interested", min_score=60)

    response = english.get(_delete_url(threshold))

    assert response.status_code == 405
    assert LeadStageThreshold.objects.filter(pk=threshold.pk).exists()


def test_removing_it_twice_says_it_is_already_gone(english):
    threshold = scoring.threshold_set(stage_key="interested", min_score=60)
    english.get(english.post(_delete_url(threshold))["Location"])  # shows "removed"

    again = english.post(_delete_url(threshold), **HX)
    plain = english.post(_delete_url(threshold))

    assert again.status_code == 204 and again["HX-Redirect"] == SCORING
    assert _messages(again) == ["This threshold was already removed."]
    assert plain.status_code == 302 and plain["Location"] == SCORING


def test_the_other_thresholds_stay(english):
    interested = scoring.threshold_set(stage_key="interested", min_score=60)
    other = scoring.threshold_set(stage_key="loyal", min_score=300)

    english.post(_delete_url(interested), **HX)

    assert list(LeadStageThreshold.objects.values_list("pk", flat=True)) == [other.pk]


def test_read_only_roles_see_no_button_and_cannot_remove(client):
    roles.roles_sync()
    threshold = scoring.threshold_set(stage_key="interested", min_score=60)
    client.force_login(user_with_role("analyst"))

    page = client.get(SCORING)
    response = client.post(_delete_url(threshold), **HX)

    assert page.status_code == 200 and _delete_form(page.content.decode(), threshold) is None
    assert response.status_code == 403
    assert LeadStageThreshold.objects.filter(pk=threshold.pk).exists()
