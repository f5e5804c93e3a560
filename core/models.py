import hashlib
import secrets

from django.conf import settings
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


class ApiKey(models.Model):
    """A server-to-server credential; only its hash is stored, the raw key is shown once."""

    name = models.CharField(_("name"), max_length=100)
    prefix = models.CharField(_("prefix"), max_length=KEY_PREFIX_LEN, db_index=True, editable=False)
    hashed_key = models.CharField(max_length=64, unique=True, editable=False)
    throttle_rate = models.CharField(
        _("throttle rate"),
        max_length=30,
        blank=True,
        help_text=_("For example 600/minute. Empty uses the site default."),
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
