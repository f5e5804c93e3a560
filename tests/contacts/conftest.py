"""Fixtures of the contact tests that ask for them (not autouse: most pages are tested in
the default language, zh-Hans)."""

import pytest
from django.utils import translation


@pytest.fixture
def media(settings, tmp_path):
    """Uploads and job files under a temporary MEDIA_ROOT."""
    settings.MEDIA_ROOT = tmp_path
    return tmp_path


@pytest.fixture
def english(settings):
    """Messages in English (rejection reasons are compared as text)."""
    settings.LANGUAGE_CODE = "en"
    with translation.override("en"):
        yield
