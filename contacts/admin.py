from django.contrib import admin

from contacts.models import Contact, ContactTag, Event, Identity, Tag, TagGroup


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
    list_filter = ["lifecycle_stage", "gender", "source", "province", "created_at"]
    search_fields = ["name", "nickname", "phone", "email", "identities__value"]
    raw_id_fields = ["owner"]
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
