import django_filters
from django.utils.translation import gettext_lazy as _

from membership.models import Member, Tier


class MemberFilter(django_filters.FilterSet):
    tier = django_filters.ModelChoiceFilter(
        label=_("Tier"), queryset=Tier.objects.all(), empty_label=_("All tiers")
    )

    class Meta:
        model = Member
        fields = ["tier"]
