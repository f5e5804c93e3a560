"""A key's throttle rate is checked where it is set — the service, the create_api_key command and
the admin's form — against what the API's throttle can apply. Before, `--rate abc` or
`5/fortnight` was stored and then every request with that key answered a 500 (HTML) from the
throttle, and `0/minute` made the key answer 429 for ever."""

import io

import pytest
from django.core.exceptions import ValidationError
from django.core.management import CommandError, call_command
from django.urls import reverse
from django.utils import translation
from rest_framework.test import APIClient
from rest_framework.throttling import SimpleRateThrottle

from core.errors import ValidationFailed
from core.models import ApiKey, validate_throttle_rate
from core.services import api_key_create

pytestmark = pytest.mark.django_db

REFUSED = [
    "abc",
    "5/fortnight",
    "0/minute",
    "-1/minute",
    "5",
    "5/",
    "/minute",
    "1.5/minute",
    "5/minute/2",
    "5/ minute",
    "five/minute",
]
ACCEPTED = ["600/minute", "20/second", "1000/hour", "1/day", "5/min", "2/m", "100/s"]

MESSAGE = (
    "“5/fortnight” is not a throttle rate: write a number of requests of at least 1, a slash "
    "and second, minute, hour or day, such as 600/minute or 20/second."
)


def _drf_applies(rate: str) -> bool:
    """Whether DRF's own throttle reads `rate` as at least one request per period."""
    try:
        count, _ = SimpleRateThrottle.parse_rate(None, rate)
    except (ValueError, KeyError, IndexError):
        return False
    return count >= 1


def _answers(raw: str) -> int:
    client = APIClient()
    client.credentials(HTTP_AUTHORIZATION=f"Api-Key {raw}")
    return client.get("/api/v1/contacts/999999").status_code


@pytest.mark.parametrize("rate", REFUSED + ACCEPTED + ["+5/minute", "5/mfoo", " 7/hour"])
def test_the_validator_accepts_exactly_what_drfs_throttle_applies(rate):
    try:
        validate_throttle_rate(rate)
        accepted = True
    except ValidationError:
        accepted = False

    assert accepted == _drf_applies(rate)


@pytest.mark.parametrize("rate", REFUSED)
def test_the_service_refuses_a_rate_the_throttle_cannot_apply(rate):
    with pytest.raises(ValidationFailed) as refused:
        api_key_create(name="ERP", throttle_rate=rate)

    assert refused.value.code == "invalid"
    assert refused.value.details == {"field": "throttle_rate"}
    assert not ApiKey.objects.exists()


def test_the_refusal_says_what_a_rate_looks_like():
    with translation.override("en"), pytest.raises(ValidationFailed) as refused:
        api_key_create(name="ERP", throttle_rate="5/fortnight")

    assert refused.value.message == MESSAGE


def test_a_rate_longer_than_the_column_is_refused_not_a_database_error():
    rate = "1" * 30 + "/minute"

    with translation.override("en"), pytest.raises(ValidationFailed) as refused:
        api_key_create(name="ERP", throttle_rate=rate)

    assert "at most 30 characters" in refused.value.message
    assert not ApiKey.objects.exists()


@pytest.mark.parametrize("rate", [*ACCEPTED, "", "  "])
def test_every_accepted_rate_is_applied_to_the_keys_requests(rate):
    key, raw = api_key_create(name="ERP", throttle_rate=rate)

    assert key.throttle_rate == rate.strip()
    # Authenticated and throttled by its own rate: a 404 for the unknown contact, not a 500.
    assert _answers(raw) == 404


def test_a_key_of_one_request_a_minute_is_throttled_on_the_second():
    _, raw = api_key_create(name="ERP", throttle_rate="1/minute")

    assert [_answers(raw) for _ in range(2)] == [404, 429]


def test_the_command_refuses_a_bad_rate_with_the_message_and_creates_no_key():
    out = io.StringIO()

    with translation.override("en"), pytest.raises(CommandError) as refused:
        call_command("create_api_key", "ERP", rate="5/fortnight", stdout=out, stderr=io.StringIO())

    assert str(refused.value) == MESSAGE
    assert out.getvalue() == ""
    assert not ApiKey.objects.exists()


@pytest.mark.parametrize("rate", ["abc", "0/minute"])
def test_the_command_refuses_each_kind_of_bad_rate(rate):
    with pytest.raises(CommandError):
        call_command("create_api_key", "ERP", rate=rate, stdout=io.StringIO(), stderr=io.StringIO())
    assert not ApiKey.objects.exists()


def test_the_command_stores_a_good_rate():
    out = io.StringIO()
    call_command("create_api_key", "ERP", rate="1200/minute", stdout=out, stderr=io.StringIO())

    key = ApiKey.objects.get()
    assert key.throttle_rate == "1200/minute"
    assert _answers(out.getvalue().strip().splitlines()[-1]) == 404


def _rate_errors(response) -> list[str]:
    form = response.context["adminform"].form
    return [error.code for error in form.errors.as_data().get("throttle_rate", [])]


@pytest.mark.parametrize("rate", ["abc", "5/fortnight", "0/minute"])
def test_the_admin_add_form_refuses_a_bad_rate(operator_client, rate):
    response = operator_client.post(
        reverse("admin:core_apikey_add"), {"name": "ERP", "throttle_rate": rate, "is_active": "on"}
    )

    assert response.status_code == 200
    assert _rate_errors(response) == ["invalid_rate"]
    assert not ApiKey.objects.exists()


def test_the_admin_change_form_refuses_a_bad_rate_and_keeps_the_old_one(operator_client):
    key, raw = api_key_create(name="ERP", throttle_rate="600/minute")
    url = reverse("admin:core_apikey_change", args=[key.pk])

    refused = operator_client.post(
        url, {"name": "ERP", "throttle_rate": "0/minute", "is_active": "on"}
    )
    saved = operator_client.post(
        url, {"name": "ERP", "throttle_rate": "20/second", "is_active": "on"}
    )

    assert refused.status_code == 200 and _rate_errors(refused) == ["invalid_rate"]
    assert saved.status_code == 302
    key.refresh_from_db()
    assert key.throttle_rate == "20/second"
    assert _answers(raw) == 404
