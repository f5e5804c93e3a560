import datetime as dt

import django_filters
from django import forms
from django.contrib.auth.models import AbstractBaseUser
from django.db.models import QuerySet
from django.utils import timezone
from django.utils.translation import gettext
from django.utils.translation import gettext_lazy as _
from django_filters.fields import ModelChoiceField, ModelMultipleChoiceField

from contacts.forms import date_input, store_staff_scope
from contacts.labels import source_from_label
from contacts.models import Contact, ContactTag, Stage
from contacts.pii import can_view_personal_data
from contacts.selectors import contact_search, staff_users, stores_active, tags_grouped
from core.errors import ValidationFailed
from core.ids import parse_id


def _start_of_day(day: dt.date) -> dt.datetime | None:
    """Local midnight of `day`; None on the calendar's first day, whose midnight east of UTC
    has no UTC equivalent (the database compares in UTC), so a bound there excludes nothing."""
    start = timezone.make_aware(dt.datetime.combine(day, dt.time.min))
    try:
        start.astimezone(dt.UTC)
    except OverflowError:
        return None
    return start


class _IdsField(ModelMultipleChoiceField):
    """Choices by id: an id no row can have is refused before the query, where it would fail
    (SQLite cannot bind an integer beyond 64 bits)."""

    def _check_values(self, value):
        for pk in value if isinstance(value, list | tuple) else []:
            if parse_id(pk) is None:
                raise forms.ValidationError(
                    self.error_messages["invalid_pk_value"],
                    code="invalid_pk_value",
                    params={"pk": pk},
                )
        return super()._check_values(value)


class _TagsFilter(django_filters.ModelMultipleChoiceFilter):
    field_class = _IdsField


class _StageField(ModelChoiceField):
    def label_from_instance(self, obj: Stage) -> str:
        if obj.is_active:
            return obj.name
        return gettext("%(name)s (retired)") % {"name": obj.name}


class _StageFilter(django_filters.ModelChoiceFilter):
    """Every stage, the retired ones last and marked: contacts keep a stage when it is retired,
    and the list must still find them."""

    field_class = _StageField


class ContactFilter(django_filters.FilterSet):
    """The contact list's filters; also what "all matching" bulk actions re-evaluate."""

    q = django_filters.CharFilter(
        label=_("Search"),
        method="filter_search",
        widget=forms.TextInput(attrs={"placeholder": _("Name, phone or email"), "type": "search"}),
    )
    tag = _TagsFilter(
        label=_("Tags"),
        queryset=lambda request: tags_grouped(),
        method="filter_tags",
        widget=forms.CheckboxSelectMultiple,
        help_text=_("Contacts with any of these tags."),
    )
    source = django_filters.CharFilter(
        label=_("Source"),
        method="filter_source",
        # The list shows a source by its label (导入, API …): typing what is shown must find it.
        widget=forms.TextInput(attrs={"list": "contact-sources"}),
    )
    lifecycle_stage = _StageFilter(
        label=_("Lifecycle stage"),
        queryset=Stage.objects.order_by("-is_active", "position", "key"),
        to_field_name="key",
        empty_label=_("All stages"),
    )
    owner = django_filters.ModelChoiceFilter(
        label=_("Owner"),
        queryset=lambda request: staff_users(),
        empty_label=_("Any owner"),
    )
    store = django_filters.ModelChoiceFilter(
        label=_("Store"),
        queryset=lambda request: stores_active(),
        empty_label=_("All stores"),
    )
    city = django_filters.CharFilter(label=_("City"), field_name="city")
    created_from = django_filters.DateFilter(
        label=_("Created from"),
        method="filter_created_from",
        widget=date_input(),
    )
    created_to = django_filters.DateFilter(
        label=_("Created to"),
        method="filter_created_to",
        widget=date_input(),
    )

    class Meta:
        model = Contact
        fields = [
            "q",
            "tag",
            "source",
            "lifecycle_stage",
            "owner",
            "store",
            "city",
            "created_from",
            "created_to",
        ]

    def __init__(self, *args, user: AbstractBaseUser | None = None, **kwargs) -> None:
        # Whose search this is: without the personal-data permission, phones and emails match
        # only as far as their masked form shows (contact_search).
        self.user = user
        super().__init__(*args, **kwargs)
        scope = store_staff_scope(user) if user is not None else None
        if scope is not None:
            # Store staff pick among the owners of their own store, as on the edit form.
            self.filters["owner"].queryset = scope[1]

    def filter_search(self, queryset: QuerySet[Contact], name: str, value: str):
        personal = self.user is None or can_view_personal_data(self.user)
        return contact_search(qs=queryset, query=value, personal=personal)

    def filter_source(self, queryset: QuerySet[Contact], name: str, value: str):
        value = value.strip()
        if not value:
            return queryset
        return queryset.filter(source__in={value, source_from_label(value)})

    def filter_tags(self, queryset: QuerySet[Contact], name: str, value):
        if not value:
            return queryset
        # A subquery, not a join: a contact with two of the tags must appear once.
        tagged = ContactTag.objects.filter(tag__in=value).values("contact_id")
        return queryset.filter(pk__in=tagged)

    def filter_created_from(self, queryset: QuerySet[Contact], name: str, value: dt.date):
        start = _start_of_day(value)
        return queryset if start is None else queryset.filter(created_at__gte=start)

    def filter_created_to(self, queryset: QuerySet[Contact], name: str, value: dt.date):
        # Inclusive of the whole "to" day in the local time zone; the calendar's last day has no
        # next day, and bounds nothing.
        if value >= dt.date.max:
            return queryset
        return queryset.filter(created_at__lt=_start_of_day(value + dt.timedelta(days=1)))


def contact_filter_checked(
    *, data, queryset: QuerySet[Contact] | None = None, user: AbstractBaseUser | None = None
) -> ContactFilter:
    """The list filter of `data`, refusing it when a value is invalid.

    The list shows every contact when a filter is invalid (with a warning); an action on "all
    matching" contacts must not widen to everyone like that, so it asks here first.
    """
    filters = ContactFilter(
        data, queryset=Contact.objects.none() if queryset is None else queryset, user=user
    )
    if not filters.is_valid():
        fields = filters.form.fields
        errors = "; ".join(
            f"{fields[name].label if name in fields else name}: {' '.join(messages)}"
            for name, messages in filters.errors.items()
        )
        raise ValidationFailed(
            gettext("Some filters are invalid: %(errors)s") % {"errors": errors},
            code="invalid_filter",
            details={"fields": sorted(filters.errors)},
        )
    return filters
