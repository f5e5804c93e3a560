from django.contrib import admin

from contacts.models import (
    Consent,
    ConsentRecord,
    Contact,
    ContactTag,
    CustomField,
    Event,
    Identity,
    MergeBlock,
    MergeRecord,
    Note,
    StaffProfile,
    Stage,
    Store,
    Tag,
    TagGroup,
)


class IdentityInline(admin.TabularInline):
    model = Identity
    extra = 0


class ContactTagInline(admin.TabularInline):
    model = ContactTag
    extra = 0
    autocomplete_fields = ["tag"]
    readonly_fields = ["created_at"]
    raw_id_fields = ["actor"]


@admin.register(Contact)
class ContactAdmin(admin.ModelAdmin):
    list_display = [
        "id",
        "name",
        "nickname",
        "phone",
        "city",
        "source",
        "lifecycle_stage",
        "owner",
        "created_at",
    ]
    list_filter = ["lifecycle_stage", "gender", "source", "store", "province", "created_at"]
    search_fields = ["name", "nickname", "phone", "email", "identities__value"]
    raw_id_fields = ["owner", "merged_into"]
    inlines = [IdentityInline, ContactTagInline]
    date_hierarchy = "created_at"
    # The contact table can hold millions of rows: skip the exact COUNT(*) of the full table.
    show_full_result_count = False


@admin.register(Identity)
class IdentityAdmin(admin.ModelAdmin):
    list_display = ["kind", "app_id", "value", "contact", "created_at"]
    list_filter = ["kind"]
    search_fields = ["value", "app_id"]
    raw_id_fields = ["contact"]
    show_full_result_count = False


class TagInline(admin.TabularInline):
    model = Tag
    extra = 1


@admin.register(TagGroup)
class TagGroupAdmin(admin.ModelAdmin):
    list_display = ["name", "position"]
    search_fields = ["name"]
    inlines = [TagInline]


@admin.register(Tag)
class TagAdmin(admin.ModelAdmin):
    list_display = ["name", "group", "color"]
    list_filter = ["group"]
    search_fields = ["name", "group__name"]


@admin.register(ContactTag)
class ContactTagAdmin(admin.ModelAdmin):
    list_display = ["contact", "tag", "source", "actor", "created_at"]
    list_filter = ["source", "tag__group", "tag"]
    search_fields = ["contact__name", "contact__phone", "tag__name"]
    raw_id_fields = ["contact", "actor"]
    show_full_result_count = False


@admin.register(Event)
class EventAdmin(admin.ModelAdmin):
    list_display = ["occurred_at", "name", "contact", "value", "source", "event_id"]
    list_filter = ["name", "source"]
    search_fields = ["event_id", "name", "contact__phone"]
    raw_id_fields = ["contact"]
    date_hierarchy = "occurred_at"
    show_full_result_count = False


@admin.register(Stage)
class StageAdmin(admin.ModelAdmin):
    list_display = ["position", "key", "name", "is_active"]
    list_editable = ["name", "is_active"]
    list_display_links = ["key"]
    search_fields = ["key", "name"]


@admin.register(Store)
class StoreAdmin(admin.ModelAdmin):
    list_display = ["code", "name", "province", "city", "is_active"]
    list_filter = ["is_active", "province"]
    search_fields = ["code", "name", "city"]


@admin.register(StaffProfile)
class StaffProfileAdmin(admin.ModelAdmin):
    list_display = ["user", "store"]
    list_filter = ["store"]
    search_fields = ["user__username", "store__name"]
    raw_id_fields = ["user"]


@admin.register(CustomField)
class CustomFieldAdmin(admin.ModelAdmin):
    list_display = ["position", "key", "label", "kind", "is_active"]
    list_filter = ["kind", "is_active"]
    search_fields = ["key", "label"]


@admin.register(Note)
class NoteAdmin(admin.ModelAdmin):
    list_display = ["created_at", "contact", "author", "follow_up_at", "done_at"]
    list_filter = ["done_at", "follow_up_at"]
    search_fields = ["body", "contact__name", "contact__phone"]
    raw_id_fields = ["contact", "author"]
    show_full_result_count = False


@admin.register(ConsentRecord)
class ConsentRecordAdmin(admin.ModelAdmin):
    list_display = ["recorded_at", "contact", "channel", "purpose", "granted", "source"]
    list_filter = ["channel", "purpose", "granted", "source"]
    search_fields = ["contact__name", "contact__phone", "notice_version"]
    raw_id_fields = ["contact", "actor"]
    show_full_result_count = False

    def has_change_permission(self, request, obj=None):
        # Consent evidence is append-only.
        return False

    def has_delete_permission(self, request, obj=None):
        return False


@admin.register(Consent)
class ConsentAdmin(admin.ModelAdmin):
    list_display = ["contact", "channel", "purpose", "granted", "updated_at"]
    list_filter = ["channel", "purpose", "granted"]
    search_fields = ["contact__name", "contact__phone"]
    raw_id_fields = ["contact", "record"]
    show_full_result_count = False

    def has_change_permission(self, request, obj=None):
        # Current state is derived from the records; change it by recording consent.
        return False


@admin.register(MergeRecord)
class MergeRecordAdmin(admin.ModelAdmin):
    list_display = ["created_at", "survivor", "duplicate", "reason", "actor", "undone_at"]
    list_filter = ["reason", "undone_at"]
    search_fields = ["survivor__name", "duplicate__name", "survivor__phone"]
    raw_id_fields = ["survivor", "duplicate", "actor"]
    readonly_fields = ["snapshot", "moved"]


@admin.register(MergeBlock)
class MergeBlockAdmin(admin.ModelAdmin):
    list_display = ["low", "high", "reason", "actor", "created_at"]
    search_fields = ["low__name", "high__name", "low__phone", "high__phone"]
    raw_id_fields = ["low", "high", "actor"]
