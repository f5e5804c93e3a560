from django.contrib import admin, messages
from django.core.paginator import Paginator
from django.db import connections
from django.db.models import QuerySet
from django.utils.functional import cached_property
from django.utils.translation import gettext_lazy as _

from core.audit import request_ip
from core.models import ApiKey, AuditLog, Job
from core.services import API_KEY_AUDITED_FIELDS, api_key_changes_audit, api_key_create


class LargeTablePaginator(Paginator):
    """The admin's paginator for tables of millions of rows.

    The change list counts its rows on every page load; unfiltered, that is a COUNT(*) of the
    whole table (seconds for tens of millions of events). PostgreSQL's planner estimate is
    used instead once the table is that large: the page numbers near the end are then
    approximate. Filtered and searched lists, and small tables, are counted exactly.
    """

    estimate_from = 100_000

    @cached_property
    def count(self) -> int:
        qs = self.object_list
        if isinstance(qs, QuerySet) and not qs.query.where:
            connection = connections[qs.db]
            if connection.vendor == "postgresql":
                with connection.cursor() as cursor:
                    # -1 until the table was first analysed: counted then.
                    cursor.execute(
                        "SELECT reltuples::bigint FROM pg_class WHERE oid = %s::regclass",
                        [connection.ops.quote_name(qs.model._meta.db_table)],
                    )
                    row = cursor.fetchone()
                if row is not None and row[0] >= self.estimate_from:
                    return row[0]
        return super().count


class ViewOnlyAdmin(admin.ModelAdmin):
    """Rows that are evidence or history, written only by their services (audit entries,
    consent records, merge records): shown here, never added, edited or deleted."""

    def has_add_permission(self, request):
        return False

    def has_change_permission(self, request, obj=None):
        return False

    def has_delete_permission(self, request, obj=None):
        return False


@admin.register(ApiKey)
class ApiKeyAdmin(admin.ModelAdmin):
    list_display = [
        "name",
        "prefix",
        "is_active",
        "personal_data_requests",
        "throttle_rate",
        "created_at",
        "last_used_at",
    ]
    list_filter = ["is_active", "personal_data_requests"]
    search_fields = ["name", "prefix"]
    readonly_fields = ["prefix", "created_at", "created_by", "last_used_at"]
    actions = ["revoke"]

    def save_model(self, request, obj, form, change):
        if change:
            before = ApiKey.objects.values(*API_KEY_AUDITED_FIELDS).get(pk=obj.pk)
            super().save_model(request, obj, form, change)
            api_key_changes_audit(
                key=obj, before=before, actor=request.user, ip=request_ip(request)
            )
            return
        key, raw = api_key_create(
            name=obj.name,
            created_by=request.user,
            throttle_rate=obj.throttle_rate,
            personal_data_requests=obj.personal_data_requests,
            ip=request_ip(request),
        )
        obj.pk = key.pk
        obj.prefix = key.prefix
        obj.hashed_key = key.hashed_key
        obj.created_at = key.created_at
        # Shown once: only the hash is stored, so the raw key cannot be displayed again.
        self.message_user(
            request,
            _("API key created. Copy it now, it will not be shown again: %(key)s") % {"key": raw},
            messages.WARNING,
        )

    @admin.action(description=_("Revoke selected keys"))
    def revoke(self, request, queryset):
        for key in queryset.filter(is_active=True):
            before = {field: getattr(key, field) for field in API_KEY_AUDITED_FIELDS}
            key.is_active = False
            key.save(update_fields=["is_active"])
            api_key_changes_audit(
                key=key, before=before, actor=request.user, ip=request_ip(request)
            )


@admin.register(AuditLog)
class AuditLogAdmin(ViewOnlyAdmin):
    list_display = ["created_at", "actor", "action", "object_type", "object_id", "ip"]
    list_filter = ["action", "object_type"]
    search_fields = ["actor__username", "object_id", "action"]
    date_hierarchy = "created_at"
    show_full_result_count = False
    paginator = LargeTablePaginator


@admin.register(Job)
class JobAdmin(admin.ModelAdmin):
    list_display = ["created_at", "kind", "status", "done", "total", "created_by", "finished_at"]
    list_filter = ["kind", "status"]
    search_fields = ["kind", "error"]
    readonly_fields = [f.name for f in Job._meta.fields]

    def has_add_permission(self, request):
        return False
