from django.db import models
from django.utils import timezone
from django.utils.translation import gettext_lazy as _

from contacts.models import Contact, Event


class Tier(models.Model):
    """A membership level reached by growth value (成长值), which is earned and never spent."""

    name = models.CharField(_("name"), max_length=50, unique=True)
    code = models.SlugField(_("code"), max_length=30, unique=True)
    rank = models.PositiveSmallIntegerField(_("rank"), unique=True)
    min_growth = models.PositiveIntegerField(_("minimum growth value"), default=0)
    color = models.CharField(_("colour"), max_length=7, default="#94a3b8")

    class Meta:
        verbose_name = _("tier")
        verbose_name_plural = _("tiers")
        ordering = ["rank"]

    def __str__(self) -> str:
        return self.name


class Member(models.Model):
    contact = models.OneToOneField(
        Contact, verbose_name=_("contact"), on_delete=models.CASCADE, related_name="member"
    )
    tier = models.ForeignKey(
        Tier, verbose_name=_("tier"), on_delete=models.PROTECT, related_name="members"
    )
    points_balance = models.IntegerField(_("points balance"), default=0)
    growth_value = models.PositiveIntegerField(_("growth value"), default=0)
    joined_at = models.DateTimeField(_("member since"), default=timezone.now)

    class Meta:
        verbose_name = _("member")
        verbose_name_plural = _("members")
        constraints = [
            # The wallet can never be overdrawn, whatever the code above it does.
            models.CheckConstraint(
                condition=models.Q(points_balance__gte=0), name="member_points_not_negative"
            )
        ]

    def __str__(self) -> str:
        return f"{self.contact} · {self.tier}"


class PointsEntry(models.Model):
    """One line of the points ledger; the balance on Member is the running sum of these."""

    class Reason(models.TextChoices):
        PURCHASE = "purchase", _("Purchase")
        ADJUSTMENT = "adjustment", _("Manual adjustment")
        REDEMPTION = "redemption", _("Redemption")
        EXPIRY = "expiry", _("Expiry")

    member = models.ForeignKey(
        Member, verbose_name=_("member"), on_delete=models.CASCADE, related_name="points_entries"
    )
    delta = models.IntegerField(_("points"))
    balance_after = models.IntegerField(_("balance after"))
    reason = models.CharField(_("reason"), max_length=20, choices=Reason.choices)
    # What caused the entry (e.g. "event:<event_id>"), unique so a replay never pays twice.
    idempotency_key = models.CharField(_("idempotency key"), max_length=100, unique=True)
    source_event = models.ForeignKey(
        Event, null=True, blank=True, on_delete=models.SET_NULL, related_name="+"
    )
    note = models.CharField(_("note"), max_length=200, blank=True)
    created_at = models.DateTimeField(_("created at"), default=timezone.now)

    class Meta:
        verbose_name = _("points entry")
        verbose_name_plural = _("points entries")
        indexes = [models.Index(fields=["member", "-created_at"], name="points_member_time")]

    def __str__(self) -> str:
        return f"{self.delta:+d} → {self.balance_after}"
