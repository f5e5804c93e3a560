import datetime as dt
from urllib.parse import urlencode

from django.contrib import messages
from django.contrib.auth.decorators import login_required, permission_required
from django.core.exceptions import PermissionDenied
from django.db import transaction
from django.db.models import Subquery
from django.http import (
    FileResponse,
    Http404,
    HttpRequest,
    HttpResponse,
    HttpResponseBadRequest,
)
from django.shortcuts import get_object_or_404, redirect, render
from django.urls import reverse
from django.utils import timezone
from django.utils.cache import patch_vary_headers
from django.utils.dateparse import parse_datetime
from django.utils.translation import gettext as _
from django.utils.translation import ngettext, pgettext
from django.views.decorators.http import require_POST

from contacts.pii import can_view_personal_data
from contacts.selectors import contact_pair_visible_to, contact_search, contact_visible_to
from core import jobs
from core.errors import DomainError, ValidationFailed
from core.htmx import is_fragment_request, render_page
from core.ids import parse_id
from core.models import Job, JobStatus
from core.pagination import keyset_page
from segments import selectors, services, static_import
from segments.forms import (
    AutoTagForm,
    SegmentForm,
    StaticImportForm,
    builder_tree,
    rule_apply_action,
    rule_from_post,
    rule_problems,
)
from segments.models import AutoTagRule, Segment, SegmentKind

PAGE_SIZE = 50
SAMPLE_SIZE = 10
SPARK_DAYS = 30
VIEW = "segments.view_segment"
CHANGE = "segments.change_segment"
ADD = "segments.add_segment"


def _get_segment(pk: int) -> Segment:
    return get_object_or_404(selectors.segment_list(include_archived=True), pk=pk)


def _sparkline(values: list[int], width: int = 80, height: int = 20, days: int = SPARK_DAYS) -> str:
    """SVG polyline points for a tiny growth chart (server-side: no script, no chart library).

    `values` holds one count a day ending today (segment_size_series): a series shorter than
    `days` started later, so its line starts part-way along, each day at its own place.
    """
    values = values[-days:]
    if len(values) < 2 or days < 2:
        return ""
    low, high = min(values), max(values)
    span = (high - low) or 1
    step = width / (days - 1)
    first = days - len(values)
    return " ".join(
        f"{(first + i) * step:.1f},{height - 1 - (v - low) / span * (height - 2):.1f}"
        for i, v in enumerate(values)
    )


@login_required
@permission_required(VIEW, raise_exception=True)
def segment_list(request: HttpRequest) -> HttpResponse:
    archived = request.GET.get("archived") == "1"
    qs = selectors.segment_list(include_archived=True).filter(is_archived=archived)
    page = keyset_page(qs, after=request.GET.get("after"), size=PAGE_SIZE)
    series = selectors.segment_size_series(segment_ids=[s.pk for s in page.items], days=SPARK_DAYS)
    # The line alone has no scale: its first and last counts go in its tooltip.
    rows = [
        (s, _sparkline(values), values[0] if values else None, values[-1] if values else None)
        for s in page.items
        for values in [series.get(s.pk, [])]
    ]
    context = {"page": page, "rows": rows, "archived": archived}
    return render_page(request, "segments/segment_list.html", context, fragment="segment-table")


def _detail_context(
    request: HttpRequest, segment: Segment, static_job: Job | None, refresh_job: Job | None
) -> dict:
    members = keyset_page(
        selectors.segment_members(segment=segment), after=request.GET.get("after"), size=PAGE_SIZE
    )
    return {
        "segment": segment,
        "rule_lines": selectors.segment_rule_lines(rule=segment.rule),
        "page": members,
        "auto_tags": segment.auto_tags.select_related("tag__group").order_by("created_at"),
        "auto_tag_form": AutoTagForm(),
        "import_form": StaticImportForm(),
        "readers": list(
            segment.dependents.filter(is_archived=False).values_list("name", flat=True)
        ),
        "can_change": request.user.has_perm(CHANGE),
        **_static_job_context(segment, static_job),
        **_refresh_context(segment, refresh_job, request.GET.get("refreshing")),
    }


def _refresh_job(segment_pk: int, job_id: int | None = None) -> Job | None:
    """The segment's "refresh now" job: the one asked for, or the latest.

    Read before the segment (see segment_detail): a job that ends between the two reads is
    then shown ended with the counts it left, never with the counts from before it."""
    refresh_jobs = Job.objects.filter(kind=services.REFRESH_JOB_KIND)
    if job_id is None:
        latest = Segment.objects.filter(pk=segment_pk).values("refresh_job_id")
        job = refresh_jobs.filter(pk=Subquery(latest)).first()
    else:
        job = refresh_jobs.filter(pk=job_id).first()
    if job is None or job.params.get("segment_id") != segment_pk:
        return None
    return job


def _refresh_context(segment: Segment, job: Job | None, since: str | None = None) -> dict:
    """While a queued refresh runs, the page polls its status: by its job (which also says when
    it failed), or, for pages opened before refreshes had jobs, by the stamp it waits to move."""
    url = reverse("segments:refresh_status", args=[segment.pk])
    if job is not None and not jobs.job_is_finished(job):
        return {"pending": True, "status_url": f"{url}?{urlencode({'job': job.pk})}"}
    if since is None or parse_id(since) is not None:
        return {"pending": False}
    since = "" if since == "-" else since
    return {"pending": True, "status_url": f"{url}?{urlencode({'since': since})}"}


def _static_job(request: HttpRequest, segment_pk: int) -> Job | None:
    """The add-to-list job the page was opened to watch (`?job=`), if it is this list's and
    the user's to see. Read before the list, as _refresh_job."""
    job_id = parse_id(request.GET.get("job"))
    if job_id is None:
        return None
    job = (
        jobs.jobs_visible_to(user=request.user)
        .filter(kind=services.STATIC_MEMBERS_JOB_KIND, pk=job_id)
        .first()
    )
    if job is None or job.params.get("segment_id") != segment_pk:
        return None
    return job


def _static_job_context(segment: Segment, job: Job | None) -> dict:
    if job is None:
        return {"static_job": None}
    url = reverse("segments:detail", args=[segment.pk])
    return {
        "static_job": job,
        "job": job,
        "poll_url": f"{url}?{urlencode({'job': job.pk})}",
        "result_template": "segments/_static_job_result.html",
    }


@login_required
@permission_required(VIEW, raise_exception=True)
def segment_detail(request: HttpRequest, pk: int) -> HttpResponse:
    # The jobs first, then the segment: a job read as ended has committed its work, so the
    # member count and list read after it show that work (read the other way round, a job
    # ending in between showed "done" over the count from before it).
    static_job = _static_job(request, pk)
    refresh_job = _refresh_job(pk)
    segment = _get_segment(pk)
    context = _detail_context(request, segment, static_job, refresh_job)
    if static_job is not None and is_fragment_request(request) and "after" not in request.GET:
        # The add-to-list progress polls this page for its own block.
        response = render(request, "segments/segment_detail.html#job-progress", context)
        patch_vary_headers(response, ["HX-Request"])
        return response
    return render_page(request, "segments/segment_detail.html", context, fragment="segment-members")


# Builder ---------------------------------------------------------------------------------------


def _form_context(
    request: HttpRequest,
    form: SegmentForm,
    segment: Segment | None,
    rule: dict,
    error: ValidationFailed | None = None,
) -> dict:
    return {
        "form": form,
        "segment": segment,
        "tree": builder_tree(rule, segment=segment, error=error),
        "rule_error": error,
        "event_names": selectors.event_names_known(),
    }


def _render_form(request, form, segment, rule, error=None, status=200) -> HttpResponse:
    context = _form_context(request, form, segment, rule, error)
    response = render_page(
        request, "segments/segment_form.html", context, fragment="rule-builder", status=status
    )
    if is_fragment_request(request):
        # The preview listens for this to recount after rows are added or removed.
        response["HX-Trigger-After-Settle"] = "rule-changed"
    return response


def _save(request: HttpRequest, form: SegmentForm, segment: Segment | None):
    """Create or update from a valid form; returns the segment or the ValidationFailed."""
    data = form.cleaned_data
    static = form.is_static
    rule = None if static else rule_from_post(request.POST)
    try:
        if segment is None:
            return services.segment_create(
                name=data["name"],
                description=data["description"],
                rule=rule,
                kind=SegmentKind.STATIC if static else SegmentKind.DYNAMIC,
                refresh_policy=data["refresh_policy"],
                refresh_interval_minutes=data["refresh_interval_minutes"],
                refresh_hour=data["refresh_hour"],
                actor=request.user,
            )
        return services.segment_update(
            segment=segment,
            name=data["name"],
            description=data["description"],
            rule=rule,
            refresh_policy=None if static else data["refresh_policy"],
            refresh_interval_minutes=data["refresh_interval_minutes"],
            refresh_hour=data["refresh_hour"],
        )
    except ValidationFailed as exc:
        return exc


def _builder_view(request: HttpRequest, segment: Segment | None) -> HttpResponse:
    if request.method != "POST":
        initial = {"kind": request.GET.get("kind", SegmentKind.DYNAMIC)} if not segment else None
        form = SegmentForm(segment=segment, **({"initial": initial} if initial else {}))
        rule = segment.rule if segment else {"op": "and", "conditions": []}
        return _render_form(request, form, segment, rule)
    form = SegmentForm(request.POST, segment=segment)
    rule = rule_from_post(request.POST)
    action = request.POST.get("action")
    if action is None and is_fragment_request(request):
        # A select that changes which widgets a row needs (kind, field, operator …) posts the
        # form through htmx without an action: re-render the rows, never save (only the form's
        # own submit saves) and never answer 422, which htmx would not swap in.
        action = "refresh"
    if action is not None:
        # A builder button (add / remove a row) or a select that needs other widgets.
        return _render_form(request, form, segment, rule_apply_action(rule, action))
    if not form.is_valid():
        return _render_form(request, form, segment, rule, status=422)
    with transaction.atomic():
        result = _save(request, form, segment)
        if isinstance(result, ValidationFailed):
            transaction.set_rollback(True)
    if isinstance(result, ValidationFailed):
        rule_error = None if form.apply_error(result) else result
        return _render_form(request, form, segment, rule, rule_error, status=422)
    if segment is None and result.kind == SegmentKind.STATIC:
        # A new list is empty by design: say how to fill it rather than "0 members".
        messages.success(
            request,
            _(
                "Static list “%(name)s” created. Add contacts from a file here, or tick them "
                "in the contact list."
            )
            % {"name": result.name},
        )
    elif segment is None:
        messages.success(
            request,
            _("Segment “%(name)s” created with %(count)s members.")
            % {"name": result.name, "count": result.member_count},
        )
    else:
        messages.success(request, _("Segment “%(name)s” saved.") % {"name": result.name})
    return redirect("segments:detail", pk=result.pk)


@login_required
@permission_required(ADD, raise_exception=True)
def segment_create(request: HttpRequest) -> HttpResponse:
    return _builder_view(request, None)


@login_required
@permission_required(CHANGE, raise_exception=True)
def segment_edit(request: HttpRequest, pk: int) -> HttpResponse:
    return _builder_view(request, _get_segment(pk))


@login_required
@require_POST
def segment_preview(request: HttpRequest) -> HttpResponse:
    """The live count and a few sample contacts of the rule being edited."""
    if not (request.user.has_perm(ADD) or request.user.has_perm(CHANGE)):
        raise PermissionDenied
    segment_id = parse_id(request.POST.get("segment"))
    rule = rule_from_post(request.POST)
    context: dict = {"error": None}
    try:
        qs = services.rule_queryset(rule=rule, segment_id=segment_id)
        context["count"] = qs.count()
        context["samples"] = list(
            qs.select_related("lifecycle_stage").order_by("-pk")[:SAMPLE_SIZE]
        )
    except ValidationFailed as exc:
        # Every invalid condition, each shown at its row by the builder's script, except those
        # still waiting to be filled in (no count either way until the rule is complete).
        problems = rule_problems(exc, rule)
        shown = [p for p in problems if not p.unfilled]
        context["problems"] = problems
        context["error"] = (shown or problems)[0].message
        context["shown_count"] = len(shown)
        # A complete rule refused for what it reads is not "not complete yet".
        context["error_is_cycle"] = bool(shown) and shown[0].cycle
    response = render(request, "segments/_rule_preview.html", context)
    patch_vary_headers(response, ["HX-Request"])
    return response


# Segment actions -------------------------------------------------------------------------------


@login_required
@permission_required(CHANGE, raise_exception=True)
@require_POST
def segment_refresh(request: HttpRequest, pk: int) -> HttpResponse:
    """Queue a full refresh in the worker; the page polls its job until it ends."""
    segment = _get_segment(pk)
    try:
        job = services.segment_refresh_request(segment=segment, actor=request.user)
    except ValidationFailed as exc:
        messages.error(request, exc.message)
        return redirect("segments:detail", pk=segment.pk)
    if is_fragment_request(request):
        context = {"segment": segment, **_refresh_context(segment, job)}
        return render(request, "segments/segment_detail.html#refresh-status", context)
    messages.info(request, _("Refresh queued; the page shows the new count once it is done."))
    return redirect(f"{reverse('segments:detail', args=[segment.pk])}?refreshing={job.pk}")


def _parse_since(raw: str) -> dt.datetime | None:
    """The `since` stamp of a legacy status poll; ValueError when it is not a date and time."""
    if raw in ("", "-"):
        return None
    moment = parse_datetime(raw)  # None when malformed, ValueError when out of range
    if moment is None:
        raise ValueError(raw)
    if timezone.is_naive(moment):
        moment = timezone.make_aware(moment)
    return moment


@login_required
@permission_required(VIEW, raise_exception=True)
def segment_refresh_status(request: HttpRequest, pk: int) -> HttpResponse:
    """Polled while a refresh runs: pending until its job ends (or, without a job, until
    last_refreshed_at is newer than `since`); a failed refresh shows its error and stops."""
    raw_job = request.GET.get("job")
    failure = None
    if raw_job is not None:
        job_id = parse_id(raw_job)
        # The job before the segment (see segment_detail).
        job = _refresh_job(pk, job_id) if job_id is not None else None
        segment = _get_segment(pk)
        if job is None:
            return HttpResponseBadRequest(_("Unknown refresh job."))
        if job.status == JobStatus.FAILED:
            failure = job.error or job.get_status_display()
        reload = jobs.job_is_finished(job) and failure is None
        context = {"segment": segment, **_refresh_context(segment, job)}
    else:
        segment = _get_segment(pk)
        try:
            since = _parse_since(request.GET.get("since") or "")
        except ValueError:
            return HttpResponseBadRequest(_("“since” must be a date and time."))
        done = segment.last_refreshed_at is not None and (
            since is None or segment.last_refreshed_at > since
        )
        context = {
            "segment": segment,
            **_refresh_context(segment, None, request.GET.get("since") or "-"),
        }
        context["pending"] = not done
        reload = done and since is not None
    context["refresh_failure"] = failure
    response = render(request, "segments/segment_detail.html#refresh-status", context)
    if reload:
        # The member list changed: reload it along with the counters.
        response["HX-Trigger"] = "segment-refreshed"
    return response


@login_required
@permission_required(ADD, raise_exception=True)
@require_POST
def segment_duplicate(request: HttpRequest, pk: int) -> HttpResponse:
    segment = _get_segment(pk)
    try:
        copy = services.segment_duplicate(segment=segment, actor=request.user)
    except ValidationFailed as exc:
        messages.error(request, exc.message)
        return redirect("segments:detail", pk=segment.pk)
    messages.success(request, _("Copied as “%(name)s”.") % {"name": copy.name})
    return redirect("segments:detail", pk=copy.pk)


@login_required
@permission_required(CHANGE, raise_exception=True)
@require_POST
def segment_archive(request: HttpRequest, pk: int) -> HttpResponse:
    segment = _get_segment(pk)
    archived = request.POST.get("archived", "1") == "1"
    try:
        services.segment_archive(segment=segment, archived=archived)
    except ValidationFailed as exc:
        messages.error(request, exc.message)
    else:
        if archived:
            messages.success(request, _("Segment archived: it is no longer refreshed."))
        else:
            messages.success(request, _("Segment restored and refreshed."))
    return redirect("segments:detail", pk=segment.pk)


@login_required
@permission_required(CHANGE, raise_exception=True)
@require_POST
def segment_auto_tag_add(request: HttpRequest, pk: int) -> HttpResponse:
    segment = _get_segment(pk)
    form = AutoTagForm(request.POST)
    if form.is_valid():
        try:
            services.auto_tag_rule_create(
                segment=segment,
                tag=form.cleaned_data["tag"],
                remove_on_exit=form.cleaned_data["remove_on_exit"],
            )
        except ValidationFailed as exc:
            messages.error(request, exc.message)
        else:
            messages.success(
                request,
                _("Members now get the tag “%(tag)s”.") % {"tag": form.cleaned_data["tag"]},
            )
    else:
        messages.error(request, _("Choose a tag."))
    return redirect("segments:detail", pk=segment.pk)


@login_required
@permission_required(CHANGE, raise_exception=True)
@require_POST
def segment_auto_tag_remove(request: HttpRequest, pk: int, rule_id: int) -> HttpResponse:
    segment = _get_segment(pk)
    rule = get_object_or_404(AutoTagRule, pk=rule_id, segment=segment)
    rule.delete()
    messages.success(request, _("The tag “%(tag)s” is no longer kept in sync.") % {"tag": rule.tag})
    return redirect("segments:detail", pk=segment.pk)


# Static lists ----------------------------------------------------------------------------------


def _static_import_job(request: HttpRequest, segment_pk: int, job_id: int | None) -> Job:
    """The import into this list the page follows: 404 unless it is the user's to see. Read
    before the list (see segment_static_import)."""
    if job_id is None:
        raise Http404
    job = (
        jobs.jobs_visible_to(user=request.user)
        .filter(kind=static_import.STATIC_IMPORT_JOB_KIND, pk=job_id)
        .first()
    )
    if job is None or job.params.get("segment_id") != segment_pk:
        raise Http404
    return job


def _static_import_context(
    request: HttpRequest, segment: Segment, form: StaticImportForm, job: Job | None, error=None
) -> dict:
    url = reverse("segments:static_import", args=[segment.pk])
    context = {
        "segment": segment,
        "form": form,
        "error": error,
        "job": job,
        "shown": static_import.UNMATCHED_SHOWN,
        "max_rows": static_import.STATIC_IMPORT_MAX_ROWS,
        "recent": jobs.jobs_visible_to(user=request.user).filter(
            kind=static_import.STATIC_IMPORT_JOB_KIND, params__segment_id=segment.pk
        )[:5],
    }
    if job is not None:
        context["poll_url"] = f"{url}?{urlencode({'job': job.pk})}"
        context["result_template"] = "segments/_static_import_result.html"
    return context


@login_required
@permission_required(CHANGE, raise_exception=True)
def segment_static_import(request: HttpRequest, pk: int) -> HttpResponse:
    """Upload a CSV / Excel list to add to a static list in the background, then follow its job
    (`?job=`): progress, counts and the rows that matched nobody."""
    if request.method != "POST":
        job = None
        if "job" in request.GET:
            # The job before the list: an import read as finished has added its contacts, so
            # "the list now holds N" read after it counts them (read the other way round, an
            # import ending in between showed its result over the count from before it).
            job = _static_import_job(request, pk, parse_id(request.GET["job"]))
        segment = _get_segment(pk)
        context = _static_import_context(request, segment, StaticImportForm(), job)
        if job is not None and is_fragment_request(request):
            # The progress block polls the page for itself (and its counts, out of band).
            context["poll"] = True
            response = render(request, "segments/static_import.html#job-progress", context)
            patch_vary_headers(response, ["HX-Request"])
            return response
        return render_page(request, "segments/static_import.html", context)
    segment = _get_segment(pk)
    form = StaticImportForm(request.POST, request.FILES)
    error = None
    if form.is_valid():
        try:
            job = static_import.segment_static_import_start(
                segment=segment,
                file=form.cleaned_data["file"],
                match_by=form.cleaned_data["match_by"],
                actor=request.user,
            )
        except ValidationFailed as exc:
            error = exc.message
        else:
            url = f"{reverse('segments:static_import', args=[segment.pk])}?job={job.pk}"
            if not is_fragment_request(request):
                return redirect(url)
            context = _static_import_context(request, segment, StaticImportForm(), job)
            response = render_page(
                request, "segments/static_import.html", context, fragment="static-import"
            )
            response["HX-Push-Url"] = url
            return response
    context = _static_import_context(request, segment, form, None, error)
    return render_page(
        request, "segments/static_import.html", context, fragment="static-import", status=422
    )


@login_required
@permission_required(CHANGE, raise_exception=True)
def segment_static_import_unmatched(request: HttpRequest, pk: int, job_id: int) -> HttpResponse:
    """The CSV of every row of an import that matched nobody (row, value, reason)."""
    segment = _get_segment(pk)
    job = _static_import_job(request, segment.pk, job_id)
    path = static_import.static_import_unmatched_file(job=job)
    if path is None:
        raise Http404
    return FileResponse(
        path.open("rb"),
        as_attachment=True,
        filename=f"unmatched-{job.pk}.csv",
        content_type="text/csv; charset=utf-8",
    )


def _safe_next(raw: str | None, default: str) -> str:
    """A local path to go back to, or `default` (never another host)."""
    if raw and raw.startswith("/") and not raw.startswith("//"):
        return raw
    return default


def _posted_contact_ids(request: HttpRequest) -> list[int]:
    # `ids` is what the contact list's bulk form posts its ticked rows as.
    raw = (
        request.POST.getlist("contact_ids[]")
        or request.POST.getlist("contact_ids")
        or request.POST.getlist("ids")
    )
    ids = []
    for value in raw:
        contact_id = parse_id(value)
        if contact_id is None:
            raise ValidationFailed(
                _("“%(value)s” is not a contact id.") % {"value": value}, code="invalid"
            )
        ids.append(contact_id)
    return ids


@login_required
@permission_required(CHANGE, raise_exception=True)
@require_POST
def segment_static_members(request: HttpRequest) -> HttpResponse:
    """Add (or remove) contacts to a static list from the contact list's bulk actions.

    Form contract: `segment` (a static list id), `operation` (add | remove, default add), and
    either `contact_ids[]` (selected rows) or `all_matching=1` plus the contact list's filter
    parameters (q, tag, source, lifecycle_stage, …), which are re-evaluated here. A filtered
    list above the inline limit goes to a background job, which the list's page then shows.
    """
    if not (request.POST.get("segment") or "").strip():
        # The contact list's picker starts on "choose a list…": say so, on the list.
        messages.error(request, _("Choose a static list."))
        return redirect(_safe_next(request.POST.get("next"), reverse("contacts:list")))
    segment_id = parse_id(request.POST.get("segment"))
    if segment_id is None:
        raise Http404
    segment = get_object_or_404(Segment.objects.filter(is_archived=False), pk=segment_id)
    back = _safe_next(request.POST.get("next"), reverse("segments:detail", args=[segment.pk]))
    remove = request.POST.get("operation") == "remove"
    ticked: list[int] | None = None
    try:
        # The same target the contact list's tag bulk action uses: chosen ids or the list
        # filter, always within what this user may see. A large filtered list goes to a job.
        if request.POST.get("all_matching") == "1" or request.POST.get("scope") == "all":
            started = services.segment_static_members_start(
                segment=segment,
                actor=request.user,
                remove=remove,
                filter_params=dict(request.POST.lists()),
            )
        else:
            ticked = _posted_contact_ids(request)
            started = services.segment_static_members_start(
                segment=segment, actor=request.user, remove=remove, contact_ids=ticked
            )
    except ValidationFailed as exc:
        messages.error(request, exc.message)
        return redirect(back)
    if started.job is not None:
        total = started.job.total
        text = (
            ngettext(
                "Removing %(n)s contact from “%(name)s” in the background.",
                "Removing %(n)s contacts from “%(name)s” in the background.",
                total,
            )
            if remove
            else ngettext(
                "Adding %(n)s contact to “%(name)s” in the background.",
                "Adding %(n)s contacts to “%(name)s” in the background.",
                total,
            )
        )
        messages.info(request, text % {"n": total, "name": segment.name})
        url = reverse("segments:detail", args=[segment.pk])
        return redirect(f"{url}?{urlencode({'job': started.job.pk})}")
    if remove:
        text = ngettext(
            "%(n)s contact removed from “%(name)s”.",
            "%(n)s contacts removed from “%(name)s”.",
            started.changed,
        )
    else:
        text = ngettext(
            "%(n)s contact added to “%(name)s”.",
            "%(n)s contacts added to “%(name)s”.",
            started.changed,
        )
    text %= {"n": started.changed, "name": segment.name}
    # Ticked rows that changed nothing were already in (or not in) the list: without this,
    # "0 contacts added" reads like a failure.
    unchanged = len(set(ticked)) - started.changed if ticked is not None else 0
    if unchanged > 0:
        extra = (
            ngettext(
                "%(n)s of them was not in the list.",
                "%(n)s of them were not in the list.",
                unchanged,
            )
            if remove
            else ngettext(
                "%(n)s of them was already in the list.",
                "%(n)s of them were already in the list.",
                unchanged,
            )
        )
        # Chinese runs sentences together without a space.
        text = pgettext("two sentences", "%(first)s %(second)s") % {
            "first": text,
            "second": extra % {"n": unchanged},
        }
    messages.success(request, text)
    return redirect(back)


@login_required
@permission_required(CHANGE, raise_exception=True)
def segment_static_picker(request: HttpRequest) -> HttpResponse:
    """The "add to static list" control the contact list loads into its bulk-action form."""
    lists = Segment.objects.filter(kind=SegmentKind.STATIC, is_archived=False).order_by("name")
    return render(
        request,
        "segments/_static_picker.html",
        {"lists": lists, "next": request.GET.get("next", "")},
    )


# Explain ---------------------------------------------------------------------------------------


@login_required
@permission_required(VIEW, raise_exception=True)
def segment_explain(request: HttpRequest, pk: int) -> HttpResponse:
    """Why a contact is in or out: pick one, see each condition of the rule true or false."""
    from segments.rule_labels import Names, describe_condition, describe_group

    segment = _get_segment(pk)
    visible = contact_visible_to(user=request.user).filter(merged_into__isnull=True)
    query = (request.GET.get("q") or "").strip()
    contact, candidates, lines = None, [], []
    contact_id, query_id = parse_id(request.GET.get("contact")), parse_id(query)
    if contact_id is not None:
        contact = visible.filter(pk=contact_id).first()
        # An id that is gone (merged, deleted) or not the user's to see: say so, not the prompt.
        query = query or ("" if contact is not None else str(contact_id))
    elif query_id is not None and visible.filter(pk=query_id).exists():
        contact = visible.get(pk=query_id)
    elif query:
        personal = can_view_personal_data(request.user)
        candidates = list(
            contact_search(qs=visible, query=query, personal=personal).order_by("-pk")[:10]
        )
        if len(candidates) == 1:
            contact, candidates = candidates[0], []
    membership, error = None, None
    tree = None
    if contact is not None:
        membership = selectors.segment_membership_of(segment=segment, contact_id=contact.pk)
        try:
            tree = selectors.segment_explain(segment=segment, contact=contact)
        except DomainError as exc:  # a stored rule that can no longer be evaluated
            error = exc.message
        names = Names.for_rule(segment.rule)

        def walk(node, depth):
            if "op" in node.node:
                text = describe_group(node.node)
            else:
                text = describe_condition(node.node, names)
            lines.append({"depth": depth, "text": text, "matched": node.matched})
            for child in node.children:
                walk(child, depth + 1)

        if tree is not None:
            walk(tree, 0)
    context = {
        "segment": segment,
        "q": query,
        "contact": contact,
        "candidates": candidates,
        "lines": lines,
        "membership": membership,
        "matches_now": lines[0]["matched"] if lines else None,
        "error": error,
    }
    return render_page(request, "segments/segment_explain.html", context, fragment="explain")


@login_required
def contact_segments(request: HttpRequest, contact_id: int) -> HttpResponse:
    """The segments panel of the contact 360 page (empty for roles that may not see segments,
    e.g. store staff, so that the contact page itself still loads for them)."""
    contact = get_object_or_404(contact_visible_to(user=request.user), pk=contact_id)
    allowed = request.user.has_perm(VIEW)
    memberships = selectors.segments_for_contact(contact=contact) if allowed else []
    context = {"contact": contact, "memberships": list(memberships), "allowed": allowed}
    return render_page(
        request, "segments/contact_segments.html", context, fragment="contact-segments"
    )


@login_required
def contact_merge_preview(
    request: HttpRequest, survivor_id: int, duplicate_id: int
) -> HttpResponse:
    """The segments panel of the merge preview: both contacts' places and what the merge does
    with each (empty, as the 360 panel, for roles that may not see segments)."""
    pair = contact_pair_visible_to(
        user=request.user, survivor_id=survivor_id, duplicate_id=duplicate_id
    )
    if pair is None:
        raise Http404
    survivor, duplicate = pair
    allowed = request.user.has_perm(VIEW)
    preview = (
        selectors.segment_merge_preview(survivor=survivor, duplicate=duplicate) if allowed else None
    )
    context = {
        "survivor": survivor,
        "duplicate": duplicate,
        "preview": preview,
        "allowed": allowed,
    }
    return render_page(
        request, "segments/contact_merge_preview.html", context, fragment="merge-segments"
    )
