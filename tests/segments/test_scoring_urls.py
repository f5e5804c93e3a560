"""A refused save of the lead-scoring settings or threshold form answers with the scoring page at
the form's own address, which the browser keeps: reloading that address shows the scoring page
again (a redirect), never an empty 405."""

import pytest
from django.urls import reverse

from segments import scoring
from segments.models import LeadStageThreshold
from tests.factories import user_with_perms

pytestmark = pytest.mark.django_db

SCORING = reverse("segments:scoring")
SETTINGS = reverse("segments:scoring_settings")
THRESHOLDS = reverse("segments:scoring_threshold_set")


_user = user_with_perms


@pytest.mark.parametrize(
    ("url", "refused", "section"),
    [
        (SETTINGS, {"half_life_days": "-2"}, "scoring-settings"),
        (THRESHOLDS, {"min_score": "0", "stage": "interested"}, "scoring-thresholds"),
    ],
)
def test_reloading_the_address_of_a_refused_save_shows_the_scoring_page(
    operator_client, url, refused, section
):
    failed = operator_client.post(url, refused)
    # The page with the form and its error, at the form's address.
    assert failed.status_code == 422
    assert failed.wsgi_request.path == url
    assert f'id="{section}"' in failed.content.decode()

    reloaded = operator_client.get(url)

    assert reloaded.status_code == 302
    assert reloaded["Location"] == f"{SCORING}#{section}"
    page = operator_client.get(reloaded["Location"])
    assert page.status_code == 200
    assert f'action="{url}"' in page.content.decode()


def test_a_get_changes_nothing_whatever_it_carries(operator_client):
    before = scoring.scoring_config_get().half_life_days

    operator_client.get(SETTINGS, {"half_life_days": before + 3})
    operator_client.get(THRESHOLDS, {"min_score": "60", "stage": "interested"})

    assert scoring.scoring_config_get().half_life_days == before
    assert not LeadStageThreshold.objects.exists()


def test_a_successful_save_still_redirects_to_the_scoring_page(operator_client):
    response = operator_client.post(THRESHOLDS, {"min_score": "60", "stage": "interested"})

    assert response.status_code == 302
    assert response["Location"] == SCORING
    assert LeadStageThreshold.objects.get().min_score == 60


@pytest.mark.parametrize("url", [SETTINGS, THRESHOLDS])
def test_the_addresses_keep_their_permissions_and_methods(client, url):
    # Signed out: to the sign-in page, which comes back here and on to the scoring page.
    signed_out = client.get(url)
    assert signed_out.status_code == 302
    assert reverse("login") in signed_out["Location"] and "next=" in signed_out["Location"]

    # Someone who may look at scoring but not change it never had these forms.
    client.force_login(_user("segments.view_segment"))
    assert client.get(url).status_code == 403
    assert client.post(url, {}).status_code == 403

    client.force_login(_user("segments.view_segment", "segments.change_segment"))
    assert client.put(url).status_code == 405
    assert client.delete(url).status_code == 405
