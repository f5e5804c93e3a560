from django.db import models
from django.utils import timezone
from django.utils.translation import gettext_lazy as _

from contacts.models import Contact
from core.models import TimeStampedModel


class ChannelKind(models.TextChoices):
    CONSOLE = "console", _("Console (log only)")
    WEBHOOK = "webhook", _("Webhook (HMAC-signed POST)")


class Channel(TimeStampedModel):
    """A configured way to reach contacts, backed by one adapter."""

    name = models.CharField(_("name"), max_length=100, unique=True)
    kind = models.CharField(_("kind"), max_length=20, choices=ChannelKind.choices)
    # Adapter settings, e.g. {"url": ..., "secret": ...} for a webhook.
    config = models.JSONField(_("configuration"), default=dict, blank=True)
    is_active = models.BooleanField(_("active"), default=True)

    class Meta:
        verbose_name = _("channel")
        verbose_name_plural = _("channels")
        ordering = ["name"]

    def __str__(self) -> str:
        return self.name


class DeliveryStatus(models.TextChoices):
    PENDING = "pending", _("Pending")
    SENDING = "sending", _("Sending")
    SENT = "sent", _("Sent")
    FAILED = "failed", _("Failed")
    SKIPPED = "skipped", _("Skipped")
    UNKNOWN = "unknown", _("Unknown (needs review)")


class Delivery(models.Model):
    """One touchpoint: one message to one contact on one channel, planned once."""

    # Who planned it and for which occurrence, e.g. "journey:3:step:2:enrollment:41".
    idempotency_key = models.CharField(_("idempotency key"), max_length=200, unique=True)
    contact = models.ForeignKey(
        Contact, verbose_name=_("contact"), on_delete=models.CASCADE, related_name="deliveries"
    )
    channel = models.ForeignKey(
        Channel, verbose_name=_("channel"), on_delete=models.PROTECT, related_name="deliveries"
    )
    payload = models.JSONField(_("message"), default=dict)
    status = models.CharField(
        _("status"), max_length=10, choices=DeliveryStatus.choices, default=DeliveryStatus.PENDING
    )
    send_at = models.DateTimeField(_("send at"), default=timezone.now)
    lease_until = models.DateTimeField(_("lease until"), null=True, blank=True)
    attempts = models.PositiveSmallIntegerField(_("attempts"), default=0)
    provider_message_id = models.CharField(_("provider message id"), max_length=200, blank=True)
    error_code = models.CharField(_("error code"), max_length=50, blank=True)
    error_message = models.CharField(_("error message"), max_length=500, blank=True)
    created_at = models.DateTimeField(_("created at"), default=timezone.now)
    sent_at = models.DateTimeField(_("sent at"), null=True, blank=True)

    class Meta:
        verbose_name = _("delivery")
        verbose_name_plural = _("deliveries")
        indexes = [
            # The sweeper's scan: due pending rows, oldest first.
            models.Index(fields=["status", "send_at"], name="delivery_due"),
            models.Index(fields=["contact", "-created_at"], name="delivery_contact_time"),
        ]

    def __str__(self) -> str:
        return f"{self.channel} → {self.contact_id} ({self.status})"
