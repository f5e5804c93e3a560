from django.contrib import admin

from membership.models import Member, PointsEntry, Tier


@admin.register(Tier)
class TierAdmin(admin.ModelAdmin):
    list_display = ["rank", "name", "code", "min_growth", "color"]
    search_fields = ["name", "code"]
    ordering = ["rank"]


class PointsEntryInline(admin.TabularInline):
    model = PointsEntry
    extra = 0
    can_delete = False
    readonly_fields = [
        "delta",
        "balance_after",
        "reason",
        "idempotency_key",
        "source_event",
        "note",
        "created_at",
    ]

    def has_add_permission(self, request, obj=None):
        # Ledger lines are written by services only, so balances always match the ledger.
        return False


@admin.register(Member)
class MemberAdmin(admin.ModelAdmin):
    list_display = ["contact", "tier", "points_balance", "growth_value", "joined_at"]
    list_filter = ["tier"]
    search_fields = ["contact__name", "contact__phone"]
    raw_id_fields = ["contact"]
    readonly_fields = ["points_balance", "growth_value"]
    inlines = [PointsEntryInline]
    show_full_result_count = False


@admin.register(PointsEntry)
class PointsEntryAdmin(admin.ModelAdmin):
    list_display = ["created_at", "member", "delta", "balance_after", "reason", "idempotency_key"]
    list_filter = ["reason"]
    search_fields = ["idempotency_key", "member__contact__phone", "note"]
    raw_id_fields = ["member", "source_event"]
    show_full_result_count = False

    def has_change_permission(self, request, obj=None):
        return False
