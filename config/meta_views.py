"""Views for what the site serves about itself: the favicon and the API's OpenAPI schema."""

from typing import Any

from django.contrib.staticfiles.storage import staticfiles_storage
from django.http import HttpRequest, HttpResponse, HttpResponseRedirect
from django.utils import translation
from django.utils.cache import patch_cache_control, patch_vary_headers
from drf_spectacular.utils import extend_schema
from drf_spectacular.views import SpectacularAPIView

from core.api import api_language

# A day: the icon's static URL carries a content hash in production, and the redirect to it
# should not outlive a new icon by long.
FAVICON_MAX_AGE = 24 * 60 * 60


def favicon(request: HttpRequest) -> HttpResponse:
    """`/favicon.ico`, which browsers ask for on pages that name no icon (the admin's)."""
    response = HttpResponseRedirect(staticfiles_storage.url("img/favicon.ico"))
    patch_cache_control(response, public=True, max_age=FAVICON_MAX_AGE)
    return response


def _drop_field_titles(node: Any) -> None:
    """Remove the `title` drf-spectacular gives a property whose label is not its name reworded.

    Every Chinese label is such a label and no English one is, and a title next to a `$ref`
    comes wrapped in a one-item `allOf`: left alone, the schema's shape would depend on its
    language, and so would the client code generated from it."""
    if isinstance(node, list):
        for item in node:
            _drop_field_titles(item)
        return
    if not isinstance(node, dict):
        return
    properties = node.get("properties")
    if isinstance(properties, dict):
        for prop in properties.values():
            if not isinstance(prop, dict):
                continue
            prop.pop("title", None)
            if list(prop) == ["allOf"] and len(prop["allOf"]) == 1:
                prop.update(prop.pop("allOf")[0])
    for value in node.values():
        _drop_field_titles(value)


class ApiSchemaView(SpectacularAPIView):
    """The OpenAPI schema, in the language API answers use (core.api.api_language: the
    request's Accept-Language, else English) rather than the operator UI's, and with one
    structure whatever the language."""

    def dispatch(self, request, *args, **kwargs):
        with translation.override(api_language(request)):
            response = super().dispatch(request, *args, **kwargs)
            # Rendered while the answer's language is active: LocaleMiddleware activates the
            # operator UI's again once the view has returned, before Django renders.
            if hasattr(response, "render"):
                response.render()
            response["Content-Language"] = translation.get_language()
        patch_vary_headers(response, ["Accept-Language"])
        return response

    @extend_schema(exclude=True)
    def get(self, request, *args, **kwargs):
        # drf-spectacular would also let `?lang=` pick the language; the API has one rule
        # (dispatch above), and this view's urlconf and settings are the defaults.
        response = self._get_schema_response(request)
        _drop_field_titles(response.data)
        return response
