from django import forms
from django.contrib import admin
from django.utils.translation import gettext_lazy as _

from core.errors import DomainError
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
    SegmentMembership,
    SegmentSize,
)
from segments.rules import validate_rule
from segments.rules.topics import mask_topics
from segments.services import segment_refresh


class SegmentAdminForm(forms.ModelForm):
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

    def clean_rule(self):
        rule = self.cleaned_data["rule"]
        try:
            validate_rule(rule)
        except DomainError as exc:
            raise forms.ValidationError(exc.message) from exc
        return rule


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
    readonly_fields = ["member_count", "last_refreshed_at"]
    actions = ["refresh"]

    @admin.action(description=_("Refresh membership now"))
    def refresh(self, request, queryset):
        for segment in queryset:
            segment_refresh(segment=segment)
        self.message_user(request, _("Refreshed %(n)d segments.") % {"n": queryset.count()})


@admin.register(SegmentMembership)
class SegmentMembershipAdmin(admin.ModelAdmin):
    list_display = ["segment", "contact", "entered_at"]
    list_filter = ["segment"]
    search_fields = ["contact__name", "contact__phone"]
    raw_id_fields = ["contact"]
    show_full_result_count = False


@admin.register(SegmentSize)
class SegmentSizeAdmin(admin.ModelAdmin):
    list_display = ["segment", "day", "member_count"]
    list_filter = ["segment"]
    date_hierarchy = "day"


@admin.register(DirtyContact)
class DirtyContactAdmin(admin.ModelAdmin):
    list_display = ["contact_id", "changed_at", "what_changed"]
    show_full_result_count = False

    @admin.display(description=_("what changed"))
    def what_changed(self, obj: DirtyContact) -> str:
        return ", ".join(mask_topics(obj.topics))


@admin.register(AutoTagRule)
class AutoTagRuleAdmin(admin.ModelAdmin):
    list_display = ["segment", "tag", "remove_on_exit", "is_active", "created_at"]
    list_filter = ["is_active", "remove_on_exit"]
    raw_id_fields = ["segment", "tag"]


@admin.register(RFMScore)
class RFMScoreAdmin(admin.ModelAdmin):
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
    list_filter = ["layer", "r_score", "f_score", "m_score"]
    raw_id_fields = ["contact"]
    show_full_result_count = False


@admin.register(RFMRun)
class RFMRunAdmin(admin.ModelAdmin):
    list_display = ["started_at", "finished_at", "window_days", "contacts"]
    readonly_fields = ["edges", "layer_counts"]


@admin.register(LeadScoringConfig)
class LeadScoringConfigAdmin(admin.ModelAdmin):
    list_display = ["__str__", "half_life_days", "updated_at"]


@admin.register(LeadScoreRule)
class LeadScoreRuleAdmin(admin.ModelAdmin):
    list_display = ["name", "kind", "event_name", "points", "cap_points", "cap_period", "is_active"]
    list_filter = ["kind", "is_active"]
    search_fields = ["name", "event_name"]


@admin.register(LeadScoreAward)
class LeadScoreAwardAdmin(admin.ModelAdmin):
    list_display = ["contact", "rule", "points", "awarded_at"]
    list_filter = ["rule"]
    raw_id_fields = ["contact", "event"]
    show_full_result_count = False


@admin.register(LeadStageThreshold)
class LeadStageThresholdAdmin(admin.ModelAdmin):
    list_display = ["min_score", "stage"]


@admin.register(Influence)
class InfluenceAdmin(admin.ModelAdmin):
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
