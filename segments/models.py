from django.db import models
from django.utils import timezone
from django.utils.translation import gettext_lazy as _

from contacts.models import Contact
from core.models import TimeStampedModel


class Segment(TimeStampedModel):
    """A rule-defined audience whose membership is materialised with entry times."""

    name = models.CharField(_("name"), max_length=100, unique=True)
    description = models.TextField(_("description"), blank=True)
    rule = models.JSONField(_("rule"), default=dict)
    is_archived = models.BooleanField(_("archived"), default=False)
    member_count = models.PositiveIntegerField(_("members"), default=0, editable=False)
    last_refreshed_at = models.DateTimeField(
        _("last refreshed at"), null=True, blank=True, editable=False
    )

    class Meta:
        verbose_name = _("segment")
        verbose_name_plural = _("segments")
        ordering = ["name"]

    def __str__(self) -> str:
        return self.name


class SegmentMembership(models.Model):
    segment = models.ForeignKey(Segment, on_delete=models.CASCADE, related_name="memberships")
    contact = models.ForeignKey(
        Contact, on_delete=models.CASCADE, related_name="segment_memberships"
    )
    entered_at = models.DateTimeField(_("entered at"), default=timezone.now)

    class Meta:
        verbose_name = _("segment membership")
        verbose_name_plural = _("segment memberships")
        constraints = [
            models.UniqueConstraint(fields=["segment", "contact"], name="segment_member_unique")
        ]
        indexes = [models.Index(fields=["contact"], name="segment_member_contact")]

    def __str__(self) -> str:
        return f"{self.segment_id}:{self.contact_id}"
