from django.contrib import messages
from django.contrib.auth.decorators import login_required, permission_required
from django.http import HttpRequest, HttpResponse
from django.shortcuts import get_object_or_404, redirect
from django.urls import reverse
from django.utils import timezone
from django.utils.translation import gettext as _
from django.views.decorators.http import require_http_methods, require_POST

from contacts.models import Contact
from core.errors import ValidationFailed
from core.htmx import (
    htmx_target,
    is_fragment_request,
    redirect_or_fragment,
    reload_when_finished,
    render_page,
)
from segments import influence, scoring
from segments.forms import builder_tree, rule_apply_action
from segments.models import LeadScoreRule, LeadStageThreshold, ScoreRuleKind
from segments.rule_labels import describe_score_event
from segments.scoring_forms import HalfLifeForm, ScoreRuleForm, ThresholdForm
from segments.selectors import RuleLine, event_names_known, segment_rule_lines

VIEW_PERMISSION = "segments.view_segment"
CHANGE_PERMISSION = "segments.change_segment"
TOP_SCORED = 50
KOC_PAGE_SIZE = 100
# The KOC page's regions: the ranking (the KOC-only filter) and the recompute status (polled).
KOC_FRAGMENTS = ("koc-table", "koc-status")
# The regions of the rule form a request may re-render: the builder's rows (its add / remove
# buttons and selects) or both kinds' fields (the kind select).
RULE_FORM_FRAGMENTS = ("rule-builder", "rule-kind")


def _rule_lines(rule: LeadScoreRule) -> list[RuleLine]:
    """What a rule scores, in the words the segment pages use for the same conditions."""
    if rule.kind == ScoreRuleKind.EVENT:
        return [RuleLine(0, describe_score_event(rule.event_name, rule.property_filters))]
    return segment_rule_lines(rule=rule.condition)


def _scoring_context(
    *, half_life_form: HalfLifeForm | None = None, threshold_form: ThresholdForm | None = None
) -> dict:
    config = scoring.scoring_config_get()
    return {
        "rules": [
            {"rule": rule, "lines": _rule_lines(rule)} for rule in LeadScoreRule.objects.all()
        ],
        "config": config,
        "half_life_form": half_life_form
        or HalfLifeForm(initial={"half_life_days": config.half_life_days}),
        "thresholds": LeadStageThreshold.objects.select_related("stage"),
        "threshold_form": threshold_form or ThresholdForm(),
        "off_path_keys": scoring.OFF_PATH_STAGE_KEYS,
        # Served by the lead_score index; merged contacts keep no score of their own.
        "top_contacts": Contact.objects.filter(merged_into__isnull=True, lead_score__gt=0)
        .select_related("lifecycle_stage")
        .order_by("-lead_score", "pk")[:TOP_SCORED],
    }


@login_required
@permission_required(VIEW_PERMISSION, raise_exception=True)
def scoring_overview(request: HttpRequest) -> HttpResponse:
    return render_page(request, "segments/scoring.html", _scoring_context())


@login_required
@permission_required(CHANGE_PERMISSION, raise_exception=True)
def scoring_rule_create(request: HttpRequest) -> HttpResponse:
    return _rule_form(request, rule=None)


@login_required
@permission_required(CHANGE_PERMISSION, raise_exception=True)
def scoring_rule_edit(request: HttpRequest, pk: int) -> HttpResponse:
    return _rule_form(request, rule=get_object_or_404(LeadScoreRule, pk=pk))


def _render_rule_form(
    request: HttpRequest,
    form: ScoreRuleForm,
    rule: LeadScoreRule | None,
    *,
    fit_rule: dict | None = None,
    status: int = 200,
) -> HttpResponse:
    context = {
        "form": form,
        "rule": rule,
        "tree": builder_tree(fit_rule or form.fit_rule, error=form.rule_error),
        "event_names": event_names_known(),
    }
    fragment = htmx_target(request, allowed=RULE_FORM_FRAGMENTS, default="rule-builder")
    return render_page(
        request, "segments/scoring_rule_form.html", context, fragment=fragment, status=status
    )


def _saved_message(rule: LeadScoreRule) -> str:
    """What saving did, and when the scores follow."""
    values = {"name": rule.name}
    if not rule.is_active:
        return (
            _("Scoring rule “%(name)s” saved. It is not enabled, so it gives no points.") % values
        )
    if rule.kind == ScoreRuleKind.EVENT:
        return _(
            "Scoring rule “%(name)s” saved. Its points for past events of the last "
            "%(days)s days are being worked out in the background, usually within a few "
            "minutes: refresh this page to see them."
        ) % {**values, "days": _backfill_days()}
    return (
        _(
            "Scoring rule “%(name)s” saved. Contacts who match it get its points in the "
            "background, usually within a few minutes: refresh this page to see them."
        )
        % values
    )


def _backfill_days() -> int:
    """How many days of past events a new or changed event rule scores, at the half-life now."""
    now = timezone.now()
    half_life = scoring.scoring_config_get().half_life_days
    return (now - scoring.backfill_window_start(now=now, half_life_days=half_life)).days


def _rule_form(request: HttpRequest, *, rule: LeadScoreRule | None) -> HttpResponse:
    initial = ScoreRuleForm.initial_from_rule(rule) if rule else None
    form = ScoreRuleForm(request.POST or None, initial=initial)
    action = request.POST.get("action")
    if request.method == "POST" and action is None and is_fragment_request(request):
        # A builder select that needs other widgets posts without an action: re-render only.
        action = "refresh"
    if action is not None:
        # The segment builder's add / remove buttons, applied to the profile condition.
        return _render_rule_form(
            request, form, rule, fit_rule=rule_apply_action(form.fit_rule, action)
        )
    if request.method == "POST" and form.is_valid():
        try:
            if rule is None:
                saved = scoring.score_rule_create(data=form.service_data())
            else:
                saved = scoring.score_rule_update(rule=rule, data=form.service_data())
        except ValidationFailed as exc:
            form.add_service_error(exc)
        else:
            messages.success(request, _saved_message(saved))
            return redirect("segments:scoring")
    return _render_rule_form(request, form, rule, status=422 if form.errors else 200)


def _back_to_scoring(request: HttpRequest) -> HttpResponse:
    """Back to the scoring page; for htmx (a delete button that asked first), a full reload."""
    if is_fragment_request(request):
        response = HttpResponse(status=204)
        response["HX-Redirect"] = reverse("segments:scoring")
        return response
    return redirect("segments:scoring")


@require_POST
@login_required
@permission_required(CHANGE_PERMISSION, raise_exception=True)
def scoring_rule_delete(request: HttpRequest, pk: int) -> HttpResponse:
    rule = get_object_or_404(LeadScoreRule, pk=pk)
    scoring.score_rule_delete(rule=rule)
    messages.success(request, _("Scoring rule “%(name)s” deleted.") % {"name": rule.name})
    # The whole page reloads, as the top scores below the rules may have changed too.
    return _back_to_scoring(request)


def _reload_of_failed_save(section: str) -> HttpResponse:
    """A GET of a form's address: the page a failed save rendered there, reloaded."""
    # A refused save answers with the scoring page at the form's own URL (422, the form with
    # its errors), which stays in the address bar: reloading it must show the page, not 405.
    return redirect(f"{reverse('segments:scoring')}#{section}")


@require_http_methods(["GET", "POST"])
@login_required
@permission_required(CHANGE_PERMISSION, raise_exception=True)
def scoring_settings(request: HttpRequest) -> HttpResponse:
    if request.method == "GET":
        return _reload_of_failed_save("scoring-settings")
    form = HalfLifeForm(request.POST)
    if form.is_valid():
        try:
            scoring.scoring_config_update(half_life_days=form.cleaned_data["half_life_days"])
        except ValidationFailed as exc:
            form.add_error("half_life_days", exc.message)
        else:
            messages.success(request, _("Half-life saved; scores are being recomputed."))
            return redirect("segments:scoring")
    return render_page(
        request, "segments/scoring.html", _scoring_context(half_life_form=form), status=422
    )


@require_http_methods(["GET", "POST"])
@login_required
@permission_required(CHANGE_PERMISSION, raise_exception=True)
def scoring_threshold_set(request: HttpRequest) -> HttpResponse:
    if request.method == "GET":
        return _reload_of_failed_save("scoring-thresholds")
    form = ThresholdForm(request.POST)
    if form.is_valid():
        try:
            scoring.threshold_set(
                stage_key=form.cleaned_data["stage"].key,
                min_score=form.cleaned_data["min_score"],
            )
        except ValidationFailed as exc:
            field, _sep, message = exc.message.partition(": ")
            if field in form.fields and message:
                form.add_error(field, message)
            else:
                form.add_error(None, exc.message)
        else:
            messages.success(
                request,
                _(
                    "Threshold saved. Contacts whose score already reaches it are being moved "
                    "to “%(stage)s” in the background, usually within a few minutes."
                )
                % {"stage": form.cleaned_data["stage"].name},
            )
            return redirect("segments:scoring")
    return render_page(
        request, "segments/scoring.html", _scoring_context(threshold_form=form), status=422
    )


@require_POST
@login_required
@permission_required(CHANGE_PERMISSION, raise_exception=True)
def scoring_threshold_delete(request: HttpRequest, pk: int) -> HttpResponse:
    threshold = LeadStageThreshold.objects.select_related("stage").filter(pk=pk).first()
    if threshold is None:
        # A second click, or a colleague removed it first: what was asked for is done.
        messages.info(request, _("This threshold was already removed."))
    else:
        scoring.threshold_delete(threshold=threshold)
        messages.success(
            request,
            _("Threshold for “%(stage)s” removed.") % {"stage": threshold.stage.name},
        )
    return _back_to_scoring(request)


def _koc_context(request: HttpRequest) -> dict:
    koc_only = request.GET.get("koc") == "1"
    return {
        "rows": influence.koc_ranking(koc_only=koc_only, limit=KOC_PAGE_SIZE),
        "koc_only": koc_only,
        "computed_at": influence.influence_last_computed_at(),
        "rule": influence.koc_rule(),
        "weights": influence.INFLUENCE_WEIGHTS,
        "job": influence.influence_active_job(),
        "can_change": request.user.has_perm(CHANGE_PERMISSION),
    }


@login_required
@permission_required(VIEW_PERMISSION, raise_exception=True)
def koc_list(request: HttpRequest) -> HttpResponse:
    watched = request.GET.get("watch")
    if watched and is_fragment_request(request):
        # The status region polls while a recompute runs; once it ends, reload the whole page
        # so the ranking shows the new scores.
        done = reload_when_finished(
            request,
            job=influence.influence_job(job_id=watched),
            failure_message=_("The influence recompute failed: %(error)s"),
        )
        if done is not None:
            return done
    fragment = htmx_target(request, allowed=KOC_FRAGMENTS, default="koc-table")
    return render_page(request, "segments/koc.html", _koc_context(request), fragment=fragment)


@require_POST
@login_required
@permission_required(CHANGE_PERMISSION, raise_exception=True)
def koc_recompute(request: HttpRequest) -> HttpResponse:
    influence.influence_recompute_request(actor=request.user)
    messages.success(request, _("Influence recompute started; the page updates when it finishes."))
    return redirect_or_fragment(
        request,
        to="segments:koc",
        template="segments/koc.html",
        fragment="koc-status",
        context=_koc_context(request),
    )
