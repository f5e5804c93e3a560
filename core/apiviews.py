"""Base view for API endpoints (kept apart from core.api, which DRF settings import early)."""

import inspect

from django.utils import translation
from drf_spectacular.openapi import AutoSchema
from drf_spectacular.plumbing import get_doc
from rest_framework.views import APIView

from core.api import ErrorSerializer, api_language

# Methods whose body every endpoint reads, and which can so answer 415 for a body that is not
# JSON. An operation that reads the body of another method declares its 415 itself.
BODY_METHODS = ("POST", "PUT", "PATCH")


class ApiAutoSchema(AutoSchema):
    """The OpenAPI description of an endpoint, with what every endpoint may answer.

    Every operation may answer 406 (an `Accept` header that JSON does not satisfy), and every
    one that reads a body 415 (a `Content-Type` other than JSON), both in the one error shape.
    (A method the path does not have answers 405, which OpenAPI cannot attach to an operation:
    docs/api.md tells it.)"""

    def get_description(self) -> str:
        # The method's docstring or the view's own, never one inherited from BaseApiView, which
        # describes the plumbing rather than the operation.
        method = getattr(self.view, self.method.lower(), None)
        own = type(self.view).__dict__.get("__doc__")
        return get_doc(method) or (inspect.cleandoc(own) if own else "")

    def _get_response_bodies(self, direction="response"):
        responses = super()._get_response_bodies(direction)
        extra = ["406", *(["415"] if self.method in BODY_METHODS else [])]
        for code in extra:
            if code not in responses:
                responses[code] = self._get_response_for_code(
                    ErrorSerializer, code, direction=direction
                )
        return dict(sorted(responses.items()))


class BaseApiView(APIView):
    """Base for every endpoint: answers in the client's language (see api_language), and
    names it in `Content-Language`."""

    schema = ApiAutoSchema()

    def dispatch(self, request, *args, **kwargs):
        with translation.override(api_language(request)):
            return super().dispatch(request, *args, **kwargs)

    def finalize_response(self, request, response, *args, **kwargs):
        response = super().finalize_response(request, response, *args, **kwargs)
        # Set while the answer's language is active: LocaleMiddleware would name the
        # operator UI's language, which it activates again once the view has returned.
        response["Content-Language"] = translation.get_language()
        return response
