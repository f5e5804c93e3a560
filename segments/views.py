from django.contrib import messages
from django.contrib.auth.decorators import login_required
from django.http import HttpRequest, HttpResponse
from django.shortcuts import get_object_or_404, redirect
from django.utils.translation import gettext as _
from django.views.decorators.http import require_POST

from contacts.selectors import contact_visible_to
from core.errors import ValidationFailed
from core.htmx import render_page
from core.pagination import keyset_page
from segments import selectors, services
from segments.forms import SegmentForm
from segments.models import Segment

PAGE_SIZE = 50


def _get_segment(pk: int) -> Segment:
    return get_object_or_404(selectors.segment_list(include_archived=True), pk=pk)


@login_required
def segment_list(request: HttpRequest) -> HttpResponse:
    page = keyset_page(selectors.segment_list(), after=request.GET.get("after"), size=PAGE_SIZE)
    return render_page(
        request, "segments/segment_list.html", {"page": page}, fragment="segment-table"
    )


@login_required
def segment_detail(request: HttpRequest, pk: int) -> HttpResponse:
    segment = _get_segment(pk)
    members = keyset_page(
        selectors.segment_members(segment=segment), after=request.GET.get("after"), size=PAGE_SIZE
    )
    context = {
        "segment": segment,
        "rule_lines": selectors.segment_rule_describe(rule=segment.rule),
        "page": members,
    }
    return render_page(request, "segments/segment_detail.html", context, fragment="segment-members")


@login_required
def segment_create(request: HttpRequest) -> HttpResponse:
    form = SegmentForm(request.POST or None)
    if request.method == "POST" and form.is_valid():
        try:
            segment = services.segment_create(
                name=form.cleaned_data["name"],
                description=form.cleaned_data["description"],
                rule=form.build_rule(),
            )
        except ValidationFailed as exc:
            form.add_rule_error(exc)
        else:
            messages.success(
                request,
                _("Segment “%(name)s” created with %(count)s members.")
                % {"name": segment.name, "count": segment.member_count},
            )
            return redirect("segments:detail", pk=segment.pk)
    status = 422 if form.errors else 200
    return render_page(
        request, "segments/segment_form.html", {"form": form, "segment": None}, status=status
    )


@login_required
def segment_edit(request: HttpRequest, pk: int) -> HttpResponse:
    segment = _get_segment(pk)
    rule_initial = SegmentForm.initial_from_rule(segment.rule)
    form = SegmentForm(
        request.POST or None,
        segment=segment,
        rule_editable=rule_initial is not None,
        initial={"name": segment.name, "description": segment.description, **(rule_initial or {})},
    )
    if request.method == "POST" and form.is_valid():
        try:
            services.segment_update(
                segment=segment,
                name=form.cleaned_data["name"],
                description=form.cleaned_data["description"],
                rule=form.build_rule() or segment.rule,
            )
        except ValidationFailed as exc:
            form.add_rule_error(exc)
        else:
            messages.success(request, _("Segment “%(name)s” saved.") % {"name": segment.name})
            return redirect("segments:detail", pk=segment.pk)
    context = {
        "form": form,
        "segment": segment,
        "rule_lines": selectors.segment_rule_describe(rule=segment.rule),
    }
    status = 422 if form.errors else 200
    return render_page(request, "segments/segment_form.html", context, status=status)


@login_required
@require_POST
def segment_refresh(request: HttpRequest, pk: int) -> HttpResponse:
    segment = _get_segment(pk)
    entered, exited = services.segment_refresh(segment=segment)
    messages.success(
        request,
        _("Refreshed: %(entered)s entered, %(exited)s left; %(count)s members now.")
        % {"entered": entered, "exited": exited, "count": segment.member_count},
    )
    return redirect("segments:detail", pk=segment.pk)


@login_required
def contact_segments(request: HttpRequest, contact_id: int) -> HttpResponse:
    """The segments panel of the contact 360 page."""
    contact = get_object_or_404(contact_visible_to(user=request.user), pk=contact_id)
    context = {
        "contact": contact,
        "memberships": list(selectors.segments_for_contact(contact=contact)),
    }
    return render_page(
        request, "segments/contact_segments.html", context, fragment="contact-segments"
    )
