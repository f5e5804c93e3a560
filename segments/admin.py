from typing import Any

from django import forms
from django.contrib import admin, messages
from django.db import transaction
from django.utils.text import capfirst
from django.utils.translation import gettext
from django.utils.translation import gettext_lazy as _

from core.admin import DerivedRowsAdmin, ExactValueFilter, LargeTablePaginator
from core.errors import DomainError, ValidationFailed
from segments.models import (
    AutoTagRule,
    DirtyContact,
    Influence,
    LeadScoreAward,
    LeadScoreRule,
    LeadScoringConfig,
    LeadStageThreshold,
    RFMRun,
    RFMScore,
    Segment,
    SegmentKind,
    SegmentSize,
)
from segments.rules import validate_rule
from segments.rules.topics import mask_topics
from segments.scoring import (
    lead_scores_recompute_contacts,
    score_rule_create,
    score_rule_delete,
    score_rule_update,
    score_rule_validate,
)
from segments.services import (
    _check_name,
    _check_policy,
    auto_tag_check_free,
    auto_tags_sync,
    segment_archive,
    segment_create,
    segment_delete,
    segment_readers,
    segment_refresh,
    segment_update,
    segments_delete,
)


def _form_error(exc: ValidationFailed) -> forms.ValidationError:
    return forms.ValidationError(exc.message, code=exc.code)


class _DryRun(Exception):
    """Raised to roll back a service call that was made only for the checks it runs first."""


class SegmentAdminForm(forms.ModelForm):
    """Checked as the segment services check (they also do the writing: see SegmentAdmin)."""

    class Meta:
        model = Segment
        fields = [
            "name",
            "description",
            "kind",
            "rule",
            "refresh_policy",
            "refresh_interval_minutes",
            "refresh_hour",
            "is_archived",
        ]

    @property
    def segment_kind(self) -> str | None:
        # An existing segment's kind is read-only in the admin (a list and a rule do not convert).
        if self.instance.pk:
            return self.instance.kind
        return self.cleaned_data.get("kind")

    def clean_name(self) -> str:
        try:
            return _check_name(self.cleaned_data["name"], exclude=self.instance.pk)
        except ValidationFailed as exc:
            raise _form_error(exc) from exc

    def clean(self) -> dict[str, Any]:
        cleaned = super().clean()
        if self.segment_kind == SegmentKind.STATIC:
            cleaned["rule"] = {}
        elif self.segment_kind == SegmentKind.DYNAMIC and "rule" in cleaned:
            try:
                # With the segment's own id, a rule reading it (directly or not) is a cycle.
                validate_rule(cleaned["rule"], segment_id=self.instance.pk)
            except ValidationFailed as exc:
                self.add_error("rule", _form_error(exc))
        policy = [
            cleaned.get(f) for f in ("refresh_policy", "refresh_interval_minutes", "refresh_hour")
        ]
        if None not in policy:
            try:
                _check_policy(*policy)
            except ValidationFailed as exc:
                self.add_error(None, _form_error(exc))
        if self.instance.pk and cleaned.get("is_archived") and not self.instance.is_archived:
            self._check_archive()
        return cleaned

    def _check_archive(self) -> None:
        """Refuse archiving as segment_archive would (segments still read this one), without
        archiving yet: the call runs in a savepoint that is rolled back."""
        try:
            with transaction.atomic():
                segment_archive(segment=Segment.objects.get(pk=self.instance.pk), archived=True)
                raise _DryRun
        except _DryRun:
            pass
        except ValidationFailed as exc:
            self.add_error("is_archived", _form_error(exc))


@admin.register(Segment)
class SegmentAdmin(admin.ModelAdmin):
    form = SegmentAdminForm
    list_display = [
        "name",
        "kind",
        "refresh_policy",
        "member_count",
        "last_refreshed_at",
        "is_archived",
        "updated_at",
    ]
    list_filter = ["kind", "refresh_policy", "is_archived"]
    search_fields = ["name", "description"]
    readonly_fields = ["member_count", "last_refreshed_at", "refresh_error"]
    actions = ["refresh"]

    def get_readonly_fields(self, request, obj: Segment | None = None) -> list[str]:
        fields = list(super().get_readonly_fields(request, obj))
        if obj is not None:
            fields.append("kind")
            if obj.kind == SegmentKind.STATIC:
                fields.append("rule")  # a static list has no rule
        return fields

    def save_model(self, request, obj: Segment, form: SegmentAdminForm, change: bool) -> None:
        # The services keep what the form does not show in step: dependencies, time-window
        # metadata, the next scheduled refresh, and members (with entry and exit events) when
        # the rule changed. `obj` already holds the posted values, so a change starts from the
        # stored row.
        data = form.cleaned_data
        policy = {
            "refresh_policy": data["refresh_policy"],
            "refresh_interval_minutes": data["refresh_interval_minutes"],
            "refresh_hour": data["refresh_hour"],
        }
        if change:
            stored = Segment.objects.get(pk=obj.pk)
            segment = segment_update(
                segment=stored,
                name=data["name"],
                description=data["description"],
                rule=data["rule"] if stored.kind == SegmentKind.DYNAMIC else None,
                **policy,
            )
        else:
            segment = segment_create(
                name=data["name"],
                description=data["description"],
                kind=data["kind"],
                rule=data["rule"],
                actor=request.user,
                **policy,
            )
        if data["is_archived"] != segment.is_archived:
            segment_archive(segment=segment, archived=data["is_archived"])
        obj.pk = segment.pk
        obj.refresh_from_db()
        obj._state.adding = False

    # Refused, as archiving is, while another rule reads the segment: the confirmation page
    # lists those rules as what protects it, and nothing is deleted.
    def get_deleted_objects(self, objs, request):
        deleted, counts, perms_needed, protected = super().get_deleted_objects(objs, request)
        ids = [segment.pk for segment in objs]
        for segment in objs:
            protected += [
                capfirst(
                    gettext("%(reader)s reads “%(segment)s”") % {"reader": r, "segment": segment}
                )
                for r in segment_readers(segment=segment, exclude=ids)
            ]
        return deleted, counts, perms_needed, protected

    def delete_model(self, request, obj: Segment) -> None:
        segment_delete(segment=obj)

    def delete_queryset(self, request, queryset) -> None:
        segments_delete(segments=queryset)

    @admin.action(description=_("Refresh membership now"))
    def refresh(self, request, queryset):
        refreshed = 0
        for segment in queryset:
            try:
                with transaction.atomic():
                    segment_refresh(segment=segment)
            except DomainError as exc:
                self.message_user(
                    request,
                    gettext("“%(segment)s” could not be refreshed: %(error)s")
                    % {"segment": segment, "error": exc.message},
                    messages.ERROR,
                )
            else:
                refreshed += 1
        self.message_user(request, _("Refreshed %(n)d segments.") % {"n": refreshed})


# SegmentMembership is not registered: its primary key is (segment, contact), which the admin
# cannot address. A segment's members are listed on its page in the operator UI.

# Derived rows below (sizes, the change queue, RFM scores and runs, influence) cannot be added
# or edited here (DerivedRowsAdmin): their passes write them, and an edit would not last.


@admin.register(SegmentSize)
class SegmentSizeAdmin(DerivedRowsAdmin):
    list_display = ["segment", "day", "member_count"]
    list_filter = ["segment"]
    date_hierarchy = "day"


@admin.register(DirtyContact)
class DirtyContactAdmin(DerivedRowsAdmin):
    list_display = ["contact_id", "changed_at", "what_changed"]
    show_full_result_count = False
    paginator = LargeTablePaginator

    @admin.display(description=_("what changed"))
    def what_changed(self, obj: DirtyContact) -> str:
        return ", ".join(mask_topics(obj.topics))


class AutoTagRuleAdminForm(forms.ModelForm):
    class Meta:
        model = AutoTagRule
        fields = ["segment", "tag", "remove_on_exit", "is_active"]

    def clean(self) -> dict[str, Any]:
        cleaned = super().clean()
        segment, tag = cleaned.get("segment"), cleaned.get("tag")
        if segment is not None and tag is not None and cleaned.get("is_active"):
            try:
                auto_tag_check_free(tag=tag, segment=segment)
            except ValidationFailed as exc:
                raise _form_error(exc) from exc
        return cleaned


@admin.register(AutoTagRule)
class AutoTagRuleAdmin(admin.ModelAdmin):
    form = AutoTagRuleAdminForm
    list_display = ["segment", "tag", "remove_on_exit", "is_active", "created_at"]
    list_filter = ["is_active", "remove_on_exit"]
    raw_id_fields = ["segment", "tag"]

    # As auto_tag_rule_create does: an active rule tags today's members now (and, with
    # remove_on_exit, takes its tag off those who left), not only those who enter later.
    def save_model(self, request, obj: AutoTagRule, form, change: bool) -> None:
        super().save_model(request, obj, form, change)
        if obj.is_active:
            auto_tags_sync(segment=obj.segment, rule=obj)


class _ScoreFilter(ExactValueFilter):
    """An R, F or M score of 1 to 5: fixed choices, where the admin's own filter of a plain
    column would list them with a DISTINCT over a million scores on every page load."""

    def lookups(self, request, model_admin):
        return [(str(score), str(score)) for score in range(1, 6)]


class _RFilter(_ScoreFilter):
    title = "R"
    parameter_name = "r_score__exact"


class _FFilter(_ScoreFilter):
    title = "F"
    parameter_name = "f_score__exact"


class _MFilter(_ScoreFilter):
    title = "M"
    parameter_name = "m_score__exact"


@admin.register(RFMScore)
class RFMScoreAdmin(DerivedRowsAdmin):
    list_display = [
        "contact",
        "recency_days",
        "frequency",
        "monetary",
        "r_score",
        "f_score",
        "m_score",
        "layer",
        "computed_at",
    ]
    list_filter = ["layer", _RFilter, _FFilter, _MFilter]
    raw_id_fields = ["contact"]
    show_full_result_count = False
    paginator = LargeTablePaginator


@admin.register(RFMRun)
class RFMRunAdmin(DerivedRowsAdmin):
    list_display = ["started_at", "finished_at", "window_days", "contacts"]
    readonly_fields = ["edges", "layer_counts"]


@admin.register(LeadScoringConfig)
class LeadScoringConfigAdmin(admin.ModelAdmin):
    list_display = ["__str__", "half_life_days", "updated_at"]


class LeadScoreRuleAdminForm(forms.ModelForm):
    """Checked as the scoring services check (they also do the writing: see LeadScoreRuleAdmin)."""

    class Meta:
        model = LeadScoreRule
        fields = [
            "name",
            "kind",
            "event_name",
            "property_filters",
            "condition",
            "points",
            "cap_points",
            "cap_period",
            "is_active",
        ]

    def service_data(self) -> dict[str, Any]:
        return {name: self.cleaned_data.get(name) for name in self.Meta.fields}

    def clean(self) -> dict[str, Any]:
        cleaned = super().clean()
        if self.errors:
            return cleaned  # a field the service would read is already refused
        try:
            score_rule_validate(data=self.service_data())
        except ValidationFailed as exc:
            self.add_error(*self._placed(exc))
        return cleaned

    def _placed(self, exc: ValidationFailed) -> tuple[str | None, str]:
        """The field a service error names and its message: `points: must not be zero.` goes to
        points as `must not be zero.`; a path inside a JSON field (`property_filters[2].value`,
        `rule.conditions[0]`, the condition being the rule) stays in the message."""
        details = exc.details if isinstance(exc.details, dict) else {}
        path = details.get("path") or exc.message.split(":", 1)[0]
        head, _sep, text = exc.message.partition(": ")
        if path.startswith("property_filters"):
            field = "property_filters"
        elif path.startswith("rule"):
            field = "condition"
        else:
            field = path if path in self.fields else None
        if field is None or not text:
            return None, exc.message
        return field, text if head in (field, "rule") else exc.message


@admin.register(LeadScoreRule)
class LeadScoreRuleAdmin(admin.ModelAdmin):
    form = LeadScoreRuleAdminForm
    list_display = ["name", "kind", "event_name", "points", "cap_points", "cap_period", "is_active"]
    list_filter = ["kind", "is_active"]
    search_fields = ["name", "event_name"]

    def save_model(self, request, obj: LeadScoreRule, form: LeadScoreRuleAdminForm, change):
        # The services keep the rule's awards in step: an event rule re-scores its past events,
        # a profile-fit rule re-evaluates who matches, and the tags and fields it reads are
        # recorded. `obj` already holds the posted values, so a change starts from the stored
        # row (the service compares the two to tell whether scoring changed).
        if change:
            stored = LeadScoreRule.objects.get(pk=obj.pk)
            rule = score_rule_update(rule=stored, data=form.service_data())
        else:
            rule = score_rule_create(data=form.service_data())
        obj.pk = rule.pk
        obj.refresh_from_db()
        obj._state.adding = False

    # Through the service, which takes the rule's points off the contacts' scores.
    def delete_model(self, request, obj: LeadScoreRule) -> None:
        score_rule_delete(rule=obj)

    def delete_queryset(self, request, queryset) -> None:
        for rule in queryset:
            score_rule_delete(rule=rule)


@admin.register(LeadScoreAward)
class LeadScoreAwardAdmin(admin.ModelAdmin):
    list_display = ["contact", "rule", "points", "awarded_at"]
    list_filter = ["rule"]
    raw_id_fields = ["contact", "event"]
    show_full_result_count = False
    paginator = LargeTablePaginator

    # The stored score is the sum of the awards: the contacts whose awards changed are scored
    # again now, not at the nightly recompute (a moved award changes both contacts' scores).
    def save_model(self, request, obj: LeadScoreAward, form, change: bool) -> None:
        contact_ids = {obj.contact_id}
        if change:
            contact_ids |= set(
                LeadScoreAward.objects.filter(pk=obj.pk).values_list("contact_id", flat=True)
            )
        super().save_model(request, obj, form, change)
        lead_scores_recompute_contacts(contact_ids=contact_ids)

    def delete_model(self, request, obj: LeadScoreAward) -> None:
        contact_id = obj.contact_id
        super().delete_model(request, obj)
        lead_scores_recompute_contacts(contact_ids=[contact_id])

    def delete_queryset(self, request, queryset) -> None:
        contact_ids = set(queryset.values_list("contact_id", flat=True))
        super().delete_queryset(request, queryset)
        lead_scores_recompute_contacts(contact_ids=contact_ids)


@admin.register(LeadStageThreshold)
class LeadStageThresholdAdmin(admin.ModelAdmin):
    list_display = ["min_score", "stage"]


@admin.register(Influence)
class InfluenceAdmin(DerivedRowsAdmin):
    list_display = [
        "contact",
        "score",
        "is_koc",
        "invites_accepted",
        "referred_purchases",
        "shares",
        "share_reach",
        "computed_at",
    ]
    list_filter = ["is_koc"]
    raw_id_fields = ["contact"]
    show_full_result_count = False
    paginator = LargeTablePaginator
