import django_filters
from django.utils.translation import gettext_lazy as _

from channels.models import Channel, Delivery, DeliveryStatus


class DeliveryFilter(django_filters.FilterSet):
    status = django_filters.ChoiceFilter(
        label=_("Status"), choices=DeliveryStatus.choices, empty_label=_("All statuses")
    )
    channel = django_filters.ModelChoiceFilter(
        label=_("Channel"), queryset=Channel.objects.all(), empty_label=_("All channels")
    )

    class Meta:
        model = Delivery
        fields = ["status", "channel"]
