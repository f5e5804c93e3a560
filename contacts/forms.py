from typing import Any

from django import forms
from django.contrib.auth.models import AbstractBaseUser
from django.db.models import Q, QuerySet
from django.utils import timezone
from django.utils.translation import gettext_lazy as _
from django.utils.translation import pgettext_lazy

from contacts.labels import SOURCE_LABELS, source_from_label
from contacts.models import (
    ConsentChannel,
    ConsentPurpose,
    Contact,
    CustomField,
    CustomFieldKind,
    Gender,
    StaffProfile,
    Stage,
    Store,
)
from contacts.roles import is_store_staff
from contacts.selectors import contact_custom_fields, staff_users, stores_active, tags_grouped
from core.ids import parse_id

CUSTOM_PREFIX = "cf__"


# How a browser's <input type="datetime-local"> sends and shows a time.
DATETIME_LOCAL_FORMAT = "%Y-%m-%dT%H:%M"


def date_input() -> forms.DateInput:
    """A browser date picker. Its value must be ISO whatever the language: without a format
    Django renders the language's first input format (zh-Hans: 1990/02/03), which the browser
    discards as invalid, so saving the form again would clear the date."""
    return forms.DateInput(attrs={"type": "date"}, format="%Y-%m-%d")


def _expires_at_field() -> forms.DateTimeField:
    """The optional "until when" of a tag assignment (the 360 page and the bulk action)."""
    return forms.DateTimeField(
        label=_("Expires at"),
        required=False,
        help_text=_("Optional: the tag is removed again at this time."),
        widget=forms.DateTimeInput(attrs={"type": "datetime-local"}, format=DATETIME_LOCAL_FORMAT),
    )


class TagExpiryMixin:
    """Shared set-up and check of an `expires_at` field made by _expires_at_field."""

    def _expires_at_setup(self) -> None:
        # The browser's picker offers no past times; clean_expires_at still checks.
        expires_at = self.fields["expires_at"]
        expires_at.widget.attrs["min"] = timezone.localtime().strftime(DATETIME_LOCAL_FORMAT)
        expires_at.widget.attrs["title"] = expires_at.help_text

    def clean_expires_at(self):
        expires_at = self.cleaned_data.get("expires_at")
        if expires_at is not None and expires_at <= timezone.now():
            raise forms.ValidationError(
                _("The tag's expiry must be in the future."), code="invalid_expiry"
            )
        return expires_at


class TagAddForm(TagExpiryMixin, forms.Form):
    """Pick one tag to add, optionally until a time; rendered without the contact's tags."""

    tag = forms.ModelChoiceField(
        label=_("Tag"), queryset=tags_grouped(), empty_label=_("Choose a tag…")
    )
    expires_at = _expires_at_field()

    def __init__(self, *args, contact: Contact | None = None, **kwargs):
        super().__init__(*args, **kwargs)
        if contact is not None:
            self.fields["tag"].queryset = tags_grouped().exclude(contact_tags__contact=contact)
        self._expires_at_setup()


# Column fields the edit form offers, in order; phone and email only to those who may see them.
# Source and channel code record the first touch and are not edited by hand.
PROFILE_FIELDS = (
    "name",
    "nickname",
    "gender",
    "birthday",
    "phone",
    "email",
    "province",
    "city",
    "lifecycle_stage",
    "owner",
    "store",
    "utm_source",
    "utm_medium",
    "utm_campaign",
    "utm_content",
    "utm_term",
)
PERSONAL_FIELDS = ("phone", "email")


def store_staff_scope(user: AbstractBaseUser) -> tuple[int | None, QuerySet] | None:
    """For store staff, their store's id and the users they may hand a contact to (themselves
    and their store's colleagues); None for everyone else, whose pickers are not limited."""
    if user.is_superuser or not is_store_staff(user):
        return None
    store_id = (
        StaffProfile.objects.filter(user=user, store__isnull=False)
        .values_list("store_id", flat=True)
        .first()
    )
    colleagues = Q(pk=user.pk)
    if store_id is not None:
        colleagues |= Q(staff_profile__store_id=store_id)
    return store_id, staff_users().filter(colleagues)


def _custom_form_field(definition: CustomField) -> forms.Field:
    label = definition.label
    choices = [(str(c), str(c)) for c in definition.choices or []]
    if definition.kind == CustomFieldKind.NUMBER:
        return forms.DecimalField(label=label, required=False)
    if definition.kind == CustomFieldKind.DATE:
        return forms.DateField(label=label, required=False, widget=date_input())
    if definition.kind == CustomFieldKind.SINGLE_CHOICE:
        return forms.ChoiceField(label=label, required=False, choices=[("", "—"), *choices])
    if definition.kind == CustomFieldKind.MULTI_CHOICE:
        return forms.MultipleChoiceField(
            label=label, required=False, choices=choices, widget=forms.CheckboxSelectMultiple
        )
    if definition.kind == CustomFieldKind.BOOLEAN:
        return forms.NullBooleanField(label=label, required=False)
    return forms.CharField(label=label, required=False, max_length=500)


class ContactEditForm(forms.Form):
    """The profile edit form; contacts.services.contact_update does the authoritative checks."""

    name = forms.CharField(label=pgettext_lazy("person", "Name"), max_length=100, required=False)
    nickname = forms.CharField(label=_("Nickname"), max_length=100, required=False)
    gender = forms.ChoiceField(label=_("Gender"), choices=Gender.choices)
    birthday = forms.DateField(label=_("Birthday"), required=False, widget=date_input())
    phone = forms.CharField(label=_("Phone"), max_length=30, required=False)
    email = forms.EmailField(label=_("Email"), max_length=254, required=False)
    province = forms.CharField(label=_("Province"), max_length=30, required=False)
    city = forms.CharField(label=_("City"), max_length=30, required=False)
    lifecycle_stage = forms.ModelChoiceField(
        label=_("Lifecycle stage"),
        queryset=Stage.objects.filter(is_active=True),
        to_field_name="key",
        empty_label=None,
    )
    owner = forms.ModelChoiceField(
        label=_("Owner"), queryset=staff_users(), required=False, empty_label="—"
    )
    store = forms.ModelChoiceField(
        label=_("Store"), queryset=stores_active(), required=False, empty_label="—"
    )
    utm_source = forms.CharField(label=_("UTM source"), max_length=100, required=False)
    utm_medium = forms.CharField(label=_("UTM medium"), max_length=100, required=False)
    utm_campaign = forms.CharField(label=_("UTM campaign"), max_length=100, required=False)
    utm_content = forms.CharField(label=_("UTM content"), max_length=100, required=False)
    utm_term = forms.CharField(label=_("UTM term"), max_length=100, required=False)

    def __init__(
        self,
        *args,
        contact: Contact,
        personal_data: bool,
        user: AbstractBaseUser | None = None,
        **kwargs,
    ):
        self.contact = contact
        self.scope = store_staff_scope(user) if user is not None else None
        self.user = user
        initial = {
            name: getattr(contact, Contact._meta.get_field(name).attname) for name in PROFILE_FIELDS
        }
        self.custom_fields = list(contact_custom_fields())
        attributes = contact.attributes if isinstance(contact.attributes, dict) else {}
        for definition in self.custom_fields:
            initial[CUSTOM_PREFIX + definition.key] = attributes.get(definition.key)
        super().__init__(*args, initial=initial, **kwargs)
        # Stages, stores and users may have been deactivated since; keep the current value
        # selectable, or saving the form would silently move the contact elsewhere.
        if contact.lifecycle_stage_id:
            self.fields["lifecycle_stage"].queryset = Stage.objects.filter(
                Q(is_active=True) | Q(key=contact.lifecycle_stage_id)
            )
        stores = stores_active()
        owners = staff_users()
        if self.scope is not None:
            # Store staff hand contacts only within their store (clean() checks the result).
            own_store, colleagues = self.scope
            stores = stores.filter(pk=own_store)
            owners = colleagues
        if contact.store_id:
            stores = (stores | Store.objects.filter(pk=contact.store_id)).distinct()
        if contact.owner_id:
            owners = (owners | owners.model.objects.filter(pk=contact.owner_id)).distinct()
        self.fields["store"].queryset = stores
        self.fields["owner"].queryset = owners
        if not personal_data:
            for name in PERSONAL_FIELDS:
                del self.fields[name]
        for definition in self.custom_fields:
            self.fields[CUSTOM_PREFIX + definition.key] = _custom_form_field(definition)

    def clean(self):
        cleaned = super().clean()
        if self.scope is None or "owner" in self.errors or "store" in self.errors:
            return cleaned
        # The rule of contacts.selectors.contact_visible_to for store staff, applied to the
        # values about to be saved: a contact they neither own nor share a store with would
        # vanish from their reach the moment it is saved.
        own_store, _colleagues = self.scope
        owner, store = cleaned.get("owner"), cleaned.get("store")
        owned = owner is not None and owner.pk == self.user.pk
        in_store = store is not None and own_store is not None and store.pk == own_store
        if not (owned or in_store):
            raise forms.ValidationError(
                _(
                    "You would no longer see this customer: keep yourself as the owner or "
                    "keep the customer in your store."
                ),
                code="out_of_reach",
            )
        return cleaned

    @property
    def profile_fields(self) -> list[forms.BoundField]:
        return [self[name] for name in PROFILE_FIELDS if name in self.fields]

    @property
    def custom_bound_fields(self) -> list[forms.BoundField]:
        return [self[CUSTOM_PREFIX + d.key] for d in self.custom_fields]

    def changes(self) -> dict[str, Any]:
        """The changed values, keyed as contact_update expects (custom fields by their key).

        On a form with errors, those of the fields that passed the form's own checks: the
        service can still check them, so that every problem is shown at once."""
        data: dict[str, Any] = {}
        cleaned = getattr(self, "cleaned_data", {})
        for name in self.changed_data:
            if name not in cleaned:
                continue
            value = cleaned[name]
            if name.startswith(CUSTOM_PREFIX):
                data[name.removeprefix(CUSTOM_PREFIX)] = _plain(value)
            elif name in ("lifecycle_stage", "owner", "store"):
                data[name] = (
                    None
                    if value is None
                    else (value.key if name == "lifecycle_stage" else value.pk)
                )
            else:
                data[name] = value
        return data

    def add_service_error(self, field: str | None, message: str) -> None:
        """Show a service-side validation error next to the field it names."""
        if field and field in self.fields:
            self.add_error(field, message)
        elif field and CUSTOM_PREFIX + field in self.fields:
            self.add_error(CUSTOM_PREFIX + field, message)
        else:
            self.add_error(None, message)


def _plain(value: Any) -> Any:
    """Form values as JSON-friendly primitives for custom fields."""
    from decimal import Decimal

    if isinstance(value, Decimal):
        return int(value) if value == value.to_integral_value() else float(value)
    if hasattr(value, "isoformat"):
        return value.isoformat()
    return value


class NoteForm(forms.Form):
    body = forms.CharField(
        label=_("Note"),
        max_length=5000,
        widget=forms.Textarea(attrs={"rows": 3, "placeholder": _("What happened, what's next…")}),
    )
    follow_up_at = forms.DateTimeField(
        label=_("Follow up at"),
        required=False,
        widget=forms.DateTimeInput(attrs={"type": "datetime-local"}, format=DATETIME_LOCAL_FORMAT),
        input_formats=["%Y-%m-%dT%H:%M", "%Y-%m-%d %H:%M", "%Y-%m-%d %H:%M:%S"],
    )


class ConsentForm(forms.Form):
    channel = forms.ChoiceField(label=_("Channel"), choices=ConsentChannel.choices)
    purpose = forms.ChoiceField(label=_("Purpose"), choices=ConsentPurpose.choices)
    granted = forms.TypedChoiceField(
        label=_("Decision"),
        choices=[("1", _("Granted")), ("0", _("Withdrawn"))],
        coerce=lambda v: v == "1",
        widget=forms.RadioSelect,
        initial="1",
    )
    source = forms.CharField(
        label=_("Source"),
        max_length=50,
        # The label, not the stored code: the input is read and typed in the operator's language.
        initial=SOURCE_LABELS["operator"],
        help_text=_("Where the customer said so: in store, phone call, paper form …"),
    )
    notice_version = forms.CharField(label=_("Notice version"), max_length=30, required=False)
    evidence = forms.CharField(
        label=_("Evidence"),
        max_length=500,
        required=False,
        widget=forms.Textarea(attrs={"rows": 2}),
        help_text=_("For example the form number or what the customer said."),
    )

    def clean_source(self):
        return source_from_label(self.cleaned_data["source"])


class ContactSelectionForm(forms.Form):
    """Which contacts an action of the contact list applies to: the ticked rows, or all the
    contacts matching the list's filter (whose values travel in the same POST)."""

    SCOPE_SELECTED = "selected"
    SCOPE_ALL = "all"

    scope = forms.ChoiceField(
        label=_("Apply to"),
        choices=[
            (SCOPE_SELECTED, _("Selected contacts")),
            (SCOPE_ALL, _("All contacts matching the filter")),
        ],
        initial=SCOPE_SELECTED,
        widget=forms.RadioSelect,
    )
    ids = forms.TypedMultipleChoiceField(
        coerce=int,
        required=False,
        error_messages={"invalid_choice": _("“%(value)s” is not a contact id.")},
    )

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        # Any id that can exist is acceptable here; visibility is applied to the ids later.
        self.fields["ids"].valid_value = lambda value: parse_id(value) is not None

    def clean(self):
        cleaned = super().clean()
        if cleaned.get("scope") == self.SCOPE_SELECTED and not cleaned.get("ids"):
            raise forms.ValidationError(_("Select at least one contact, or apply to all."))
        return cleaned

    @property
    def selected_ids(self) -> list[int] | None:
        """The ticked ids of a valid form, or None when it applies to all matching the filter."""
        if self.cleaned_data["scope"] == self.SCOPE_SELECTED:
            return self.cleaned_data["ids"]
        return None

    def selection_errors(self) -> list[str]:
        """What is wrong with the selection, as messages for the list page."""
        return [
            *self.non_field_errors(),
            *self.errors.get("scope", []),
            *self.errors.get("ids", []),
        ]


class BulkTagForm(TagExpiryMixin, ContactSelectionForm):
    # Not "tag": the list filter of that name travels in the same POST.
    bulk_tag = forms.ModelChoiceField(
        label=_("Tag"), queryset=tags_grouped(), empty_label=_("Choose a tag…")
    )
    op = forms.ChoiceField(choices=[("add", _("Add tag")), ("remove", _("Remove tag"))])
    # After `op`: removing ignores the expiry, so clean_expires_at can look at the action.
    expires_at = _expires_at_field()

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self._expires_at_setup()

    def clean_expires_at(self):
        if self.cleaned_data.get("op") == "remove":
            return None  # untagging has no expiry; a stale value in the field is no error
        return super().clean_expires_at()
