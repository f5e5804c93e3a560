import json
import re
from typing import Any

from django import forms
from django.contrib import admin, messages
from django.contrib.admin.models import DELETION, LogEntry
from django.contrib.admin.utils import NestedObjects
from django.contrib.contenttypes.models import ContentType
from django.db import OperationalError, transaction
from django.db.models import Count
from django.http import HttpResponseRedirect
from django.utils.translation import gettext_lazy as _

from contacts.models import (
    Consent,
    ConsentRecord,
    Contact,
    ContactTag,
    CustomField,
    Erasure,
    ErasureSource,
    Event,
    Identity,
    IdentityKind,
    MergeBlock,
    MergeRecord,
    Note,
    StaffProfile,
    Stage,
    Store,
    Tag,
    TagGroup,
)
from contacts.personal_data import contact_family
from contacts.roles import ERASE_PERMISSION
from contacts.selectors import contact_follow_merges
from contacts.services import (
    ErasureContended,
    IdentityInput,
    contact_erase,
    contact_tag_add,
    contact_tag_remove,
    contact_update,
    custom_fields_validate,
    erased_identity_message,
    erasure_of_contact,
    identities_suppressed,
    normalize_identity,
    normalize_phone,
    tag_delete,
)
from contacts.services import erasure as erasure_services
from contacts.services.custom_fields import (
    custom_field_check_change,
    custom_field_check_key,
    custom_field_delete,
    custom_field_save,
)
from contacts.services.merge import merge_block_add, merge_block_remove
from contacts.services.retry import DEADLOCK_PAUSE, atomic_attempts, is_deadlock_victim
from contacts.services.tags import tag_expiry_check
from contacts.signals import contact_changed
from core.admin import LargeTablePaginator, ViewOnlyAdmin
from core.audit import request_ip
from core.errors import NotFound, ValidationFailed

# Written through contacts.services.contact_update, which keeps the phone and email identities
# in step with the columns; every other field is saved as the admin form has it.
SERVICE_FIELDS = ("phone", "email", "attributes")


def _form_error(exc: ValidationFailed) -> forms.ValidationError:
    return forms.ValidationError(exc.message, code=exc.code)


# The phone and email columns each have an identity that contact_update keeps in step; edited
# or deleted alone, identify() no longer finds the contact by its phone and makes a second one.
COLUMN_IDENTITY_ERROR = _(
    "This identity is the contact's phone or email: change it on the contact itself, which "
    "keeps the two in step."
)


def _is_column_identity(*, contact: Contact | None, kind: str, app_id: str, value: str) -> bool:
    if contact is None or kind not in (IdentityKind.PHONE, IdentityKind.EMAIL) or app_id:
        return False
    return bool(value) and getattr(contact, kind) == value


def _stored_column_identity(identity: Identity) -> bool:
    stored = Identity.objects.filter(pk=identity.pk).select_related("contact").first()
    return stored is not None and _is_column_identity(
        contact=stored.contact, kind=stored.kind, app_id=stored.app_id, value=stored.value
    )


class IdentityAdminForm(forms.ModelForm):
    """Identity values normalised as identify() does, so look-ups by them find the contact."""

    def clean(self) -> dict[str, Any]:
        if self.instance.pk and self.has_changed() and _stored_column_identity(self.instance):
            raise forms.ValidationError(COLUMN_IDENTITY_ERROR, code="column_identity")
        cleaned = super().clean()
        kind, value = cleaned.get("kind"), cleaned.get("value")
        # Rows left as they were are not re-checked: one legacy value that no longer normalises
        # must not block saving the rest of the contact.
        if kind and value and (not self.instance.pk or self.has_changed()):
            try:
                identity = normalize_identity(
                    IdentityInput(kind=kind, value=value, app_id=cleaned.get("app_id") or "")
                )
            except ValidationFailed as exc:
                raise _form_error(exc) from exc
            cleaned["value"], cleaned["app_id"] = identity.value, identity.app_id
            if not self.instance.pk or {"kind", "app_id", "value"} & set(self.changed_data):
                self._refuse_erased(identity)
        return cleaned

    def _refuse_erased(self, identity: IdentityInput) -> None:
        # As on the contact's own phone and email (ContactAdminForm._refuse_erased): an
        # erased person's openid or unionid typed in here would bring them back.
        if identities_suppressed([(identity.kind, identity.app_id, identity.value)]):
            self.add_error(
                "value",
                forms.ValidationError(
                    _(
                        "This identity belonged to a person whose data was erased at their "
                        "request, so it cannot be added here. If they come back, they sign up "
                        "again themselves (in the mini-program, for example) and are a new "
                        "customer from then on."
                    ),
                    code="erased",
                ),
            )


class ContactAdminForm(forms.ModelForm):
    """Phone, email and custom fields checked and normalised as on every other write path."""

    # Wider than the column: the E.164 form stored is shorter than what people type.
    phone = forms.CharField(
        label=Contact._meta.get_field("phone").verbose_name, max_length=30, required=False
    )

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        stored = self.instance.attributes if self.instance.pk else {}
        self.stored_attributes: dict[str, Any] = stored if isinstance(stored, dict) else {}
        self.custom_changes: dict[str, Any] = {}

    def clean_phone(self) -> str:
        raw = self.cleaned_data.get("phone") or ""
        if self.instance.pk and "phone" not in self.changed_data:
            return raw  # as stored: see IdentityAdminForm.clean
        try:
            return normalize_phone(raw) if raw.strip() else ""
        except ValidationFailed as exc:
            raise _form_error(exc) from exc

    def clean_email(self) -> str:
        raw = self.cleaned_data.get("email") or ""
        if not raw:
            return ""
        if self.instance.pk and "email" not in self.changed_data:
            return raw
        try:
            return normalize_identity(IdentityInput(kind=IdentityKind.EMAIL, value=raw)).value
        except ValidationFailed as exc:
            raise _form_error(exc) from exc

    def clean_attributes(self) -> dict[str, Any]:
        """Validate the custom fields that were added or changed; keep untouched traits as is.

        Besides custom field values, attributes hold free-form traits sent to identify; those
        may stay or be removed here, but a new or changed key must be an active custom field.
        """
        value = self.cleaned_data.get("attributes")
        if value in (None, ""):
            value = {}
        if not isinstance(value, dict):
            raise forms.ValidationError(
                _("Attributes must be an object of custom field keys and values."),
                code="invalid_attributes",
            )
        stored = self.stored_attributes
        changed = {k: v for k, v in value.items() if k not in stored or stored[k] != v}
        # Typed by hand into the JSON editor: "42" or "是" are read for what they spell. Each
        # key is checked alone so that the form lists every wrong value, not only the first.
        cleaned: dict[str, Any] = {}
        errors: list[forms.ValidationError] = []
        for key, raw in changed.items():
            try:
                cleaned |= custom_fields_validate(values={key: raw}, from_text=True)
            except ValidationFailed as exc:
                errors.append(_form_error(exc))
        if errors:
            raise forms.ValidationError(errors)
        removed = [k for k in stored if k not in value]
        removed_custom = set(
            CustomField.objects.filter(key__in=removed, is_active=True).values_list(
                "key", flat=True
            )
        )
        self.custom_changes = {**cleaned, **dict.fromkeys(removed_custom)}
        # What is stored before contact_update applies the custom changes: the traits kept.
        return {k: v for k, v in stored.items() if k in value or k in removed_custom}

    def clean(self) -> dict[str, Any]:
        cleaned = super().clean()
        # The same rule as contact_update, checked here so that the admin shows it on the form.
        for kind in (IdentityKind.PHONE, IdentityKind.EMAIL):
            value = cleaned.get(kind)
            if not value or value == getattr(self.instance, kind, ""):
                continue
            owner = (
                Identity.objects.filter(kind=kind, app_id="", value=value)
                .exclude(contact_id=self.instance.pk)
                .values_list("contact_id", flat=True)
                .first()
            )
            if owner is not None:
                self.add_error(
                    kind,
                    forms.ValidationError(
                        _(
                            "Contact %(contact_id)s already has this value; merge the two "
                            "contacts instead."
                        ),
                        code="identity_taken",
                        params={"contact_id": owner},
                    ),
                )
        self._refuse_erased(cleaned)
        return cleaned

    def _refuse_erased(self, cleaned: dict[str, Any]) -> None:
        # As identify() refuses to create a contact for an erased person's identities when the
        # person does not ask for it: an operator typing them in would bring the person back.
        wanted = [
            (kind, "", cleaned[kind])
            for kind in (IdentityKind.PHONE, IdentityKind.EMAIL)
            if cleaned.get(kind)
            and cleaned[kind] != getattr(self.instance, kind, "")
            and kind not in self.errors
        ]
        for kind, _app_id, _value in sorted(identities_suppressed(wanted)):
            self.add_error(
                kind, forms.ValidationError(erased_identity_message(kind), code="erased")
            )

    def service_changes(self) -> dict[str, Any]:
        """The changes contact_update applies, keyed as it expects."""
        data = {k: self.cleaned_data[k] for k in ("phone", "email") if k in self.changed_data}
        return {**data, **self.custom_changes}


class IdentityInlineFormSet(forms.BaseInlineFormSet):
    def clean(self) -> None:
        super().clean()
        # Against the contact as posted: the phone it replaces goes with its identity anyway.
        deleted = [form.instance.pk for form in self.deleted_forms if form.instance.pk]
        for identity in Identity.objects.filter(pk__in=deleted):
            if _is_column_identity(
                contact=self.instance,
                kind=identity.kind,
                app_id=identity.app_id,
                value=identity.value,
            ):
                raise forms.ValidationError(COLUMN_IDENTITY_ERROR, code="column_identity")


class IdentityInline(admin.TabularInline):
    model = Identity
    form = IdentityAdminForm
    formset = IdentityInlineFormSet
    extra = 0


class ContactTagInline(admin.TabularInline):
    model = ContactTag
    extra = 0
    autocomplete_fields = ["tag"]
    readonly_fields = ["created_at"]
    raw_id_fields = ["actor"]


def _protected_outside(contacts) -> bool:
    """Whether deleting `contacts` meets a protected row that is not deleted along with them."""
    collector = NestedObjects(using=contacts.db)
    collector.collect(contacts)
    return any(obj not in collector.model_objs[type(obj)] for obj in collector.protected)


@admin.register(Contact)
class ContactAdmin(admin.ModelAdmin):
    form = ContactAdminForm
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
    # Filters whose choices need no pass over the table: one on a free-text column (source,
    # province) lists its values with a DISTINCT over every contact on each page load, and so
    # would date_hierarchy (its years); created_at offers fixed date ranges instead.
    list_filter = ["lifecycle_stage", "gender", "store", "created_at"]
    search_fields = ["name", "nickname", "phone", "email", "identities__value"]
    raw_id_fields = ["owner"]
    # Merging (and undoing one) moves every app's rows and is recorded: only the merge screens
    # do it. Setting the field here would hide a contact without any of that.
    readonly_fields = ["merged_into"]
    inlines = [IdentityInline, ContactTagInline]
    # The contact table can hold millions of rows: skip the exact COUNT(*) of the full table.
    show_full_result_count = False
    paginator = LargeTablePaginator

    # Deleting a customer is erasing the person (PIPL art. 47): contact_erase deletes them with
    # every contact merged into them and every row about them in every app, keeps hashed
    # tombstones so imports cannot add them back, and records the erasure and an audit entry
    # without personal data. Evidence rows (events, consent and merge records) cannot be
    # deleted on their own here; with the person they go, so the erase permission is what is
    # asked for, not the delete permissions of those view-only models.
    def has_delete_permission(self, request, obj=None) -> bool:
        return request.user.has_perm(ERASE_PERMISSION)

    def get_deleted_objects(self, objs, request):
        family: set[int] = set()
        for contact in objs:
            family.update(contact_family(contact=contact))
        people = Contact.objects.filter(pk__in=sorted(family)).order_by("pk")
        deleted, counts, _perms, protected = super().get_deleted_objects(people, request)
        if protected and not _protected_outside(people):
            # A consent state protects its record, but both go with the person (contact_erase
            # deletes the states first).
            protected = []
        perms_needed = set() if self.has_delete_permission(request) else {_("erasure")}
        return deleted, counts, perms_needed, protected

    def log_deletions(self, request, queryset):
        # The admin's history keeps the object's text forever, and a contact's is its name:
        # name the id only, as the erasure record does.
        content_type = ContentType.objects.get_for_model(Contact)
        return LogEntry.objects.bulk_create(
            [
                LogEntry(
                    user_id=request.user.pk,
                    content_type=content_type,
                    object_id=str(contact.pk),
                    object_repr=f"#{contact.pk}",
                    action_flag=DELETION,
                    change_message="",
                )
                for contact in queryset
            ]
        )

    def _erase(self, request, contact: Contact) -> None:
        try:
            contact_erase(
                contact=contact,
                source=ErasureSource.ADMIN,
                actor=request.user,
                ip=request_ip(request),
            )
        except NotFound:
            # Erased meanwhile (with a contact merged into it, selected too, or concurrently).
            if erasure_of_contact(contact_id=contact.pk) is None:
                raise

    def delete_model(self, request, obj: Contact) -> None:
        self._erase(request, obj)

    def delete_queryset(self, request, queryset) -> None:
        refused = []
        # One erasure per person, each committed alone: a contact erased with the family of
        # one selected before it is skipped.
        for contact in queryset:
            if erasure_of_contact(contact_id=contact.pk) is not None:
                continue
            try:
                self._erase(request, contact)
            except ErasureContended:
                refused.append(contact.pk)
        if refused:
            self.message_user(
                request,
                _(
                    "Other work on contacts %(ids)s kept getting in the way, so they were not "
                    "erased; try again in a moment."
                )
                % {"ids": ", ".join(map(str, refused))},
                messages.ERROR,
            )

    def delete_view(self, request, object_id, extra_context=None):
        if request.method != "POST":
            return super().delete_view(request, object_id, extra_context)
        # Django deletes inside the view's transaction, where contact_erase runs once (in a
        # savepoint) and leaves a deadlock to whoever owns the transaction: here, the view,
        # which runs again as contact_erase would have, then says so rather than failing.
        try:
            return atomic_attempts(
                lambda _last: super(ContactAdmin, self).delete_view(
                    request, object_id, extra_context
                ),
                attempts=erasure_services.ERASE_ATTEMPTS,
                retry_if=is_deadlock_victim,
                pause=DEADLOCK_PAUSE,
            )
        except OperationalError as exc:
            if not is_deadlock_victim(exc):
                raise
        # Every attempt rolled back whole: nothing was erased or logged.
        self.message_user(
            request, erasure_services.erasure_contended().message, level=messages.ERROR
        )
        return HttpResponseRedirect(request.path)

    def save_model(self, request, obj: Contact, form: ContactAdminForm, change: bool) -> None:
        # contact_update compares with the stored row, so phone, email and custom fields are
        # left as stored here and handed to it; it records the change and tells higher apps.
        service_changes = form.service_changes()
        if change:
            stored = Contact.objects.get(pk=obj.pk)
            obj.phone, obj.email = stored.phone, stored.email
            others = [name for name in form.changed_data if name not in SERVICE_FIELDS]
            if obj.attributes != stored.attributes:
                others.append("attributes")
            if others:
                obj.save(update_fields=[*others, "updated_at"])
        else:
            obj.phone = obj.email = ""
            others = []
            obj.save()
        if service_changes:
            contact_update(contact=obj, data=service_changes, actor=request.user, source="admin")
            obj.refresh_from_db()
        if others or not change:
            # A new contact may match any rule (changed=None); otherwise name what changed.
            topics = others if change else None
            contact_id = obj.pk
            transaction.on_commit(
                lambda: contact_changed.send(
                    sender=Contact, contact_ids=[contact_id], changed=topics
                )
            )

    def save_related(self, request, form, formsets, change: bool) -> None:
        super().save_related(request, form, formsets, change)
        # Tags and identities edited inline change what segment rules read.
        topics = {
            ContactTag: "tags",
            Identity: "identities",
        }
        changed = sorted(
            {topics[f.model] for f in formsets if f.model in topics and f.has_changed()}
        )
        if change and changed:
            contact_id = form.instance.pk
            transaction.on_commit(
                lambda: contact_changed.send(
                    sender=Contact, contact_ids=[contact_id], changed=changed
                )
            )


@admin.register(Identity)
class IdentityAdmin(admin.ModelAdmin):
    form = IdentityAdminForm
    list_display = ["kind", "app_id", "value", "contact", "created_at"]
    list_filter = ["kind"]
    search_fields = ["value", "app_id"]
    raw_id_fields = ["contact"]
    show_full_result_count = False
    paginator = LargeTablePaginator

    # Listed as what protects them, on the confirmation page of one deletion and of many.
    def get_deleted_objects(self, objs, request):
        deleted, counts, perms_needed, protected = super().get_deleted_objects(objs, request)
        columns = [str(identity) for identity in objs if _stored_column_identity(identity)]
        if columns:
            protected += [COLUMN_IDENTITY_ERROR, *columns]
        return deleted, counts, perms_needed, protected


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

    # Through the service: each contact that had the tag gets a timeline entry and its segments
    # follow. (A tag a segment rule or an auto-tag rule reads is protected: the confirmation
    # page lists them and nothing is deleted.)
    def delete_model(self, request, obj: Tag) -> None:
        tag_delete(tag=obj)

    def delete_queryset(self, request, queryset) -> None:
        for tag in queryset:
            tag_delete(tag=tag)


class ContactTagAdminForm(forms.ModelForm):
    def clean_expires_at(self):
        expires_at = self.cleaned_data.get("expires_at")
        if expires_at is not None and "expires_at" in self.changed_data:
            try:
                return tag_expiry_check(expires_at=expires_at)
            except ValidationFailed as exc:
                raise _form_error(exc) from exc
        return expires_at


@admin.register(ContactTag)
class ContactTagAdmin(admin.ModelAdmin):
    form = ContactTagAdminForm
    list_display = ["contact", "tag", "source", "actor", "created_at"]
    list_filter = ["source", "tag__group", "tag"]
    search_fields = ["contact__name", "contact__phone", "tag__name"]
    raw_id_fields = ["contact", "actor"]
    show_full_result_count = False
    paginator = LargeTablePaginator

    # Tagging and untagging go through the services, as on the contact page: a timeline entry
    # (标签已添加 / 标签已移除) and the contact's segments re-evaluated. An edit of an existing
    # assignment (its expiry, its source) is saved as it is, and its segments are told.
    def save_model(self, request, obj: ContactTag, form, change: bool) -> None:
        if change:
            super().save_model(request, obj, form, change)
            ids = {
                obj.contact_id,
                *([form.initial["contact"]] if "contact" in form.changed_data else []),
            }
            transaction.on_commit(
                lambda: contact_changed.send(
                    sender=Contact, contact_ids=sorted(ids), changed=["tags"]
                )
            )
            return
        # A merged contact's tag goes to its survivor (as the service does), where it is read.
        contact = contact_follow_merges(contact=obj.contact)
        contact_tag_add(
            contact=contact,
            tag=obj.tag,
            actor=obj.actor or request.user,
            source=obj.source,
            expires_at=obj.expires_at,
        )
        stored = ContactTag.objects.get(contact=contact, tag=obj.tag)
        obj.pk, obj.contact_id, obj.created_at = stored.pk, stored.contact_id, stored.created_at

    def delete_model(self, request, obj: ContactTag) -> None:
        contact_tag_remove(contact=obj.contact, tag=obj.tag, actor=request.user)

    def delete_queryset(self, request, queryset) -> None:
        for assignment in queryset.select_related("contact", "tag"):
            self.delete_model(request, assignment)


@admin.register(Event)
class EventAdmin(admin.ModelAdmin):
    list_display = ["occurred_at", "name", "contact", "value", "source", "event_id"]
    # Tens of millions of rows: a filter on name or source lists its choices with a DISTINCT
    # over the whole table, and date_hierarchy a MIN/MAX and a DISTINCT of years, on every
    # page load; a date filter offers fixed ranges without a query.
    list_filter = ["occurred_at"]
    # Exact look-ups, which the unique event id and the contact phone index answer; the
    # default icontains reads every row.
    search_fields = ["event_id__exact", "contact__phone__exact"]
    raw_id_fields = ["contact"]
    show_full_result_count = False
    paginator = LargeTablePaginator

    # Append-only: events are recorded by ingestion (which scores them and tells the segments)
    # and never edited; a hand-made or edited event would skip all of that. Deleting stays
    # allowed: deleting a contact deletes its events, and the admin asks for that permission.
    def has_add_permission(self, request):
        return False

    def has_change_permission(self, request, obj=None):
        return False


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


def _custom_field_error_field(exc: ValidationFailed) -> str | None:
    """The form field a refusal of custom_field_save is about."""
    if exc.code == "key_taken":
        return "key"
    details = exc.details if isinstance(exc.details, dict) else {}
    changed = details.get("changed") or [None]
    return changed[0]


class _CustomFieldSaveRefused(Exception):
    """custom_field_save refused what the form had accepted: something changed in between."""

    def __init__(self, refusal: ValidationFailed):
        super().__init__(refusal.message)
        self.refusal = refusal


# What operators type between choices: commas (ASCII or full-width), 、 and line breaks.
CHOICE_SEPARATORS = re.compile(r"[,，、\r\n]+")


class _TypedChoices(str):
    """The choices as typed, shown again as they are on a form with errors."""


class ChoiceListField(forms.JSONField):
    """A custom field's choices typed as a list: 瑜伽,跑步 or 瑜伽、跑步 or one per line, or
    as a JSON list. The model's clean() then checks the list (texts, distinct, needed)."""

    default_error_messages = {
        "invalid": _(
            "Separate the choices with commas or line breaks, or give a JSON list such as "
            '["S", "M"].'
        ),
    }

    def to_python(self, value: Any) -> Any:
        if self.disabled or isinstance(value, list):
            return value
        text = str(value or "").strip()
        if not text:
            return []
        if not text.startswith("["):
            return [part.strip() for part in CHOICE_SEPARATORS.split(text) if part.strip()]
        try:
            return json.loads(text)
        except json.JSONDecodeError:
            raise forms.ValidationError(self.error_messages["invalid"], code="invalid") from None

    def bound_data(self, data: Any, initial: Any) -> Any:
        if self.disabled:
            return initial
        return None if data is None else _TypedChoices(data)

    def prepare_value(self, value: Any) -> str:
        if isinstance(value, str):
            return value
        # One per line, as an operator types them; JSON when that would not read back the same.
        if isinstance(value, list) and all(
            isinstance(c, str) and c == c.strip() and c and not CHOICE_SEPARATORS.search(c)
            for c in value
        ):
            return "\n".join(value)
        return json.dumps(value, ensure_ascii=False)

    def has_changed(self, initial: Any, data: Any) -> bool:
        try:
            return self.to_python(data) != (initial if initial is not None else [])
        except forms.ValidationError:
            return True


class CustomFieldAdminForm(forms.ModelForm):
    # Set (on a subclass made for one request) when the save path refused this very data.
    late_refusal: ValidationFailed | None = None

    class Meta:
        model = CustomField
        fields = ["key", "label", "kind", "choices", "position", "is_active"]
        field_classes = {"choices": ChoiceListField}
        widgets = {"choices": forms.Textarea(attrs={"rows": 4})}

    def clean(self) -> dict[str, Any]:
        data = super().clean()
        key, kind = data.get("key"), data.get("kind")
        if key is not None and key != self.initial.get("key"):
            # Only a new key: a field saved before keys were checked can still be edited.
            try:
                custom_field_check_key(key=key)
            except ValidationFailed as exc:
                self.add_error("key", exc.message)
                return data
        if self.instance.pk is None or key is None or kind is None:
            return data
        # The rules reading the field name it by its key and read it as its type.
        try:
            custom_field_check_change(field=self.instance, key=key, kind=kind)
        except ValidationFailed as exc:
            self.add_error(_custom_field_error_field(exc), exc.message)
        return data

    def full_clean(self) -> None:
        super().full_clean()
        # Checked again, the data may now fail on its own (the new rule, the other field's
        # key); if it still passes, the refusal the save met is the error to show.
        if self.is_bound and self.late_refusal is not None and not self.errors:
            refusal = self.late_refusal
            self.add_error(_custom_field_error_field(refusal), refusal.message)


@admin.register(CustomField)
class CustomFieldAdmin(admin.ModelAdmin):
    form = CustomFieldAdminForm
    list_display = ["position", "key", "label", "kind", "is_active"]
    list_filter = ["kind", "is_active"]
    search_fields = ["key", "label"]

    # Through the service, which checks again under a lock what the form checked. A rule or
    # another field's key saved by someone else since the form was validated is refused there.
    def save_model(self, request, obj: CustomField, form, change) -> None:
        try:
            custom_field_save(field=obj)
        except ValidationFailed as exc:
            raise _CustomFieldSaveRefused(exc) from exc

    def changeform_view(self, request, object_id=None, form_url="", extra_context=None):
        try:
            return super().changeform_view(request, object_id, form_url, extra_context)
        except _CustomFieldSaveRefused as exc:
            # The view's transaction rolled back whole (nothing saved, nothing logged): show
            # the posted form again, this time with the refusal on it.
            request._custom_field_refusal = exc.refusal
            return super().changeform_view(request, object_id, form_url, extra_context)

    def get_form(self, request, obj=None, change=False, **kwargs):
        form = super().get_form(request, obj, change, **kwargs)
        refusal = getattr(request, "_custom_field_refusal", None)
        if refusal is None:
            return form
        return type(form.__name__, (form,), {"late_refusal": refusal})

    # Through the service. A field a segment or lead-scoring rule reads is protected: the
    # confirmation page lists those rules and nothing is deleted.
    def delete_model(self, request, obj: CustomField) -> None:
        try:
            custom_field_delete(field=obj)
        except ValidationFailed as exc:
            raise _CustomFieldSaveRefused(exc) from exc

    def delete_queryset(self, request, queryset) -> None:
        try:
            with transaction.atomic():
                for field in queryset:
                    custom_field_delete(field=field)
        except ValidationFailed as exc:
            raise _CustomFieldSaveRefused(exc) from exc

    # A rule that started reading the field after the confirmation page listed none: the
    # deletion is refused there, and said so instead of failing the request.
    def delete_view(self, request, object_id, extra_context=None):
        try:
            return super().delete_view(request, object_id, extra_context)
        except _CustomFieldSaveRefused as exc:
            self.message_user(request, exc.refusal.message, level=messages.ERROR)
            return HttpResponseRedirect(request.path)

    def response_action(self, request, queryset):
        try:
            # Whole, so that the deletions the action logs first go when it is refused.
            with transaction.atomic():
                return super().response_action(request, queryset)
        except _CustomFieldSaveRefused as exc:
            self.message_user(request, exc.refusal.message, level=messages.ERROR)
            return HttpResponseRedirect(request.get_full_path())


@admin.register(Note)
class NoteAdmin(admin.ModelAdmin):
    list_display = ["created_at", "contact", "author", "follow_up_at", "done_at"]
    list_filter = ["done_at", "follow_up_at"]
    search_fields = ["body", "contact__name", "contact__phone"]
    raw_id_fields = ["contact", "author"]
    show_full_result_count = False
    paginator = LargeTablePaginator


@admin.register(ConsentRecord)
class ConsentRecordAdmin(ViewOnlyAdmin):
    # Append-only evidence, recorded through consent_record only (which also moves the current
    # state, Consent).
    list_display = ["recorded_at", "contact", "channel", "purpose", "granted", "source"]
    list_filter = ["channel", "purpose", "granted"]  # source is free text: see ContactAdmin
    search_fields = ["contact__name", "contact__phone", "notice_version"]
    raw_id_fields = ["contact", "actor"]
    show_full_result_count = False
    paginator = LargeTablePaginator


@admin.register(Consent)
class ConsentAdmin(ViewOnlyAdmin):
    # Current state is derived from the records; change it by recording consent.
    list_display = ["contact", "channel", "purpose", "granted", "updated_at"]
    list_filter = ["channel", "purpose", "granted"]
    search_fields = ["contact__name", "contact__phone"]
    raw_id_fields = ["contact", "record"]
    show_full_result_count = False
    paginator = LargeTablePaginator


@admin.register(MergeRecord)
class MergeRecordAdmin(ViewOnlyAdmin):
    # Written by contact_merge and contact_merge_undo only: the record is what an undo restores
    # from and the history of who merged whom, so it is neither made, edited nor deleted here.
    list_display = ["created_at", "survivor", "duplicate", "reason", "actor", "undone_at"]
    list_filter = ["reason", "undone_at"]
    search_fields = ["survivor__name", "duplicate__name", "survivor__phone"]
    raw_id_fields = ["survivor", "duplicate", "actor"]
    readonly_fields = ["snapshot", "moved"]


class MergeBlockAdminForm(forms.ModelForm):
    class Meta:
        model = MergeBlock
        fields = ["low", "high", "reason"]

    def clean(self) -> dict[str, Any]:
        cleaned = super().clean()
        low, high = cleaned.get("low"), cleaned.get("high")
        if low is not None and high is not None:
            if low.pk == high.pk:
                raise forms.ValidationError(
                    _("A contact is always the same person as itself."), code="same_contact"
                )
            # Stored as (lower id, higher id): either order names the same pair.
            if low.pk > high.pk:
                cleaned["low"], cleaned["high"] = high, low
        return cleaned


@admin.register(MergeBlock)
class MergeBlockAdmin(admin.ModelAdmin):
    form = MergeBlockAdminForm
    list_display = ["low", "high", "reason", "actor", "created_at"]
    search_fields = ["low__name", "high__name", "low__phone", "high__phone"]
    raw_id_fields = ["low", "high"]

    # Through the services, which record who declared (or lifted) the pair in the audit log.
    def has_change_permission(self, request, obj=None):
        return False

    def save_model(self, request, obj: MergeBlock, form, change: bool) -> None:
        block = merge_block_add(
            contact=obj.low,
            other=obj.high,
            actor=request.user,
            reason=obj.reason or "manual",
            ip=request_ip(request),
        )
        obj.pk, obj.actor_id, obj.created_at = block.pk, block.actor_id, block.created_at

    def delete_model(self, request, obj: MergeBlock) -> None:
        merge_block_remove(
            contact=obj.low, other=obj.high, actor=request.user, ip=request_ip(request)
        )

    def delete_queryset(self, request, queryset) -> None:
        for block in queryset.select_related("low", "high"):
            self.delete_model(request, block)


@admin.register(Erasure)
class ErasureAdmin(ViewOnlyAdmin):
    # Written by contact_erase only; the record of what was done at a person's request, with
    # no personal data in it (the tombstones' digests are not shown: they mean nothing to read).
    list_display = ["id", "created_at", "actor", "source", "reference", "contact_ids", "summary"]
    list_filter = ["source", "created_at"]
    search_fields = ["reference", "=contacts__contact_id"]
    fields = [
        "id",
        "created_at",
        "actor",
        "source",
        "reference",
        "contact_ids",
        "summary",
        "tombstones",
    ]
    readonly_fields = fields
    show_full_result_count = False
    paginator = LargeTablePaginator

    def get_queryset(self, request):
        return super().get_queryset(request).select_related("actor").prefetch_related("contacts")

    def get_search_results(self, request, queryset, search_term):
        # "=contacts__contact_id" compares the term with a bigint: only a whole number may.
        term = search_term.strip()
        if term and not (term.isascii() and term.isdigit() and len(term) < 19):
            return queryset.filter(reference__icontains=term), False
        return super().get_search_results(request, queryset, search_term)

    @admin.display(description=_("contact ids"))
    def contact_ids(self, obj: Erasure) -> str:
        return ", ".join(str(pk) for pk in sorted(c.contact_id for c in obj.contacts.all()))

    @admin.display(description=_("tombstones"))
    def tombstones(self, obj: Erasure) -> str:
        kinds = obj.suppressions.values("kind").annotate(n=Count("pk")).order_by("kind")
        return ", ".join(f"{IdentityKind(row['kind']).label} × {row['n']}" for row in kinds) or "-"
