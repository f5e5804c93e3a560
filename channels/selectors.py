import datetime as dt
from dataclasses import dataclass, field

from django.db.models import Count, QuerySet
from django.utils import timezone

from channels.models import Channel, Delivery, DeliveryStatus
from contacts.models import Contact


def channel_list() -> QuerySet[Channel]:
    return Channel.objects.annotate(delivery_count=Count("deliveries"))


def deliveries_for_contact(*, contact: Contact, limit: int = 20) -> list[Delivery]:
    return list(
        Delivery.objects.filter(contact=contact).select_related("channel").order_by("-pk")[:limit]
    )


def messages_sent_today() -> int:
    start = timezone.make_aware(dt.datetime.combine(timezone.localdate(), dt.time.min))
    return Delivery.objects.filter(status=DeliveryStatus.SENT, sent_at__gte=start).count()


def delivery_list(*, contacts: QuerySet[Contact] | None = None) -> QuerySet[Delivery]:
    """Deliveries with their channel and contact; only to `contacts` (those the user may see)
    when given."""
    qs = Delivery.objects.select_related("channel", "contact")
    return qs.filter(contact__in=contacts) if contacts is not None else qs


@dataclass
class ChannelOverview:
    channel: Channel
    # Deliveries due in the window, by status; the window keeps this count bounded.
    counts: dict[str, int] = field(default_factory=dict)

    @property
    def total(self) -> int:
        return sum(self.counts.values())


def channel_overview(*, days: int = 7) -> list[ChannelOverview]:
    """Every channel with its delivery counts by status over the last `days` days."""
    since = timezone.now() - dt.timedelta(days=days)
    rows = (
        Delivery.objects.filter(send_at__gte=since)
        .values("channel_id", "status")
        .annotate(n=Count("id"))
        .order_by()
    )
    counts: dict[int, dict[str, int]] = {}
    for row in rows:
        counts.setdefault(row["channel_id"], {})[row["status"]] = row["n"]
    return [
        ChannelOverview(channel=channel, counts=counts.get(channel.pk, {}))
        for channel in Channel.objects.order_by("name")
    ]
