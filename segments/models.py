from django.conf import settings
from django.db import models
from django.utils import timezone
from django.utils.translation import gettext_lazy as _

from contacts.models import Contact, CustomField, Event, Stage, Tag
from core.models import Job, TimeStampedModel
from segments.rules.topics import ALL as ALL_TOPICS


class SegmentKind(models.TextChoices):
    DYNAMIC = "dynamic", _("Rule-based")
    STATIC = "static", _("Static list")


class RefreshPolicy(models.TextChoices):
    ON_CHANGE = "on_change", _("When contacts change")
    INTERVAL = "interval", _("Every N minutes")
    DAILY = "daily", _("Daily")
    MANUAL = "manual", _("Only when asked")


class Segment(TimeStampedModel):
    """An audience whose membership is materialised with entry times.

    Rule-based segments are re-evaluated according to their refresh policy; static lists hold
    exactly the contacts added to them (from a file, a selection in the contact list, the API).
    """

    name = models.CharField(_("name"), max_length=100, unique=True)
    description = models.TextField(_("description"), blank=True)
    kind = models.CharField(
        _("kind"), max_length=10, choices=SegmentKind.choices, default=SegmentKind.DYNAMIC
    )
    rule = models.JSONField(_("rule"), default=dict, blank=True)
    refresh_policy = models.CharField(
        _("refresh policy"),
        max_length=10,
        choices=RefreshPolicy.choices,
        default=RefreshPolicy.ON_CHANGE,
    )
    refresh_interval_minutes = models.PositiveIntegerField(_("refresh every (minutes)"), default=60)
    refresh_hour = models.PositiveSmallIntegerField(
        _("daily refresh hour"), default=3, help_text=_("Local hour (0–23) of the daily refresh.")
    )
    next_refresh_at = models.DateTimeField(_("next refresh at"), null=True, blank=True)
    # Segments this one's rule reads (kept in sync with the rule by the services).
    depends_on = models.ManyToManyField(
        "self", symmetrical=False, related_name="dependents", blank=True, editable=False
    )
    # Tags this one's rule reads (kept in sync with the rule by the services): a tag a rule
    # reads cannot be deleted (see SegmentTagRef).
    tags_read = models.ManyToManyField(
        Tag,
        through="SegmentTagRef",
        related_name="segments_reading",
        blank=True,
        editable=False,
    )
    # Custom fields this one's rule reads (kept in sync with the rule by the services): a field
    # a rule reads cannot be deleted (see SegmentFieldRef).
    fields_read = models.ManyToManyField(
        CustomField,
        through="SegmentFieldRef",
        related_name="segments_reading",
        blank=True,
        editable=False,
    )
    # True when the rule holds a relative time window, which ages out without any change.
    has_time_window = models.BooleanField(default=False, editable=False)
    is_archived = models.BooleanField(_("archived"), default=False)
    member_count = models.PositiveIntegerField(_("members"), default=0, editable=False)
    last_refreshed_at = models.DateTimeField(
        _("last refreshed at"), null=True, blank=True, editable=False
    )
    last_refresh_seconds = models.FloatField(
        _("last refresh took (s)"), null=True, blank=True, editable=False
    )
    # Why the last scheduled or requested refresh failed; empty once a full refresh succeeds.
    refresh_error = models.TextField(_("last refresh error"), blank=True, editable=False)
    # The latest "refresh now" (its status and error are what the page shows while it runs).
    refresh_job = models.ForeignKey(
        Job, null=True, blank=True, on_delete=models.SET_NULL, related_name="+", editable=False
    )
    created_by = models.ForeignKey(
        settings.AUTH_USER_MODEL,
        null=True,
        blank=True,
        on_delete=models.SET_NULL,
        related_name="+",
        editable=False,
    )

    class Meta:
        verbose_name = _("segment")
        verbose_name_plural = _("segments")
        ordering = ["name"]

    def __str__(self) -> str:
        return self.name


class SegmentMembership(models.Model):
    # Derived rows, rebuilt by every full refresh, written by the hundred thousand: no database
    # foreign-key constraints (each would cost a trigger per row at commit). Deleting a segment
    # or contact through the ORM still cascades; a row orphaned any other way is removed by
    # the segment's next full refresh, which keeps only the contacts its rule matches.
    # No single-column indexes either: (segment, contact) is the primary key and (contact) is
    # indexed in Meta; more copies would cost every insert without serving any query. No
    # surrogate id: it was a third index and 8 bytes a row that no query used (building a
    # segment writes every member: 31% faster without it).
    pk = models.CompositePrimaryKey("segment_id", "contact_id")
    segment = models.ForeignKey(
        Segment,
        on_delete=models.CASCADE,
        related_name="memberships",
        db_constraint=False,
        db_index=False,
    )
    contact = models.ForeignKey(
        Contact,
        on_delete=models.CASCADE,
        related_name="segment_memberships",
        db_constraint=False,
        db_index=False,
    )
    entered_at = models.DateTimeField(_("entered at"), default=timezone.now)

    class Meta:
        verbose_name = _("segment membership")
        verbose_name_plural = _("segment memberships")
        indexes = [models.Index(fields=["contact"], name="segment_member_contact")]

    def __str__(self) -> str:
        return f"{self.segment_id}:{self.contact_id}"


class SegmentSize(models.Model):
    """A segment's member count per day (the growth sparkline)."""

    segment = models.ForeignKey(Segment, on_delete=models.CASCADE, related_name="sizes")
    day = models.DateField(_("day"))
    member_count = models.PositiveIntegerField(_("members"))

    class Meta:
        verbose_name = _("segment size")
        verbose_name_plural = _("segment sizes")
        constraints = [models.UniqueConstraint(fields=["segment", "day"], name="segment_size_day")]

    def __str__(self) -> str:
        return f"{self.segment_id} {self.day}: {self.member_count}"


class DirtyContact(models.Model):
    """A contact whose data changed since the last incremental refresh.

    Written (idempotently) by the receivers of contact changes and recorded events; the
    incremental refresh re-evaluates exactly these contacts and deletes the rows it handled.
    No foreign key: the queue must never block or slow a write to the contact tables.
    """

    contact_id = models.BigIntegerField(primary_key=True)
    changed_at = models.DateTimeField(default=timezone.now)
    # What changed, as a mask of topics (segments.rules.topics): only segments whose rules read
    # one of them re-evaluate the contact. Queueing a contact again ORs the masks together.
    topics = models.BigIntegerField(default=ALL_TOPICS)

    class Meta:
        verbose_name = _("changed contact")
        verbose_name_plural = _("changed contacts")

    def __str__(self) -> str:
        return f"{self.contact_id} @ {self.changed_at:%Y-%m-%d %H:%M:%S}"


class SegmentTagRef(models.Model):
    """A tag a segment's rule reads. Deleting the tag is refused while a rule reads it: a rule
    on a deleted tag would silently match nobody ("has any of") or everybody ("has none of")."""

    segment = models.ForeignKey(
        Segment, verbose_name=_("segment"), on_delete=models.CASCADE, related_name="+"
    )
    tag = models.ForeignKey(
        Tag, verbose_name=_("tag"), on_delete=models.PROTECT, related_name="segment_refs"
    )

    class Meta:
        verbose_name = _("tag read by a segment")
        verbose_name_plural = _("tags read by segments")
        constraints = [
            models.UniqueConstraint(fields=["segment", "tag"], name="segment_tag_ref_unique")
        ]

    def __str__(self) -> str:
        return _("segment “%(segment)s” reads it") % {"segment": self.segment}


class SegmentFieldRef(models.Model):
    """A custom field a segment's rule reads. Deleting the field is refused while a rule reads
    it: the rule could no longer be evaluated, and the refreshes would fail."""

    segment = models.ForeignKey(
        Segment, verbose_name=_("segment"), on_delete=models.CASCADE, related_name="+"
    )
    field = models.ForeignKey(
        CustomField,
        verbose_name=_("custom field"),
        on_delete=models.PROTECT,
        related_name="segment_refs",
    )

    class Meta:
        verbose_name = _("custom field read by a segment")
        verbose_name_plural = _("custom fields read by segments")
        constraints = [
            models.UniqueConstraint(fields=["segment", "field"], name="segment_field_ref_unique")
        ]

    def __str__(self) -> str:
        return _("segment “%(segment)s” reads it") % {"segment": self.segment}


class AutoTagRule(models.Model):
    """Keeps a tag in sync with a segment: added on entry and, optionally, removed on exit."""

    segment = models.ForeignKey(
        Segment, verbose_name=_("segment"), on_delete=models.CASCADE, related_name="auto_tags"
    )
    # Protected: deleting the tag would silently drop the rule.
    tag = models.ForeignKey(
        Tag, verbose_name=_("tag"), on_delete=models.PROTECT, related_name="auto_tag_rules"
    )
    remove_on_exit = models.BooleanField(_("remove when no longer matching"), default=True)
    is_active = models.BooleanField(_("active"), default=True)
    created_at = models.DateTimeField(_("created at"), default=timezone.now)

    class Meta:
        verbose_name = _("auto-tag rule")
        verbose_name_plural = _("auto-tag rules")
        constraints = [
            models.UniqueConstraint(fields=["segment", "tag"], name="auto_tag_unique"),
            # A contact holds a tag once: two segments keeping one tag would take it off each
            # other's members (the services say so in words; this holds under concurrency).
            models.UniqueConstraint(
                fields=["tag"],
                condition=models.Q(is_active=True),
                name="auto_tag_one_segment",
                violation_error_message=_("A tag can follow one segment only."),
            ),
        ]

    def __str__(self) -> str:
        return f"{self.segment} → {self.tag}"


class RFMLayer(models.TextChoices):
    # R high = bought recently; "重要" = high monetary value.
    IMPORTANT_VALUE = "important_value", _("Important value")  # R↑ F↑ M↑ 重要价值
    IMPORTANT_DEVELOP = "important_develop", _("Important to develop")  # R↑ F↓ M↑ 重要发展
    IMPORTANT_KEEP = "important_keep", _("Important to keep")  # R↓ F↑ M↑ 重要保持
    IMPORTANT_RETAIN = "important_retain", _("Important to win back")  # R↓ F↓ M↑ 重要挽留
    GENERAL_VALUE = "general_value", _("General value")  # R↑ F↑ M↓ 一般价值
    GENERAL_DEVELOP = "general_develop", _("General to develop")  # R↑ F↓ M↓ 一般发展
    GENERAL_KEEP = "general_keep", _("General to keep")  # R↓ F↑ M↓ 一般保持
    GENERAL_RETAIN = "general_retain", _("General to win back")  # R↓ F↓ M↓ 一般挽留


class RFMScore(models.Model):
    """A buyer's recency / frequency / monetary figures, their 1–5 scores and value layer."""

    contact = models.OneToOneField(
        Contact, primary_key=True, on_delete=models.CASCADE, related_name="rfm"
    )
    recency_days = models.PositiveIntegerField(_("days since last purchase"))
    frequency = models.PositiveIntegerField(_("purchases"))
    monetary = models.DecimalField(_("amount spent"), max_digits=14, decimal_places=2)
    r_score = models.PositiveSmallIntegerField("R")
    f_score = models.PositiveSmallIntegerField("F")
    m_score = models.PositiveSmallIntegerField("M")
    layer = models.CharField(_("value layer"), max_length=20, choices=RFMLayer.choices)
    computed_at = models.DateTimeField(_("computed at"))

    class Meta:
        verbose_name = _("RFM score")
        verbose_name_plural = _("RFM scores")
        indexes = [models.Index(fields=["layer"], name="rfm_layer")]

    def __str__(self) -> str:
        return f"{self.contact_id} R{self.r_score}F{self.f_score}M{self.m_score}"


class RFMRun(models.Model):
    """One computation of the RFM table, with the quantile edges it used."""

    started_at = models.DateTimeField(_("started at"), default=timezone.now)
    finished_at = models.DateTimeField(_("finished at"), null=True, blank=True)
    window_days = models.PositiveIntegerField(_("window (days)"))
    contacts = models.PositiveIntegerField(_("buyers scored"), default=0)
    edges = models.JSONField(_("quantile edges"), default=dict, blank=True)
    layer_counts = models.JSONField(_("contacts per layer"), default=dict, blank=True)

    class Meta:
        verbose_name = _("RFM run")
        verbose_name_plural = _("RFM runs")
        ordering = ["-started_at"]

    def __str__(self) -> str:
        return f"RFM {self.started_at:%Y-%m-%d %H:%M}"


class LeadScoringConfig(models.Model):
    """The one row of lead-scoring settings (pk=1)."""

    half_life_days = models.PositiveIntegerField(
        _("half-life (days)"),
        default=30,
        help_text=_("Points lose half their weight after this many days. 0 = never decay."),
    )
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        verbose_name = _("lead scoring settings")
        verbose_name_plural = _("lead scoring settings")

    def __str__(self) -> str:
        return str(_("Lead scoring settings"))


class ScoreRuleKind(models.TextChoices):
    EVENT = "event", _("Per event")
    ATTRIBUTE = "attribute", _("Profile fit")


class CapPeriod(models.TextChoices):
    NONE = "none", _("No cap")
    DAY = "day", _("Per day")
    WEEK = "week", _("Per week")
    MONTH = "month", _("Per month")
    EVER = "ever", _("In total")


class LeadScoreRule(models.Model):
    """Points for an event (optionally filtered by its properties) or for matching a profile."""

    name = models.CharField(_("name"), max_length=100)
    kind = models.CharField(_("kind"), max_length=10, choices=ScoreRuleKind.choices)
    event_name = models.CharField(_("event name"), max_length=64, blank=True)
    # Property filters: [{"property": "amount", "operator": "gt", "value": 100}, ...] (AND).
    property_filters = models.JSONField(_("property filters"), default=list, blank=True)
    # For profile-fit rules: a segment rule tree the contact must match.
    condition = models.JSONField(_("condition"), default=dict, blank=True)
    # Tags the condition reads (kept in sync by the scoring services): protected, as for
    # segment rules (see SegmentTagRef).
    tags_read = models.ManyToManyField(
        Tag,
        through="LeadScoreRuleTagRef",
        related_name="score_rules_reading",
        blank=True,
        editable=False,
    )
    # Custom fields the condition reads (kept in sync by the scoring services): protected too.
    fields_read = models.ManyToManyField(
        CustomField,
        through="LeadScoreRuleFieldRef",
        related_name="score_rules_reading",
        blank=True,
        editable=False,
    )
    points = models.IntegerField(_("points"))
    cap_points = models.PositiveIntegerField(_("cap (points)"), null=True, blank=True)
    cap_period = models.CharField(
        _("cap period"), max_length=10, choices=CapPeriod.choices, default=CapPeriod.NONE
    )
    is_active = models.BooleanField(_("active"), default=True)
    created_at = models.DateTimeField(_("created at"), default=timezone.now)

    class Meta:
        verbose_name = _("lead scoring rule")
        verbose_name_plural = _("lead scoring rules")
        ordering = ["kind", "name"]

    def __str__(self) -> str:
        return f"{self.name} ({self.points:+d})"


class LeadScoreRuleTagRef(models.Model):
    """A tag a profile-fit rule's condition reads; deleting the tag is refused meanwhile."""

    rule = models.ForeignKey(
        LeadScoreRule,
        verbose_name=_("lead scoring rule"),
        on_delete=models.CASCADE,
        related_name="+",
    )
    tag = models.ForeignKey(
        Tag, verbose_name=_("tag"), on_delete=models.PROTECT, related_name="score_rule_refs"
    )

    class Meta:
        verbose_name = _("tag read by a lead scoring rule")
        verbose_name_plural = _("tags read by lead scoring rules")
        constraints = [
            models.UniqueConstraint(fields=["rule", "tag"], name="score_rule_tag_ref_unique")
        ]

    def __str__(self) -> str:
        return _("lead scoring rule “%(rule)s” reads it") % {"rule": self.rule.name}


class LeadScoreRuleFieldRef(models.Model):
    """A custom field a profile-fit rule's condition reads; deleting the field is refused
    meanwhile."""

    rule = models.ForeignKey(
        LeadScoreRule,
        verbose_name=_("lead scoring rule"),
        on_delete=models.CASCADE,
        related_name="+",
    )
    field = models.ForeignKey(
        CustomField,
        verbose_name=_("custom field"),
        on_delete=models.PROTECT,
        related_name="score_rule_refs",
    )

    class Meta:
        verbose_name = _("custom field read by a lead scoring rule")
        verbose_name_plural = _("custom fields read by lead scoring rules")
        constraints = [
            models.UniqueConstraint(fields=["rule", "field"], name="score_rule_field_ref_unique")
        ]

    def __str__(self) -> str:
        return _("lead scoring rule “%(rule)s” reads it") % {"rule": self.rule.name}


class LeadScoreAward(models.Model):
    """Points one rule gave one contact; the score is the decayed sum of these."""

    contact = models.ForeignKey(Contact, on_delete=models.CASCADE, related_name="score_awards")
    rule = models.ForeignKey(LeadScoreRule, on_delete=models.CASCADE, related_name="awards")
    # The event that earned the points (event rules); null for profile-fit awards.
    event = models.ForeignKey(
        Event, null=True, blank=True, on_delete=models.CASCADE, related_name="+"
    )
    points = models.IntegerField(_("points"))
    awarded_at = models.DateTimeField(_("awarded at"))

    class Meta:
        verbose_name = _("lead score award")
        verbose_name_plural = _("lead score awards")
        constraints = [
            # Re-processing an event never awards twice.
            models.UniqueConstraint(
                fields=["rule", "event"],
                condition=models.Q(event__isnull=False),
                name="score_award_event_once",
            ),
            # A profile-fit rule awards a contact at most once while it keeps matching.
            models.UniqueConstraint(
                fields=["rule", "contact"],
                condition=models.Q(event__isnull=True),
                name="score_award_fit_once",
            ),
        ]
        indexes = [models.Index(fields=["contact", "awarded_at"], name="score_award_contact")]

    def __str__(self) -> str:
        return f"{self.contact_id} {self.points:+d} ({self.rule_id})"


class LeadStageThreshold(models.Model):
    """When a contact's score reaches `min_score`, move it to `stage` (never backwards)."""

    min_score = models.FloatField(_("minimum score"))
    stage = models.ForeignKey(
        Stage, verbose_name=_("stage"), to_field="key", on_delete=models.CASCADE, related_name="+"
    )

    class Meta:
        verbose_name = _("lead score threshold")
        verbose_name_plural = _("lead score thresholds")
        ordering = ["min_score"]
        constraints = [models.UniqueConstraint(fields=["stage"], name="lead_threshold_stage")]

    def __str__(self) -> str:
        return f"≥ {self.min_score:g} → {self.stage}"


class Influence(models.Model):
    """A contact's word-of-mouth reach, the basis of KOC (key opinion consumer) ranking."""

    contact = models.OneToOneField(
        Contact, primary_key=True, on_delete=models.CASCADE, related_name="influence"
    )
    invites_accepted = models.PositiveIntegerField(_("invites accepted"), default=0)
    referred_purchases = models.PositiveIntegerField(_("referred purchases"), default=0)
    referred_revenue = models.DecimalField(
        _("referred revenue"), max_digits=14, decimal_places=2, default=0
    )
    shares = models.PositiveIntegerField(_("shares"), default=0)
    share_reach = models.PositiveIntegerField(_("people reached by shares"), default=0)
    score = models.FloatField(_("influence score"), default=0)
    is_koc = models.BooleanField(_("KOC"), default=False)
    computed_at = models.DateTimeField(_("computed at"))

    class Meta:
        verbose_name = _("influence")
        verbose_name_plural = _("influence")
        indexes = [models.Index(fields=["-score"], name="influence_score")]

    def __str__(self) -> str:
        return f"{self.contact_id} {self.score:.1f}"
