import re
import secrets
import time

from django.conf import settings
from django.core.exceptions import ValidationError
from django.db import models
from django.db.models.functions import Lower
from django.utils import timezone
from django.utils.translation import gettext_lazy as _
from django.utils.translation import pgettext_lazy

from core.models import TimeStampedModel


class Gender(models.TextChoices):
    UNKNOWN = "unknown", _("Unknown")
    FEMALE = "female", _("Female")
    MALE = "male", _("Male")


class LifecycleStage(models.TextChoices):
    """The default stages; brands rename, reorder and add their own in the Stage table."""

    NEW = "new", _("New / prospect")
    INTERESTED = "interested", _("Interested")
    FIRST_PURCHASE = "first_purchase", _("First purchase")
    REPEAT = "repeat", _("Repeat buyer")
    LOYAL = "loyal", _("Loyal")
    DORMANT = "dormant", _("Dormant")
    CHURNED = "churned", _("Churned")


class Stage(models.Model):
    """A brand-configurable lifecycle stage (新客 → 意向 → 首购 → 复购 → 忠诚, 沉睡, 流失)."""

    key = models.SlugField(_("key"), max_length=20, unique=True)
    name = models.CharField(_("name"), max_length=30)
    position = models.PositiveSmallIntegerField(_("position"), default=0)
    is_active = models.BooleanField(_("active"), default=True)

    class Meta:
        verbose_name = _("lifecycle stage")
        verbose_name_plural = _("lifecycle stages")
        ordering = ["position", "key"]

    def __str__(self) -> str:
        return self.name


class Store(models.Model):
    """A physical store (门店) whose staff own customer relationships."""

    code = models.SlugField(_("code"), max_length=30, unique=True)
    name = models.CharField(_("name"), max_length=100)
    province = models.CharField(_("province"), max_length=30, blank=True)
    city = models.CharField(_("city"), max_length=30, blank=True)
    is_active = models.BooleanField(_("active"), default=True)

    class Meta:
        verbose_name = _("store")
        verbose_name_plural = _("stores")
        ordering = ["code"]

    def __str__(self) -> str:
        return self.name


class StaffProfile(models.Model):
    """Links a staff user to the store they work in (store staff see their store's contacts)."""

    user = models.OneToOneField(
        settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="staff_profile"
    )
    store = models.ForeignKey(
        Store, verbose_name=_("store"), null=True, blank=True, on_delete=models.SET_NULL
    )

    class Meta:
        verbose_name = _("staff profile")
        verbose_name_plural = _("staff profiles")

    def __str__(self) -> str:
        return f"{self.user} @ {self.store or '-'}"


class CustomFieldKind(models.TextChoices):
    TEXT = "text", _("Text")
    NUMBER = "number", _("Number")
    DATE = "date", _("Date")
    SINGLE_CHOICE = "single_choice", _("Single choice")
    MULTI_CHOICE = "multi_choice", _("Multiple choice")
    BOOLEAN = "boolean", _("Yes / no")


class CustomField(models.Model):
    """An operator-defined contact field; values live in Contact.attributes under `key`."""

    key = models.SlugField(_("key"), max_length=64, unique=True)
    label = models.CharField(_("label"), max_length=50)
    kind = models.CharField(_("type"), max_length=20, choices=CustomFieldKind.choices)
    choices = models.JSONField(
        _("choices"),
        default=list,
        blank=True,
        help_text=_(
            "For choice fields: the options, separated by commas or 、, or one per line "
            '(a JSON list such as ["S", "M"] works too).'
        ),
    )
    position = models.PositiveSmallIntegerField(_("position"), default=0)
    is_active = models.BooleanField(_("active"), default=True)

    class Meta:
        verbose_name = _("custom field")
        verbose_name_plural = _("custom fields")
        ordering = ["position", "key"]

    def __str__(self) -> str:
        return self.label

    CHOICE_KINDS = (CustomFieldKind.SINGLE_CHOICE, CustomFieldKind.MULTI_CHOICE)

    def clean(self) -> None:
        """A choice field needs a list of distinct, non-empty texts; other kinds take none."""
        super().clean()

        def refuse(message: str, code: str) -> ValidationError:
            return ValidationError({"choices": ValidationError(message, code=code)})

        if self.kind not in CustomFieldKind.values:
            return  # the kind field reports its own error
        choices = self.choices
        if self.kind not in self.CHOICE_KINDS:
            if choices in (None, "", [], {}):
                self.choices = []
                return
            raise refuse(
                _("Only single and multiple choice fields take choices."), "choices_not_allowed"
            )
        if choices in (None, "", []):
            raise refuse(_("A choice field needs at least one choice."), "no_choices")
        if not isinstance(choices, list):
            raise refuse(
                _('Give the choices as a list, for example ["S", "M", "L"].'), "invalid_choices"
            )
        if not all(isinstance(c, str) and c.strip() for c in choices):
            raise refuse(_("Every choice must be a non-empty text."), "invalid_choices")
        repeated = sorted({c for c in choices if choices.count(c) > 1})
        if repeated:
            raise refuse(
                _("Choices must be distinct; repeated: %(choices)s.")
                % {"choices": ", ".join(repeated)},
                "duplicate_choices",
            )


class Contact(TimeStampedModel):
    """One customer, the meeting point of every identity, event and tag."""

    name = models.CharField(pgettext_lazy("person", "name"), max_length=100, blank=True)
    nickname = models.CharField(_("nickname"), max_length=100, blank=True)
    gender = models.CharField(
        _("gender"), max_length=10, choices=Gender.choices, default=Gender.UNKNOWN
    )
    birthday = models.DateField(_("birthday"), null=True, blank=True)
    phone = models.CharField(_("phone"), max_length=20, blank=True)
    email = models.EmailField(_("email"), blank=True)
    province = models.CharField(_("province"), max_length=30, blank=True)
    city = models.CharField(_("city"), max_length=30, blank=True)
    source = models.CharField(_("source"), max_length=50, blank=True)
    channel_code = models.CharField(_("channel code"), max_length=50, blank=True)
    # Attribution of the first touch.
    utm_source = models.CharField(_("UTM source"), max_length=100, blank=True)
    utm_medium = models.CharField(_("UTM medium"), max_length=100, blank=True)
    utm_campaign = models.CharField(_("UTM campaign"), max_length=100, blank=True)
    utm_content = models.CharField(_("UTM content"), max_length=100, blank=True)
    utm_term = models.CharField(_("UTM term"), max_length=100, blank=True)
    # Stores the stage key (e.g. "first_purchase"); the Stage table holds names and order.
    lifecycle_stage = models.ForeignKey(
        Stage,
        verbose_name=_("lifecycle stage"),
        to_field="key",
        db_column="lifecycle_stage",
        default=LifecycleStage.NEW.value,
        on_delete=models.PROTECT,
        related_name="contacts",
        # Indexed in Meta: db_index here would add a varchar_pattern_ops twin on PostgreSQL.
        db_index=False,
    )
    owner = models.ForeignKey(
        settings.AUTH_USER_MODEL,
        verbose_name=_("owner"),
        null=True,
        blank=True,
        on_delete=models.SET_NULL,
        related_name="owned_contacts",
    )
    store = models.ForeignKey(
        Store,
        verbose_name=_("store"),
        null=True,
        blank=True,
        on_delete=models.SET_NULL,
        related_name="contacts",
    )
    # Custom field values (validated against CustomField) and traits without a column.
    attributes = models.JSONField(_("attributes"), default=dict, blank=True)
    first_seen_at = models.DateTimeField(_("first seen at"), null=True, blank=True)
    last_seen_at = models.DateTimeField(_("last seen at"), null=True, blank=True)
    last_active_at = models.DateTimeField(_("last active at"), null=True, blank=True)
    # Maintained by segments' lead scoring: the decayed score as of lead_score_at.
    # Also a database default, so that set-based inserts (import, seeding) need not name it.
    lead_score = models.FloatField(_("lead score"), default=0, db_default=0)
    lead_score_at = models.DateTimeField(_("lead score as of"), null=True, blank=True)
    # The engagement (event) part of the score as of lead_score_at, exact (unrounded): a new
    # award decays it and adds its points in constant time, while lead_score stays rounded.
    # The profile-fit part is whole points, so it is round(lead_score - this). Null until the
    # contact's score is first computed from its awards.
    lead_score_engagement = models.FloatField(
        _("lead score engagement part"), null=True, blank=True, editable=False
    )
    # Set when this contact was merged into another; merged contacts keep their row for undo.
    merged_into = models.ForeignKey(
        "self",
        verbose_name=_("merged into"),
        null=True,
        blank=True,
        on_delete=models.SET_NULL,
        related_name="merged_contacts",
    )

    class Meta:
        verbose_name = _("contact")
        verbose_name_plural = _("contacts")
        indexes = [
            models.Index(fields=["-created_at", "-id"], name="contact_created_desc"),
            models.Index(Lower("email"), name="contact_email_lower"),
            # Plain btree indexes declared here rather than with db_index=True: PostgreSQL would
            # get a second varchar_pattern_ops index per column that no query uses, and each
            # costs every import and update.
            models.Index(fields=["phone"], name="contact_phone"),
            models.Index(fields=["city"], name="contact_city"),
            models.Index(fields=["source"], name="contact_source"),
            models.Index(fields=["lifecycle_stage"], name="contact_stage"),
            models.Index(fields=["lead_score"], name="contact_lead_score"),
            # The few contacts merged away, by id: a segment's incremental writes check that
            # none of the thousands of contacts entering it was merged since its evaluation
            # with probes of this small index, not of the table (segments _apply_diff).
            models.Index(
                fields=["id"],
                name="contact_merged_away",
                condition=models.Q(merged_into__isnull=False),
            ),
        ]
        permissions = [
            ("view_personal_data", _("Can view unmasked phone numbers and emails")),
            ("export_contact", _("Can export contacts")),
            ("merge_contact", _("Can merge and unmerge contacts")),
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


# The contact's own profile columns, in the order every list, file, form and preview shows them.
PROFILE_COLUMNS = (
    "name",
    "nickname",
    "gender",
    "birthday",
    "phone",
    "email",
    "province",
    "city",
    "source",
    "channel_code",
)


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

    def clean(self) -> None:
        super().clean()
        # The colour is written into a style attribute on every page that shows the tag, so only
        # a colour may get in. Checked here, not by a field validator, which needs a migration.
        if not TAG_COLOR.fullmatch(self.color or ""):
            raise ValidationError({"color": _("Enter a colour as #RRGGBB, for example #3b82f6.")})
        self.color = self.color.lower()


TAG_COLOR = re.compile(r"#[0-9a-fA-F]{6}")


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
    expires_at = models.DateTimeField(_("expires at"), null=True, blank=True)

    class Meta:
        verbose_name = _("tag assignment")
        verbose_name_plural = _("tag assignments")
        constraints = [
            models.UniqueConstraint(fields=["contact", "tag"], name="contact_tag_unique")
        ]
        indexes = [models.Index(fields=["tag", "contact"], name="contact_tag_by_tag")]

    def __str__(self) -> str:
        return f"{self.contact_id} · {self.tag}"


def new_event_id() -> str:
    """An id for an event the product records itself: 32 hex characters like a UUID, but
    time-ordered (milliseconds first, then 80 random bits, as in UUIDv7), so that the product's
    own events extend the unique index at its right edge instead of landing on a random page
    each (one random page per row costs a full-page WAL image after every checkpoint)."""
    return f"{time.time_ns() // 1_000_000:012x}{secrets.token_hex(10)}"


class Event(models.Model):
    """Something a contact did or that happened to them; append-only."""

    # Client-supplied id so that a retried batch never records an event twice.
    event_id = models.CharField(_("event id"), max_length=64, default="")
    contact = models.ForeignKey(
        Contact,
        verbose_name=_("contact"),
        on_delete=models.CASCADE,
        related_name="events",
        # event_contact_time starts with the contact: a second index would only slow ingest.
        db_index=False,
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
            # What a segment rule asks of one contact ("purchased twice in 90 days"): through
            # event_contact_time that reads every event of the contact's window to keep the
            # few of one name, so a contact with 200,000 page views took 25-37 ms per rule
            # instead of under 1 ms, in every incremental pass, "why is this contact in",
            # and the membership API (bench/segments.py, part 4).
            models.Index(fields=["contact", "name", "occurred_at"], name="event_contact_name_time"),
        ]
        # A constraint rather than unique=True: on PostgreSQL that would add a second,
        # pattern-matching index on event_id that no query uses.
        constraints = [models.UniqueConstraint(fields=["event_id"], name="event_id_unique")]

    def __str__(self) -> str:
        return f"{self.name} @ {self.occurred_at:%Y-%m-%d %H:%M}"

    def save(self, *args, **kwargs):
        if not self.event_id:
            self.event_id = new_event_id()
        super().save(*args, **kwargs)


class Note(models.Model):
    """A note or follow-up (跟进) that staff leave on a contact."""

    contact = models.ForeignKey(Contact, on_delete=models.CASCADE, related_name="notes")
    author = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL, related_name="+"
    )
    body = models.TextField(_("note"), max_length=5000)
    follow_up_at = models.DateTimeField(_("follow up at"), null=True, blank=True)
    done_at = models.DateTimeField(_("done at"), null=True, blank=True)
    created_at = models.DateTimeField(_("created at"), default=timezone.now)

    class Meta:
        verbose_name = _("note")
        verbose_name_plural = _("notes")
        indexes = [
            models.Index(fields=["contact", "-created_at"], name="note_contact_time"),
            models.Index(fields=["follow_up_at"], name="note_follow_up"),
        ]

    def __str__(self) -> str:
        return self.body[:50]


class ConsentChannel(models.TextChoices):
    SMS = "sms", _("SMS")
    EMAIL = "email", _("Email")
    WECHAT_OA = "wechat_oa", _("WeChat official account")
    MINIPROGRAM = "miniprogram", _("Mini-program")
    WECOM = "wecom", _("WeCom")
    PHONE_CALL = "phone_call", _("Phone call")


class ConsentPurpose(models.TextChoices):
    MARKETING = "marketing", _("Marketing")
    SERVICE = "service", _("Service notices")
    ANALYTICS = "analytics", _("Analytics")


class ConsentRecord(models.Model):
    """Append-only evidence of a consent granted or withdrawn (PIPL)."""

    contact = models.ForeignKey(Contact, on_delete=models.CASCADE, related_name="consent_records")
    channel = models.CharField(_("channel"), max_length=20, choices=ConsentChannel.choices)
    purpose = models.CharField(_("purpose"), max_length=20, choices=ConsentPurpose.choices)
    granted = models.BooleanField(_("granted"))
    source = models.CharField(_("source"), max_length=50)
    notice_version = models.CharField(_("notice version"), max_length=30, blank=True)
    evidence = models.JSONField(_("evidence"), default=dict, blank=True)
    actor = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL, related_name="+"
    )
    recorded_at = models.DateTimeField(_("recorded at"), default=timezone.now)

    class Meta:
        verbose_name = _("consent record")
        verbose_name_plural = _("consent records")
        indexes = [models.Index(fields=["contact", "-recorded_at"], name="consent_contact_time")]

    def __str__(self) -> str:
        state = "granted" if self.granted else "withdrawn"
        return f"{self.contact_id} {self.channel}/{self.purpose} {state}"


class Consent(models.Model):
    """The current consent state per contact, channel and purpose (derived from the records)."""

    contact = models.ForeignKey(Contact, on_delete=models.CASCADE, related_name="consents")
    channel = models.CharField(_("channel"), max_length=20, choices=ConsentChannel.choices)
    purpose = models.CharField(_("purpose"), max_length=20, choices=ConsentPurpose.choices)
    granted = models.BooleanField(_("granted"))
    updated_at = models.DateTimeField(_("updated at"), default=timezone.now)
    record = models.ForeignKey(ConsentRecord, on_delete=models.PROTECT, related_name="+")

    class Meta:
        verbose_name = _("consent")
        verbose_name_plural = _("consents")
        constraints = [
            models.UniqueConstraint(
                fields=["contact", "channel", "purpose"], name="consent_unique_state"
            )
        ]

    def __str__(self) -> str:
        return f"{self.contact_id} {self.channel}/{self.purpose}={self.granted}"


class MergeRecord(models.Model):
    """One merge of `duplicate` into `survivor`, with what is needed to undo it."""

    survivor = models.ForeignKey(Contact, on_delete=models.CASCADE, related_name="+")
    duplicate = models.ForeignKey(Contact, on_delete=models.CASCADE, related_name="+")
    reason = models.CharField(_("reason"), max_length=100)
    # Field values of both contacts before the merge.
    snapshot = models.JSONField(_("snapshot"), default=dict)
    # Ids of rows moved to the survivor, per model label, filled in by each app's receiver.
    moved = models.JSONField(_("moved rows"), default=dict)
    actor = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL, related_name="+"
    )
    created_at = models.DateTimeField(_("merged at"), default=timezone.now)
    undone_at = models.DateTimeField(_("undone at"), null=True, blank=True)

    class Meta:
        verbose_name = _("merge")
        verbose_name_plural = _("merges")
        indexes = [models.Index(fields=["survivor", "-created_at"], name="merge_survivor_time")]

    def __str__(self) -> str:
        return f"{self.duplicate_id} → {self.survivor_id}"


class MergeBlock(models.Model):
    """Two contacts an operator has declared distinct: identity resolution never merges them.

    Written when an automatic merge is undone (otherwise the next `identify` carrying the same
    strong identities would merge them again) and by operators directly. Stored with
    `low < high` so that each pair has one row.
    """

    low = models.ForeignKey(Contact, on_delete=models.CASCADE, related_name="+")
    high = models.ForeignKey(Contact, on_delete=models.CASCADE, related_name="+")
    reason = models.CharField(_("reason"), max_length=100, blank=True)
    actor = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL, related_name="+"
    )
    created_at = models.DateTimeField(_("created at"), default=timezone.now)

    class Meta:
        verbose_name = _("never-merge pair")
        verbose_name_plural = _("never-merge pairs")
        constraints = [
            models.UniqueConstraint(fields=["low", "high"], name="merge_block_unique"),
            models.CheckConstraint(
                condition=models.Q(low__lt=models.F("high")), name="merge_block_ordered"
            ),
        ]
        indexes = [models.Index(fields=["high"], name="merge_block_high")]

    def __str__(self) -> str:
        return f"{self.low_id} ≠ {self.high_id}"


class ErasureSource(models.TextChoices):
    OPERATOR = "operator", pgettext_lazy("erasure source", "Operator")
    API = "api", pgettext_lazy("erasure source", "API")
    ADMIN = "admin", pgettext_lazy("erasure source", "Admin")


class Erasure(models.Model):
    """A person's data erased at their request (PIPL art. 47): their contact rows and all that
    hangs off them are deleted; this record is what is left. It holds no personal data: the
    ids the contacts had, who asked and when, how many rows went, and (as SuppressedIdentity
    rows) keyed digests of the identities so that a re-import cannot bring the person back."""

    # The brand's own reference for the request (a ticket number), so it can answer the person.
    reference = models.CharField(_("request reference"), max_length=100, blank=True)
    source = models.CharField(_("requested through"), max_length=10, choices=ErasureSource.choices)
    actor = models.ForeignKey(
        settings.AUTH_USER_MODEL,
        verbose_name=_("erased by"),
        null=True,
        blank=True,
        on_delete=models.SET_NULL,
        related_name="+",
    )
    # Rows deleted per model label ("contacts.event": 120, "segments.membership": 3, ...).
    summary = models.JSONField(_("rows deleted"), default=dict)
    created_at = models.DateTimeField(_("erased at"), default=timezone.now)

    class Meta:
        verbose_name = _("erasure")
        verbose_name_plural = _("erasures")
        indexes = [models.Index(fields=["-created_at"], name="erasure_time")]
        permissions = [("erase_contact", _("Can erase a person's data at their request"))]

    def __str__(self) -> str:
        return f"{self.pk} · {self.created_at:%Y-%m-%d}"


class ErasedContact(models.Model):
    """The id an erased contact had, so that a retried request for it finds its erasure and a
    call naming it learns it was erased rather than that it never existed."""

    contact_id = models.BigIntegerField(_("contact id"), primary_key=True)
    erasure = models.ForeignKey(Erasure, on_delete=models.CASCADE, related_name="contacts")

    class Meta:
        verbose_name = _("erased contact")
        verbose_name_plural = _("erased contacts")

    def __str__(self) -> str:
        return f"#{self.contact_id}"


class SuppressedIdentity(models.Model):
    """The keyed digest of one identity of an erased person (a hashed tombstone): imports and
    the events API refuse it rather than create the person again. Lifted when the person comes
    back by themselves (identify), since from then on they are a new customer."""

    erasure = models.ForeignKey(Erasure, on_delete=models.CASCADE, related_name="suppressions")
    kind = models.CharField(_("kind"), max_length=30, choices=IdentityKind.choices)
    app_id = models.CharField(_("app id"), max_length=64, blank=True, default="")
    # HMAC-SHA256 of the normalised value, keyed by SECRET_KEY (see contacts.services.erasure).
    digest = models.CharField(_("digest"), max_length=64)

    class Meta:
        verbose_name = _("suppressed identity")
        verbose_name_plural = _("suppressed identities")
        constraints = [
            models.UniqueConstraint(
                fields=["digest", "kind", "app_id"], name="suppressed_identity_unique"
            )
        ]

    def __str__(self) -> str:
        return f"{self.kind}:{self.digest[:12]}…"
