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


class ExactValueFilter(admin.SimpleListFilter):
    """A filter on one column's exact value (`parameter_name` is its `__exact` lookup, as the
    admin's own filter names it, so that links keep working); subclasses list the choices."""

    def queryset(self, request, queryset):
        if self.value():
            return queryset.filter(**{self.parameter_name: self.value()})
        return queryset


class RecentValuesFilter(ExactValueFilter):
    """A filter by one column's value whose choices come from the newest rows only.

    The admin's own filter of a plain column lists its values with a DISTINCT over the whole
    table on every page load: a full scan of a log of millions of rows. The newest
    `recent` rows (read through the primary key) hold every kind in current use; an older,
    rarer value is still found with the search box. Subclasses set `parameter_name` and
    `title`."""

    recent = 10_000

    def lookups(self, request, model_admin):
        column = self.parameter_name.removesuffix("__exact")
        newest = model_admin.get_queryset(request).order_by("-pk").values_list(column, flat=True)
        values = sorted({value for value in newest[: self.recent] if value})
        selected = self.value()
        if selected and selected not in values:
            values.append(selected)  # chosen through a link or an older page: still shown
        return [(value, value) for value in values]


class AuditActionFilter(RecentValuesFilter):
    title = _("action")
    parameter_name = "action__exact"


class AuditObjectTypeFilter(RecentValuesFilter):
    title = _("object type")
    parameter_name = "object_type__exact"


class ViewOnlyAdmin(admin.ModelAdmin):
    """Rows that are evidence or history, written only by their services (audit entries,
    consent records, merge records): shown here, never added, edited or deleted."""

    def has_add_permission(self, request):
        return False

    def has_change_permission(self, request, obj=None):
        return False

    def has_delete_permission(self, request, obj=None):
        return False


class DerivedRowsAdmin(admin.ModelAdmin):
    """Rows a pass computes from other data (RFM scores, influence, segment sizes, the change
    queue): shown here, never added or edited, since the next run would overwrite an edit.
    Deleting stays possible (with the permission): deleting a contact or a segment deletes
    its derived rows with it, which the admin allows only with delete permission on them."""

    def has_add_permission(self, request):
        return False

    def has_change_permission(self, request, obj=None):
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
    # A date filter offers fixed ranges without a query; date_hierarchy would run a MIN/MAX and a
    # DISTINCT of years over the whole log on every page load (as the plain column filters did).
    list_filter = [AuditActionFilter, AuditObjectTypeFilter, "created_at"]
    search_fields = ["actor__username", "object_id", "action"]
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
