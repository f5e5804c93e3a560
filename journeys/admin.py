from django.contrib import admin

from journeys.models import Enrollment, Journey, JourneyStep


class JourneyStepInline(admin.TabularInline):
    model = JourneyStep
    extra = 1
    fields = ["position", "kind", "wait_seconds", "channel", "title", "body"]


@admin.register(Journey)
class JourneyAdmin(admin.ModelAdmin):
    list_display = ["name", "status", "trigger_segment", "allow_reentry", "updated_at"]
    list_filter = ["status"]
    search_fields = ["name", "description"]
    inlines = [JourneyStepInline]


@admin.register(Enrollment)
class EnrollmentAdmin(admin.ModelAdmin):
    list_display = [
        "journey",
        "contact",
        "occurrence",
        "status",
        "step_position",
        "next_run_at",
        "enrolled_at",
    ]
    list_filter = ["status", "journey"]
    search_fields = ["contact__name", "contact__phone"]
    raw_id_fields = ["contact"]
    show_full_result_count = False


@admin.register(JourneyStep)
class JourneyStepAdmin(admin.ModelAdmin):
    list_display = ["journey", "position", "kind", "wait_seconds", "channel", "title"]
    list_filter = ["kind", "journey"]
    search_fields = ["title", "body", "journey__name"]
