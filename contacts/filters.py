import datetime as dt

import django_filters
from django import forms
from django.db.models import QuerySet
from django.utils import timezone
from django.utils.translation import gettext_lazy as _

from contacts.models import Contact, ContactTag, Stage
from contacts.selectors import contact_search, staff_users, stores_active, tags_grouped


def _start_of_day(day: dt.date) -> dt.datetime:
    return timezone.make_aware(dt.datetime.combine(day, dt.time.min))


class ContactFilter(django_filters.FilterSet):
    """The contact list's filters; also what "all matching" bulk actions re-evaluate."""

    q = django_filters.CharFilter(
        label=_("Search"),
        method="filter_search",
        widget=forms.TextInput(attrs={"placeholder": _("Name, phone or email"), "type": "search"}),
    )
    tag = django_filters.ModelMultipleChoiceFilter(
        label=_("Tags"),
        queryset=lambda request: tags_grouped(),
        method="filter_tags",
        widget=forms.CheckboxSelectMultiple,
        help_text=_("Contacts with any of these tags."),
    )
    source = django_filters.CharFilter(label=_("Source"), field_name="source")
    lifecycle_stage = django_filters.ModelChoiceFilter(
        label=_("Lifecycle stage"),
        queryset=Stage.objects.filter(is_active=True),
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
        widget=forms.DateInput(attrs={"type": "date"}),
    )
    created_to = django_filters.DateFilter(
        label=_("Created to"),
        method="filter_created_to",
        widget=forms.DateInput(attrs={"type": "date"}),
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

    def filter_search(self, queryset: QuerySet[Contact], name: str, value: str):
        return contact_search(qs=queryset, query=value)

    def filter_tags(self, queryset: QuerySet[Contact], name: str, value):
        if not value:
            return queryset
        # A subquery, not a join: a contact with two of the tags must appear once.
        tagged = ContactTag.objects.filter(tag__in=value).values("contact_id")
        return queryset.filter(pk__in=tagged)

    def filter_created_from(self, queryset: QuerySet[Contact], name: str, value: dt.date):
        return queryset.filter(created_at__gte=_start_of_day(value))

    def filter_created_to(self, queryset: QuerySet[Contact], name: str, value: dt.date):
        # Inclusive of the whole "to" day in the local time zone.
        return queryset.filter(created_at__lt=_start_of_day(value + dt.timedelta(days=1)))
