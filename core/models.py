import hashlib
import secrets

from django.conf import settings
from django.core.exceptions import ValidationError
from django.db import models
from django.utils import timezone
from django.utils.translation import gettext_lazy as _


class TimeStampedModel(models.Model):
    created_at = models.DateTimeField(_("created at"), default=timezone.now, editable=False)
    updated_at = models.DateTimeField(_("updated at"), auto_now=True)

    class Meta:
        abstract = True


KEY_PREFIX_LEN = 8


def hash_api_key(raw: str) -> str:
    # Keys are 256-bit random tokens, so a plain SHA-256 is enough (no brute-force surface).
    return hashlib.sha256(raw.encode()).hexdigest()


# What the period of a throttle rate may be, by its first letter, as DRF's throttle reads it.
RATE_PERIODS = {"s": 1, "m": 60, "h": 3600, "d": 86400}


def throttle_rate_parse(rate: str) -> tuple[int, int]:
    """The (requests, seconds) of a rate such as 600/minute, read exactly as DRF's
    SimpleRateThrottle.parse_rate reads it: a whole number, one slash, and a period named by its
    first letter (`s`, `m`, `h`, `d`: `20/second`, `600/min`, `1000/hour`). ValueError if not.

    The API throttle parses with this function (core.api.ApiKeyRateThrottle.parse_rate), so what
    validate_throttle_rate accepts is what the throttle can apply."""
    parts = rate.split("/")
    if len(parts) != 2 or not parts[1] or parts[1][0] not in RATE_PERIODS:
        raise ValueError(rate)
    return int(parts[0]), RATE_PERIODS[parts[1][0]]


def validate_throttle_rate(value: str) -> None:
    """Refuse a per-key rate the throttle could not apply (every request of the key would fail
    with a 500) or that allows no request at all (every request would answer 429)."""
    try:
        count, _seconds = throttle_rate_parse(value)
    except ValueError:
        count = 0
    if count < 1:
        raise ValidationError(
            _(
                "“%(value)s” is not a throttle rate: write a number of requests of at least 1, "
                "a slash and second, minute, hour or day, such as 600/minute or 20/second."
            ),
            code="invalid_rate",
            params={"value": value},
        )


class ApiKey(models.Model):
    """A server-to-server credential; only its hash is stored, the raw key is shown once."""

    name = models.CharField(_("name"), max_length=100)
    prefix = models.CharField(_("prefix"), max_length=KEY_PREFIX_LEN, db_index=True, editable=False)
    hashed_key = models.CharField(max_length=64, unique=True, editable=False)
    throttle_rate = models.CharField(
        _("throttle rate"),
        max_length=30,
        blank=True,
        validators=[validate_throttle_rate],
        help_text=_("For example 600/minute. Empty uses the site default."),
    )
    # Off by default: erasing a person and reading an unmasked copy of their data are the two
    # calls whose misuse cannot be undone or taken back, so a key is granted them on purpose.
    personal_data_requests = models.BooleanField(
        _("personal data requests"),
        default=False,
        help_text=_("May erase people and read full copies of their data (PIPL requests)."),
    )
    is_active = models.BooleanField(_("active"), default=True)
    created_at = models.DateTimeField(_("created at"), default=timezone.now, editable=False)
    created_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL, related_name="+"
    )
    last_used_at = models.DateTimeField(_("last used at"), null=True, blank=True, editable=False)

    class Meta:
        verbose_name = _("API key")
        verbose_name_plural = _("API keys")
        ordering = ["-created_at"]

    def __str__(self) -> str:
        return f"{self.name} ({self.prefix}…)"

    @staticmethod
    def generate() -> str:
        return secrets.token_urlsafe(32)


class AuditLog(models.Model):
    """Who did what sensitive thing and when: unmasking, exports, merges, key creation."""

    actor = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL, related_name="+"
    )
    action = models.CharField(_("action"), max_length=50, db_index=True)
    object_type = models.CharField(_("object type"), max_length=50, blank=True)
    object_id = models.CharField(_("object id"), max_length=50, blank=True)
    details = models.JSONField(_("details"), default=dict, blank=True)
    ip = models.GenericIPAddressField(_("IP address"), null=True, blank=True)
    created_at = models.DateTimeField(_("at"), default=timezone.now, db_index=True)

    class Meta:
        verbose_name = _("audit log entry")
        verbose_name_plural = _("audit log")
        ordering = ["-created_at"]

    def __str__(self) -> str:
        return f"{self.created_at:%Y-%m-%d %H:%M} {self.actor} {self.action}"


class JobStatus(models.TextChoices):
    QUEUED = "queued", _("Queued")
    RUNNING = "running", _("Running")
    SUCCEEDED = "succeeded", _("Succeeded")
    FAILED = "failed", _("Failed")


class Job(models.Model):
    """A long-running background operation (import, export, bulk tag) the UI shows progress of."""

    kind = models.CharField(_("kind"), max_length=50, db_index=True)
    status = models.CharField(
        _("status"), max_length=10, choices=JobStatus.choices, default=JobStatus.QUEUED
    )
    params = models.JSONField(_("parameters"), default=dict, blank=True)
    total = models.PositiveIntegerField(_("total"), default=0)
    done = models.PositiveIntegerField(_("done"), default=0)
    result = models.JSONField(_("result"), default=dict, blank=True)
    error = models.TextField(_("error"), blank=True)
    # Files produced or consumed by the job, relative to MEDIA_ROOT.
    input_file = models.CharField(_("input file"), max_length=300, blank=True)
    output_file = models.CharField(_("output file"), max_length=300, blank=True)
    created_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL, related_name="+"
    )
    created_at = models.DateTimeField(_("created at"), default=timezone.now)
    started_at = models.DateTimeField(_("started at"), null=True, blank=True)
    finished_at = models.DateTimeField(_("finished at"), null=True, blank=True)

    class Meta:
        verbose_name = _("background job")
        verbose_name_plural = _("background jobs")
        ordering = ["-created_at"]

    def __str__(self) -> str:
        return f"{self.kind} #{self.pk} ({self.status})"

    @property
    def percent(self) -> int:
        if self.status == JobStatus.SUCCEEDED:
            return 100
        return min(99, int(self.done * 100 / self.total)) if self.total else 0
