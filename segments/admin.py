from django import forms
from django.contrib import admin
from django.utils.translation import gettext_lazy as _

from core.errors import DomainError
from segments.models import Segment, SegmentMembership
from segments.rules import validate_rule
from segments.services import segment_refresh


class SegmentAdminForm(forms.ModelForm):
    class Meta:
        model = Segment
        fields = ["name", "description", "rule", "is_archived"]

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
    list_display = ["name", "member_count", "last_refreshed_at", "is_archived", "updated_at"]
    list_filter = ["is_archived"]
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
