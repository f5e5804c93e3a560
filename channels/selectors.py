import datetime as dt

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


def delivery_list() -> QuerySet[Delivery]:
    return Delivery.objects.select_related("channel", "contact")
