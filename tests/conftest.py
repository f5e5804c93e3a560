import pytest
from django.core.cache import cache

from tests.factories import UserFactory


def pytest_configure(config):
    """A password hash that costs nothing: Django's default (PBKDF2, a million rounds) takes
    0.3–1 s per hash on our 2-core machines, and the suite creates users (and seeds demo logins)
    in hundreds of tests; that alone was a large part of its run time. Logins, password checks
    and the demo's users behave the same with either hasher."""
    from django.conf import settings
    from django.contrib.auth.hashers import get_hashers

    settings.PASSWORD_HASHERS = ["django.contrib.auth.hashers.MD5PasswordHasher"]
    get_hashers.cache_clear()


@pytest.fixture(autouse=True)
def _default_stages(request):
    """Transactional tests flush the rows the data migration created; put the stages back."""
    if not {"db", "transactional_db", "django_db_setup"} & set(request.fixturenames) and not (
        request.node.get_closest_marker("django_db")
    ):
        return
    request.getfixturevalue("transactional_db" if _is_transactional(request) else "db")
    from contacts.services import stages_ensure_defaults

    stages_ensure_defaults()


def _is_transactional(request) -> bool:
    marker = request.node.get_closest_marker("django_db")
    return bool(marker and marker.kwargs.get("transaction")) or (
        "transactional_db" in request.fixturenames or "live_server" in request.fixturenames
    )


@pytest.fixture(autouse=True)
def _clear_cache():
    # Throttle counters live in the cache, which may be a shared file or Redis.
    cache.clear()
    yield
    cache.clear()


@pytest.fixture
def operator(db):
    return UserFactory(username="operator")


@pytest.fixture
def operator_client(client, operator):
    client.force_login(operator)
    return client


@pytest.fixture(autouse=True)
def _celery_eager(request):
    """Run tasks inline in unit tests; e2e tests (marked `e2e`) use a real worker instead."""
    from config.celery import app

    eager = request.node.get_closest_marker("e2e") is None
    previous = app.conf.task_always_eager
    app.conf.task_always_eager = eager
    app.conf.task_eager_propagates = True
    yield
    app.conf.task_always_eager = previous


@pytest.fixture
def webhook_receiver():
    from tests.fakes import WebhookReceiver

    receiver = WebhookReceiver().start()
    yield receiver
    receiver.stop()


@pytest.fixture
def api(db):
    """A DRF client authenticated with a fresh API key."""
    from rest_framework.test import APIClient

    from core.services import api_key_create

    _, raw = api_key_create(name="mini-program backend")
    client = APIClient()
    client.credentials(HTTP_AUTHORIZATION=f"Api-Key {raw}")
    return client
