from django.db import models
from django.utils import timezone
from django.utils.translation import gettext_lazy as _

from channels.models import Channel
from contacts.models import Contact
from core.models import TimeStampedModel
from segments.models import Segment


class JourneyStatus(models.TextChoices):
    DRAFT = "draft", _("Draft")
    LIVE = "live", _("Live")
    PAUSED = "paused", _("Paused")
    ARCHIVED = "archived", _("Archived")


class Journey(TimeStampedModel):
    """Lifecycle automation: contacts entering a segment walk through ordered steps."""

    name = models.CharField(_("name"), max_length=100, unique=True)
    description = models.TextField(_("description"), blank=True)
    status = models.CharField(
        _("status"), max_length=10, choices=JourneyStatus.choices, default=JourneyStatus.DRAFT
    )
    trigger_segment = models.ForeignKey(
        Segment,
        verbose_name=_("trigger segment"),
        on_delete=models.PROTECT,
        related_name="journeys",
        help_text=_("Contacts are enrolled when they enter this segment."),
    )
    allow_reentry = models.BooleanField(
        _("allow re-entry"),
        default=False,
        help_text=_("Enrol a contact again when they re-enter after finishing."),
    )

    class Meta:
        verbose_name = _("journey")
        verbose_name_plural = _("journeys")
        ordering = ["name"]

    def __str__(self) -> str:
        return self.name


class StepKind(models.TextChoices):
    WAIT = "wait", _("Wait")
    SEND = "send", _("Send message")


class JourneyStep(models.Model):
    journey = models.ForeignKey(Journey, on_delete=models.CASCADE, related_name="steps")
    position = models.PositiveSmallIntegerField(_("position"))
    kind = models.CharField(_("kind"), max_length=10, choices=StepKind.choices)
    wait_seconds = models.PositiveIntegerField(_("wait (seconds)"), default=0)
    channel = models.ForeignKey(
        Channel, null=True, blank=True, on_delete=models.PROTECT, related_name="journey_steps"
    )
    title = models.CharField(_("title"), max_length=100, blank=True)
    body = models.TextField(_("message"), blank=True)

    class Meta:
        verbose_name = _("journey step")
        verbose_name_plural = _("journey steps")
        ordering = ["journey", "position"]
        constraints = [
            models.UniqueConstraint(fields=["journey", "position"], name="journey_step_position"),
            models.CheckConstraint(
                condition=~models.Q(kind="send") | models.Q(channel__isnull=False),
                name="journey_send_step_has_channel",
            ),
        ]

    def __str__(self) -> str:
        return f"{self.journey_id}#{self.position} {self.kind}"


class EnrollmentStatus(models.TextChoices):
    ACTIVE = "active", _("Active")
    COMPLETED = "completed", _("Completed")
    EXITED = "exited", _("Exited")


class Enrollment(models.Model):
    journey = models.ForeignKey(Journey, on_delete=models.CASCADE, related_name="enrollments")
    contact = models.ForeignKey(
        Contact, on_delete=models.CASCADE, related_name="journey_enrollments"
    )
    # 1 for the first pass through the journey, 2 for a re-entry, …
    occurrence = models.PositiveSmallIntegerField(_("occurrence"), default=1)
    status = models.CharField(
        _("status"),
        max_length=10,
        choices=EnrollmentStatus.choices,
        default=EnrollmentStatus.ACTIVE,
    )
    # Position of the next step to run.
    step_position = models.PositiveSmallIntegerField(_("next step"), default=0)
    next_run_at = models.DateTimeField(_("next run at"), null=True, blank=True)
    enrolled_at = models.DateTimeField(_("enrolled at"), default=timezone.now)
    finished_at = models.DateTimeField(_("finished at"), null=True, blank=True)

    class Meta:
        verbose_name = _("enrollment")
        verbose_name_plural = _("enrollments")
        constraints = [
            models.UniqueConstraint(
                fields=["journey", "contact", "occurrence"], name="enrollment_unique_occurrence"
            ),
        ]
        indexes = [models.Index(fields=["status", "next_run_at"], name="enrollment_due")]

    def __str__(self) -> str:
        return f"{self.journey_id}:{self.contact_id}#{self.occurrence}"
