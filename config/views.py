import json
from urllib.parse import urlsplit

from django.contrib.auth.decorators import login_required
from django.db import connection
from django.http import HttpRequest, HttpResponse, JsonResponse
from django.shortcuts import render
from django.utils import translation
from django.utils.cache import patch_vary_headers
from django.utils.http import url_has_allowed_host_and_scheme
from django.utils.translation import gettext_lazy
from django.views import defaults
from django.views.decorators.cache import never_cache
from django.views.decorators.csrf import csrf_exempt
from django.views.decorators.http import require_GET

from channels.selectors import messages_sent_today
from config.celery import app as celery_app
from contacts.selectors import (
    contact_stats,
    contact_visible_to,
    contact_visible_to_all,
    contacts_new_per_day,
)
from core.api import api_language
from membership.selectors import tiers_with_member_counts


@require_GET
@never_cache
def healthz(request: HttpRequest) -> JsonResponse:
    """Report database and broker reachability; 503 when either is down."""
    checks: dict[str, dict[str, str]] = {}
    try:
        with connection.cursor() as cursor:
            cursor.execute("SELECT 1")
            cursor.fetchone()
        checks["database"] = {"status": "ok", "vendor": connection.vendor}
    except Exception as exc:
        checks["database"] = {"status": "error", "error": type(exc).__name__}
    try:
        with celery_app.connection_for_write() as conn:
            conn.ensure_connection(max_retries=1, timeout=3)
            checks["broker"] = {"status": "ok", "transport": conn.transport_cls}
    except Exception as exc:
        checks["broker"] = {"status": "error", "error": type(exc).__name__}
    healthy = all(c["status"] == "ok" for c in checks.values())
    return JsonResponse(
        {"status": "ok" if healthy else "error", "checks": checks}, status=200 if healthy else 503
    )


@login_required
def dashboard(request: HttpRequest) -> HttpResponse:
    # Store staff count only the customers they may see; everyone else counts them all
    # without the cost of a visibility filter.
    scoped = (
        None if contact_visible_to_all(user=request.user) else contact_visible_to(user=request.user)
    )
    per_day = contacts_new_per_day(days=30, contacts=scoped)
    chart = {
        "days": [d.strftime("%m-%d") for d, _ in per_day],
        "counts": [n for _, n in per_day],
    }
    context = {
        "stats": contact_stats(contacts=scoped),
        "tiers": list(tiers_with_member_counts(contacts=scoped)),
        "sent_today": messages_sent_today(contacts=scoped),
        "chart": chart,
        "chart_json": json.dumps(chart),
    }
    return render(request, "dashboard.html", context)


def _back_url(request: HttpRequest) -> str:
    """The page the user came from, if it is on this site and is not the refused page itself."""
    referer = request.META.get("HTTP_REFERER", "")
    safe = url_has_allowed_host_and_scheme(
        referer, allowed_hosts={request.get_host()}, require_https=request.is_secure()
    )
    if not safe or urlsplit(referer).path == request.path:
        return ""
    return referer


def permission_denied(request: HttpRequest, exception: Exception) -> HttpResponse:
    """The 403 page in the operator layout: a way back, and whom to ask for access."""
    return render(request, "403.html", {"back_url": _back_url(request)}, status=403)


def method_not_allowed(request: HttpRequest) -> HttpResponse:
    """The page for an action's address opened by GET (config.middleware.MethodNotAllowedPage):
    nothing was changed, and the way back is the page the action belongs to."""
    return render(request, "405.html", {"back_url": _back_url(request)}, status=405)


def _is_api(request: HttpRequest) -> bool:
    return request.path.startswith("/api/")


def _api_error(request: HttpRequest, *, code: str, message: str, status: int) -> JsonResponse:
    """The API's error shape (docs/api.md, "Errors"), in the language API answers use."""
    language = api_language(request)
    with translation.override(language):
        text = str(message)
    response = JsonResponse(
        {"error": {"code": code, "message": text, "details": None}}, status=status
    )
    response["Content-Language"] = language
    patch_vary_headers(response, ["Accept-Language"])
    return response


NOT_FOUND = gettext_lazy("Not found.")
SERVER_ERROR = gettext_lazy("A server error occurred.")


def page_not_found(request: HttpRequest, exception: Exception) -> HttpResponse:
    """The 404 page in the operator layout, with a way back; under /api/, the API's JSON error
    (an unknown path outside /api/v1/, which api_not_found does not catch, or a 404 raised
    outside an API view)."""
    if _is_api(request):
        return _api_error(request, code="not_found", message=NOT_FOUND, status=404)
    return render(request, "404.html", {"back_url": _back_url(request)}, status=404)


@csrf_exempt
def api_not_found(request: HttpRequest, *args, **kwargs) -> HttpResponse:
    """Any path under /api/v1/ that names no endpoint: the API's JSON 404 for every method,
    also with DEBUG on, where Django would answer its HTML debug page instead of handler404.
    CSRF-exempt like the API's own views, so an unknown POST is a 404, not a CSRF 403."""
    return _api_error(request, code="not_found", message=NOT_FOUND, status=404)


def server_error(request: HttpRequest) -> HttpResponse:
    """The 500 page (Django's, which needs no database); for the API, its JSON error. Django
    has logged the exception before calling this."""
    if _is_api(request):
        return _api_error(request, code="server_error", message=SERVER_ERROR, status=500)
    return defaults.server_error(request)
