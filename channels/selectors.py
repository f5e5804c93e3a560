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


def messages_sent_today(*, contacts: QuerySet[Contact] | None = None) -> int:
    """Messages sent since local midnight; only to `contacts` (those the user may see) when
    given."""
    start = timezone.make_aware(dt.datetime.combine(timezone.localdate(), dt.time.min))
    sent = Delivery.objects.filter(status=DeliveryStatus.SENT, sent_at__gte=start)
    return (sent if contacts is None else sent.filter(contact__in=contacts)).count()


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


@dataclass(frozen=True)
class DeliveryMergeRow:
    status: str
    label: str
    survivor: int
    duplicate: int

    @property
    def after(self) -> int:
        return self.survivor + self.duplicate


@dataclass(frozen=True)
class DeliveryMergePreview:
    rows: list[DeliveryMergeRow]

    @property
    def survivor_total(self) -> int:
        return sum(row.survivor for row in self.rows)

    @property
    def duplicate_total(self) -> int:
        return sum(row.duplicate for row in self.rows)

    @property
    def after_total(self) -> int:
        return self.survivor_total + self.duplicate_total

    @property
    def duplicate_waiting(self) -> int:
        """The duplicate's messages not sent yet, which will go out to the survivor."""
        waiting = (DeliveryStatus.PENDING, DeliveryStatus.SENDING)
        return sum(row.duplicate for row in self.rows if row.status in waiting)


def deliveries_merge_preview(*, survivor: Contact, duplicate: Contact) -> DeliveryMergePreview:
    """Both contacts' deliveries by status, and the survivor's after a merge (one query).

    Mirrors channels.services.deliveries_merge: every delivery of the duplicate, sent or still
    to send, moves to the survivor.
    """
    counts: dict[tuple[int, str], int] = {
        (row["contact_id"], row["status"]): row["n"]
        for row in Delivery.objects.filter(contact__in=[survivor.pk, duplicate.pk])
        .values("contact_id", "status")
        .annotate(n=Count("id"))
        .order_by()
    }
    rows = [
        DeliveryMergeRow(
            status=status,
            label=str(label),
            survivor=counts.get((survivor.pk, status), 0),
            duplicate=counts.get((duplicate.pk, status), 0),
        )
        for status, label in DeliveryStatus.choices
        if counts.get((survivor.pk, status)) or counts.get((duplicate.pk, status))
    ]
    return DeliveryMergePreview(rows=rows)
