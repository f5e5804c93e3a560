import io
import re

import pytest
import yaml
from django.core.management import call_command
from rest_framework.test import APIClient

from config.celery import app as celery_app
from core.models import ApiKey
from core.services import api_key_create

pytestmark = pytest.mark.django_db


def test_create_api_key_command_prints_the_key_last_and_stores_only_its_hash():
    out = io.StringIO()
    call_command("create_api_key", "store backend", stdout=out, stderr=io.StringIO())
    raw = out.getvalue().strip().splitlines()[-1]
    key = ApiKey.objects.get(name="store backend")
    assert raw not in (key.hashed_key, key.prefix)
    assert raw.startswith(key.prefix)
    client = APIClient()
    client.credentials(HTTP_AUTHORIZATION=f"Api-Key {raw}")
    assert client.get("/api/v1/contacts/1").status_code == 404  # authenticated, no such contact


@pytest.mark.parametrize(
    "header,message",
    [
        (None, "An API key is required"),
        ("Api-Key nope", "Unknown or revoked"),
        ("Api-Key a b", "Malformed"),
        ("Bearer abc", "An API key is required"),
    ],
)
def test_requests_without_a_valid_key_get_401_in_the_error_shape(header, message):
    client = APIClient()
    if header:
        client.credentials(HTTP_AUTHORIZATION=header)
    response = client.post("/api/v1/identify", {}, format="json")
    assert response.status_code == 401
    body = response.json()
    assert set(body) == {"error"}
    assert body["error"]["code"] in ("not_authenticated", "authentication_failed")
    assert message in body["error"]["message"]
    assert response["WWW-Authenticate"] == "Api-Key"


def test_revoked_keys_are_refused():
    key, raw = api_key_create(name="old")
    ApiKey.objects.filter(pk=key.pk).update(is_active=False)
    client = APIClient()
    client.credentials(HTTP_AUTHORIZATION=f"Api-Key {raw}")
    assert client.post("/api/v1/identify", {}, format="json").status_code == 401


def test_throttling_is_per_key():
    _, slow = api_key_create(name="slow", throttle_rate="2/minute")
    _, other = api_key_create(name="other", throttle_rate="2/minute")
    client = APIClient()
    client.credentials(HTTP_AUTHORIZATION=f"Api-Key {slow}")
    statuses = [client.get("/api/v1/contacts/1").status_code for _ in range(3)]
    assert statuses == [404, 404, 429]
    throttled = client.get("/api/v1/contacts/1")
    assert throttled.json()["error"]["code"] == "throttled"
    assert int(throttled["Retry-After"]) > 0
    client.credentials(HTTP_AUTHORIZATION=f"Api-Key {other}")
    assert client.get("/api/v1/contacts/1").status_code == 404


def test_malformed_json_gets_a_clear_error(api):
    response = api.post("/api/v1/identify", "{not json", content_type="application/json")
    assert response.status_code == 400
    assert response.json()["error"]["code"] == "parse_error"


def test_schema_is_valid_openapi_and_lists_the_endpoints(client):
    response = client.get("/api/schema/")
    assert response.status_code == 200
    schema = yaml.safe_load(response.content)
    assert schema["openapi"].startswith("3.")
    for path in ("/api/v1/identify", "/api/v1/events", "/api/v1/contacts/{contact_id}"):
        assert path in schema["paths"]
    assert "ApiKey" in schema["components"]["securitySchemes"]
    # Each operation names its key requirement once (a global SECURITY setting used to add a
    # second copy next to the authentication class's own).
    operations = [op for item in schema["paths"].values() for op in item.values()]
    assert operations
    assert all(op.get("security") == [{"ApiKey": []}] for op in operations)
    out = io.StringIO()
    call_command("spectacular", "--validate", "--fail-on-warn", stdout=out)


def test_api_docs_load_only_local_assets(client):
    html = client.get("/api/docs/").content.decode()
    assert "swagger-ui" in html
    urls = re.findall(r'(?:src|href)="([^"]+)"', html)
    assert urls, "the docs page should reference its assets"
    assert all(not u.startswith(("http://", "https://", "//")) for u in urls), urls


def test_healthz_reports_database_and_broker(client):
    response = client.get("/healthz")
    assert response.status_code == 200
    body = response.json()
    assert body["status"] == "ok"
    assert body["checks"]["database"]["status"] == "ok"
    assert body["checks"]["broker"]["status"] == "ok"


def test_healthz_is_503_when_the_broker_is_down(client, monkeypatch):
    # Celery lets the CELERY_BROKER_URL environment variable win over app.conf.
    monkeypatch.delenv("CELERY_BROKER_URL", raising=False)
    previous = celery_app.conf.broker_url
    # A real connection attempt to a port where nothing listens.
    celery_app.conf.broker_url = "redis://127.0.0.1:9/0"
    try:
        response = client.get("/healthz")
    finally:
        celery_app.conf.broker_url = previous
    assert response.status_code == 503
    assert response.json()["checks"]["broker"]["status"] == "error"
