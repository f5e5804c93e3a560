"""Operator screens for importing and exporting contacts and following their background jobs."""

from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlencode

from django import forms
from django.conf import settings
from django.contrib import messages
from django.contrib.auth.decorators import login_required, permission_required
from django.contrib.humanize.templatetags.humanize import intcomma
from django.core.exceptions import PermissionDenied
from django.http import FileResponse, Http404, HttpRequest, HttpResponse
from django.shortcuts import get_object_or_404, redirect
from django.urls import reverse
from django.utils.translation import gettext as _
from django.utils.translation import gettext_lazy, ngettext
from django.views.decorators.http import require_http_methods

from contacts import exporters, importers, roles
from contacts.forms import ContactSelectionForm
from contacts.models import Contact, Gender, Stage
from contacts.selectors import tags_grouped
from core import cleanup, jobs
from core.audit import request_ip
from core.errors import DomainError
from core.htmx import render_page
from core.ids import parse_id
from core.models import AuditLog, Job, JobStatus

IMPORT_PERMISSION = "contacts.add_contact"
# Rows read per step when looking for the first data row of an upload: a file of thousands of
# blank lines is still answered from one read or two.
DATA_ROW_PROBE = 1000


class ImportUploadForm(forms.Form):
    file = forms.FileField(
        label=gettext_lazy("File"),
        help_text=gettext_lazy(
            "CSV (UTF-8, UTF-8 with BOM, GBK or GB18030) or Excel .xlsx; the first row holds "
            "the column names."
        ),
        widget=forms.ClearableFileInput(attrs={"accept": ".csv,.txt,.xlsx"}),
    )


class ImportMappingForm(forms.Form):
    """One choice per file column (what it maps to), the upsert key and tags for every row."""

    key = forms.ChoiceField(
        label=gettext_lazy("Match existing contacts by"),
        choices=[(k, importers.TARGETS[k]) for k in importers.UPSERT_KEYS],
    )
    tags = forms.ModelMultipleChoiceField(
        label=gettext_lazy("Tag every imported contact with"),
        queryset=tags_grouped(),
        required=False,
        widget=forms.CheckboxSelectMultiple,
    )

    def __init__(self, *args, headers: list[str], guessed: dict[str, str], **kwargs):
        super().__init__(*args, **kwargs)
        self.headers = headers
        choices = [("", _("— skip —")), *importers.target_choices()]
        for index, header in enumerate(headers):
            self.fields[f"col_{index}"] = forms.ChoiceField(
                label=importers.header_label(header, index),
                choices=choices,
                required=False,
                initial=guessed.get(header, ""),
            )
        mapped = set(guessed.values())
        self.fields["key"].initial = next(
            (k for k in importers.UPSERT_KEYS if k in mapped), "phone"
        )

    @property
    def column_fields(self) -> list[forms.BoundField]:
        return [self[f"col_{i}"] for i in range(len(self.headers))]

    def spec(self, *, actor_id: int | None) -> importers.ImportSpec:
        data = self.cleaned_data
        mapping = {h: data.get(f"col_{i}", "") for i, h in enumerate(self.headers)}
        return importers.ImportSpec(
            mapping=mapping,
            key=data["key"],
            tag_ids=[t.pk for t in data["tags"]],
            actor_id=actor_id,
        )


@dataclass(frozen=True)
class JobOutcome:
    """How a job reads in a list or on its page: its badge, and for a finished import the rows
    it rejected.

    JobStatus is shared by every kind of job, and an import that rejected rows still
    succeeded as a job; an operator reading "Succeeded" believed every row was in. The
    contacts screens therefore say how the import ended.
    """

    # "awaiting" (an upload whose columns were never confirmed), a JobStatus value, or for a
    # succeeded import "partial" (some rows rejected) / "rejected" (every row rejected).
    state: str
    label: str
    badge: str  # the badge's CSS class
    rows: int = 0
    rejected: int = 0


def job_outcome(job: Job) -> JobOutcome:
    """The outcome shown for `job` on the contact import and export screens."""
    if _awaiting_mapping(job):
        return JobOutcome("awaiting", _("Awaiting column mapping"), "badge-status-paused")
    if job.status == JobStatus.FAILED:
        return JobOutcome(job.status, job.get_status_display(), "badge-delivery-failed")
    if job.status != JobStatus.SUCCEEDED:
        return JobOutcome(job.status, job.get_status_display(), f"badge-status-{job.status}")
    result = job.result or {}
    rejected = int(result.get("rejected") or 0)
    if job.kind != importers.JOB_KIND or not rejected:
        return JobOutcome(job.status, job.get_status_display(), "badge-ok")
    # Jobs finished before "rows" was counted: every row was created, updated, unchanged or
    # rejected.
    rows = int(
        result.get("rows")
        or sum(int(result.get(k) or 0) for k in ("created", "updated", "unchanged", "rejected"))
    )
    if rejected >= rows:
        return JobOutcome(
            "rejected", _("All rows rejected"), "badge-delivery-failed", rows, rejected
        )
    label = ngettext(
        "Finished with %(count)s rejected row",
        "Finished with %(count)s rejected rows",
        rejected,
    ) % {"count": intcomma(rejected)}
    return JobOutcome("partial", label, "badge-status-paused", rows, rejected)


def _job_for(request: HttpRequest, pk: int) -> Job:
    return get_object_or_404(jobs.jobs_visible_to(user=request.user), pk=pk)


def _has_data_rows(job: Job) -> bool:
    """Whether the uploaded file has a row with any non-blank cell below its header."""
    chunks = importers.SourceFile.from_params(job.params).chunks(size=DATA_ROW_PROBE)
    try:
        for frame in chunks:
            cells = frame.fillna("").astype(str)
            if (cells.apply(lambda column: column.str.strip()) != "").to_numpy().any():
                return True
    finally:
        chunks.close()
    return False


def _upload(*, file, user) -> Job:
    """The import job of an uploaded file that has data rows; any other file is refused."""
    job = importers.import_upload(file=file, user=user)
    try:
        has_rows = _has_data_rows(job)
    except Exception as exc:  # pandas/openpyxl raise many kinds on garbage input
        cleanup.job_upload_discard(job=job)
        source = importers.SourceFile.from_params(job.params)
        raise importers.unreadable_file(source, exc) from exc
    if not has_rows:
        # Refused here, not at the mapping step: there is nothing to map or import, and the
        # job would otherwise wait in the list of recent imports.
        cleanup.job_upload_discard(job=job)
        raise importers.ImportFileError(
            _("The file has column names but no data rows: add the contacts below the header row.")
        )
    return job


def _awaiting_mapping(job: Job) -> bool:
    """An upload whose columns were never confirmed: no import has started."""
    return (
        job.kind == importers.JOB_KIND
        and job.status == JobStatus.QUEUED
        and not job.params.get("started")
    )


def _localise_preview(preview: importers.Preview) -> None:
    # The preview holds the stored codes of the rows it read (female/male, the stage keys
    # first_purchase/interested); operators read the labels, as on the contact page: the
    # gender's, and the stage's name (首购 whether the file said 首购 or first_purchase). A
    # refused row keeps what the file said.
    targets = [target for target, _label in preview.columns]
    for target in ("gender", "lifecycle_stage"):
        if target not in targets:
            continue
        column = targets.index(target)
        if target == "gender":
            labels = dict(Gender.choices)
        else:
            labels = dict(Stage.objects.values_list("key", "name"))
        for row in preview.rows:
            value = row["cells"][column]
            if value in labels:
                row["cells"][column] = labels[value]


@login_required
@permission_required(IMPORT_PERMISSION, raise_exception=True)
@require_http_methods(["GET", "POST"])
def import_upload(request: HttpRequest) -> HttpResponse:
    form = ImportUploadForm(request.POST or None, request.FILES or None)
    if request.method == "POST" and form.is_valid():
        try:
            job = _upload(file=form.cleaned_data["file"], user=request.user)
        except DomainError as exc:
            form.add_error("file", exc.message)
        else:
            return redirect("contacts_io:import_mapping", pk=job.pk)
    recent = [
        (job, job_outcome(job))
        for job in jobs.jobs_visible_to(user=request.user).filter(
            kind__in=[importers.JOB_KIND, exporters.JOB_KIND]
        )[:10]
    ]
    context = {
        "form": form,
        "recent": recent,
        "retention_days": settings.SCRM_FILE_RETENTION_DAYS,
    }
    return render_page(
        request, "contacts/import_upload.html", context, status=400 if form.errors else 200
    )


@login_required
@permission_required(IMPORT_PERMISSION, raise_exception=True)
@require_http_methods(["GET", "POST"])
def import_mapping(request: HttpRequest, pk: int) -> HttpResponse:
    job = _job_for(request, pk)
    if job.kind != importers.JOB_KIND:
        raise Http404
    if not _awaiting_mapping(job):
        # Started, or ended without starting (its upload expired): the job page says which.
        return redirect("contacts_io:job", pk=job.pk)
    form = ImportMappingForm(
        request.POST or None, headers=job.params["headers"], guessed=job.params["mapping"]
    )
    preview = None
    error = ""
    spec = None
    if request.method == "POST" and form.is_valid():
        try:
            spec = form.spec(actor_id=request.user.pk)
        except DomainError as exc:
            error = exc.message
    elif request.method == "GET":
        if not set(job.params["mapping"].values()) & set(importers.UPSERT_KEYS):
            # Said in a toast too (it stays in view): the preview, which says it as well, may be
            # below the fold of a file with many columns.
            messages.warning(request, importers.no_identity_column_message())
        try:
            spec = importers.ImportSpec(
                mapping=job.params["mapping"], key=form.fields["key"].initial
            )
        except DomainError as exc:
            error = exc.message
    if spec is not None and request.POST.get("action") == "start":
        try:
            # REMOTE_ADDR only, as core.audit records it: X-Forwarded-For is client-controlled.
            ip = request.META.get("REMOTE_ADDR") or None
            importers.import_start(job=job, spec=spec, ip=ip)
        except importers.ImportAlreadyStarted:
            # Another request (a double click) started it since this one loaded the job: the
            # answer every click on a started import gets, as above.
            return redirect("contacts_io:job", pk=job.pk)
        except DomainError as exc:
            error = exc.message
        else:
            return redirect("contacts_io:job", pk=job.pk)
    if spec is not None:
        preview = importers.import_preview(job=job, spec=spec)
        _localise_preview(preview)
    context = {"job": job, "form": form, "preview": preview, "error": error}
    fragment = "import-preview" if request.POST.get("action") == "preview" else None
    return render_page(request, "contacts/import_mapping.html", context, fragment=fragment)


RESULT_TEMPLATES = {
    importers.JOB_KIND: "contacts/import_result.html",
    exporters.JOB_KIND: "contacts/export_result.html",
}


@login_required
def job_detail(request: HttpRequest, pk: int) -> HttpResponse:
    job = _job_for(request, pk)
    if job.kind not in RESULT_TEMPLATES:
        raise Http404
    context = {
        "job": job,
        "poll_url": reverse("contacts_io:job", args=[job.pk]),
        "result_template": RESULT_TEMPLATES[job.kind],
        "is_import": job.kind == importers.JOB_KIND,
        "outcome": job_outcome(job),
    }
    return render_page(request, "contacts/import_job.html", context, fragment="job-progress")


@login_required
def job_download(request: HttpRequest, pk: int) -> HttpResponse:
    job = _job_for(request, pk)
    if job.kind == importers.JOB_KIND:
        # The rejected rows of an import that stopped half-way are as useful as a finished
        # one's: the rows before the failure were committed, and these are the ones that were not.
        if job.status not in (JobStatus.SUCCEEDED, JobStatus.FAILED):
            raise Http404
        relative = (job.result or {}).get("rejected_file") or job.output_file
    elif job.kind == exporters.JOB_KIND and job.status == JobStatus.SUCCEEDED:
        if not exporters.can_export(request.user):
            raise PermissionDenied
        relative = job.output_file
    else:
        raise Http404
    if not relative:
        raise Http404
    root = Path(settings.MEDIA_ROOT).resolve()
    path = (root / relative).resolve()
    if root not in path.parents or not path.is_file():
        raise Http404
    if job.kind == exporters.JOB_KIND:
        AuditLog.objects.create(
            actor=request.user,
            action="contacts_export_download",
            object_type="job",
            object_id=str(job.pk),
            details={"file": relative},
            ip=request.META.get("REMOTE_ADDR") or None,
        )
    return FileResponse(path.open("rb"), as_attachment=True, filename=path.name)


class ExportForm(forms.Form):
    format = forms.ChoiceField(
        label=gettext_lazy("Format"),
        choices=[("csv", "CSV (UTF-8)"), ("xlsx", "Excel (.xlsx)")],
        initial="csv",
        widget=forms.RadioSelect,
    )


def _export_segment(request: HttpRequest, filters: dict) -> dict | None:
    """The segment an export is narrowed to ({"pk", "name"}), if the user may see segments
    (only those who may open a segment see its name on the export page)."""
    segment_id = parse_id(filters.get("segment"))
    if segment_id is None or not request.user.has_perm(roles.SEGMENT_VIEW_PERMISSION):
        return None
    # Segments sit above contacts (layering): reach their model through the membership relation
    # they declare on Contact, the one the export filters on, instead of importing it.
    membership = Contact._meta.get_field("segment_memberships").related_model
    segment_model = membership._meta.get_field("segment").related_model
    name = (
        segment_model._default_manager.filter(pk=segment_id).values_list("name", flat=True).first()
    )
    return None if name is None else {"pk": segment_id, "name": name}


@login_required
@permission_required(exporters.EXPORT_PERMISSION, raise_exception=True)
@require_http_methods(["GET", "POST"])
def export_start(request: HttpRequest) -> HttpResponse:
    list_query = exporters.list_filter_query(request.GET)
    if request.method == "POST" and "format" not in request.POST:
        # The list's export button submits the list's bulk form: its ticked rows (or "all
        # matching the filter", as for a bulk tag) and filter are carried to this page's address.
        list_query = exporters.list_filter_query(request.POST)
        selection = ContactSelectionForm(request.POST)
        if not selection.is_valid():
            for error in selection.selection_errors():
                messages.error(request, error)
            return redirect(reverse("contacts:list") + (f"?{list_query}" if list_query else ""))
        query = list_query
        if selection.selected_ids is not None:
            query = urlencode({"ids": selection.selected_ids}, doseq=True)
            query += f"&{list_query}" if list_query else ""
        return redirect(reverse("contacts_io:export") + (f"?{query}" if query else ""))
    filters = exporters.export_filters(request.GET)
    form = ExportForm(request.POST or {"format": request.GET.get("format", "csv")})
    if request.method == "POST" and form.is_valid():
        try:
            job = exporters.export_start(
                user=request.user,
                filters=filters,
                fmt=form.cleaned_data["format"],
                ip=request_ip(request),
            )
        except DomainError as exc:
            messages.error(request, exc.message)
        else:
            return redirect("contacts_io:job", pk=job.pk)
    refused = ""
    try:
        count = exporters.export_queryset(user=request.user, filters=filters).count()
    except DomainError as exc:
        # An invalid filter is refused, never widened to every contact; say why on the page.
        count, refused = 0, exc.message
    context = {
        "form": form,
        "filters": filters,
        "count": count,
        "refused": refused,
        "large": count > exporters.LARGE_EXPORT,
        "query": request.GET.urlencode(),
        # The way back to the list: its filter, without the ticked rows.
        "list_query": list_query,
        "selected": "ids" in filters,
        "segment": _export_segment(request, filters),
        "other_filters": any(key != "segment" for key in filters),
    }
    return render_page(request, "contacts/export_start.html", context)
