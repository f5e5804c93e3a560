"""API plumbing shared by every app: API-key auth, per-key throttling, one error shape."""

from typing import Any

from django.core.exceptions import PermissionDenied
from django.http import Http404
from drf_spectacular.extensions import OpenApiAuthenticationExtension
from rest_framework import exceptions, serializers, status
from rest_framework.authentication import BaseAuthentication, get_authorization_header
from rest_framework.permissions import BasePermission
from rest_framework.response import Response
from rest_framework.throttling import SimpleRateThrottle

from core.errors import DomainError, NotFound
from core.models import ApiKey
from core.services import api_key_authenticate

KEYWORD = "Api-Key"


class ApiKeyAuthentication(BaseAuthentication):
    """`Authorization: Api-Key <key>`; request.auth becomes the ApiKey row."""

    def authenticate(self, request) -> tuple[None, ApiKey] | None:
        header = get_authorization_header(request).split()
        if not header or header[0].decode(errors="replace").lower() != KEYWORD.lower():
            return None
        if len(header) != 2:
            raise exceptions.AuthenticationFailed(
                "Malformed Authorization header: use 'Api-Key <key>'."
            )
        try:
            raw = header[1].decode()
        except UnicodeDecodeError as exc:
            raise exceptions.AuthenticationFailed(
                "The API key contains invalid characters."
            ) from exc
        key = api_key_authenticate(raw=raw)
        if key is None:
            raise exceptions.AuthenticationFailed("Unknown or revoked API key.")
        return (None, key)

    def authenticate_header(self, request) -> str:
        return KEYWORD


class ApiKeyAuthenticationScheme(OpenApiAuthenticationExtension):
    target_class = "core.api.ApiKeyAuthentication"
    name = "ApiKey"

    def get_security_definition(self, auto_schema):
        return {"type": "apiKey", "in": "header", "name": "Authorization"}


class HasApiKey(BasePermission):
    message = "Authentication with an API key is required."

    def has_permission(self, request, view) -> bool:
        return isinstance(request.auth, ApiKey)


class ApiKeyRateThrottle(SimpleRateThrottle):
    """Throttle per API key, with an optional per-key rate overriding the site default."""

    scope = "api_key"

    def allow_request(self, request, view) -> bool:
        if isinstance(request.auth, ApiKey) and request.auth.throttle_rate:
            self.rate = request.auth.throttle_rate
            self.num_requests, self.duration = self.parse_rate(self.rate)
        return super().allow_request(request, view)

    def get_cache_key(self, request, view) -> str | None:
        if isinstance(request.auth, ApiKey):
            ident = f"key:{request.auth.pk}"
        else:
            ident = f"ip:{self.get_ident(request)}"
        return self.cache_format % {"scope": self.scope, "ident": ident}


class ErrorBodySerializer(serializers.Serializer):
    code = serializers.CharField(help_text="Machine-readable error code, e.g. `invalid`.")
    message = serializers.CharField(help_text="Human-readable explanation.")
    details = serializers.JSONField(
        required=False, allow_null=True, help_text="Field errors or other context; may be null."
    )


class ErrorSerializer(serializers.Serializer):
    error = ErrorBodySerializer()


def error_response(code: str, message: str, details: Any = None, *, status_code: int) -> Response:
    return Response(
        {"error": {"code": code, "message": message, "details": details}}, status=status_code
    )


def _first_message(detail: Any) -> str:
    if isinstance(detail, list) and detail:
        return _first_message(detail[0])
    if isinstance(detail, dict) and detail:
        field, value = next(iter(detail.items()))
        inner = _first_message(value)
        return inner if field == "non_field_errors" else f"{field}: {inner}"
    return str(detail)


def exception_handler(exc: Exception, context: dict) -> Response | None:
    """Render every API error as {"error": {"code", "message", "details"}}."""
    if isinstance(exc, Http404 | NotFound):
        return error_response("not_found", str(exc) or "Not found.", status_code=404)
    if isinstance(exc, PermissionDenied):
        exc = exceptions.PermissionDenied(str(exc) or None)
    if isinstance(exc, DomainError):
        return error_response(exc.code, exc.message, exc.details, status_code=400)
    if isinstance(exc, exceptions.ValidationError):
        return error_response(
            "invalid",
            _first_message(exc.detail),
            exc.detail,
            status_code=status.HTTP_400_BAD_REQUEST,
        )
    if isinstance(exc, exceptions.NotAuthenticated):
        exc.detail = exceptions.ErrorDetail(
            "An API key is required: send 'Authorization: Api-Key <key>'.",
            code="not_authenticated",
        )
    if isinstance(exc, exceptions.APIException):
        headers = {}
        if getattr(exc, "auth_header", None):
            headers["WWW-Authenticate"] = exc.auth_header
        if getattr(exc, "wait", None):
            headers["Retry-After"] = str(int(exc.wait))
        codes = exc.get_codes()
        code = codes if isinstance(codes, str) else exc.default_code
        response = error_response(code, str(exc.detail), None, status_code=exc.status_code)
        for name, value in headers.items():
            response[name] = value
        return response
    return None
