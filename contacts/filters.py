import django_filters
from django import forms
from django.db.models import QuerySet
from django.utils.translation import gettext_lazy as _

from contacts.models import Contact, Stage
from contacts.selectors import contact_search, tags_grouped


class ContactFilter(django_filters.FilterSet):
    q = django_filters.CharFilter(
        label=_("Search"),
        method="filter_search",
        widget=forms.TextInput(attrs={"placeholder": _("Name, phone or email"), "type": "search"}),
    )
    tag = django_filters.ModelChoiceFilter(
        label=_("Tag"),
        field_name="contact_tags__tag",
        queryset=lambda request: tags_grouped(),
        empty_label=_("All tags"),
    )
    city = django_filters.CharFilter(label=_("City"), field_name="city")
    lifecycle_stage = django_filters.ModelChoiceFilter(
        label=_("Lifecycle stage"),
        queryset=Stage.objects.filter(is_active=True),
        to_field_name="key",
        empty_label=_("All stages"),
    )
    source = django_filters.CharFilter(label=_("Source"), field_name="source")

    class Meta:
        model = Contact
        fields = ["q", "tag", "city", "lifecycle_stage", "source"]

    def filter_search(self, queryset: QuerySet[Contact], name: str, value: str):
        return contact_search(qs=queryset, query=value)
