import contextlib
import datetime as dt
import logging
from typing import Any

from django.conf import settings
from django.db import IntegrityError, transaction
from django.db.models import F
from django.utils import timezone

from channels.adapters import ADAPTERS, OutboundMessage, adapter_for
from channels.models import Channel, Delivery, DeliveryStatus
from contacts.models import Contact, MergeRecord
from contacts.services import event_record
from contacts.services.locking import contact_lock_survivor
from core.errors import ValidationFailed

logger = logging.getLogger(__name__)

# Claiming 50 rows per transaction keeps lock time short while amortising the claim query.
CLAIM_BATCH = 50
MAX_ATTEMPTS = 5
BACKOFF_SECONDS = (30, 120, 600, 1800)


def channel_create(*, name: str, kind: str, config: dict[str, Any]) -> Channel:
    """Create a channel after its adapter has accepted the configuration."""
    if kind not in ADAPTERS:
        raise ValidationFailed(f"Unknown channel kind '{kind}'.", code="invalid_kind")
    ADAPTERS[kind].validate_config(config)
    return Channel.objects.create(name=name, kind=kind, config=config)


def delivery_plan(
    *,
    idempotency_key: str,
    contact: Contact,
    channel: Channel,
    payload: dict[str, Any],
    send_at: dt.datetime | None = None,
    realtime: bool = False,
) -> tuple[Delivery, bool]:
    """Plan one message; planning the same key twice returns the first row (created=False).

    `realtime` also wakes the realtime queue after commit instead of waiting for the next tick.
    """
    existing = Delivery.objects.filter(idempotency_key=idempotency_key).first()
    if existing:
        return existing, False
    try:
        with transaction.atomic():
            delivery = Delivery.objects.create(
                idempotency_key=idempotency_key,
                contact=contact,
                channel=channel,
                payload=payload,
                send_at=send_at or timezone.now(),
            )
    except IntegrityError:
        return Delivery.objects.get(idempotency_key=idempotency_key), False
    if realtime:
        from channels.tasks import send_realtime

        transaction.on_commit(lambda: send_realtime.delay(delivery.pk))
    return delivery, True


def deliveries_claim_due(*, limit: int = CLAIM_BATCH) -> list[int]:
    """Move due pending rows to *sending* under a lease; concurrent claimers never share a row."""
    now = timezone.now()
    lease = now + dt.timedelta(seconds=settings.DELIVERY_LEASE_SECONDS)
    with transaction.atomic():
        ids = list(
            Delivery.objects.select_for_update(skip_locked=True)
            .filter(status=DeliveryStatus.PENDING, send_at__lte=now)
            .order_by("send_at", "pk")
            .values_list("pk", flat=True)[:limit]
        )
        if not ids:
            return []
        # The status guard makes the claim safe even where row locks do not exist (SQLite).
        Delivery.objects.filter(pk__in=ids, status=DeliveryStatus.PENDING).update(
            status=DeliveryStatus.SENDING, lease_until=lease, attempts=F("attempts") + 1
        )
    return ids


def _recipient(contact: Contact) -> dict[str, Any]:
    identities = {
        (i.kind if not i.app_id else f"{i.kind}:{i.app_id}"): i.value
        for i in contact.identities.all()
    }
    return {"name": contact.display_name, "phone": contact.phone, "identities": identities}


def delivery_send_now(*, delivery_id: int) -> Delivery | None:
    """Claim one due pending row and send it at once (welcome messages, one-time codes)."""
    now = timezone.now()
    lease = now + dt.timedelta(seconds=settings.DELIVERY_LEASE_SECONDS)
    claimed = Delivery.objects.filter(
        pk=delivery_id, status=DeliveryStatus.PENDING, send_at__lte=now
    ).update(status=DeliveryStatus.SENDING, lease_until=lease, attempts=F("attempts") + 1)
    if not claimed:
        return None  # already taken by the sweeper or another worker, or not due yet
    return delivery_send(delivery_id=delivery_id)


def delivery_send(*, delivery_id: int) -> Delivery | None:
    """Send one claimed delivery through its adapter and record the outcome on the row; None
    when the row is gone (its contact was erased after the claim)."""
    delivery = Delivery.objects.select_related("channel", "contact").filter(pk=delivery_id).first()
    if delivery is None:
        return None
    if delivery.status != DeliveryStatus.SENDING:
        return delivery
    channel = delivery.channel
    if not channel.is_active:
        return _finish(delivery, DeliveryStatus.SKIPPED, error_code="channel_inactive")
    adapter = adapter_for(channel.kind, channel.config)
    message = OutboundMessage(
        delivery_id=delivery.pk,
        idempotency_key=delivery.idempotency_key,
        contact_id=delivery.contact_id,
        recipient=_recipient(delivery.contact),
        payload=delivery.payload,
    )
    # The provider is called outside any transaction: a slow provider never holds row locks.
    result = adapter.send(message)
    if result.ok:
        return _finish(
            delivery, DeliveryStatus.SENT, provider_message_id=result.provider_message_id
        )
    if result.retryable and delivery.attempts < MAX_ATTEMPTS:
        backoff = BACKOFF_SECONDS[min(delivery.attempts, len(BACKOFF_SECONDS)) - 1]
        Delivery.objects.filter(pk=delivery.pk, status=DeliveryStatus.SENDING).update(
            status=DeliveryStatus.PENDING,
            send_at=timezone.now() + dt.timedelta(seconds=backoff),
            lease_until=None,
            error_code=result.error_code,
            error_message=result.error_message[:500],
        )
        return _reload(delivery)
    return _finish(
        delivery,
        DeliveryStatus.FAILED,
        error_code=result.error_code,
        error_message=result.error_message,
    )


@transaction.atomic
def _finish(
    delivery: Delivery,
    status: str,
    *,
    provider_message_id: str = "",
    error_code: str = "",
    error_message: str = "",
) -> Delivery:
    now = timezone.now()
    recorded = status in (DeliveryStatus.SENT, DeliveryStatus.FAILED)
    if recorded:
        # The contact before the row, as an erasure locks them: the event's foreign-key check
        # at commit would otherwise wait for an erasure that waits for this row, a deadlock.
        try:
            contact_lock_survivor(contact=delivery.contact, lock="key_share")
        except Contact.DoesNotExist:
            # Erased while the message was out: the row went with the person, and nothing
            # about them may be written again.
            return delivery
    updated = Delivery.objects.filter(pk=delivery.pk, status=DeliveryStatus.SENDING).update(
        status=status,
        provider_message_id=provider_message_id,
        error_code=error_code,
        error_message=error_message[:500],
        lease_until=None,
        sent_at=now if status == DeliveryStatus.SENT else None,
    )
    _reload(delivery)
    if updated and recorded:
        event_record(
            contact=delivery.contact,
            name="message_sent" if status == DeliveryStatus.SENT else "message_failed",
            properties={
                "delivery_id": delivery.pk,
                "channel": delivery.channel.name,
                "title": str(delivery.payload.get("title", ""))[:100],
                "body": str(delivery.payload.get("body", ""))[:500],
                "error_code": error_code,
            },
            occurred_at=now,
            source=delivery.channel.kind,
            event_id=f"delivery:{delivery.pk}:{status}",
        )
    return delivery


def _reload(delivery: Delivery) -> Delivery:
    # A row deleted meanwhile (its contact erased) leaves the caller the copy it had.
    with contextlib.suppress(Delivery.DoesNotExist):
        delivery.refresh_from_db()
    return delivery


def deliveries_dispatch_due(*, max_batches: int = 20) -> int:
    """Claim and send due deliveries in batches; return how many were attempted."""
    done = 0
    for _ in range(max_batches):
        ids = deliveries_claim_due()
        if not ids:
            break
        for delivery_id in ids:
            try:
                delivery_send(delivery_id=delivery_id)
            except Exception:
                # One broken row must not strand the rest of the batch; its lease will expire.
                logger.exception("delivery %s failed unexpectedly", delivery_id)
            done += 1
    return done


def deliveries_recover_expired() -> int:
    """Handle rows whose worker died mid-send: re-queue if the provider dedupes, else flag."""
    now = timezone.now()
    recovered = 0
    stale = Delivery.objects.filter(status=DeliveryStatus.SENDING, lease_until__lt=now)
    for delivery in stale.select_related("channel"):
        adapter_cls = ADAPTERS.get(delivery.channel.kind)
        if adapter_cls and adapter_cls.supports_idempotency:
            new_status, code = DeliveryStatus.PENDING, "lease_expired_retry"
        else:
            new_status, code = DeliveryStatus.UNKNOWN, "lease_expired"
        recovered += Delivery.objects.filter(
            pk=delivery.pk, status=DeliveryStatus.SENDING, lease_until__lt=now
        ).update(status=new_status, lease_until=None, error_code=code)
    return recovered


@transaction.atomic
def deliveries_merge(*, record: MergeRecord, survivor: Contact, duplicate: Contact) -> None:
    """Move the duplicate's deliveries (history and pending sends) to the survivor."""
    ids = list(
        Delivery.objects.filter(contact=duplicate).order_by("pk").values_list("pk", flat=True)
    )
    Delivery.objects.filter(pk__in=ids).update(contact=survivor)
    record.moved["channels.delivery"] = ids
    record.save(update_fields=["moved"])


@transaction.atomic
def deliveries_unmerge(*, record: MergeRecord, survivor: Contact, duplicate: Contact) -> None:
    """Give the duplicate back the deliveries deliveries_merge moved."""
    Delivery.objects.filter(pk__in=record.moved.get("channels.delivery", [])).update(
        contact=duplicate
    )
