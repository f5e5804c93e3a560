"""htmx plumbing for the operator UI: one URL serves the page and its fragments."""

from collections.abc import Iterable
from typing import Any

from django.contrib import messages
from django.contrib.messages import get_messages
from django.http import HttpRequest, HttpResponse
from django.shortcuts import redirect, render
from django.template.loader import render_to_string
from django.utils.cache import patch_vary_headers

from core.jobs import job_is_finished
from core.models import Job, JobStatus


def is_fragment_request(request: HttpRequest) -> bool:
    """True for an htmx swap; boosted navigation and history restores need the whole page."""
    htmx = getattr(request, "htmx", None)
    return bool(htmx) and not htmx.boosted and not htmx.history_restore_request


def htmx_target(request: HttpRequest, *, allowed: Iterable[str], default: str | None = None):
    """The fragment to render: the requested target if the page defines it, else `default`."""
    if not is_fragment_request(request):
        return None
    target = request.htmx.target
    return target if target in set(allowed) else default


def render_page(
    request: HttpRequest,
    template: str,
    context: dict[str, Any],
    *,
    fragment: str | None = None,
    status: int = 200,
) -> HttpResponse:
    """Render `template`, or only its partial `fragment` (plus pending toasts) for htmx swaps."""
    if fragment and is_fragment_request(request):
        response = render(request, f"{template}#{fragment}", context, status=status)
        append_oob_toasts(request, response)
    else:
        response = render(request, template, context, status=status)
    patch_vary_headers(response, ["HX-Request"])
    return response


def append_oob_toasts(request: HttpRequest, response: HttpResponse) -> None:
    """Add queued messages to a fragment as an out-of-band swap into the page's #toasts."""
    if not len(get_messages(request)):
        return
    response.content += render_to_string("includes/toasts_oob.html", request=request).encode(
        response.charset
    )


def redirect_or_fragment(
    request: HttpRequest,
    *,
    to: str,
    template: str,
    fragment: str,
    context: dict[str, Any],
) -> HttpResponse:
    """After a POST: re-render the changed fragment for htmx, otherwise redirect (PRG)."""
    if is_fragment_request(request):
        return render_page(request, template, context, fragment=fragment)
    return redirect(to)


def reload_when_finished(
    request: HttpRequest, *, job: Job | None, failure_message: str
) -> HttpResponse | None:
    """For a region polling a job: once the job is gone or finished, an answer that reloads
    the whole page (queuing `failure_message` % {"error": …} when it failed); else None."""
    if job is not None and not job_is_finished(job):
        return None
    if job is not None and job.status == JobStatus.FAILED:
        messages.error(request, failure_message % {"error": job.error})
    response = HttpResponse(status=204)
    response["HX-Refresh"] = "true"
    return response
