from django.contrib import admin
from django.utils.translation import gettext_lazy as _

from channels.models import Channel, Delivery, DeliveryStatus


@admin.register(Channel)
class ChannelAdmin(admin.ModelAdmin):
    list_display = ["name", "kind", "is_active", "created_at"]
    list_filter = ["kind", "is_active"]
    search_fields = ["name"]


@admin.register(Delivery)
class DeliveryAdmin(admin.ModelAdmin):
    list_display = [
        "id",
        "channel",
        "contact",
        "status",
        "send_at",
        "attempts",
        "sent_at",
        "error_code",
    ]
    # Fixed date ranges, not date_hierarchy: its MIN/MAX and DISTINCT of years would read the
    # whole table of deliveries on every page load.
    list_filter = ["status", "channel", "created_at"]
    search_fields = ["idempotency_key", "provider_message_id", "contact__phone"]
    raw_id_fields = ["contact"]
    readonly_fields = ["idempotency_key", "created_at", "sent_at", "lease_until", "attempts"]
    actions = ["requeue"]
    show_full_result_count = False

    @admin.action(description=_("Re-queue failed or unknown deliveries"))
    def requeue(self, request, queryset):
        n = queryset.filter(status__in=[DeliveryStatus.FAILED, DeliveryStatus.UNKNOWN]).update(
            status=DeliveryStatus.PENDING, lease_until=None, error_code="", error_message=""
        )
        self.message_user(request, _("%(n)d deliveries re-queued.") % {"n": n})
