import uuid

from django.conf import settings
from django.db import models
from django.db.models.functions import Lower
from django.utils import timezone
from django.utils.translation import gettext_lazy as _

from core.models import TimeStampedModel


class Gender(models.TextChoices):
    UNKNOWN = "unknown", _("Unknown")
    FEMALE = "female", _("Female")
    MALE = "male", _("Male")


class LifecycleStage(models.TextChoices):
    NEW = "new", _("New / prospect")
    INTERESTED = "interested", _("Interested")
    FIRST_PURCHASE = "first_purchase", _("First purchase")
    REPEAT = "repeat", _("Repeat buyer")
    LOYAL = "loyal", _("Loyal")
    DORMANT = "dormant", _("Dormant")
    CHURNED = "churned", _("Churned")


class Contact(TimeStampedModel):
    """One customer, the meeting point of every identity, event and tag."""

    name = models.CharField(_("name"), max_length=100, blank=True)
    nickname = models.CharField(_("nickname"), max_length=100, blank=True)
    gender = models.CharField(
        _("gender"), max_length=10, choices=Gender.choices, default=Gender.UNKNOWN
    )
    birthday = models.DateField(_("birthday"), null=True, blank=True)
    phone = models.CharField(_("phone"), max_length=20, blank=True, db_index=True)
    email = models.EmailField(_("email"), blank=True)
    province = models.CharField(_("province"), max_length=30, blank=True)
    city = models.CharField(_("city"), max_length=30, blank=True, db_index=True)
    source = models.CharField(_("source"), max_length=50, blank=True, db_index=True)
    channel_code = models.CharField(_("channel code"), max_length=50, blank=True)
    lifecycle_stage = models.CharField(
        _("lifecycle stage"),
        max_length=20,
        choices=LifecycleStage.choices,
        default=LifecycleStage.NEW,
        db_index=True,
    )
    owner = models.ForeignKey(
        settings.AUTH_USER_MODEL,
        verbose_name=_("owner"),
        null=True,
        blank=True,
        on_delete=models.SET_NULL,
        related_name="owned_contacts",
    )
    # Traits sent by clients that have no column of their own yet.
    attributes = models.JSONField(_("attributes"), default=dict, blank=True)
    last_seen_at = models.DateTimeField(_("last seen at"), null=True, blank=True)

    class Meta:
        verbose_name = _("contact")
        verbose_name_plural = _("contacts")
        indexes = [
            models.Index(fields=["-created_at", "-id"], name="contact_created_desc"),
            models.Index(Lower("email"), name="contact_email_lower"),
        ]

    def __str__(self) -> str:
        return self.display_name

    @property
    def display_name(self) -> str:
        return self.name or self.nickname or self.masked_phone or f"#{self.pk}"

    @property
    def masked_phone(self) -> str:
        p = self.phone
        return f"{p[:-8]}****{p[-4:]}" if len(p) >= 11 else p


class IdentityKind(models.TextChoices):
    WECHAT_OPENID = "wechat_openid", _("WeChat official account openid")
    MINIPROGRAM_OPENID = "miniprogram_openid", _("Mini-program openid")
    WECHAT_UNIONID = "wechat_unionid", _("WeChat unionid")
    WECOM_EXTERNAL_USERID = "wecom_external_userid", _("WeCom external userid")
    PHONE = "phone", _("Phone")
    EMAIL = "email", _("Email")
    ANONYMOUS_ID = "anonymous_id", _("Anonymous id")
    EXTERNAL_ID = "external_id", _("External id")


class Identity(models.Model):
    contact = models.ForeignKey(
        Contact, verbose_name=_("contact"), on_delete=models.CASCADE, related_name="identities"
    )
    kind = models.CharField(_("kind"), max_length=30, choices=IdentityKind.choices)
    # Openids are per app: the same person has a different openid in each official account.
    app_id = models.CharField(_("app id"), max_length=64, blank=True, default="")
    value = models.CharField(_("value"), max_length=191)
    created_at = models.DateTimeField(_("created at"), default=timezone.now, editable=False)

    class Meta:
        verbose_name = _("identity")
        verbose_name_plural = _("identities")
        constraints = [
            models.UniqueConstraint(fields=["kind", "app_id", "value"], name="identity_unique")
        ]

    def __str__(self) -> str:
        scope = f"{self.app_id}:" if self.app_id else ""
        return f"{self.kind}:{scope}{self.value}"


class TagGroup(models.Model):
    name = models.CharField(_("name"), max_length=50, unique=True)
    position = models.PositiveIntegerField(_("position"), default=0)

    class Meta:
        verbose_name = _("tag group")
        verbose_name_plural = _("tag groups")
        ordering = ["position", "name"]

    def __str__(self) -> str:
        return self.name


class Tag(models.Model):
    group = models.ForeignKey(
        TagGroup, verbose_name=_("group"), on_delete=models.PROTECT, related_name="tags"
    )
    name = models.CharField(_("name"), max_length=50)
    color = models.CharField(_("colour"), max_length=7, default="#3b82f6")

    class Meta:
        verbose_name = _("tag")
        verbose_name_plural = _("tags")
        ordering = ["group__position", "group__name", "name"]
        constraints = [
            models.UniqueConstraint(fields=["group", "name"], name="tag_unique_in_group")
        ]

    def __str__(self) -> str:
        return f"{self.group.name}/{self.name}"


class TagSource(models.TextChoices):
    MANUAL = "manual", _("Manual")
    IMPORT = "import", _("Import")
    API = "api", _("API")
    RULE = "rule", _("Rule")
    WECOM = "wecom", _("WeCom")


class ContactTag(models.Model):
    contact = models.ForeignKey(Contact, on_delete=models.CASCADE, related_name="contact_tags")
    tag = models.ForeignKey(Tag, on_delete=models.CASCADE, related_name="contact_tags")
    source = models.CharField(
        _("source"), max_length=10, choices=TagSource.choices, default=TagSource.MANUAL
    )
    actor = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL, related_name="+"
    )
    created_at = models.DateTimeField(_("tagged at"), default=timezone.now)

    class Meta:
        verbose_name = _("tag assignment")
        verbose_name_plural = _("tag assignments")
        constraints = [
            models.UniqueConstraint(fields=["contact", "tag"], name="contact_tag_unique")
        ]
        indexes = [models.Index(fields=["tag", "contact"], name="contact_tag_by_tag")]

    def __str__(self) -> str:
        return f"{self.contact_id} · {self.tag}"


class Event(models.Model):
    """Something a contact did or that happened to them; append-only."""

    # Client-supplied id so that a retried batch never records an event twice.
    event_id = models.CharField(_("event id"), max_length=64, unique=True, default="")
    contact = models.ForeignKey(
        Contact, verbose_name=_("contact"), on_delete=models.CASCADE, related_name="events"
    )
    name = models.CharField(_("name"), max_length=64)
    occurred_at = models.DateTimeField(_("occurred at"))
    received_at = models.DateTimeField(_("received at"), default=timezone.now)
    properties = models.JSONField(_("properties"), default=dict, blank=True)
    value = models.DecimalField(_("value"), max_digits=14, decimal_places=2, null=True, blank=True)
    source = models.CharField(_("source"), max_length=30, blank=True)

    class Meta:
        verbose_name = _("event")
        verbose_name_plural = _("events")
        indexes = [
            models.Index(fields=["contact", "-occurred_at"], name="event_contact_time"),
            models.Index(fields=["name", "occurred_at"], name="event_name_time"),
        ]

    def __str__(self) -> str:
        return f"{self.name} @ {self.occurred_at:%Y-%m-%d %H:%M}"

    def save(self, *args, **kwargs):
        if not self.event_id:
            self.event_id = uuid.uuid4().hex
        super().save(*args, **kwargs)
