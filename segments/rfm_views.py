from django.contrib import messages
from django.contrib.auth.decorators import login_required, permission_required
from django.http import Http404, HttpRequest, HttpResponse
from django.utils.translation import gettext as _
from django.views.decorators.http import require_POST

from contacts.selectors import contact_visible_to
from core.htmx import (
    is_fragment_request,
    redirect_or_fragment,
    reload_when_finished,
    render_page,
)
from core.pagination import keyset_page
from segments import rfm
from segments.models import RFMLayer

VIEW_PERMISSION = "segments.view_segment"
RECOMPUTE_PERMISSION = "segments.change_segment"
PAGE_SIZE = 50


def _overview_context(request: HttpRequest) -> dict:
    run = rfm.rfm_last_run()
    return {
        "run": run,
        "layers": rfm.rfm_layer_summary(run=run),
        "heatmap": rfm.rfm_heatmap(run=run),
        "edge_rows": rfm.rfm_edge_rows(run=run),
        "job": rfm.rfm_active_job(),
        "can_recompute": request.user.has_perm(RECOMPUTE_PERMISSION),
    }


@login_required
@permission_required(VIEW_PERMISSION, raise_exception=True)
def rfm_overview(request: HttpRequest) -> HttpResponse:
    watched = request.GET.get("watch")
    if watched and is_fragment_request(request):
        # The status region polls while a recompute runs; once it ends, reload the whole page
        # so the heat-map and the layer table show the new run.
        done = reload_when_finished(
            request,
            job=rfm.rfm_job(job_id=watched),
            failure_message=_("The RFM recompute failed: %(error)s"),
        )
        if done is not None:
            return done
    return render_page(
        request, "segments/rfm.html", _overview_context(request), fragment="rfm-status"
    )


@login_required
@permission_required(RECOMPUTE_PERMISSION, raise_exception=True)
@require_POST
def rfm_recompute(request: HttpRequest) -> HttpResponse:
    rfm.rfm_recompute_request(actor=request.user)
    messages.success(request, _("RFM recompute started; the page updates when it finishes."))
    return redirect_or_fragment(
        request,
        to="segments:rfm",
        template="segments/rfm.html",
        fragment="rfm-status",
        context=_overview_context(request),
    )


@login_required
@permission_required(VIEW_PERMISSION, raise_exception=True)
def rfm_layer(request: HttpRequest, layer: str) -> HttpResponse:
    if layer not in RFMLayer.values:
        raise Http404("Unknown RFM layer")
    contacts = contact_visible_to(user=request.user).filter(rfm__layer=layer).select_related("rfm")
    context = {
        "layer": rfm.rfm_layer_info(layer=RFMLayer(layer)),
        "page": keyset_page(contacts, after=request.GET.get("after"), size=PAGE_SIZE),
        "run": rfm.rfm_last_run(),
    }
    return render_page(request, "segments/rfm_layer.html", context, fragment="rfm-members")
