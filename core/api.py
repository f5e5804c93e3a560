"""API plumbing shared by every app: API-key auth, per-key throttling, one error shape, and
the language of answers (api_language; docs/api.md, "Language").

Every text of an answer (error messages, event reasons) is written in that language and the
answer says which in `Content-Language`, so each message here goes through gettext, including
the ones Django and DRF word outside it.
"""

import datetime as dt
import math
import re
from dataclasses import dataclass
from typing import Any

from django.apps import apps
from django.conf import settings
from django.core.exceptions import PermissionDenied, RequestDataTooBig, TooManyFieldsSent
from django.http import Http404
from django.utils import translation
from django.utils.text import capfirst
from django.utils.translation import gettext as _
from django.utils.translation import gettext_lazy
from django.utils.translation.trans_real import parse_accept_lang_header
from drf_spectacular.extensions import OpenApiAuthenticationExtension
from rest_framework import exceptions, serializers, status
from rest_framework.authentication import BaseAuthentication, get_authorization_header
from rest_framework.parsers import JSONParser
from rest_framework.permissions import BasePermission
from rest_framework.response import Response
from rest_framework.throttling import SimpleRateThrottle
from rest_framework.utils import html

from core.errors import DomainError, NotFound
from core.models import ApiKey, throttle_rate_parse
from core.services import api_key_authenticate

KEYWORD = "Api-Key"

# The operator UI defaults to Chinese (LANGUAGE_CODE); API clients are programs whose logs are
# read by integrators of any background, so they get English unless they ask for a language.
API_DEFAULT_LANGUAGE = "en"


def api_language(request) -> str:
    """The language of an API answer: the first one in the request's Accept-Language that the
    site has (`zh-CN` gives zh-hans, `en-US` en), else English. The language cookie of the
    operator UI does not count: the same call answers alike from a server and from a browser."""
    for code, quality in parse_accept_lang_header(request.META.get("HTTP_ACCEPT_LANGUAGE", "")):
        if quality <= 0 or code == "*":
            continue
        try:
            return translation.get_supported_language_variant(code)
        except LookupError:
            continue
    return API_DEFAULT_LANGUAGE


class ApiKeyAuthentication(BaseAuthentication):
    """`Authorization: Api-Key <key>`; request.auth becomes the ApiKey row."""

    def authenticate(self, request) -> tuple[None, ApiKey] | None:
        header = get_authorization_header(request).split()
        if not header or header[0].decode(errors="replace").lower() != KEYWORD.lower():
            return None
        if len(header) != 2:
            raise exceptions.AuthenticationFailed(
                _("Malformed Authorization header: use 'Api-Key <key>'.")
            )
        try:
            raw = header[1].decode()
        except UnicodeDecodeError as exc:
            raise exceptions.AuthenticationFailed(
                _("The API key contains invalid characters.")
            ) from exc
        key = api_key_authenticate(raw=raw)
        if key is None:
            raise exceptions.AuthenticationFailed(_("Unknown or revoked API key."))
        return (None, key)

    def authenticate_header(self, request) -> str:
        return KEYWORD


class ApiKeyAuthenticationScheme(OpenApiAuthenticationExtension):
    target_class = "core.api.ApiKeyAuthentication"
    name = "ApiKey"

    def get_security_definition(self, auto_schema):
        return {"type": "apiKey", "in": "header", "name": "Authorization"}


class HasApiKey(BasePermission):
    message = gettext_lazy("Authentication with an API key is required.")

    def has_permission(self, request, view) -> bool:
        return isinstance(request.auth, ApiKey)


class ApiKeyRateThrottle(SimpleRateThrottle):
    """Throttle per API key, with an optional per-key rate overriding the site default."""

    scope = "api_key"

    def parse_rate(self, rate: str | None) -> tuple[int | None, int | None]:
        # DRF's own reading, in the function whose validator checks each key's rate.
        return (None, None) if rate is None else throttle_rate_parse(rate)

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


class Rfc3339DateTimeField(serializers.DateTimeField):
    """A moment in the site's time zone, or in UTC when that zone's offset at the time was not
    whole minutes: local mean time before 1901 (Shanghai's +08:05:43) has no RFC 3339 form, so
    such an answer would not be the `date-time` the schema promises."""

    def enforce_timezone(self, value):
        value = super().enforce_timezone(value)
        offset = value.utcoffset()
        if offset is not None and offset.total_seconds() % 60:
            return value.astimezone(dt.UTC)
        return value


class WholeNumberField(serializers.IntegerField):
    """A JSON whole number, and only that: DRF's IntegerField takes `"5"` and `5.0` as 5, when
    the rest of the API refuses a value of the wrong JSON type (TextField, the PATCH checks)."""

    def to_internal_value(self, data):
        if isinstance(data, bool) or not isinstance(data, int):
            self.fail("invalid")
        return super().to_internal_value(data)


# A whole number as a query string writes it: ASCII digits, perhaps after a minus sign (which
# the range check then refuses with its own message).
_QUERY_INTEGER = re.compile(r"-?[0-9]+")


class QueryIntegerField(serializers.IntegerField):
    """A whole number in the query string. Sent empty (`?after=`) it is refused like any other
    malformed value rather than taken as left out, and so is a form that is not plain digits
    (`5.0`, `+5`, `1_000`, `٥`): a cursor or limit that was quietly read otherwise would answer
    the first page again, or another one."""

    def get_value(self, dictionary):
        if html.is_html_input(dictionary) and self.field_name in dictionary:
            return dictionary[self.field_name]
        return super().get_value(dictionary)

    def to_internal_value(self, data):
        if isinstance(data, str) and not _QUERY_INTEGER.fullmatch(data):
            self.fail("invalid")
        return super().to_internal_value(data)


class ErrorBodySerializer(serializers.Serializer):
    code = serializers.CharField(help_text="Machine-readable error code, e.g. `invalid`.")
    message = serializers.CharField(help_text="Human-readable explanation.")
    details = serializers.JSONField(
        required=False, allow_null=True, help_text="Field errors or other context; may be null."
    )


class ErrorSerializer(serializers.Serializer):
    error = ErrorBodySerializer()


# Deeper than any payload a client has a reason to send, and far from Python's recursion limit,
# which the code walking stored JSON (NUL checks, serialisation) would otherwise hit as a 500.
MAX_JSON_DEPTH = 64
_LONE_SURROGATE = re.compile("[\ud800-\udfff]")


def replace_lone_surrogates(text: str) -> str:
    """`text` with each lone surrogate replaced by U+FFFD, so that it can be encoded to UTF-8."""
    return _LONE_SURROGATE.sub("\ufffd", text)


@dataclass(frozen=True)
class JsonProblem:
    code: str
    message: str
    path: list[str | int]


def _path_text(path: list[str | int]) -> str:
    text = ""
    for part in path:
        text += f"[{part}]" if isinstance(part, int) else (f".{part}" if text else part)
    return text or _("the body")


def _clean_path(path: tuple[str | int, ...]) -> list[str | int]:
    return [replace_lone_surrogates(p) if isinstance(p, str) else p for p in path]


def json_problem(
    value: Any, *, max_depth: int = MAX_JSON_DEPTH, unicode: bool = True, numbers: bool = True
) -> JsonProblem | None:
    """The first part of a parsed JSON value that no field can take: nesting deeper than
    `max_depth`, (with `unicode`) a lone surrogate in a key or a text, or (with `numbers`) a
    number too large for a float.

    JSON can escape half of a surrogate pair (`"\\ud83d"`, what cutting a JavaScript string
    through an emoji gives); Python parses it, but such text cannot be encoded as UTF-8, so
    storing it, or even echoing it in an error, fails. Likewise `1e400` parses as infinity,
    which no JSON column stores and no answer can echo. Iterative, so any depth is safe to walk.
    """
    stack: list[tuple[Any, tuple[str | int, ...]]] = [(value, ())]
    while stack:
        node, path = stack.pop()
        if isinstance(node, str):
            if unicode and not node.isascii() and (bad := _LONE_SURROGATE.search(node)):
                return _surrogate_problem(path, bad.group())
            continue
        if isinstance(node, float):
            if numbers and not math.isfinite(node):
                clean = _clean_path(path)
                return JsonProblem(
                    "invalid_number",
                    _(
                        "The number at %(path)s is out of range: send a finite number, within "
                        "about ±1.8e308."
                    )
                    % {"path": _path_text(clean)},
                    clean,
                )
            continue
        if isinstance(node, dict):
            children = list(node.items())
        elif isinstance(node, list):
            children = list(enumerate(node))
        else:
            continue
        if len(path) >= max_depth:
            clean = _clean_path(path)
            return JsonProblem(
                "too_deep",
                _("The JSON nests deeper than %(max)s levels (at %(path)s).")
                % {"max": max_depth, "path": _path_text(clean)},
                clean,
            )
        # Reversed onto the stack, so that the first problem in document order is reported.
        for key, child in reversed(children):
            stack.append((child, (*path, key)))
        if unicode and isinstance(node, dict):
            for key, _child in children:
                if not key.isascii() and (bad := _LONE_SURROGATE.search(key)):
                    return _surrogate_problem((*path, key), bad.group())
    return None


def _surrogate_problem(path: tuple[str | int, ...], char: str) -> JsonProblem:
    clean = _clean_path(path)
    return JsonProblem(
        "invalid_unicode",
        _(
            "The text at %(path)s is not valid Unicode: it holds a lone surrogate (U+%(code)s). "
            "Send the character itself, or both halves of its surrogate pair."
        )
        % {"path": _path_text(clean), "code": f"{ord(char):04X}"},
        clean,
    )


class InvalidJson(exceptions.ParseError):
    """A body that parses as JSON but that no field could take, with where the problem is."""

    def __init__(self, problem: JsonProblem):
        super().__init__(problem.message, code=problem.code)
        self.details = {"path": problem.path}


class ApiJSONParser(JSONParser):
    """DRF's JSON parser, refusing with a 400 what would fail later as a 500: nesting deep
    enough to exhaust the recursion limit, lone surrogates and numbers too large for a float
    (see json_problem)."""

    # A view that reports bad text and numbers item by item (the events batch) turns these off.
    check_unicode = True
    check_numbers = True

    def parse(self, stream, media_type=None, parser_context=None):
        # DRF words a bad charset and bad JSON outside gettext: the charset is checked here
        # first, and a decoding failure is worded again; the decoder's reason stays as Python
        # gives it (English), like a field name quoted in a message.
        encoding = (parser_context or {}).get("encoding", settings.DEFAULT_CHARSET)
        try:
            "".encode(encoding)
        except (LookupError, UnicodeError) as exc:
            raise exceptions.ParseError(
                _('Unsupported charset "%(charset)s" in request Content-Type header.')
                % {"charset": encoding}
            ) from exc
        try:
            data = super().parse(stream, media_type, parser_context)
        except exceptions.ParseError as exc:
            if not isinstance(exc.__context__, ValueError):
                raise
            raise exceptions.ParseError(
                _("JSON parse error - %(reason)s") % {"reason": exc.__context__}
            ) from exc.__context__
        except RecursionError as exc:
            raise exceptions.ParseError(
                _("The JSON nests deeper than %(max)s levels.") % {"max": MAX_JSON_DEPTH},
                code="too_deep",
            ) from exc
        if problem := json_problem(data, unicode=self.check_unicode, numbers=self.check_numbers):
            raise InvalidJson(problem)
        return data


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


# Django's get_object_or_404 names the model's class in English, outside gettext.
_NO_MATCH = re.compile(r"No (?P<model>\w+) matches the given query\.")


def not_found_message(exc: Exception) -> str:
    """The text of a 404 in the active language."""
    message = str(exc)
    if match := _NO_MATCH.fullmatch(message):
        for model in apps.get_models():
            if model._meta.object_name == match["model"]:
                return _("No %(model)s matches the given query.") % {
                    "model": capfirst(model._meta.verbose_name)
                }
    return message or _("Not found.")


def exception_handler(exc: Exception, context: dict) -> Response | None:
    """Render every API error as {"error": {"code", "message", "details"}}."""
    if isinstance(exc, Http404 | NotFound):
        return error_response("not_found", not_found_message(exc), status_code=404)
    if isinstance(exc, PermissionDenied):
        exc = exceptions.PermissionDenied(str(exc) or None)
    if isinstance(exc, DomainError):
        return error_response(exc.code, exc.message, exc.details, status_code=400)
    if isinstance(exc, RequestDataTooBig):
        limit = settings.DATA_UPLOAD_MAX_MEMORY_SIZE
        return error_response(
            "too_large",
            _("The request body is larger than %(limit)s bytes; send it in smaller parts.")
            % {"limit": limit},
            {"max_bytes": limit},
            status_code=status.HTTP_413_REQUEST_ENTITY_TOO_LARGE,
        )
    if isinstance(exc, TooManyFieldsSent):
        limit = settings.DATA_UPLOAD_MAX_NUMBER_FIELDS
        return error_response(
            "too_many_fields",
            _("The request has more than %(limit)s parameters.") % {"limit": limit},
            {"max_fields": limit},
            status_code=status.HTTP_400_BAD_REQUEST,
        )
    if isinstance(exc, exceptions.ValidationError):
        return error_response(
            "invalid",
            _first_message(exc.detail),
            exc.detail,
            status_code=status.HTTP_400_BAD_REQUEST,
        )
    if isinstance(exc, exceptions.NotAuthenticated):
        exc.detail = exceptions.ErrorDetail(
            _("An API key is required: send 'Authorization: Api-Key <key>'."),
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
        details = getattr(exc, "details", None)
        response = error_response(code, str(exc.detail), details, status_code=exc.status_code)
        for name, value in headers.items():
            response[name] = value
        return response
    return None
