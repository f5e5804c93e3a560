"""Lead scoring: points per event and per profile fit, decaying engagement, stage thresholds.

A contact's score is the sum of its awards (LeadScoreAward):

    score(t) = Σ fit points + Σ event points × 0.5 ** ((t − awarded_at) / half_life)

Profile-fit points describe who the contact *is* and count in full while the contact matches;
engagement (event) points fade with the configured half-life (0 = never). The score stored on
Contact.lead_score is that sum as of Contact.lead_score_at, rounded to SCORE_DECIMALS: every
writer (new awards, the daily decay, recomputes) stores it rounded, so thresholds, segment rules
and screens all compare the value the operator sees. Contact.lead_score_engagement keeps the
engagement part exactly: a new award decays it and adds its points (constant cost, the same
result as recomputing from the awards); a daily pass recomputes everyone.

Event-rule property filters mean what they mean in segment rules: they compile with the segment
rule compiler (Compiler.property_filter) and match in SQL.
"""

import datetime as dt
import logging
import math
from collections import defaultdict
from collections.abc import Iterable, Iterator
from typing import Any

from django.db import connection, transaction
from django.db.models import Case, Exists, IntegerField, OuterRef, Q, QuerySet, Sum, Value, When
from django.utils import timezone
from django.utils.translation import gettext as _

from contacts.models import Contact, CustomField, Event, LifecycleStage, MergeRecord, Stage, Tag
from contacts.services import contact_update, event_record
from core.errors import ValidationFailed
from segments.models import (
    CapPeriod,
    LeadScoreAward,
    LeadScoreRule,
    LeadScoringConfig,
    LeadStageThreshold,
    ScoreRuleKind,
)
from segments.rules import compile_rule, rule_tag_refs, validate_property_filter, validate_rule
from segments.rules.compiler import Compiler
from segments.rules.topics import topics_mask
from segments.services import mark_dirty, queue_contacts, rule_check_ids, rule_field_keys

logger = logging.getLogger(__name__)

# The segment rules' event property operators (segments.rules.schema.PROPERTY_OPS).
PROPERTY_OPERATORS = (
    "eq", "neq", "gt", "gte", "lt", "lte", "in", "contains", "exists", "not_exists",
)  # fmt: skip
MAX_PROPERTY_FILTERS = 20
# Contacts per recompute batch: four queries and one UPDATE per 1,000 rows. Measured with 10
# awards a contact on the shared 2-core machine: ~0.5 s a batch on SQLite, ~1 s on PostgreSQL.
RECOMPUTE_BATCH = 2000
# Rows per score UPDATE: three parameters a row, far below SQLite's limit of 32,766.
STORE_BATCH = 1000
# The event written on the timeline when a threshold moves a contact's lifecycle stage.
STAGE_CHANGED_EVENT = "stage_changed"
STAGE_CHANGE_REASON = "lead_score"
MERGE_MOVED_KEY = "segments.leadscoreaward"
# The merge record's list of the duplicate's events it moved (contacts.services.merge).
MERGE_MOVED_EVENTS_KEY = "contacts.event"
# Profile-fit re-evaluation runs inline for this many changed contacts (an operator's edit, one
# API call) so the score is current on the next page view; bigger changes go to a worker.
FIT_INLINE_LIMIT = 200
SECONDS_PER_DAY = 86400
# Decimals of the stored score: what the screens show, thresholds and segment rules compare.
SCORE_DECIMALS = 2
# Stages a threshold may not move anyone to: they are off the customer's path (沉睡, 流失), not
# progress along it. Brands' own stages count as progression stages.
OFF_PATH_STAGE_KEYS = frozenset({LifecycleStage.DORMANT.value, LifecycleStage.CHURNED.value})
# A new or changed event rule scores past events back to where decay leaves less than this share
# of the points, and never more than BACKFILL_MAX_DAYS back (also the window without decay).
BACKFILL_NEGLIGIBLE = 0.01
BACKFILL_MAX_DAYS = 180
# Contacts per back-fill / threshold batch (one transaction each): the back-fill reads their
# events in the window and their awards, like a recompute batch.
BACKFILL_BATCH = 1000
THRESHOLD_BATCH = 1000
# Event ids per property-filter query when matching newly recorded events (and contacts per
# cap-total query).
MATCH_BATCH = 1000
# Cap periods per running-total query: a CASE branch (two parameters) each.
PERIOD_BATCH = 400
SCORE_TOPIC_MASK = topics_mask(["lead_score"])


# --- Configuration --------------------------------------------------------------------------


def scoring_config_get() -> LeadScoringConfig:
    """Return the lead-scoring settings row, creating it with defaults on first use."""
    config, _created = LeadScoringConfig.objects.get_or_create(pk=1)
    return config


@transaction.atomic
def scoring_config_update(*, half_life_days: int) -> LeadScoringConfig:
    """Change the half-life and recompute every score with it (after commit)."""
    if not isinstance(half_life_days, int) or isinstance(half_life_days, bool):
        raise ValidationFailed(_("The half-life must be a whole number of days."), code="invalid")
    if half_life_days < 0 or half_life_days > 3650:
        raise ValidationFailed(
            _("The half-life must be between 0 (no decay) and %(max)s days.") % {"max": 3650},
            code="invalid",
        )
    config = scoring_config_get()
    if config.half_life_days != half_life_days:
        config.half_life_days = half_life_days
        config.save()
        _recompute_all_after_commit()
    return config


def _recompute_all_after_commit() -> None:
    # Imported here: segments.tasks imports this module.
    from segments import tasks

    transaction.on_commit(lambda: tasks.lead_scores_recompute.delay())


# --- Property filters -----------------------------------------------------------------------


def _filter_error(path: str, message: str) -> ValidationFailed:
    # The path stays untranslated before the colon: the rule form reads it to place the error.
    return ValidationFailed(f"{path}: {message}", code="invalid_filter", details={"path": path})


def property_filters_validate(*, filters: Any) -> list[dict[str, Any]]:
    """Return the filters cleaned, or raise ValidationFailed naming the offending row.

    A filter is a segment rule's event property filter, checked by the segment rules' own
    validation; `exists` with the value false (the older spelling) becomes `not_exists`.
    """
    if filters in (None, ""):
        return []
    if not isinstance(filters, list):
        raise _filter_error("property_filters", _("must be a list"))
    if len(filters) > MAX_PROPERTY_FILTERS:
        raise _filter_error(
            "property_filters", _("at most %(max)s filters") % {"max": MAX_PROPERTY_FILTERS}
        )
    cleaned: list[dict[str, Any]] = []
    for i, row in enumerate(filters):
        path = f"property_filters[{i}]"
        if isinstance(row, dict) and row.get("operator") == "exists":
            value = row.get("value", True)
            if value in (None, ""):
                value = True
            if not isinstance(value, bool):
                raise _filter_error(f"{path}.value", _("must be true or false"))
            row = {**row, "operator": "exists" if value else "not_exists"}
        if (
            isinstance(row, dict)
            and row.get("operator") in ("gt", "gte", "lt", "lte")
            and isinstance(row.get("value"), str)
        ):
            # A bound sent as text ("100") is the number: the rule's own value, not event data.
            row = {**row, "value": _number_or_text(row["value"])}
        if isinstance(row, dict) and isinstance(row.get("property"), str):
            row = {**row, "property": row["property"].strip()}
        try:
            validate_property_filter(row, path)
        except ValidationFailed as exc:
            where = (exc.details or {}).get("path", path)
            raise _filter_error(where, exc.message.split(": ", 1)[-1]) from None
        item = {"property": row["property"], "operator": row["operator"]}
        if row["operator"] not in ("exists", "not_exists"):
            item["value"] = row.get("value")
        cleaned.append(item)
    return cleaned


def _number_or_text(text: str) -> Any:
    try:
        return int(text.strip())
    except ValueError:
        pass
    try:
        number = float(text.strip())
    except ValueError:
        return text
    return number if math.isfinite(number) else text


def property_filters_q(*, filters: list[dict[str, Any]]) -> Q:
    """The filters as a condition on Event: the segment rule compiler's, so they mean the same."""
    condition = Q()
    for row in filters:
        if row.get("operator") == "exists" and row.get("value") is False:
            # Stored before filters were cleaned into the segment rules' spelling.
            row = {**row, "operator": "not_exists"}
        condition &= Compiler.property_filter(row)
    return condition


def _matching_event_ids(rule: LeadScoreRule, event_ids: list[int]) -> set[int]:
    """The ids among `event_ids` of the rule's events whose properties pass its filters."""
    matched: set[int] = set()
    condition = property_filters_q(filters=rule.property_filters)
    for start in range(0, len(event_ids), MATCH_BATCH):
        batch = event_ids[start : start + MATCH_BATCH]
        matched.update(
            Event.objects.filter(pk__in=batch, name=rule.event_name)
            .filter(condition)
            .values_list("pk", flat=True)
        )
    return matched


def score_round(value: float) -> float:
    """The score as stored and shown: SCORE_DECIMALS decimals (never −0.0)."""
    return round(value, SCORE_DECIMALS) + 0.0


# --- Rules ----------------------------------------------------------------------------------


RULE_FIELDS = ("name", "kind", "event_name", "property_filters", "condition", "points")
# The fields whose change re-scores an event rule's past events (a new name does not).
BACKFILL_FIELDS = (
    "kind", "event_name", "property_filters", "points", "cap_period", "cap_points", "is_active",
)  # fmt: skip


def _field_error(field: str, message: str) -> ValidationFailed:
    # "field: message": the rule form reads the field name before the colon to place the error.
    return ValidationFailed(f"{field}: {message}", code="invalid")


def score_rule_validate(*, data: dict[str, Any]) -> dict[str, Any]:
    """Check a scoring rule as score_rule_create / score_rule_update will store it (the
    admin's form shows the same errors); return the cleaned fields."""
    name = (data.get("name") or "").strip()
    if not name or len(name) > 100:
        raise _field_error("name", _("required, at most %(max)s characters.") % {"max": 100})
    kind = data.get("kind")
    if kind not in ScoreRuleKind.values:
        raise _field_error(
            "kind", _("must be one of %(choices)s.") % {"choices": ", ".join(ScoreRuleKind.values)}
        )
    points = data.get("points")
    if not isinstance(points, int) or isinstance(points, bool) or abs(points) > 100000:
        raise _field_error(
            "points",
            _("a whole number between %(min)s and %(max)s.") % {"min": -100000, "max": 100000},
        )
    if points == 0:
        raise _field_error("points", _("must not be zero."))
    cap_period = data.get("cap_period") or CapPeriod.NONE
    if cap_period not in CapPeriod.values:
        raise _field_error(
            "cap_period",
            _("must be one of %(choices)s.") % {"choices": ", ".join(CapPeriod.values)},
        )
    cap_points = data.get("cap_points")
    if cap_period == CapPeriod.NONE:
        cap_points = None
    elif not isinstance(cap_points, int) or isinstance(cap_points, bool) or cap_points <= 0:
        raise _field_error("cap_points", _("a capped rule needs a positive number of points."))
    cleaned = {
        "name": name,
        "kind": kind,
        "points": points,
        "cap_period": cap_period,
        "cap_points": cap_points,
        "is_active": bool(data.get("is_active", True)),
        "event_name": "",
        "property_filters": [],
        "condition": {},
    }
    if kind == ScoreRuleKind.EVENT:
        event_name = (data.get("event_name") or "").strip()
        if not event_name or len(event_name) > 64:
            raise _field_error(
                "event_name", _("required, at most %(max)s characters.") % {"max": 64}
            )
        cleaned["event_name"] = event_name
        cleaned["property_filters"] = property_filters_validate(
            filters=data.get("property_filters")
        )
    else:
        condition = data.get("condition")
        # An empty group would match every contact: a bonus for all is not a fit.
        if not condition or (isinstance(condition, dict) and condition.get("conditions") == []):
            raise _field_error("condition", _("a profile-fit rule needs a condition."))
        rule_check_ids(condition)
        validate_rule(condition)
        cleaned["condition"] = condition
        # Fit points are given once while the contact matches; a cap has nothing to limit.
        cleaned["cap_period"], cleaned["cap_points"] = CapPeriod.NONE, None
    return cleaned


@transaction.atomic
def score_rule_create(*, data: dict[str, Any]) -> LeadScoreRule:
    """Validate and store a scoring rule; a profile-fit rule is applied after commit."""
    rule = LeadScoreRule.objects.create(**score_rule_validate(data=data))
    score_rule_sync_tags(rule=rule)
    if rule.kind == ScoreRuleKind.ATTRIBUTE and rule.is_active:
        _fit_all_after_commit()
    if rule.kind == ScoreRuleKind.EVENT and rule.is_active:
        _backfill_after_commit(rule)
    return rule


@transaction.atomic
def score_rule_update(*, rule: LeadScoreRule, data: dict[str, Any]) -> LeadScoreRule:
    """Change a rule; its awards follow: profile-fit awards re-evaluate, and an enabled event
    rule re-scores the past events in the back-fill window (in the background)."""
    cleaned = score_rule_validate(data=data)
    was_fit = rule.kind == ScoreRuleKind.ATTRIBUTE
    scoring_changed = any(getattr(rule, key) != cleaned[key] for key in BACKFILL_FIELDS)
    for key, value in cleaned.items():
        setattr(rule, key, value)
    rule.save()
    score_rule_sync_tags(rule=rule)
    if rule.kind == ScoreRuleKind.ATTRIBUTE or was_fit:
        if rule.kind == ScoreRuleKind.EVENT:
            _delete_awards(LeadScoreAward.objects.filter(rule=rule, event__isnull=True))
        else:
            # New points or condition: drop the old fit awards and let the pass award again.
            _delete_awards(LeadScoreAward.objects.filter(rule=rule))
        _fit_all_after_commit()
    if rule.kind == ScoreRuleKind.EVENT and rule.is_active and (scoring_changed or was_fit):
        _backfill_after_commit(rule)
    return rule


def score_rule_sync_tags(*, rule: LeadScoreRule) -> None:
    """Record the tags and custom fields the rule's condition reads, so that they cannot be
    deleted under it."""
    fit = rule.kind == ScoreRuleKind.ATTRIBUTE
    tags = rule_tag_refs(rule.condition) if fit else set()
    rule.tags_read.set(Tag.objects.filter(pk__in=tags))
    keys = rule_field_keys(rule.condition) if fit else set()
    rule.fields_read.set(CustomField.objects.filter(key__in=keys))


@transaction.atomic
def score_rule_delete(*, rule: LeadScoreRule) -> None:
    """Delete a rule and the points it gave; the affected scores are recomputed now."""
    _delete_awards(LeadScoreAward.objects.filter(rule=rule))
    rule.delete()


def _delete_awards(qs) -> None:
    contact_ids = list(qs.values_list("contact_id", flat=True).distinct())
    qs.delete()
    if len(contact_ids) <= FIT_INLINE_LIMIT:
        lead_scores_recompute_contacts(contact_ids=contact_ids)
    else:
        _recompute_all_after_commit()


def _fit_all_after_commit() -> None:
    # Imported here: segments.tasks imports this module.
    from segments import tasks

    transaction.on_commit(lambda: tasks.lead_scores_fit.delay())


# --- Thresholds -----------------------------------------------------------------------------


def threshold_stages():
    """The stages a threshold may move contacts to: active, and on the customer's path (not
    沉睡 / 流失), in their order."""
    return (
        Stage.objects.filter(is_active=True)
        .exclude(key__in=OFF_PATH_STAGE_KEYS)
        .order_by("position", "key")
    )


@transaction.atomic
def threshold_set(*, stage_key: str, min_score: float) -> LeadStageThreshold:
    """Create or change the minimum score that moves contacts to a stage; contacts whose score
    already reaches it move in the background after commit."""
    if stage_key in OFF_PATH_STAGE_KEYS and Stage.objects.filter(key=stage_key).exists():
        raise ValidationFailed(
            "stage: "
            + _(
                "a score threshold cannot move contacts to a dormant or churned stage: scores "
                "measure progress towards buying, not its loss."
            ),
            code="off_path_stage",
        )
    stage = Stage.objects.filter(key=stage_key, is_active=True).first()
    if stage is None:
        raise _field_error("stage", _("must be an active lifecycle stage."))
    if not isinstance(min_score, int | float) or isinstance(min_score, bool):
        raise _field_error("min_score", _("must be a number."))
    if not math.isfinite(min_score) or min_score <= 0:
        raise _field_error("min_score", _("must be greater than zero."))
    threshold, _created = LeadStageThreshold.objects.update_or_create(
        stage=stage, defaults={"min_score": float(min_score)}
    )
    _apply_threshold_after_commit(threshold)
    return threshold


def _apply_threshold_after_commit(threshold: LeadStageThreshold) -> None:
    # Imported here: segments.tasks imports this module.
    from segments import tasks

    pk = threshold.pk
    transaction.on_commit(lambda: tasks.lead_score_threshold_apply.delay(pk))


def threshold_apply(*, threshold_id: int) -> int:
    """Move the contacts whose stored score already reaches the threshold (and who are behind
    its stage) forward; return how many moved. Batched, one transaction a batch; idempotent."""
    threshold = (
        LeadStageThreshold.objects.select_related("stage")
        .filter(pk=threshold_id, stage__is_active=True)
        .exclude(stage__key__in=OFF_PATH_STAGE_KEYS)
        .first()
    )
    if threshold is None:
        return 0
    behind = Contact.objects.filter(
        merged_into__isnull=True,
        lead_score__gte=threshold.min_score,
        lifecycle_stage__position__lt=threshold.stage.position,
    )
    moved = 0
    for ids in _id_pages(behind, THRESHOLD_BATCH):
        with transaction.atomic():
            scores = dict(
                Contact.objects.select_for_update(no_key=True)
                .filter(pk__in=ids)
                .order_by("pk")
                .values_list("pk", "lead_score")
            )
            moved += _apply_thresholds(scores)
    return moved


def threshold_delete(*, threshold: LeadStageThreshold) -> None:
    """Stop moving contacts to the threshold's stage (stages already set stay)."""
    threshold.delete()


def _thresholds() -> list[tuple[float, Stage]]:
    # A threshold saved on an off-path stage before they were refused moves nobody.
    return [
        (t.min_score, t.stage)
        for t in LeadStageThreshold.objects.select_related("stage")
        .filter(stage__is_active=True)
        .exclude(stage__key__in=OFF_PATH_STAGE_KEYS)
    ]


def _apply_thresholds(scores: dict[int, float]) -> int:
    """Move contacts forward to the furthest stage their score reaches; return how many moved."""
    thresholds = _thresholds()
    if not thresholds or not scores:
        return 0
    lowest = min(m for m, _ in thresholds)
    candidates = [pk for pk, score in scores.items() if score >= lowest]
    if not candidates:
        return 0
    current = dict(
        Contact.objects.filter(pk__in=candidates, merged_into__isnull=True).values_list(
            "pk", "lifecycle_stage__position"
        )
    )
    moved = 0
    for pk, position in sorted(current.items()):
        reached = [stage for minimum, stage in thresholds if scores[pk] >= minimum]
        target = max(reached, key=lambda s: (s.position, s.key))
        # Forward only: a threshold never pulls a buyer back to "interested".
        if target.position <= position:
            continue
        with transaction.atomic():
            # Read again under the lock: the stage read above may be stale (an operator or an
            # import moved it forward since, or the contact was merged away), and writing the
            # threshold's stage over a later one would pull the contact back.
            _lock_contacts([pk])
            row = (
                Contact.objects.filter(pk=pk, merged_into__isnull=True)
                .values_list("lifecycle_stage", "lifecycle_stage__position")
                .first()
            )
            if row is None or target.position <= row[1]:
                continue
            contact = contact_update(
                contact=Contact(pk=pk),
                data={"lifecycle_stage": target.key},
                source=STAGE_CHANGE_REASON,
            )
            event_record(
                contact=contact,
                name=STAGE_CHANGED_EVENT,
                properties={
                    "from": row[0],
                    "to": target.key,
                    "reason": STAGE_CHANGE_REASON,
                    "score": round(scores[pk], 2),
                },
            )
        moved += 1
    return moved


# --- Decay ----------------------------------------------------------------------------------


def decay_factor(*, age: dt.timedelta, half_life_days: int) -> float:
    """The weight left after `age`: 0.5 ** (age / half-life); 1 when decay is off."""
    if half_life_days <= 0:
        return 1.0
    return 0.5 ** (age.total_seconds() / (half_life_days * SECONDS_PER_DAY))


def _score_parts(
    awards: Iterable[tuple[int, dt.datetime, bool]], *, now: dt.datetime, half_life_days: int
) -> tuple[int, float]:
    """(profile-fit points, exact decayed engagement points) of a contact's awards at `now`."""
    fit, engagement = 0, 0.0
    for points, awarded_at, is_fit in awards:
        if is_fit:
            fit += points
        else:
            engagement += points * decay_factor(age=now - awarded_at, half_life_days=half_life_days)
    return fit, engagement


def lead_scores_recompute_contacts(
    *, contact_ids: Iterable[int], now: dt.datetime | None = None, apply_thresholds: bool = True
) -> dict[int, float]:
    """Recompute the given contacts' scores from their awards; return the new scores."""
    now = now or timezone.now()
    half_life = scoring_config_get().half_life_days
    ids = sorted(set(contact_ids))
    scores: dict[int, float] = {}
    for start in range(0, len(ids), RECOMPUTE_BATCH):
        batch = ids[start : start + RECOMPUTE_BATCH]
        # Locked, as the award path locks them: an award saved between reading this batch's
        # awards and storing its scores would otherwise be overwritten, and the award path
        # builds on the stored engagement part, so the loss would last until the next pass.
        with transaction.atomic():
            _lock_contacts(batch)
            awards: dict[int, list[tuple[int, dt.datetime, bool]]] = defaultdict(list)
            for contact_id, points, awarded_at, event_id in LeadScoreAward.objects.filter(
                contact_id__in=batch
            ).values_list("contact_id", "points", "awarded_at", "event_id"):
                awards[contact_id].append((points, awarded_at, event_id is None))
            stored = dict(Contact.objects.filter(pk__in=batch).values_list("pk", "lead_score"))
            # A contact without awards and already at zero is left alone: nothing to store, and
            # an untouched row is what a merge undo expects to find.
            parts = {
                pk: _score_parts(awards.get(pk, ()), now=now, half_life_days=half_life)
                for pk in batch
                if pk in awards or stored.get(pk, 0) != 0
            }
            _store_scores(
                {pk: (fit + engagement, engagement) for pk, (fit, engagement) in parts.items()}, now
            )
            batch_scores = {
                pk: score_round(fit + engagement) for pk, (fit, engagement) in parts.items()
            }
            # Rules on the score re-evaluate the contacts whose score moved (the daily decay moves
            # most scored contacts) on the next incremental pass: one statement per batch.
            queue_contacts(
                masks={
                    pk: SCORE_TOPIC_MASK
                    for pk, score in batch_scores.items()
                    if pk in stored and score != stored[pk]
                }
            )
            scores.update(batch_scores)
    if apply_thresholds:
        _apply_thresholds(scores)
    return scores


def _store_scores(scores: dict[int, tuple[float, float]], now: dt.datetime) -> None:
    """Store each contact's (exact score, exact engagement part) as of `now`: the score
    rounded (lead_score), the engagement part exact (lead_score_engagement)."""
    # One UPDATE … CASE per batch in plain SQL: QuerySet.bulk_update builds one Q object per
    # row in Python; recomputing 4,000 contacts took 10.6 s with it and 0.65 s with this.
    table = connection.ops.quote_name(Contact._meta.db_table)
    pk = connection.ops.quote_name(Contact._meta.pk.column)
    score_col = connection.ops.quote_name(Contact._meta.get_field("lead_score").column)
    part_col = connection.ops.quote_name(Contact._meta.get_field("lead_score_engagement").column)
    at_col = connection.ops.quote_name(Contact._meta.get_field("lead_score_at").column)
    at = connection.ops.adapt_datetimefield_value(now)
    rows = sorted(scores.items())
    with connection.cursor() as cursor:
        for start in range(0, len(rows), STORE_BATCH):
            batch = rows[start : start + STORE_BATCH]
            cases = " ".join("WHEN %s THEN %s" for _ in batch)
            marks = ", ".join("%s" for _ in batch)
            params: list[Any] = [v for pk_, (score, _) in batch for v in (pk_, score_round(score))]
            params += [v for pk_, (_, part) in batch for v in (pk_, float(part))]
            params += [at, *(pk_ for pk_, _ in batch)]
            cursor.execute(
                f"UPDATE {table} SET {score_col} = CASE {pk} {cases} END, "
                f"{part_col} = CASE {pk} {cases} END, {at_col} = %s "
                f"WHERE {pk} IN ({marks})",
                params,
            )


def lead_scores_recompute_all(*, now: dt.datetime | None = None) -> int:
    """Recompute every contact that has awards or a non-zero score; return how many."""
    now = now or timezone.now()
    scored = Contact.objects.filter(
        ~Q(lead_score=0) | Exists(LeadScoreAward.objects.filter(contact_id=OuterRef("pk")))
    )
    total = 0
    for ids in _id_pages(scored, RECOMPUTE_BATCH):
        with transaction.atomic():
            lead_scores_recompute_contacts(contact_ids=ids, now=now)
        total += len(ids)
    return total


def _id_pages(contacts: QuerySet[Contact], size: int) -> Iterator[list[int]]:
    """The ids of `contacts` in ascending pages of `size`, each read when the one before is
    done (keyset: a page written meanwhile never shifts the next one)."""
    after = 0
    while True:
        ids = list(contacts.filter(pk__gt=after).order_by("pk").values_list("pk", flat=True)[:size])
        if not ids:
            return
        yield ids
        after = ids[-1]


# --- Event awards ---------------------------------------------------------------------------


def _period_bounds(period: str, moment: dt.datetime) -> tuple[dt.datetime | None, dt.datetime]:
    """The [start, end) of the cap period holding `moment`, in the site's time zone."""
    local = timezone.localtime(moment)
    midnight = local.replace(hour=0, minute=0, second=0, microsecond=0)
    if period == CapPeriod.EVER:
        return None, dt.datetime.max.replace(tzinfo=dt.UTC)
    if period == CapPeriod.DAY:
        start = midnight
        end = start + dt.timedelta(days=1)
    elif period == CapPeriod.WEEK:
        start = midnight - dt.timedelta(days=local.weekday())
        end = start + dt.timedelta(days=7)
    else:
        start = midnight.replace(day=1)
        end = (start + dt.timedelta(days=32)).replace(day=1)
    # Re-localise so that a DST change inside the period keeps the wall-clock boundaries.
    tz = timezone.get_current_timezone()
    return (
        timezone.make_aware(start.replace(tzinfo=None), tz),
        timezone.make_aware(end.replace(tzinfo=None), tz),
    )


@transaction.atomic
def lead_scores_award_events(*, events: list[Event], now: dt.datetime | None = None) -> int:
    """Award the event rules' points for these events (idempotent); return the points given."""
    if not events:
        return 0
    rules_by_name: dict[str, list[LeadScoreRule]] = defaultdict(list)
    for rule in LeadScoreRule.objects.filter(
        kind=ScoreRuleKind.EVENT, is_active=True, event_name__in={e.name for e in events}
    ).order_by("pk"):
        rules_by_name[rule.event_name].append(rule)
    if not rules_by_name:
        return 0
    now = now or timezone.now()
    # Filters match in SQL with the segment rules' meaning: one query per rule that has any.
    passed: dict[int, set[int]] = {}
    for rules in rules_by_name.values():
        for rule in rules:
            if rule.property_filters:
                ids = sorted(e.pk for e in events if e.name == rule.event_name)
                passed[rule.pk] = _matching_event_ids(rule, ids)
    candidates = [
        (rule, event)
        for event in sorted(events, key=lambda e: (e.occurred_at, e.pk))
        for rule in rules_by_name.get(event.name, ())
        if rule.pk not in passed or event.pk in passed[rule.pk]
    ]
    if not candidates:
        return 0
    contact_ids = sorted({event.contact_id for _, event in candidates})
    # Row locks serialise concurrent batches for the same contact: caps and the score both
    # read before they write.
    _lock_contacts(contact_ids)
    new_awards = _create_awards(candidates, now)
    if not new_awards:
        return 0
    _add_to_scores(new_awards, now)
    return sum(a.points for a in new_awards)


def _create_awards(
    candidates: list[tuple[LeadScoreRule, Event]], now: dt.datetime
) -> list[LeadScoreAward]:
    """Store the awards the (rule, event) pairs earn, in order, within the rules' caps; skip
    pairs already awarded. The caller holds the contacts' row locks."""
    event_ids = sorted({e.pk for _, e in candidates})
    rule_ids = {r.pk for r, _ in candidates}
    done: set[tuple[int, int]] = set()
    for start in range(0, len(event_ids), MATCH_BATCH):
        done.update(
            LeadScoreAward.objects.filter(
                event_id__in=event_ids[start : start + MATCH_BATCH], rule_id__in=rule_ids
            ).values_list("rule_id", "event_id")
        )
    # Each pair's award time and (capped rules) cap period, worked out once; the periods and
    # contacts each capped rule needs running totals for.
    pending: list[tuple[LeadScoreRule, Event, dt.datetime, dt.datetime | None]] = []
    capped: dict[int, LeadScoreRule] = {}
    periods: dict[int, dict[dt.datetime | None, dt.datetime]] = defaultdict(dict)
    contacts: dict[int, set[int]] = defaultdict(set)
    for rule, event in candidates:
        if (rule.pk, event.pk) in done:
            continue
        done.add((rule.pk, event.pk))
        awarded_at = min(event.occurred_at, now)
        period_start = None
        if rule.cap_period != CapPeriod.NONE and rule.cap_points:
            period_start, period_end = _period_bounds(rule.cap_period, awarded_at)
            capped[rule.pk] = rule
            periods[rule.pk][period_start] = period_end
            contacts[rule.pk].add(event.contact_id)
        pending.append((rule, event, awarded_at, period_start))
    # Running totals per (rule, contact, period start), from the database: grouped queries.
    running: dict[tuple[int, int, dt.datetime | None], int] = {}
    for rule_id, rule in capped.items():
        for (contact_id, period_start), total in _awarded_in_periods(
            rule, contacts[rule_id], periods[rule_id]
        ).items():
            running[(rule_id, contact_id, period_start)] = total
    new_awards: list[LeadScoreAward] = []
    for rule, event, awarded_at, period_start in pending:
        points = rule.points
        if rule.pk in capped:
            key = (rule.pk, event.contact_id, period_start)
            used = abs(running.get(key, 0))
            # A negative rule's cap limits how much it can take away, symmetrically.
            allowed = max(rule.cap_points - used, 0)
            points = int(math.copysign(min(abs(points), allowed), points))
            if points == 0:
                continue
            running[key] = running.get(key, 0) + points
        new_awards.append(
            LeadScoreAward(
                contact_id=event.contact_id,
                rule=rule,
                event=event,
                points=points,
                awarded_at=awarded_at,
            )
        )
    if new_awards:
        LeadScoreAward.objects.bulk_create(new_awards, ignore_conflicts=True)
    return new_awards


def _awarded_in_periods(
    rule: LeadScoreRule,
    contact_ids: set[int],
    periods: dict[dt.datetime | None, dt.datetime],
) -> dict[tuple[int, dt.datetime | None], int]:
    """The points `rule` already gave each contact in each cap period (keyed by its start;
    None for "ever"), summed in SQL: one grouped query per PERIOD_BATCH periods and
    MATCH_BATCH contacts, whatever the number of events."""
    totals: dict[tuple[int, dt.datetime | None], int] = {}
    ids = sorted(contact_ids)
    spans = sorted(periods.items()) if None not in periods else [(None, periods[None])]
    for first in range(0, len(ids), MATCH_BATCH):
        awards = LeadScoreAward.objects.filter(
            rule=rule, contact_id__in=ids[first : first + MATCH_BATCH]
        ).order_by()
        for low in range(0, len(spans), PERIOD_BATCH):
            chunk = spans[low : low + PERIOD_BATCH]
            if chunk[0][0] is None:
                rows = awards.values("contact_id").annotate(total=Sum("points"))
                totals.update({(r["contact_id"], None): r["total"] or 0 for r in rows})
                continue
            # Periods never overlap: each award falls in at most one of them.
            which = Case(
                *(
                    When(awarded_at__gte=start, awarded_at__lt=end, then=Value(i))
                    for i, (start, end) in enumerate(chunk)
                ),
                output_field=IntegerField(),
            )
            rows = (
                awards.filter(awarded_at__gte=chunk[0][0], awarded_at__lt=chunk[-1][1])
                .annotate(period=which)
                .filter(period__isnull=False)
                .values("contact_id", "period")
                .annotate(total=Sum("points"))
            )
            for r in rows:
                totals[(r["contact_id"], chunk[r["period"]][0])] = r["total"] or 0
    return totals


def _lock_contacts(contact_ids: list[int]) -> None:
    # NO KEY UPDATE: scores change no key column, and a plain FOR UPDATE would also block the
    # commit-time foreign-key checks of other transactions' rows pointing at these contacts
    # (a deadlock when such a transaction then waits for this one). Merges (FOR UPDATE) and
    # other writers (NO KEY UPDATE) still wait for it.
    list(
        Contact.objects.select_for_update(no_key=True)
        .filter(pk__in=contact_ids)
        .order_by("pk")
        .values_list("pk", flat=True)
    )


def _add_to_scores(awards: list[LeadScoreAward], now: dt.datetime) -> None:
    """Add the new awards to their contacts' scores, store them (rounded) and apply thresholds.

    Constant cost whatever a contact's history: the exact engagement part stored with the
    score (lead_score_engagement) is decayed to `now` and the new points added; the fit part is
    whole points, round(lead_score − engagement part). Never the rounded score carried forward,
    so the result is the full recompute's. A contact whose part is not known yet (scored before
    the column existed, or never) is recomputed from its awards. The caller holds the row locks.
    """
    half_life = scoring_config_get().half_life_days
    touched = sorted({a.contact_id for a in awards})
    rows = {
        pk: (score, part, at)
        for pk, score, part, at in Contact.objects.filter(pk__in=touched).values_list(
            "pk", "lead_score", "lead_score_engagement", "lead_score_at"
        )
    }
    for pk, (score, part, at) in list(rows.items()):
        if at is None and part is None and score == 0:
            # Never scored (every score written carries its time): nothing to carry forward.
            rows[pk] = (0.0, 0.0, now)
    unknown = [pk for pk, (_, part, at) in rows.items() if part is None or at is None]
    if unknown:
        # Recomputed with the new awards (already stored); queues its changed contacts.
        lead_scores_recompute_contacts(contact_ids=unknown, now=now)
    added: dict[int, float] = defaultdict(float)
    for award in awards:
        added[award.contact_id] += award.points * decay_factor(
            age=now - award.awarded_at, half_life_days=half_life
        )
    parts: dict[int, tuple[float, float]] = {}
    changed: dict[int, float] = {}
    for pk, (score, part, at) in rows.items():
        if pk in unknown:
            continue
        fit = round(score - part)
        engagement = part * decay_factor(age=now - at, half_life_days=half_life) + added[pk]
        parts[pk] = (fit + engagement, engagement)
        changed[pk] = score_round(fit + engagement)
    _store_scores(parts, now)
    # Rules on the score re-evaluate the contacts whose score moved on the next incremental
    # pass: queued once, with the score's topic.
    queue_contacts(
        masks={pk: SCORE_TOPIC_MASK for pk, new in changed.items() if new != rows[pk][0]}
    )
    _apply_thresholds(changed)


# --- Back-fill of event rules ---------------------------------------------------------------


def _backfill_after_commit(rule: LeadScoreRule) -> None:
    # Imported here: segments.tasks imports this module.
    from segments import tasks

    pk = rule.pk
    transaction.on_commit(lambda: tasks.lead_score_rule_backfill.delay(pk))


def backfill_window_start(*, now: dt.datetime, half_life_days: int) -> dt.datetime:
    """The oldest event time a back-fill scores: where decay leaves under BACKFILL_NEGLIGIBLE of
    the points (30-day half-life: 200 days), at most BACKFILL_MAX_DAYS back."""
    days = BACKFILL_MAX_DAYS
    if half_life_days > 0:
        days = min(days, math.ceil(half_life_days * math.log2(1 / BACKFILL_NEGLIGIBLE)))
    return now - dt.timedelta(days=days)


def score_rule_backfill(*, rule_id: int, now: dt.datetime | None = None) -> int:
    """Score an enabled event rule's past events in the back-fill window as if the rule had
    always been as it is now: its awards in the window are replaced, caps and decay apply, and
    the thresholds move contacts. Batched by contact, one transaction a batch, so no score is
    ever half done; running it twice changes nothing. Returns the contacts rescored."""
    now = now or timezone.now()
    start = backfill_window_start(now=now, half_life_days=scoring_config_get().half_life_days)
    after = 0
    total = 0
    while True:
        with transaction.atomic():
            # The rule's row lock serialises two back-fills of the same rule (an edit made while
            # one runs queues another, which redoes the batches with the new rule).
            rule = (
                LeadScoreRule.objects.select_for_update()
                .filter(pk=rule_id, kind=ScoreRuleKind.EVENT, is_active=True)
                .first()
            )
            if rule is None:
                return total
            events = Event.objects.filter(name=rule.event_name, occurred_at__gte=start).filter(
                property_filters_q(filters=rule.property_filters)
            )
            awards = LeadScoreAward.objects.filter(
                rule=rule, event__isnull=False, awarded_at__gte=start
            )
            # A page of contacts by id, then those of them with the rule's events or awards:
            # each page reads only its contacts' rows through the (contact, time) indexes, so
            # the whole back-fill reads the window once. (DISTINCT contact_id over the events
            # with a LIMIT read every matching event again for each batch.)
            page = _contact_page(after)
            if not page:
                return total
            ids = sorted(set(_with_rows(events, page)) | set(_with_rows(awards, page)))
            after = page[-1]
            if not ids:
                continue
            _lock_contacts(ids)
            awards.filter(contact_id__in=ids).delete()
            batch = list(
                events.filter(contact_id__in=ids)
                .order_by("occurred_at", "pk")
                .only("pk", "contact_id", "occurred_at", "name")
            )
            _create_awards([(rule, event) for event in batch], now)
            lead_scores_recompute_contacts(contact_ids=ids, now=now)
        total += len(ids)


def _contact_page(after: int) -> list[int]:
    """The next BACKFILL_BATCH contact ids after `after` (merged ones too: their rows stay)."""
    return list(
        Contact.objects.filter(pk__gt=after)
        .order_by("pk")
        .values_list("pk", flat=True)[:BACKFILL_BATCH]
    )


def _with_rows(qs, page: list[int]) -> list[int]:
    """The contacts of `page` that `qs` (events or awards) has rows for."""
    return list(
        qs.filter(contact_id__in=page).order_by().values_list("contact_id", flat=True).distinct()
    )


# --- Profile fit ----------------------------------------------------------------------------


def lead_scores_fit(
    *, contact_ids: Iterable[int] | None = None, now: dt.datetime | None = None
) -> tuple[int, int]:
    """Give profile-fit points to matching contacts and take them back from the others.

    Evaluates the given contacts, or everyone when `contact_ids` is None; merged contacts are
    left as they are (their rows come back to life on undo). Returns (added, removed).

    Not one transaction: outside one (the daily pass, the task after a change) each rule's
    awards commit on their own and the scores are then recomputed batch by batch, so the pass
    never holds the locks of every contact it touched until its end (identify, merges and
    edits of those contacts would wait for the whole pass). Inside a caller's transaction (a
    merge) it is part of that transaction, as before.
    """
    now = now or timezone.now()
    ids = None if contact_ids is None else sorted(set(contact_ids))
    if ids == []:
        return 0, 0
    live = Contact.objects.filter(merged_into__isnull=True)
    if ids is not None:
        live = live.filter(pk__in=ids)
    fit_awards = LeadScoreAward.objects.filter(
        event__isnull=True, contact__merged_into__isnull=True
    )
    if ids is not None:
        fit_awards = fit_awards.filter(contact_id__in=ids)
    touched: set[int] = set()
    added = removed = 0
    # Awards of rules that are no longer active profile-fit rules go.
    stale = fit_awards.exclude(rule__kind=ScoreRuleKind.ATTRIBUTE, rule__is_active=True)
    with transaction.atomic():
        touched.update(stale.values_list("contact_id", flat=True))
        removed += stale.delete()[0]
    for rule in LeadScoreRule.objects.filter(kind=ScoreRuleKind.ATTRIBUTE, is_active=True):
        try:
            # In a savepoint: a condition that can no longer be evaluated (it reads something
            # deleted under it) skips its rule, never the others, nor the change that called
            # this after its commit.
            with transaction.atomic():
                gone, new, dropped = _fit_rule(rule, live, fit_awards, now)
        except Exception:
            logger.exception("profile-fit rule %s could not be evaluated", rule.pk)
            continue
        removed += dropped
        added += len(new)
        touched |= gone | new
    if touched:
        lead_scores_recompute_contacts(contact_ids=touched, now=now)
        if ids is not None:
            mark_dirty(contact_ids=touched, topics=["lead_score"])
    return added, removed


def _fit_rule(
    rule: LeadScoreRule, live, fit_awards, now: dt.datetime
) -> tuple[set[int], set[int], int]:
    """Award one profile-fit rule to the contacts it matches and take it back from the others;
    return (contacts that lost it, contacts that gained it, awards deleted)."""
    matching = set(live.filter(compile_rule(rule.condition)).values_list("pk", flat=True))
    holding = set(fit_awards.filter(rule=rule).values_list("contact_id", flat=True))
    gone = holding - matching
    new = matching - holding
    dropped = 0
    if gone:
        dropped = LeadScoreAward.objects.filter(
            rule=rule, event__isnull=True, contact_id__in=gone
        ).delete()[0]
    if new:
        LeadScoreAward.objects.bulk_create(
            [
                LeadScoreAward(contact_id=pk, rule=rule, points=rule.points, awarded_at=now)
                for pk in sorted(new)
            ],
            ignore_conflicts=True,
            batch_size=RECOMPUTE_BATCH,
        )
    return gone, new, dropped


def lead_scores_daily(*, now: dt.datetime | None = None) -> dict[str, int]:
    """The daily pass: re-evaluate profile fit for everyone, then recompute every score."""
    now = now or timezone.now()
    added, removed = lead_scores_fit(now=now)
    recomputed = lead_scores_recompute_all(now=now)
    return {"fit_added": added, "fit_removed": removed, "recomputed": recomputed}


# --- Merges ---------------------------------------------------------------------------------


def lead_scores_merge(*, record: MergeRecord, survivor: Contact, duplicate: Contact) -> None:
    """Move the duplicate's awards to the survivor and recompute both scores."""
    # A fit award the survivor also holds stays with the (hidden) duplicate: one per rule.
    qs = LeadScoreAward.objects.filter(contact=duplicate).exclude(
        event__isnull=True,
        rule__in=LeadScoreAward.objects.filter(contact=survivor, event__isnull=True).values("rule"),
    )
    ids = list(qs.order_by("pk").values_list("pk", flat=True))
    for start in range(0, len(ids), RECOMPUTE_BATCH):
        LeadScoreAward.objects.filter(pk__in=ids[start : start + RECOMPUTE_BATCH]).update(
            contact=survivor
        )
    record.moved[MERGE_MOVED_KEY] = ids
    record.save(update_fields=["moved"])
    # The survivor took blank fields from the duplicate, so its profile fit may have changed.
    lead_scores_fit(contact_ids=[survivor.pk])
    lead_scores_recompute_contacts(contact_ids=[survivor.pk, duplicate.pk])


def lead_scores_unmerge(*, record: MergeRecord, survivor: Contact, duplicate: Contact) -> None:
    """Give the duplicate back the awards the merge moved, and the awards of every event the
    undo gives back (a back-fill since the merge replaced those events' awards with new rows,
    which the merge's list does not name); rescore both after commit."""
    ids = record.moved.get(MERGE_MOVED_KEY, [])
    for start in range(0, len(ids), RECOMPUTE_BATCH):
        LeadScoreAward.objects.filter(pk__in=ids[start : start + RECOMPUTE_BATCH]).update(
            contact=duplicate
        )
    # An event award belongs to its event's contact: the events the merge moved go back to the
    # duplicate (after this signal), and so do their awards, whatever their ids are now.
    event_ids = record.moved.get(MERGE_MOVED_EVENTS_KEY, [])
    for start in range(0, len(event_ids), RECOMPUTE_BATCH):
        LeadScoreAward.objects.filter(
            contact=survivor, event_id__in=event_ids[start : start + RECOMPUTE_BATCH]
        ).update(contact=duplicate)
    pair = [survivor.pk, duplicate.pk]

    def rescore() -> None:
        # After commit: the undo restores both contact rows (score columns included) from its
        # snapshot after this signal, which would overwrite a score computed now.
        lead_scores_fit(contact_ids=pair)
        lead_scores_recompute_contacts(contact_ids=pair)

    transaction.on_commit(rescore)
