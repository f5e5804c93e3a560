"""Segments: create and change them, materialise membership, and keep it fresh.

Membership is materialised in SegmentMembership with `entered_at`. A full refresh is two
set-based statements (INSERT … SELECT of the newcomers, DELETE of the leavers, both RETURNING the
contact ids) around the compiled rule; an incremental refresh re-evaluates only the contacts
queued in DirtyContact. Every entry and exit after the first build is written as a
`segment_entered` / `segment_exited` event and sent as a signal (journeys enrol on it), and
auto-tag rules follow the same diff. Segments that read other segments refresh after them.
"""

import datetime as dt
import logging
import time
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, as_completed, wait
from contextlib import closing
from dataclasses import dataclass
from typing import Any, TypeVar

from django.conf import settings
from django.contrib.auth.models import AbstractBaseUser
from django.db import connection, connections, transaction
from django.db.models import (
    PROTECT,
    RESTRICT,
    Case,
    Exists,
    F,
    OuterRef,
    ProtectedError,
    Q,
    QuerySet,
    Value,
    When,
)
from django.db.models.expressions import RawSQL
from django.http import QueryDict
from django.utils import timezone
from django.utils.translation import gettext as _
from django.utils.translation import gettext_noop, pgettext

from contacts.bulk import bulk_target
from contacts.filters import ContactFilter
from contacts.models import (
    Contact,
    ContactTag,
    CustomField,
    Event,
    Tag,
    TagSource,
)
from contacts.services import contacts_lock_live, events_append
from core import jobs
from core.errors import DomainError, ValidationFailed
from core.ids import MAX_ID
from core.models import Job
from core.sql import bigint_array, delete_returning, insert_new
from segments.models import (
    AutoTagRule,
    DirtyContact,
    LeadScoreRule,
    RefreshPolicy,
    ScoreRuleKind,
    Segment,
    SegmentKind,
    SegmentMembership,
    SegmentSize,
)
from segments.rules import (
    compile_rule,
    rule_has_time_window,
    rule_segment_refs,
    rule_tag_refs,
    validate_rule,
)
from segments.rules.schema import rule_conditions, segment_ancestors
from segments.rules.topics import TAGS, rule_mask, segment_topic, topic_bit, topics_mask
from segments.signals import segment_entered, segment_exited

logger = logging.getLogger(__name__)
T = TypeVar("T")

# How often an on-change segment whose rule has a time window is rebuilt in full, on the hour.
WINDOW_REFRESH_EVERY = dt.timedelta(hours=1)
# Above this many changed contacts, re-evaluation leaves the request and runs in a worker.
INLINE_REFRESH_LIMIT = 200
# Contact ids per statement: bounded so that SQLite's parameter limit is never reached.
DIFF_BATCH = 2000


def segment_queryset(
    *, segment: Segment, now: dt.datetime | None = None, scope: QuerySet | None = None
) -> QuerySet[Contact]:
    """The contacts the segment holds right now: its rule's matches, or a static list.

    With `scope` (a query of contact ids), only those contacts are considered.
    """
    # Contacts merged into another are kept only for undo and never match a rule.
    live = Contact.objects.filter(merged_into__isnull=True)
    if scope is not None:
        live = live.filter(pk__in=scope)
    if segment.kind == SegmentKind.STATIC:
        return live.filter(segment_memberships__segment=segment)
    return live.filter(compile_rule(segment.rule, now=now, scope=scope))


CUSTOM_FIELD_PREFIX = "attributes."
# Condition fields holding ids of other tables, and the message naming the unknown ones (the
# validator's own words: an id out of range is an unknown id).
ID_FIELDS = {
    "owner": gettext_noop("unknown owner ids %(ids)s"),
    "store": gettext_noop("unknown store ids %(ids)s"),
}
UNKNOWN_TAGS = gettext_noop("unknown tag ids %(ids)s")


def rule_field_keys(rule: Any) -> set[str]:
    """The keys of the custom fields a rule reads."""
    return {
        node["field"].removeprefix(CUSTOM_FIELD_PREFIX)
        for node in rule_conditions(rule)
        if node.get("type") == "attribute"
        and isinstance(node.get("field"), str)
        and node["field"].startswith(CUSTOM_FIELD_PREFIX)
    }


def _out_of_range(values: Any) -> list[int]:
    values = values if isinstance(values, list) else [values]
    return [v for v in values if isinstance(v, int) and not isinstance(v, bool) and abs(v) > MAX_ID]


def rule_check_ids(rule: Any) -> None:
    """Refuse tag, owner and store ids no row can have, before validation looks them up (the
    lookup of such a number fails on SQLite instead of finding nothing)."""
    stack = [(rule, "rule")]
    while stack:
        node, path = stack.pop()
        if not isinstance(node, dict):
            continue
        if "op" in node:
            children = node.get("conditions")
            if isinstance(children, list):
                stack += [(child, f"{path}.conditions[{i}]") for i, child in enumerate(children)]
            continue
        if node.get("type") == "tag":
            where, message, bad = "tags", UNKNOWN_TAGS, _out_of_range(node.get("tags"))
        elif node.get("type") == "attribute" and node.get("field") in ID_FIELDS:
            where, message = "value", ID_FIELDS[node["field"]]
            bad = _out_of_range(node.get("value"))
        else:
            continue
        if bad:
            raise ValidationFailed(
                f"{path}.{where}: " + _(message) % {"ids": sorted(bad)},
                code="invalid_rule",
                details={"path": f"{path}.{where}"},
            )


def rule_queryset(*, rule: dict, segment_id: int | None = None) -> QuerySet[Contact]:
    """Validate a rule being edited and return what it matches (the builder's live count)."""
    rule_check_ids(rule)
    validate_rule(rule, segment_id=segment_id)
    return Contact.objects.filter(compile_rule(rule), merged_into__isnull=True)


def _check_name(name: str, exclude: int | None = None) -> str:
    name = (name or "").strip()
    if not name:
        raise ValidationFailed(_("A segment needs a name."), code="invalid_name")
    if len(name) > 100:
        raise ValidationFailed(_("A segment name is at most 100 characters."), code="invalid_name")
    if Segment.objects.filter(name=name).exclude(pk=exclude).exists():
        raise ValidationFailed(
            _("A segment named “%(name)s” already exists.") % {"name": name},
            code="duplicate_name",
        )
    return name


def _check_policy(policy: str, interval: int, hour: int) -> None:
    if policy not in RefreshPolicy.values:
        raise ValidationFailed(
            _("Refresh policy must be one of %(choices)s.")
            % {"choices": ", ".join(RefreshPolicy.values)},
            code="invalid_policy",
        )
    if policy == RefreshPolicy.INTERVAL and not 5 <= interval <= 7 * 24 * 60:
        raise ValidationFailed(_("Refresh every 5 to 10,080 minutes."), code="invalid_policy")
    if not 0 <= hour <= 23:
        raise ValidationFailed(_("The daily refresh hour is 0–23."), code="invalid_policy")


def _sync_rule_metadata(segment: Segment) -> None:
    segment.has_time_window = rule_has_time_window(segment.rule)
    segment.save(update_fields=["has_time_window"])
    segment.depends_on.set(rule_segment_refs(segment.rule))
    segment.tags_read.set(Tag.objects.filter(pk__in=rule_tag_refs(segment.rule)))
    segment.fields_read.set(CustomField.objects.filter(key__in=rule_field_keys(segment.rule)))


def next_refresh_after(segment: Segment, moment: dt.datetime) -> dt.datetime | None:
    """When a scheduled full refresh is next due (None for policies beat does not schedule)."""
    if segment.kind == SegmentKind.STATIC:
        return None
    if segment.refresh_policy == RefreshPolicy.INTERVAL:
        return moment + dt.timedelta(minutes=segment.refresh_interval_minutes)
    if segment.refresh_policy == RefreshPolicy.ON_CHANGE and segment.has_time_window:
        # Windows age out by the minute without any change ("created in the last 7 days"), and
        # the API answers "is X a member" from the stored membership: rebuilt every hour, on the
        # hour, a lapsed member stays at most an hour (a date window lapses at midnight, and is
        # rebuilt at 00:00). At 1,000,000 contacts a rebuild takes the worker one to two seconds
        # per segment (docs/benchmarks.md); daily, as before, left them for up to a day.
        local = timezone.localtime(moment)
        return local.replace(minute=0, second=0, microsecond=0) + WINDOW_REFRESH_EVERY
    if segment.refresh_policy == RefreshPolicy.DAILY:
        local = timezone.localtime(moment)
        due = local.replace(hour=segment.refresh_hour, minute=0, second=0, microsecond=0)
        if due <= local:
            due += dt.timedelta(days=1)
        return due
    return None


# Key of the transaction-scoped PostgreSQL advisory lock that serialises every change of which
# segments read which (segment_create, segment_update, and segment_duplicate through
# segment_create). A fixed number that no other advisory lock of this database uses ("SEGG").
SEGMENT_GRAPH_LOCK_KEY = 0x5345_4747


def _validate_locked(rule: dict, *, segment_id: int | None) -> None:
    """Validate `rule` again once the segment graph is locked (PostgreSQL), so that the cycle
    check sees every rule saved before it and none is saved until this one commits.

    The caller has validated the rule once already, so that a malformed rule fails before any
    lock and the segments it reads are known. Two saves checked side by side would each pass
    (C reads D, D reads C) and store a cycle, or deadlock at commit: each holds its own row and
    the deferred foreign-key check of its new `depends_on` row waits for the other's.

    Lock order, the same in every save: the advisory lock, then a KEY SHARE lock on each segment
    the rule reads (in id order), then the segment's own row (its UPDATE and its refresh's
    _lock_segment). The refreshes never take the advisory lock, and each holds one segment's
    row in its transaction: a save waits for a refresh only while it holds nothing a refresh
    wants (the advisory lock, or KEY SHARE locks a refresh starting later waits for), and its
    commit-time foreign-key checks find the KEY SHARE locks already held. Taken before the
    validation, these locks also make a concurrent archive or delete of a segment the rule
    reads (both lock that row FOR UPDATE) either finish first, so that the validation sees it,
    or wait until this save commits and see it as a reader. SQLite runs one write transaction
    at a time: nothing to do there."""
    if connection.vendor != "postgresql":
        return
    reads = sorted(rule_segment_refs(rule))
    with connection.cursor() as cursor:
        cursor.execute("SELECT pg_advisory_xact_lock(%s)", [SEGMENT_GRAPH_LOCK_KEY])
        if reads:
            cursor.execute(
                f"SELECT id FROM {Segment._meta.db_table} WHERE id = ANY(%s::bigint[]) "
                "ORDER BY id FOR KEY SHARE",
                [bigint_array(reads)],
            )
    validate_rule(rule, segment_id=segment_id)


@transaction.atomic
def segment_create(
    *,
    name: str,
    rule: dict | None = None,
    description: str = "",
    kind: str = SegmentKind.DYNAMIC,
    refresh_policy: str = RefreshPolicy.ON_CHANGE,
    refresh_interval_minutes: int = 60,
    refresh_hour: int = 3,
    actor: AbstractBaseUser | None = None,
    build: bool = True,
) -> Segment:
    """Validate and create a segment; a rule-based one is materialised at once (silently),
    unless `build` is False: then the caller builds it, e.g. several with
    segments_materialise."""
    if kind not in SegmentKind.values:
        raise ValidationFailed(_("Kind must be dynamic or static."), code="invalid_kind")
    rule = rule if kind == SegmentKind.DYNAMIC else {}
    if kind == SegmentKind.DYNAMIC:
        rule_check_ids(rule)
        validate_rule(rule)
        _validate_locked(rule, segment_id=None)
    _check_policy(refresh_policy, refresh_interval_minutes, refresh_hour)
    segment = Segment.objects.create(
        name=_check_name(name),
        rule=rule,
        description=description,
        kind=kind,
        refresh_policy=refresh_policy if kind == SegmentKind.DYNAMIC else RefreshPolicy.MANUAL,
        refresh_interval_minutes=refresh_interval_minutes,
        refresh_hour=refresh_hour,
        created_by=actor if actor is not None and actor.is_authenticated else None,
    )
    _sync_rule_metadata(segment)
    if build:
        segment_refresh(segment=segment)
    return segment


@transaction.atomic
def segment_update(
    *,
    segment: Segment,
    name: str | None = None,
    description: str | None = None,
    rule: dict | None = None,
    refresh_policy: str | None = None,
    refresh_interval_minutes: int | None = None,
    refresh_hour: int | None = None,
) -> Segment:
    """Change a segment; when its rule changed, its members are re-evaluated (with events)."""
    if name is not None:
        segment.name = _check_name(name, exclude=segment.pk)
    if description is not None:
        segment.description = description
    rule_changed = False
    if rule is not None and segment.kind == SegmentKind.DYNAMIC:
        rule_check_ids(rule)
        validate_rule(rule, segment_id=segment.pk)
        _validate_locked(rule, segment_id=segment.pk)
        rule_changed = rule != segment.rule
        segment.rule = rule
    policy = refresh_policy if refresh_policy is not None else segment.refresh_policy
    interval = (
        refresh_interval_minutes
        if refresh_interval_minutes is not None
        else segment.refresh_interval_minutes
    )
    hour = refresh_hour if refresh_hour is not None else segment.refresh_hour
    _check_policy(policy, interval, hour)
    if segment.kind == SegmentKind.DYNAMIC:
        segment.refresh_policy = policy
    segment.refresh_interval_minutes, segment.refresh_hour = interval, hour
    # Only what this service changes: the refresh state (error, counts, times) belongs to the
    # refreshes, and the caller's copy of it may be older than a refresh that ran meanwhile.
    segment.save(
        update_fields=[
            "name",
            "description",
            "rule",
            "refresh_policy",
            "refresh_interval_minutes",
            "refresh_hour",
            "updated_at",
        ]
    )
    _sync_rule_metadata(segment)
    if rule_changed:
        # After the save: the segments reading this one see its new rule (rolled back if refused).
        _auto_tag_check_loops(segment=segment)
    _reschedule(segment, next_refresh_after(segment, timezone.now()))
    if rule_changed:
        segment_refresh(segment=segment)
    return segment


def _reschedule(segment: Segment, scheduled: dt.datetime | None) -> None:
    """Set the next scheduled refresh to `scheduled`, except that a segment whose last refresh
    failed keeps the retry _refresh_failed set, if sooner: an on-change segment without time
    windows has no schedule of its own, and that retry is the only full refresh that catches up
    what its failed passes missed and clears the error."""
    if segment.refresh_policy == RefreshPolicy.MANUAL or segment.kind == SegmentKind.STATIC:
        # Never retried (see _refresh_failed): refreshed only when asked.
        retry_kept = Q(pk__in=[])
    else:
        retry_kept = (
            ~Q(refresh_error="")
            & Q(next_refresh_at__isnull=False)
            & (Q(next_refresh_at__lt=scheduled) if scheduled is not None else Q())
        )
    # One statement, on the row as committed (not the caller's copy), after any refresh that
    # held its lock has recorded its outcome.
    Segment.objects.filter(pk=segment.pk).update(
        next_refresh_at=Case(
            When(retry_kept, then=F("next_refresh_at")),
            default=Value(scheduled),
            output_field=Segment._meta.get_field("next_refresh_at"),
        )
    )
    segment.refresh_error, segment.next_refresh_at = (
        Segment.objects.filter(pk=segment.pk).values_list("refresh_error", "next_refresh_at").get()
    )


@transaction.atomic
def segment_duplicate(*, segment: Segment, actor: AbstractBaseUser | None = None) -> Segment:
    """A copy of a segment's definition (and, for a static list, its members)."""
    # The name is cut, not the suffix; 95 of the 100 characters leave room for " 2", " 3" ….
    suffix = len(_("%(name)s (copy)") % {"name": ""})
    base = _("%(name)s (copy)") % {"name": segment.name[: max(95 - suffix, 1)]}
    name, n = base, 2
    while Segment.objects.filter(name=name).exists():
        name, n = f"{base} {n}", n + 1
    copy = segment_create(
        name=name,
        rule=segment.rule,
        description=segment.description,
        kind=segment.kind,
        refresh_policy=segment.refresh_policy,
        refresh_interval_minutes=segment.refresh_interval_minutes,
        refresh_hour=segment.refresh_hour,
        actor=actor,
    )
    if segment.kind == SegmentKind.STATIC:
        ids = list(segment.memberships.values_list("contact_id", flat=True))
        segment_static_add(segment=copy, contact_ids=ids)
    return copy


@transaction.atomic
def segment_archive(*, segment: Segment, archived: bool = True) -> Segment:
    """Archive (or restore) a segment. Archived segments are not refreshed, so archiving is
    refused while something live reads it: a rule of a segment that is not archived, a lead
    scoring rule, a journey starting from it."""
    if archived:
        # Locked as segment_delete locks it: a rule saved meanwhile either commits first and
        # is seen below, or waits and then finds the segment archived (_validate_locked).
        Segment.objects.select_for_update().filter(pk=segment.pk).first()
        readers = segment_readers(segment=segment, archived=False)
        journeys = _segment_protected_by(segment)
        if readers or journeys:
            segments = list(
                Segment.objects.filter(depends_on=segment, is_archived=False)
                .order_by("name")
                .values_list("name", flat=True)
            )
            raise ValidationFailed(
                _("%(readers)s use this segment; change them before archiving it.")
                % {"readers": pgettext("list separator", ", ").join(readers + journeys)},
                code="segment_in_use",
                details={"readers": readers + journeys, "segments": segments},
            )
    segment.is_archived = archived
    segment.save(update_fields=["is_archived", "updated_at"])
    if not archived and segment.kind == SegmentKind.DYNAMIC:
        segment_refresh(segment=segment)
    return segment


def _segment_protected_by(segment: Segment) -> list[str]:
    """What the foreign keys that make segment_delete refuse point from, in words: the
    journeys starting from this segment (any status: a draft or paused one can go live). Read
    through the relations that protect the segment, as the deletion finds them: journeys are a
    higher app, which segments never imports."""
    found = []
    for relation in Segment._meta.related_objects:
        if getattr(relation, "on_delete", None) not in (PROTECT, RESTRICT):
            continue
        model = relation.related_model
        for obj in model._base_manager.filter(**{relation.field.name: segment}).order_by("pk"):
            found.append(
                _("%(kind)s “%(name)s”") % {"kind": model._meta.verbose_name, "name": str(obj)}
            )
    return found


def segment_readers(
    *, segment: Segment, exclude: Iterable[int] = (), archived: bool = True
) -> list[str]:
    """What reads this segment, in words: the segments whose rules read it (archived ones too
    unless `archived` is False: they can be restored) and the profile-fit lead scoring rules
    whose conditions do."""
    segments = Segment.objects.filter(depends_on=segment).exclude(pk__in=list(exclude))
    if not archived:
        segments = segments.filter(is_archived=False)
    readers = [
        _("segment “%(name)s”") % {"name": name}
        for name in segments.order_by("name").values_list("name", flat=True)
    ]
    # Scoring conditions record no references: there are few profile-fit rules, read them all.
    for name, condition in LeadScoreRule.objects.filter(kind=ScoreRuleKind.ATTRIBUTE).values_list(
        "name", "condition"
    ):
        if segment.pk in rule_segment_refs(condition):
            readers.append(_("lead scoring rule “%(name)s”") % {"name": name})
    return readers


@transaction.atomic
def segment_delete(*, segment: Segment, together_with: Iterable[int] = ()) -> None:
    """Delete a segment, its members and its history; refused while a rule reads it (deleting
    it would change what that rule matches: "not in the blacklist" would match everyone) or a
    journey starts from it. `together_with`: ids of segments deleted in the same operation,
    whose reading does not count."""
    # Locked: a rule saved meanwhile cannot start reading a segment being deleted.
    Segment.objects.select_for_update().filter(pk=segment.pk).first()
    readers = segment_readers(segment=segment, exclude=together_with)
    if readers:
        raise ValidationFailed(
            _("%(readers)s read this segment; change them first.")
            % {"readers": pgettext("list separator", ", ").join(readers)},
            code="segment_in_use",
            details={"readers": readers},
        )
    try:
        with transaction.atomic():
            segment.delete()
    except ProtectedError as exc:  # a journey starts from it
        names = sorted(str(obj) for obj in exc.protected_objects)
        raise ValidationFailed(
            _("Journeys %(journeys)s start from this segment; change them first.")
            % {"journeys": ", ".join(names)},
            code="segment_in_use",
            details={"journeys": names},
        ) from exc


def segments_delete(*, segments: Iterable[Segment]) -> int:
    """Delete several segments (readers before what they read); all or nothing."""
    ordered = segments_in_refresh_order(segments)
    ids = [segment.pk for segment in ordered]
    with transaction.atomic():
        for segment in reversed(ordered):
            segment_delete(segment=segment, together_with=ids)
    return len(ordered)


# Materialisation -------------------------------------------------------------------------------


def _batches(ids: list[int]):
    for start in range(0, len(ids), DIFF_BATCH):
        yield ids[start : start + DIFF_BATCH]


@dataclass
class RefreshResult:
    entered: list[int]
    exited: list[int]


def _full_diff(segment: Segment, now: dt.datetime, *, returning: bool) -> RefreshResult:
    """Evaluate the rule once into a temporary table, then insert the newcomers and delete the
    leavers in two set-based statements."""
    query = segment_queryset(segment=segment, now=now).order_by().values("pk").query
    rule_sql, rule_params = query.sql_with_params()
    table = SegmentMembership._meta.db_table
    matches = f"segment_match_{segment.pk}"
    suffix = " RETURNING contact_id" if returning else ""
    postgres = connection.vendor == "postgresql"
    first = not SegmentMembership.objects.filter(segment=segment).exists()
    with connection.cursor() as cursor:
        cursor.execute(f"DROP TABLE IF EXISTS {matches}")
        if postgres:
            # Membership is derived data that the next refresh rebuilds: after a crash it is
            # recomputed, so the refresh need not wait for its WAL to reach the disk.
            cursor.execute("SET LOCAL synchronous_commit = off")
            # CREATE TABLE … AS may run the rule as a parallel query; an INSERT … SELECT never
            # does, which made building a large segment several times slower than counting it.
            cursor.execute(
                f"CREATE TEMPORARY TABLE {matches} (id) AS {rule_sql}",
                rule_params,
            )
            if not first:
                # The key makes the leavers' anti-join a probe per member, never a scan per
                # member (a first build has no leavers: it only copies the table in order).
                cursor.execute(f"ALTER TABLE {matches} ADD PRIMARY KEY (id)")
                cursor.execute(f"ANALYZE {matches}")
        else:
            # A compiled rule filters contacts with EXISTS / IN only, so ids never repeat.
            cursor.execute(f"CREATE TEMPORARY TABLE {matches} (id bigint PRIMARY KEY)")
            cursor.execute(f"INSERT INTO {matches} (id) {rule_sql}", rule_params)
        if first:
            # Nothing to compare with (a first build): nobody leaves, everyone is new. In id
            # order, so that both indexes grow at their right edge.
            cursor.execute(
                f"INSERT INTO {table} (segment_id, contact_id, entered_at) "
                f"SELECT %s, m.id, %s FROM {matches} m ORDER BY m.id{suffix}",
                [segment.pk, now],
            )
            entered = [row[0] for row in cursor.fetchall()] if returning else []
            exited: list[int] = []
        else:
            cursor.execute(
                f"INSERT INTO {table} (segment_id, contact_id, entered_at) "
                f"SELECT %s, m.id, %s FROM {matches} m "
                f"WHERE NOT EXISTS (SELECT 1 FROM {table} s WHERE s.segment_id = %s "
                f"AND s.contact_id = m.id){suffix}",
                [segment.pk, now, segment.pk],
            )
            entered = [row[0] for row in cursor.fetchall()] if returning else []
            cursor.execute(
                f"DELETE FROM {table} WHERE segment_id = %s AND NOT EXISTS "
                f"(SELECT 1 FROM {matches} m WHERE m.id = {table}.contact_id){suffix}",
                [segment.pk],
            )
            exited = [row[0] for row in cursor.fetchall()] if returning else []
        cursor.execute(f"DROP TABLE {matches}")
    return RefreshResult(sorted(entered), sorted(exited))


def segment_refresh(*, segment: Segment, now: dt.datetime | None = None) -> tuple[int, int]:
    """Re-evaluate every contact of a rule-based segment; return (entered, exited) counts.

    The first build of a segment is silent: its initial members are not "entries" (no events,
    no signals, so journeys triggered by entry start with the next person who enters).

    What is evaluated is the segment as stored once its lock is held, not the caller's copy:
    that copy was loaded before the refresh waited (a tick, "refresh now", a batch of
    refreshes), and an operator's edit may have committed meanwhile, with its own refresh of
    the new rule; the copy's rule would undo it. A segment archived or deleted meanwhile is
    left alone (0, 0). The caller's copy is given the refresh's outcome (count, times, error).
    """
    if segment.kind == SegmentKind.STATIC:
        _record_size(segment, timezone.now())
        return 0, 0
    started = time.monotonic()
    now = now or timezone.now()
    with transaction.atomic():
        current = _lock_segment(segment)
        if current is None or current.is_archived:
            return 0, 0
        # Decided on the stored row too: another refresh may have built it meanwhile.
        first_build = current.last_refreshed_at is None
        diff = _full_diff(current, now, returning=not first_build)
        if first_build:
            _finish(current, now, started, entered=[], exited=[])
            auto_tags_sync(segment=current)
        else:
            _apply_changes(current, now, diff.entered, diff.exited)
            # Entries and exits keep auto-tags in step; a tag taken off a member by hand (or
            # given to someone the rule no longer matches) is put right here.
            auto_tags_sync(segment=current)
            _finish(current, now, started, entered=diff.entered, exited=diff.exited)
        for field in REFRESH_STATE:
            setattr(segment, field, getattr(current, field))
        moved = current.member_count if first_build else len(diff.entered) + len(diff.exited)
        if connection.vendor == "postgresql" and moved > STATISTICS_REFRESH_ROWS:
            # Rules that read this segment are planned from the membership statistics; a
            # segment that grew by thousands while they said "one row" gets nested-loop plans
            # that probe every member. ANALYZE samples a fixed number of rows: well under a
            # second whatever the table's size.
            with connection.cursor() as cursor:
                cursor.execute(f"ANALYZE {SegmentMembership._meta.db_table}")
    return len(diff.entered), len(diff.exited)


STATISTICS_REFRESH_ROWS = 10_000
# What a full refresh records on the segment (_finish), copied back to the caller's copy.
REFRESH_STATE = (
    "member_count",
    "last_refreshed_at",
    "last_refresh_seconds",
    "next_refresh_at",
    "refresh_error",
)


def _lock_segment(segment: Segment) -> Segment | None:
    """Serialise every write to one segment's membership (a full refresh, an incremental
    pass's writes, a static list's adds and removes) on the segment's row, taken before any
    membership row; return the row as stored once locked (None: deleted meanwhile).

    The caller's copy may predate the lock: whoever held it (an operator's rule edit, an
    archive) may have changed the row, and the returned copy is the one to act on. The
    locking read returns the row's latest committed version even after a wait (PostgreSQL
    re-reads a row it waited for), so this costs no second read.

    A full refresh evaluates its rule, then deletes the members that did not match: were an
    incremental pass to write an entry in between (a contact that changed after the refresh's
    evaluation), the refresh's delete would take it out again and the queue row that brought it
    is already released, so the contact would stay out until the next full refresh. Holding the
    segment's row from before the evaluation to the commit makes the pass's writes wait and land
    after. Taken first, it also keeps the lock order the same everywhere: the pass used to lock
    membership rows first and the segment's row last (its member count), while a refresh held
    the segment's row and waited on the same membership rows, a deadlock."""
    # NO KEY UPDATE: it excludes the other writers of this segment all the same, but not the
    # KEY SHARE locks of foreign-key checks (a segment saved with a rule reading this one).
    return Segment.objects.select_for_update(no_key=True).filter(pk=segment.pk).first()


def _finish(
    segment: Segment, now: dt.datetime, started: float, *, entered: list[int], exited: list[int]
) -> None:
    count = SegmentMembership.objects.filter(segment=segment).count()
    segment.member_count, segment.last_refreshed_at = count, now
    segment.last_refresh_seconds = round(time.monotonic() - started, 3)
    segment.next_refresh_at = next_refresh_after(segment, now)
    segment.refresh_error = ""
    Segment.objects.filter(pk=segment.pk).update(
        member_count=count,
        last_refreshed_at=now,
        last_refresh_seconds=segment.last_refresh_seconds,
        next_refresh_at=segment.next_refresh_at,
        refresh_error="",
    )
    _record_size(segment, now, count)


def _record_size(segment: Segment, now: dt.datetime, count: int | None = None) -> None:
    if count is None:
        count = SegmentMembership.objects.filter(segment=segment).count()
    SegmentSize.objects.update_or_create(
        segment=segment, day=timezone.localdate(now), defaults={"member_count": count}
    )


# After a failed scheduled refresh, the next attempt comes at most this long after (a broken
# rule then fills the log four times an hour, not every minute).
REFRESH_RETRY = dt.timedelta(minutes=15)


def _refresh_error_text(exc: BaseException) -> str:
    if isinstance(exc, DomainError):
        return exc.message
    return f"{exc.__class__.__name__}: {exc}"[:2000]


def _refresh_failed(
    segment: Segment,
    exc: BaseException,
    now: dt.datetime,
    *,
    retry_at: dt.datetime | None,
    keep_retry: bool = False,
) -> str:
    """Record why a segment could not be refreshed (the segment page shows it) and when to
    try again: a full refresh at `retry_at` (or the segment's own schedule, if sooner), which
    also catches up whatever the failed pass missed. With `keep_retry` (an incremental pass),
    a segment already failing keeps the retry it has: a broken rule that fails on every pass
    would otherwise be refreshed in full every minute. Segments refreshed only when asked are
    not retried."""
    error = _refresh_error_text(exc)
    values: dict[str, Any] = {"refresh_error": error}
    if segment.refresh_policy != RefreshPolicy.MANUAL and retry_at is not None:
        scheduled = next_refresh_after(segment, now)
        retry = min(retry_at, scheduled) if scheduled else retry_at
        values["next_refresh_at"] = (
            # Decided on the row as committed: the pass's copy may predate a refresh.
            Case(
                When(
                    ~Q(refresh_error="") & Q(next_refresh_at__isnull=False),
                    then=F("next_refresh_at"),
                ),
                default=Value(retry),
                output_field=Segment._meta.get_field("next_refresh_at"),
            )
            if keep_retry
            else retry
        )
    Segment.objects.filter(pk=segment.pk).update(**values)
    segment.refresh_error = error
    return error


def _apply_changes(
    segment: Segment,
    now: dt.datetime,
    entered: list[int],
    exited: list[int],
    *,
    queue_dependents: bool = True,
) -> None:
    """What follows a membership change: events, auto-tags, dependants, signals."""
    if not entered and not exited:
        return
    properties = {"segment_id": segment.pk, "segment": segment.name}
    events_append(
        contact_ids=entered, name="segment_entered", properties=properties, occurred_at=now
    )
    events_append(contact_ids=exited, name="segment_exited", properties=properties, occurred_at=now)
    _auto_tags_apply(segment, entered=entered, exited=exited, now=now)
    if queue_dependents and segment.dependents.exists():
        # Segments reading this one re-evaluate these contacts on their next pass.
        mark_dirty(
            contact_ids=entered + exited,
            at=now,
            overwrite=False,
            topics=[segment_topic(segment.pk)],
        )
    # Inside the transaction: journeys enrol atomically with the membership change.
    if entered:
        segment_entered.send(sender=Segment, segment=segment, contact_ids=entered)
    if exited:
        segment_exited.send(sender=Segment, segment=segment, contact_ids=exited)


def _moves(segment: Segment, ids: Any, now: dt.datetime) -> tuple[list[int], list[int]]:
    """Which of the contacts `ids` (a batch of ids, or a query of them) must enter the segment
    and which must leave it, both sorted."""
    matching = set(
        segment_queryset(segment=segment, now=now, scope=ids).values_list("pk", flat=True)
    )
    current = set(
        SegmentMembership.objects.filter(segment=segment, contact_id__in=ids).values_list(
            "contact_id", flat=True
        )
    )
    return sorted(matching - current), sorted(current - matching)


def _membership_diff(segment: Segment, ids: Any, now: dt.datetime) -> RefreshResult:
    """Re-evaluate only the contacts `ids` (a batch of ids, or a query of them) and write the
    difference."""
    entered, exited = _moves(segment, ids, now)
    if exited:
        SegmentMembership.objects.filter(segment=segment, contact_id__in=exited).delete()
    if entered and connection.vendor == "postgresql":
        # Set-based: bulk_create would spend longer building the rows in Python than the
        # database spends storing them.
        with connection.cursor() as cursor:
            cursor.execute(
                f"INSERT INTO {SegmentMembership._meta.db_table} "
                "(segment_id, contact_id, entered_at) "
                "SELECT %s, unnest(%s::bigint[]), %s ON CONFLICT DO NOTHING",
                [segment.pk, bigint_array(entered), now],
            )
    elif entered:
        SegmentMembership.objects.bulk_create(
            [SegmentMembership(segment=segment, contact_id=c, entered_at=now) for c in entered],
            ignore_conflicts=True,
        )
    return RefreshResult(entered, exited)


def segments_in_refresh_order(segments: Iterable[Segment]) -> list[Segment]:
    """Segments sorted so that every segment comes after the segments it reads."""
    pending = {s.pk: s for s in segments}
    deps = {pk: set(ids) & pending.keys() for pk, ids in _dependency_map(list(pending)).items()}
    ordered: list[Segment] = []
    done: set[int] = set()
    while pending:
        ready = sorted(pk for pk in pending if deps.get(pk, set()) <= done)
        if not ready:  # a cycle slipped past validation (e.g. edited in the admin): break it
            ready = [min(pending)]
        for pk in ready:
            ordered.append(pending.pop(pk))
            done.add(pk)
    return ordered


def _dependency_map(ids: list[int]) -> dict[int, list[int]]:
    through = Segment.depends_on.through
    deps: dict[int, list[int]] = {}
    for src, dst in through.objects.filter(from_segment_id__in=ids).values_list(
        "from_segment_id", "to_segment_id"
    ):
        deps.setdefault(src, []).append(dst)
    return deps


def _live_rule_segments(policies: Iterable[str] | None = None) -> list[Segment]:
    qs = Segment.objects.filter(is_archived=False, kind=SegmentKind.DYNAMIC)
    if policies is not None:
        qs = qs.filter(refresh_policy__in=list(policies))
    return segments_in_refresh_order(qs)


def segment_refresh_contacts(
    *, contact_ids: Iterable[int], topics: Iterable[str] | None = None
) -> None:
    """Re-evaluate the given contacts against the on-change segments that read `topics` (what
    changed; None: anything may have).

    A handful (an operator's click, one API call) are evaluated at once so that the operator
    sees the result; more are queued for the next incremental pass.
    """
    ids = sorted(set(contact_ids))
    if not ids:
        return
    now = timezone.now()
    mark_dirty(contact_ids=ids, at=now, topics=topics)
    if len(ids) > INLINE_REFRESH_LIMIT:
        return
    # With whatever else was queued for them: their queue rows are consumed below.
    taken = _queue_take(DirtyContact.objects.filter(contact_id__in=ids, changed_at__lte=now))
    try:
        _incremental_pass(masks={pk: mask for pk, mask, _ in taken}, now=now)
    except Exception:
        # This often runs after the caller's change has committed (an API call, a form): the
        # change stands, and the contacts stay queued for the next pass to evaluate.
        logger.exception("inline re-evaluation of contacts %s failed", ids[:20])
        return
    _queue_release(taken)


# Above this many queued contacts an incremental pass costs about as much as full refreshes.
INCREMENTAL_MAX = 200_000


def _incremental_pass(
    *, masks: dict[int, int], now: dt.datetime, concurrency: int | None = None
) -> dict[int, tuple[int, int]]:
    """Re-evaluate queued contacts against the on-change segments, in dependency order.

    `masks` maps each contact to the topics that changed for it; a segment re-evaluates only
    the contacts with a topic its rule reads, and is skipped when there are none. Contacts
    that enter or leave a segment get that segment's topic, so segments reading it follow.

    A handful of contacts (an operator's click) go one segment after the other in the
    caller's connection. A large pass on PostgreSQL works level by level (a level: segments
    reading only segments of earlier levels): this connection evaluates the level's segments
    against copies of the changed contacts and their events (_evaluate_level), and each
    segment's moves are written in a worker's connection while the next one is evaluated.

    A segment that fails (a rule that cannot be evaluated any more, say) is skipped: its error
    is logged and recorded on it, a full refresh of it is scheduled, and the other segments
    and the queue go on.

    A segment whose last refresh failed is evaluated like the others, not left out until its
    full refresh: the queue rows are released after the pass, so a change left out here would
    be lost whenever that full refresh had read its matches before the change committed (it
    then clears the error, and nothing queues the change again). Keeping such contacts queued
    instead would grow the queue for as long as the rule stays broken. A broken rule fails
    again at once (compiling it, mostly), and its retry stays where it was (_refresh_failed).

    The segments (and their rules) are loaded once, at the start. A segment whose rule is
    edited while the pass runs is not written with what the old rule decided (_lock_current),
    and the pass's contacts are queued again for its new rule (_queue_for_edited_rules).
    """
    masks = dict(masks)
    segments = _live_rule_segments([RefreshPolicy.ON_CHANGE])
    wanted = {segment.pk: rule_mask(segment.rule) for segment in segments}
    changes: dict[int, tuple[int, int]] = {}
    failures: dict[int, tuple[Segment, Exception]] = {}
    # Contacts that moved in segments other segments read, by segment: what the readers must
    # re-evaluate (in this pass, or in the next one if this one fails).
    read_moves: dict[int, list[int]] = {}

    def finished(segment: Segment, moved: tuple[list[int], list[int]]) -> None:
        entered, exited = moved
        if not entered and not exited:
            return
        changes[segment.pk] = (len(entered), len(exited))
        # Segments reading this one (they come after it) re-evaluate who entered or left.
        if segment.dependents.exists():
            read_moves[segment.pk] = entered + exited
            bit = topic_bit(segment_topic(segment.pk))
            for pk in entered + exited:
                masks[pk] = masks.get(pk, 0) | bit

    def failed(segment: Segment, exc: Exception) -> None:
        if segment.refresh_error:
            # Failing still: its first failure was logged in full.
            logger.warning("incremental refresh of segment %s failed again: %s", segment.pk, exc)
        else:
            logger.error("incremental refresh of segment %s failed", segment.pk, exc_info=exc)
        failures[segment.pk] = (segment, exc)

    try:
        _incremental_levels(
            segments,
            masks=masks,
            wanted=wanted,
            now=now,
            finished=finished,
            failed=failed,
            concurrency=concurrency,
        )
        _queue_for_edited_rules(segments, masks)
    except BaseException:
        # Written moves stay written, and the queue stays for the next pass, which finds
        # nothing more to move in those segments: the segments reading them would never hear
        # of their moves unless they are queued now.
        try:
            for pk, moved in read_moves.items():
                mark_dirty(contact_ids=moved, topics=[segment_topic(pk)], overwrite=False)
        except Exception:  # the pass's own error is the one to raise
            logger.exception("could not queue the moves of a failed incremental pass")
        raise
    finally:
        # Recorded here, in this connection, once no evaluation's transaction (always rolled
        # back) is open in it any more.
        for segment, exc in failures.values():
            try:
                _refresh_failed(segment, exc, now, retry_at=now, keep_retry=True)
            except Exception:
                logger.exception("could not record the failure of segment %s", segment.pk)
    return changes


def _queue_for_edited_rules(segments: list[Segment], masks: dict[int, int]) -> None:
    """Queue the pass's contacts again for the on-change segments whose stored rule is not the
    one the pass loaded: edited while it ran (or created, restored, or switched to on-change).

    The pass wrote nothing for such a segment (_lock_current) or did not evaluate it at all
    (its old rule read none of the topics that changed). The edit's own refresh read the
    contacts at some moment before it committed, possibly before changes this pass took from
    the queue and is about to release: queued again (at a new time, so that the release
    leaves them), with the topics the new rule reads, they are evaluated by the next pass
    against the rule stored then. One read of the on-change rules per pass."""
    loaded = {segment.pk: segment.rule for segment in segments}
    edited = 0
    for pk, rule in Segment.objects.filter(
        is_archived=False, kind=SegmentKind.DYNAMIC, refresh_policy=RefreshPolicy.ON_CHANGE
    ).values_list("pk", "rule"):
        if pk not in loaded or loaded[pk] != rule:
            edited |= rule_mask(rule)
    if edited:
        queue_contacts(masks={pk: mask & edited for pk, mask in masks.items() if mask & edited})


def _lock_current(segment: Segment) -> Segment | None:
    """Lock a segment for an incremental pass's writes (_lock_segment) and return it as
    stored; None when the pass must leave it alone: deleted or archived meanwhile, or its rule
    edited since the pass loaded it. What the pass decided came from the old rule (a large
    pass evaluates before it locks), and the edit's own refresh has applied the new one; the
    pass then queues its contacts again for the new rule (_queue_for_edited_rules)."""
    current = _lock_segment(segment)
    if current is None or current.is_archived or current.rule != segment.rule:
        return None
    return current


def _incremental_levels(
    segments: list[Segment],
    *,
    masks: dict[int, int],
    wanted: dict[int, int],
    now: dt.datetime,
    finished: Callable[[Segment, tuple[list[int], list[int]]], None],
    failed: Callable[[Segment, Exception], None],
    concurrency: int | None,
) -> None:
    """The passes of _incremental_pass, one segment after the other or level by level; a
    segment whose evaluation or writes fail goes to `failed` and the others go on."""

    if connection.vendor != "postgresql" or len(masks) <= INLINE_REFRESH_LIMIT:
        for segment in segments:
            ids = sorted(pk for pk, mask in masks.items() if mask & wanted[segment.pk])
            if ids:
                try:
                    moved = _incremental_segment(segment, ids, now)
                except Exception as exc:
                    failed(segment, exc)
                    continue
                finished(segment, moved)
        return

    workers = concurrency or settings.SEGMENT_REFRESH_CONCURRENCY
    for level in _dependency_levels(segments, masks=masks, wanted=wanted):
        if connection.in_atomic_block or workers <= 1:
            # The writes must wait until the evaluation's transaction (and its copies of the
            # contacts and events tables) is gone from this connection.
            for segment, entered, exited in list(
                _evaluate_level(level, masks=masks, wanted=wanted, now=now, failed=failed)
            ):
                try:
                    moved = _apply_diff(segment, entered, exited, now)
                except Exception as exc:
                    failed(segment, exc)
                    continue
                finished(segment, moved)
            continue
        # Each segment's writes start, in a worker's own connection, as soon as the segment
        # is evaluated, while this connection evaluates the next. A segment's failed writes go
        # to `failed`; if the evaluation itself fails, every write started is waited for and
        # reported before the error is raised.
        failures: list[BaseException] = []
        running: dict[Future, Segment] = {}
        with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="segment-apply") as pool:
            try:
                # Closed at once if this loop stops early: the evaluation's transaction and its
                # copies must not outlive it in this connection.
                with closing(
                    _evaluate_level(level, masks=masks, wanted=wanted, now=now, failed=failed)
                ) as moves:
                    for segment, entered, exited in moves:
                        job = pool.submit(
                            _in_own_connection, _apply_diff, segment, entered, exited, now
                        )
                        running[job] = segment
            except BaseException as exc:
                failures.append(exc)
            for future in as_completed(running):
                try:
                    finished(running[future], future.result())
                except Exception as exc:  # the others still finish
                    failed(running[future], exc)
        if failures:
            raise failures[0]


def _in_own_connection(job: Callable[..., T], *args: Any) -> T:
    """Run `job` in a worker thread, with that thread's own database connection, closed after."""
    try:
        return job(*args)
    finally:
        connections.close_all()


def _incremental_segment(
    segment: Segment, ids: list[int], now: dt.datetime
) -> tuple[list[int], list[int]]:
    """Re-evaluate a few contacts (`ids`, sorted) against one segment and apply what moved, in
    one transaction; the ids go to the database as literal batches."""
    entered: list[int] = []
    exited: list[int] = []
    with transaction.atomic():
        current = _lock_current(segment)
        if current is None:
            return entered, exited
        if connection.vendor == "postgresql":
            with connection.cursor() as cursor:
                # Compiling these short queries would cost more than running them.
                cursor.execute("SET LOCAL jit = off")
        for batch in _batches(ids):
            diff = _membership_diff(current, batch, now)
            entered += diff.entered
            exited += diff.exited
        if entered or exited:
            _apply_changes(current, now, entered, exited, queue_dependents=False)
            _count_moved(current, entered, exited, now)
    return entered, exited


def _count_moved(segment: Segment, entered: list[int], exited: list[int], now: dt.datetime) -> None:
    # By difference: counting a large segment's rows again would cost more than the whole
    # incremental evaluation.
    Segment.objects.filter(pk=segment.pk).update(
        member_count=F("member_count") + len(entered) - len(exited),
        # A segment never built keeps no refresh time: its first build (silent) is still due.
        last_refreshed_at=Case(When(last_refreshed_at__isnull=True, then=None), default=Value(now)),
    )
    # Today's point of the growth chart, from the count just written; an on-change segment
    # without time windows has no other refresh that would draw it.
    sizes, segments = SegmentSize._meta.db_table, Segment._meta.db_table
    with connection.cursor() as cursor:
        cursor.execute(
            f"INSERT INTO {sizes} (segment_id, day, member_count) "
            f"SELECT id, %s, member_count FROM {segments} WHERE id = %s "
            "ON CONFLICT (segment_id, day) DO UPDATE SET member_count = excluded.member_count",
            [connection.ops.adapt_datefield_value(timezone.localdate(now)), segment.pk],
        )


def _dependency_levels(
    segments: list[Segment], *, masks: dict[int, int], wanted: dict[int, int]
) -> list[list[Segment]]:
    """The segments (given in refresh order) that a pass over `masks` may move: those reading
    a topic that changed, and those reading such a segment; grouped so that each group reads
    only segments of the groups before it. A segment reading a segment no change reaches
    needs not wait for anything."""
    changed = 0  # every topic that changed for someone
    for mask in masks.values():
        changed |= mask
    deps = _dependency_map([segment.pk for segment in segments])
    depth: dict[int, int] = {}
    levels: list[list[Segment]] = []
    for segment in segments:
        upstream = [depth[pk] for pk in deps.get(segment.pk, ()) if pk in depth]
        if not upstream and not changed & wanted[segment.pk]:
            continue
        depth[segment.pk] = level = max((d + 1 for d in upstream), default=0)
        if level == len(levels):
            levels.append([])
        levels[level].append(segment)
    return levels


SCOPE_TABLE = "segment_scope"


def _evaluate_level(
    level: list[Segment],
    *,
    masks: dict[int, int],
    wanted: dict[int, int],
    now: dt.datetime,
    failed: Callable[[Segment, Exception], None] | None = None,
) -> Iterator[tuple[Segment, list[int], list[int]]]:
    """Re-evaluate the changed contacts against independent segments (PostgreSQL); yield
    (segment, contacts to enter, contacts to leave) for each segment where some moved, as
    soon as it is known.

    One transaction, always rolled back: nothing it does is kept. The changed contacts and
    their topics go into a keyed temporary table; then, when several rules read them, the
    contacts' rows and their events of the names the rules read are copied into temporary
    tables *named like the real ones*. PostgreSQL resolves an unqualified table name to the
    session's temporary table first, so every compiled rule of this transaction, unchanged,
    reads the copies: ten segments then probe the contacts and the events index once, not
    ten times (each purchase rule otherwise fetches every event of each contact's window to
    keep the few of its name). The rules read other contacts' rows nowhere (every condition
    is about the contact itself), so a copy of the changed contacts is all they can see. (A
    search_path naming pg_temp after the real schema would make the rules read the real tables:
    the same result, only slower.)

    For the other tables the planner must probe indexes for exactly these contacts rather
    than scan millions of rows for a few thousand: hash and merge joins, sequential and bitmap
    scans are off (discouraged: a table without a usable index is still read). Writes come
    after, per segment, in their own transactions (_apply_diff). A segment whose evaluation
    fails goes to `failed` (in a savepoint: the others are still evaluated); without `failed`,
    the error is raised.
    """
    changed = 0  # every topic that changed for someone (by now)
    for mask in masks.values():
        changed |= mask
    jobs = [(segment, wanted[segment.pk]) for segment in level if changed & wanted[segment.pk]]
    if not jobs:
        return
    read = 0  # every topic these segments read
    for _segment, mask in jobs:
        read |= mask
    scoped = {pk: mask for pk, mask in masks.items() if mask & read}
    names = sorted(
        {
            node["name"]
            for segment, _mask in jobs
            for node in rule_conditions(segment.rule)
            if node.get("type") == "event"
        }
    )
    reading_events = sum(
        1
        for segment, _mask in jobs
        if any(node.get("type") == "event" for node in rule_conditions(segment.rule))
    )
    contacts, events = Contact._meta.db_table, Event._meta.db_table
    with transaction.atomic(), connection.cursor() as cursor:
        # Compiling these short queries would cost more than running them.
        cursor.execute("SET LOCAL jit = off")
        for switch in ("hashjoin", "mergejoin", "seqscan", "bitmapscan"):
            cursor.execute(f"SET LOCAL enable_{switch} = off")
        cursor.execute(
            f"CREATE TEMPORARY TABLE {SCOPE_TABLE} (id bigint PRIMARY KEY, topics bigint NOT NULL)"
        )
        with cursor.copy(f"COPY {SCOPE_TABLE} (id, topics) FROM STDIN") as copy:
            copy.write("".join(f"{pk}\t{mask}\n" for pk, mask in sorted(scoped.items())))
        cursor.execute(f"ANALYZE {SCOPE_TABLE}")
        # Each CREATE reads the real table: its copy does not exist until the statement ends.
        # The indexes' builds give the planner the copies' sizes.
        if len(jobs) > 1:
            cursor.execute(
                f"CREATE TEMPORARY TABLE {contacts} AS SELECT c.* "
                f"FROM {SCOPE_TABLE} s JOIN {contacts} c ON c.id = s.id"
            )
            cursor.execute(f"ALTER TABLE pg_temp.{contacts} ADD PRIMARY KEY (id)")
        if reading_events > 1:
            # Only the columns event conditions read (compiler.py): a rule reading another
            # one fails loudly here instead of reading something else.
            cursor.execute(
                f"CREATE TEMPORARY TABLE {events} AS "
                "SELECT e.id, e.contact_id, e.name, e.occurred_at, e.value, e.properties "
                f"FROM {SCOPE_TABLE} s JOIN {events} e ON e.contact_id = s.id "
                "WHERE e.name = ANY(%s)",
                [names],
            )
            cursor.execute(f"CREATE INDEX ON pg_temp.{events} (contact_id, name, occurred_at)")
        for segment, mask in jobs:
            started = time.monotonic()
            scope = RawSQL(f"SELECT id FROM {SCOPE_TABLE} WHERE topics & %s <> 0", [mask])
            try:
                # A failed statement would abort the whole transaction, and with it the
                # evaluation of the level's other segments.
                with transaction.atomic():
                    entered, exited = _moves(segment, scope, now)
            except Exception as exc:
                if failed is None:
                    raise
                failed(segment, exc)
                continue
            logger.info(
                "incremental %s: %d to enter, %d to leave in %.3f s",
                segment.name,
                len(entered),
                len(exited),
                time.monotonic() - started,
            )
            if entered or exited:
                yield segment, entered, exited
        transaction.set_rollback(True)


def _apply_diff(
    segment: Segment, entered: list[int], exited: list[int], now: dt.datetime
) -> tuple[list[int], list[int]]:
    """Write one segment's evaluated moves (PostgreSQL) and what follows them, in one
    transaction; return the moves the database made.

    Between evaluation and now a concurrent refresh may have made a move already, or a contact
    may have been merged away (and its merge re-evaluated it already): a merged contact never
    enters, and the statements' RETURNING says what really moved; only that is written as
    entries and exits. Merged contacts are looked up in their own small index
    (contact_merged_away), not by a probe of the contacts table per entry (a third of the
    membership insert's time for 8,000 entries); a contact deleted meanwhile, which only the
    admin does, fails the entry event's foreign key: the segment's writes roll back and its
    full refresh is scheduled. A segment archived, deleted or given another rule since the pass
    loaded it is not written (_lock_current).
    """
    started = time.monotonic()
    table = SegmentMembership._meta.db_table
    own_transaction = not connection.in_atomic_block
    with transaction.atomic():
        current = _lock_current(segment)
        if current is None:
            logger.info("incremental %s: changed meanwhile, not written", segment.name)
            return [], []
        segment = current
        with connection.cursor() as cursor:
            if own_transaction:
                # Derived data, as in a full refresh (_full_diff): after a crash the next
                # refresh recomputes it, entries included. (Never for a caller's transaction.)
                cursor.execute("SET LOCAL synchronous_commit = off")
            if exited:
                cursor.execute(
                    f"DELETE FROM {table} WHERE segment_id = %s "
                    "AND contact_id = ANY(%s::bigint[]) RETURNING contact_id",
                    [segment.pk, bigint_array(exited)],
                )
                exited = sorted(row[0] for row in cursor.fetchall())
            if entered:
                cursor.execute(
                    f"INSERT INTO {table} (segment_id, contact_id, entered_at) "
                    "SELECT %s, v.id, %s FROM unnest(%s::bigint[]) AS v(id) WHERE NOT EXISTS "
                    f"(SELECT 1 FROM {Contact._meta.db_table} c "
                    "WHERE c.id = v.id AND c.merged_into_id IS NOT NULL) "
                    "ON CONFLICT DO NOTHING RETURNING contact_id",
                    [segment.pk, now, bigint_array(entered)],
                )
                entered = sorted(row[0] for row in cursor.fetchall())
        if entered or exited:
            _apply_changes(segment, now, entered, exited, queue_dependents=False)
            _count_moved(segment, entered, exited, now)
    logger.info(
        "incremental %s: +%d -%d written in %.3f s",
        segment.name,
        len(entered),
        len(exited),
        time.monotonic() - started,
    )
    return entered, exited


def segments_refresh_incremental(*, now: dt.datetime | None = None) -> dict[int, tuple[int, int]]:
    """Re-evaluate every contact queued in DirtyContact against the on-change segments.

    Rows queued after the cut-off (changes that land while this runs) stay for the next pass.
    A queue too large for an incremental pass to pay off becomes full refreshes.
    """
    now = now or timezone.now()
    taken = _queue_take(DirtyContact.objects.filter(changed_at__lte=now))
    masks = {pk: mask for pk, mask, _ in taken}
    if not masks:
        return {}
    if len(masks) > INCREMENTAL_MAX:
        changes = segments_materialise(segments=_segments_reading(masks), now=now)
    else:
        changes = _incremental_pass(masks=masks, now=now)
    _queue_release(taken)
    return changes


def _segments_reading(masks: dict[int, int]) -> list[Segment]:
    """The on-change segments that read a topic of `masks`, and the segments reading those:
    the only ones a full refresh for these changes can move (the daily lead-score decay
    queues most scored contacts, for the few rules on the score)."""
    changed = 0
    for mask in masks.values():
        changed |= mask
    segments = _live_rule_segments([RefreshPolicy.ON_CHANGE])
    chosen = {segment.pk for segment in segments if rule_mask(segment.rule) & changed}
    deps = _dependency_map([segment.pk for segment in segments])
    while True:
        readers = {pk for pk, reads in deps.items() if pk not in chosen and chosen & set(reads)}
        if not readers:
            return [segment for segment in segments if segment.pk in chosen]
        chosen |= readers


# (contact id, topics, when it was queued: a datetime, or on PostgreSQL the exact
# microseconds since the epoch, which read and bind far faster for tens of thousands of rows)
QueueRow = tuple[int, int, Any]
EPOCH_MICROSECONDS = "(extract(epoch FROM {}) * 1000000)::bigint"


def _queue_take(queued: QuerySet[DirtyContact]) -> list[QueueRow]:
    if connection.vendor != "postgresql":
        return list(queued.values_list("contact_id", "topics", "changed_at"))
    rows = queued.values_list(
        "contact_id",
        "topics",
        RawSQL(EPOCH_MICROSECONDS.format(f"{DirtyContact._meta.db_table}.changed_at"), []),
    )
    sql, params = rows.query.sql_with_params()
    with connection.cursor() as cursor:  # the ORM's per-row handling would double the read
        cursor.execute(sql, params)
        return cursor.fetchall()


def _queue_release(taken: list[QueueRow]) -> None:
    """Delete the queue rows a pass has evaluated, exactly as it read them.

    A row that changed since (a change committed while the pass ran: its time moved forward or
    its topics grew) stays for the next pass; deleting by contact and cut-off time would drop
    changes committed after the read with an earlier timestamp.
    """
    if not taken:
        return
    table = DirtyContact._meta.db_table
    if connection.vendor == "postgresql":
        # Three arrays, one statement: a VALUES list costs the server more to parse than the
        # delete itself.
        with connection.cursor() as cursor:
            cursor.execute(
                f"DELETE FROM {table} t USING unnest(%s::bigint[], %s::bigint[], "
                "%s::bigint[]) AS v(contact_id, topics, at) "
                "WHERE t.contact_id = v.contact_id AND t.topics = v.topics "
                f"AND {EPOCH_MICROSECONDS.format('t.changed_at')} = v.at",
                [bigint_array(column) for column in zip(*taken, strict=True)],
            )
        return
    adapt = connection.ops.adapt_datetimefield_value
    with connection.cursor() as cursor:
        for start in range(0, len(taken), QUEUE_BATCH):
            batch = taken[start : start + QUEUE_BATCH]
            params: list[Any] = []
            for pk, mask, at in batch:
                params += [pk, mask, adapt(at)]
            rows = ", ".join(["(%s, %s, %s)"] * len(batch))
            cursor.execute(
                f"DELETE FROM {table} WHERE (contact_id, topics, changed_at) IN (VALUES {rows})",
                params,
            )


def segments_refresh_due(*, now: dt.datetime | None = None) -> list[int]:
    """Full refresh of the segments whose scheduled refresh is due (interval, daily, and the
    daily pass of on-change segments with time windows) and of any never built (created with
    build=False by a caller that did not get to build it), in dependency order."""
    now = now or timezone.now()
    due = Segment.objects.filter(is_archived=False, kind=SegmentKind.DYNAMIC).filter(
        Q(next_refresh_at__lte=now) | Q(last_refreshed_at__isnull=True)
    )
    return list(segments_materialise(segments=due, now=now))


def segments_materialise(
    *,
    segments: Iterable[Segment],
    now: dt.datetime | None = None,
    concurrency: int | None = None,
) -> dict[int, tuple[int, int]]:
    """Full refresh (or first build) of several segments; return {id: (entered, exited)} for
    those refreshed.

    Independent segments are refreshed side by side on PostgreSQL (see _in_dependency_order).
    A segment that fails is skipped (its error logged and recorded on it, another attempt
    scheduled) and the others go on.
    """
    results = _in_dependency_order(
        segments,
        prepare=lambda segment: lambda: _scheduled_refresh(segment, now),
        concurrency=concurrency,
    )
    return {pk: moved for pk, moved in results.items() if moved is not None}


def _scheduled_refresh(segment: Segment, now: dt.datetime | None) -> tuple[int, int] | None:
    try:
        return segment_refresh(segment=segment, now=now)
    except Exception as exc:
        logger.exception("refresh of segment %s failed", segment.pk)
        moment = now or timezone.now()
        _refresh_failed(segment, exc, moment, retry_at=moment + REFRESH_RETRY)
        return None


def _in_dependency_order(
    segments: Iterable[Segment],
    *,
    prepare: Callable[[Segment], Callable[[], T] | None],
    finished: Callable[[Segment, T], None] | None = None,
    concurrency: int | None = None,
) -> dict[int, T]:
    """Run one job per segment, each after the jobs of the segments of this set it reads;
    return {segment id: the job's result}.

    `prepare(segment)` runs in the calling thread once those have finished (and `finished` has
    seen their results) and returns the job, or None to skip the segment. On PostgreSQL jobs of
    independent segments run side by side, up to `concurrency` (SEGMENT_REFRESH_CONCURRENCY) at
    once, each in its own thread and database connection: the work is in the database server,
    and the driver releases the GIL while a statement runs; the slowest known segments start
    first. SQLite has one writer, and a caller inside a transaction must see its own
    uncommitted rows: there they run one after the other in the caller's connection.
    """
    ordered = segments_in_refresh_order(segments)
    workers = concurrency or settings.SEGMENT_REFRESH_CONCURRENCY
    results: dict[int, T] = {}
    if (
        connection.vendor != "postgresql"
        or connection.in_atomic_block
        or workers <= 1
        or len(ordered) <= 1
    ):
        for segment in ordered:
            job = prepare(segment)
            if job is not None:
                results[segment.pk] = result = job()
                if finished is not None:
                    finished(segment, result)
        return results

    pending = {s.pk: s for s in ordered}
    deps = {pk: set(ids) & pending.keys() for pk, ids in _dependency_map(list(pending)).items()}
    done: set[int] = set()
    failures: list[BaseException] = []

    with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="segment-refresh") as pool:
        running: dict[Future, Segment] = {}
        while pending or running:
            ready = [pk for pk in pending if deps.get(pk, set()) <= done]
            if not ready and not running:  # a cycle slipped past validation: break it
                ready = [next(iter(pending))]
            ready.sort(key=lambda pk: -(pending[pk].last_refresh_seconds or 0))
            for pk in ready:
                if len(running) >= workers:
                    break
                segment = pending.pop(pk)
                job = prepare(segment)
                if job is None:
                    done.add(pk)
                else:
                    running[pool.submit(_in_own_connection, job)] = segment
            if not running:
                continue
            finished_now, _ = wait(running, return_when=FIRST_COMPLETED)
            for future in finished_now:
                segment = running.pop(future)
                done.add(segment.pk)
                try:
                    results[segment.pk] = result = future.result()
                except Exception as exc:  # the others still run; the first error is raised
                    logger.exception("refresh of segment %s failed", segment.pk)
                    failures.append(exc)
                    continue
                if finished is not None:
                    finished(segment, result)
    if failures:
        raise failures[0]
    return results


def segments_tick(*, now: dt.datetime | None = None) -> dict[str, int]:
    """What beat runs every minute: the incremental pass, then the scheduled full refreshes."""
    now = now or timezone.now()
    changed = segments_refresh_incremental(now=now)
    refreshed = segments_refresh_due(now=now)
    return {"incremental_segments_changed": len(changed), "full_refreshes": len(refreshed)}


def segments_refresh_on_change() -> int:
    """Full refresh of every live segment that follows contact changes (after a change too
    large to queue contact by contact), in dependency order."""
    return len(segments_materialise(segments=_live_rule_segments([RefreshPolicy.ON_CHANGE])))


def segments_refresh_all() -> int:
    """Full refresh of every active rule-based segment, in dependency order."""
    return len(segments_materialise(segments=_live_rule_segments()))


def mark_dirty(
    *,
    contact_ids: Iterable[int],
    at: dt.datetime | None = None,
    overwrite: bool = True,
    topics: Iterable[str] | None = None,
) -> None:
    """Queue contacts for the next incremental refresh, saying what changed (`topics`, see
    segments.rules.topics; None: not known, every segment re-evaluates them).

    `overwrite` moves an already-queued contact's time forward, so that a change arriving while
    a pass runs is not deleted with that pass's rows.
    """
    mask = topics_mask(None if topics is None else list(topics))
    queue_contacts(masks={pk: mask for pk in contact_ids}, at=at, overwrite=overwrite)


def queue_contacts(
    *, masks: dict[int, int], at: dt.datetime | None = None, overwrite: bool = True
) -> None:
    """Queue contacts with a topic mask each; a contact already queued keeps the union."""
    if not masks:
        return
    # As the ORM would store it (SQLite keeps datetimes as text compared as text).
    at = connection.ops.adapt_datetimefield_value(at or timezone.now())
    table = DirtyContact._meta.db_table
    when = "changed_at = excluded.changed_at, " if overwrite else ""
    rows = sorted(masks.items())
    upsert = (
        f"ON CONFLICT (contact_id) DO UPDATE SET {when}topics = {table}.topics | excluded.topics"
    )
    if connection.vendor == "postgresql":
        # Two arrays, one statement (every event batch queues its contacts: this is on the
        # events API's path). OR-ing the masks keeps every topic queued by concurrent writers.
        with connection.cursor() as cursor:
            cursor.execute(
                f"INSERT INTO {table} (contact_id, changed_at, topics) "
                "SELECT v.contact_id, %s, v.topics "
                "FROM unnest(%s::bigint[], %s::bigint[]) AS v(contact_id, topics) "
                f"{upsert}",
                [at, bigint_array(pk for pk, _ in rows), bigint_array(m for _, m in rows)],
            )
        return
    with connection.cursor() as cursor:
        for start in range(0, len(rows), QUEUE_BATCH):
            batch = rows[start : start + QUEUE_BATCH]
            values = ", ".join(["(%s, %s, %s)"] * len(batch))
            params: list[Any] = []
            for pk, mask in batch:
                params += [pk, at, mask]
            cursor.execute(
                f"INSERT INTO {table} (contact_id, changed_at, topics) VALUES {values} {upsert}",
                params,
            )


QUEUE_BATCH = 500


def queue_contacts_matching(
    *, select_sql: str, params: list[Any], topics: Iterable[str], at: dt.datetime | None = None
) -> int:
    """Queue the contacts a query selects (one column of contact ids) with `topics`, set-based
    (a recompute can change a million contacts: queueing them from Python took about a
    minute); return how many rows were queued."""
    table = DirtyContact._meta.db_table
    at = connection.ops.adapt_datetimefield_value(at or timezone.now())
    with connection.cursor() as cursor:
        # The upsert of queue_contacts; "WHERE true" lets SQLite parse ON CONFLICT after a
        # SELECT.
        cursor.execute(
            f"INSERT INTO {table} (contact_id, changed_at, topics) "
            f"SELECT q.contact_id, %s, %s FROM ({select_sql}) q WHERE true "
            "ON CONFLICT (contact_id) DO UPDATE SET changed_at = excluded.changed_at, "
            f"topics = {table}.topics | excluded.topics",
            [at, topics_mask(list(topics)), *params],
        )
        return cursor.rowcount


def segments_refresh_after_merge(*, contact_ids: list[int]) -> None:
    """Re-evaluate merged (or unmerged) contacts once the merge (or its undo) has committed.

    segments.merging has already moved their memberships, silently; what this finds different
    is a real change and is applied as usual, with events and signals: a survivor matching a
    rule only with the duplicate's data enters it, one matching only with it leaves after the
    undo, and a restored duplicate leaves or enters wherever it changed (or the rule did)
    while merged. After commit, so that every app has moved its rows first: the survivor's
    segments then see its full history.
    """
    ids = list(contact_ids)
    transaction.on_commit(lambda: segment_refresh_contacts(contact_ids=ids))


# Static lists ----------------------------------------------------------------------------------


def _require_static(segment: Segment) -> None:
    if segment.kind != SegmentKind.STATIC:
        raise ValidationFailed(
            _("Members can be added or removed by hand only in a static list."),
            code="not_static",
        )


@transaction.atomic
def segment_static_add(*, segment: Segment, contact_ids: Iterable[int]) -> int:
    """Add contacts to a static list; return how many were new. Safe to retry."""
    _require_static(segment)
    ids = sorted(set(contact_ids))
    # The request is refused for a contact that is not there when it arrives; one erased (or
    # merged away) while it runs is left out by _static_add instead.
    live = set()
    for batch in _batches(ids):
        live.update(
            Contact.objects.filter(pk__in=batch, merged_into__isnull=True).values_list(
                "pk", flat=True
            )
        )
    unknown = sorted(set(ids) - live)
    if unknown:
        raise ValidationFailed(
            _("Unknown contacts: %(ids)s") % {"ids": unknown[:20]},
            code="unknown_contact",
            details={"contact_ids": unknown[:100]},
        )
    now = timezone.now()
    entered = _static_add(segment, ids, now)
    _static_finish(segment, now)
    return len(entered)


def _static_add(segment: Segment, contact_ids: Iterable[int], now: dt.datetime) -> list[int]:
    """Add contacts to a static list and record what follows; return those that were new.
    The member count and the growth chart are the caller's (_static_finish). A contact erased
    or merged away since the caller read it is left out.

    New means inserted by this call's own statement: two copies of one add (a retry while the
    first is still open, a job batch and an add by hand) each enter a contact once between
    them. The list's lock, held to the caller's commit, also lets the caller count the
    members with every other add or remove committed (otherwise each of two concurrent adds
    would count without the other's contacts, and the last to write would win)."""
    # The contacts are locked (KEY SHARE) before the list, as an erasure or a merge locks its
    # contacts (FOR UPDATE) before the segments it takes them out of: neither can then hold a
    # lock the other waits for while waiting for one the other holds. Locked after the list,
    # an add re-adding a member being erased would deadlock with the erasure. Without the lock
    # an erasure finding no membership to remove would commit under the add, whose rows then
    # fail their events' foreign keys at commit (memberships have none of their own).
    ids = contacts_lock_live(contact_ids=contact_ids)
    _lock_segment(segment)
    entered: list[int] = []
    for batch in _batches(ids):
        entered += insert_new(
            SegmentMembership,
            [{"segment": segment, "contact_id": pk, "entered_at": now} for pk in batch],
            returning="contact",
        )
    entered.sort()
    _apply_changes(segment, now, entered, [])
    return entered


@transaction.atomic
def segment_static_remove(*, segment: Segment, contact_ids: Iterable[int]) -> int:
    """Remove contacts from a static list; return how many were members. Safe to retry."""
    _require_static(segment)
    now = timezone.now()
    exited = _static_remove(segment, contact_ids, now)
    _static_finish(segment, now)
    return len(exited)


def _static_remove(segment: Segment, contact_ids: Iterable[int], now: dt.datetime) -> list[int]:
    """Remove contacts from a static list and record what follows; return those that were
    members. The member count and the growth chart are the caller's (_static_finish).
    Members means deleted by this call's own statement, under the list's lock (_static_add).
    A contact erased since the caller read it is left out (the erasure takes it out itself)."""
    # The contacts before the list, as _static_add locks them: the segment_exited events'
    # foreign-key checks at commit would otherwise wait, while this holds the list, for an
    # erasure of one of them that waits for the list to take them out of it (a deadlock).
    ids = contacts_lock_live(contact_ids=contact_ids)
    _lock_segment(segment)
    exited: list[int] = []
    for batch in _batches(ids):
        exited += delete_returning(
            SegmentMembership.objects.filter(segment=segment, contact_id__in=batch),
            returning="contact",
        )
    exited.sort()
    _apply_changes(segment, now, [], exited)
    return exited


def _static_finish(segment: Segment, now: dt.datetime) -> None:
    count = segment.memberships.count()
    Segment.objects.filter(pk=segment.pk).update(member_count=count, last_refreshed_at=now)
    segment.member_count, segment.last_refreshed_at = count, now
    _record_size(segment, now, count)


STATIC_MEMBERS_JOB_KIND = "segments.static_members"
# Contacts one request adds or removes itself (one transaction): the API's bound per call.
STATIC_INLINE_LIMIT = 1000
# Contacts per transaction of the background job, for the same reason.
STATIC_JOB_BATCH = 1000
# Batches per task run before the task re-enqueues itself, so a worker restart loses little.
STATIC_JOB_BATCHES_PER_RUN = 50


@dataclass
class StaticMembersStart:
    """What segment_static_members_start did: the change now (`changed`) or a job (`job`)."""

    changed: int = 0
    job: Job | None = None


def _contact_filter_params(params: dict[str, list[str]] | None) -> dict[str, list[str]]:
    # Only the contact list's own filters: a posted form also holds its token, the list, …
    return {
        name: [str(v) for v in values if v]
        for name, values in (params or {}).items()
        if name in ContactFilter.base_filters and any(values)
    }


def segment_static_members_start(
    *,
    segment: Segment,
    actor: AbstractBaseUser,
    remove: bool = False,
    contact_ids: list[int] | None = None,
    filter_params: dict[str, list[str]] | None = None,
) -> StaticMembersStart:
    """Add (or remove) contacts chosen in the contact list: the ticked ones, or every contact
    the list's filter matches (always within what `actor` may see). Up to
    STATIC_INLINE_LIMIT now; a larger filtered list in a background job."""
    _require_static(segment)
    change = segment_static_remove if remove else segment_static_add
    if contact_ids is not None:
        ids = sorted(set(contact_ids))
        if len(ids) > STATIC_INLINE_LIMIT:
            raise ValidationFailed(
                _("At most %(max)s contacts at a time; narrow the filter.")
                % {"max": STATIC_INLINE_LIMIT},
                code="too_many",
            )
        visible = set(bulk_target(actor=actor, contact_ids=ids).values_list("pk", flat=True))
        if set(ids) - visible:
            raise ValidationFailed(
                _("Some of these contacts are not visible to you."), code="unknown_contact"
            )
    else:
        params = _contact_filter_params(filter_params)
        query = QueryDict(mutable=True)
        for name, values in params.items():
            query.setlist(name, values)
        # The list ignores an invalid filter; "all matching" must not silently widen to all.
        if not ContactFilter(query).is_valid():
            raise ValidationFailed(
                _("Fix the filter before applying a bulk action to all matches."),
                code="invalid_filter",
            )
        target = bulk_target(actor=actor, filter_params=params).order_by().distinct()
        ids = list(target.values_list("pk", flat=True)[: STATIC_INLINE_LIMIT + 1])
        if len(ids) > STATIC_INLINE_LIMIT:
            job = jobs.job_create(
                kind=STATIC_MEMBERS_JOB_KIND,
                created_by=actor,
                params={
                    "segment_id": segment.pk,
                    "segment": segment.name,
                    "remove": remove,
                    "filter_params": params,
                },
                total=target.count(),
            )
            transaction.on_commit(lambda: _enqueue_static_members(job.pk))
            return StaticMembersStart(job=job)
    if not ids:
        raise ValidationFailed(_("Select at least one contact."), code="empty")
    return StaticMembersStart(changed=change(segment=segment, contact_ids=ids))


def _enqueue_static_members(job_id: int) -> None:
    from segments import tasks  # tasks imports this module

    tasks.static_members.delay(job_id)


def segment_static_members_job_run(*, job_id: int) -> None:
    """Advance an add-to (or remove-from) static list job by up to STATIC_JOB_BATCHES_PER_RUN
    batches, then re-enqueue it. Safe to run again: each batch commits with the job's cursor,
    and adding or removing twice changes nothing."""
    resumed = jobs.job_resume(job_id=job_id, kind=STATIC_MEMBERS_JOB_KIND)
    if resumed is None:
        return
    job, cursor, processed, changed = resumed
    params = job.params
    segment = Segment.objects.filter(
        pk=params.get("segment_id"), kind=SegmentKind.STATIC, is_archived=False
    ).first()
    actor = job.created_by
    if segment is None or actor is None:
        jobs.job_fail(
            job_id=job.pk, error=_("The static list or the user who started the job is gone.")
        )
        return
    change = _static_remove if params.get("remove") else _static_add
    try:
        target = bulk_target(actor=actor, filter_params=params.get("filter_params"))
        for _batch in range(STATIC_JOB_BATCHES_PER_RUN):
            ids = list(
                target.filter(pk__gt=cursor)
                .order_by("pk")
                .values_list("pk", flat=True)
                .distinct()[:STATIC_JOB_BATCH]
            )
            if not ids:
                break
            with transaction.atomic():
                # Read again in the batch's transaction: a contact merged away since is skipped.
                live = list(
                    Contact.objects.filter(pk__in=ids, merged_into__isnull=True).values_list(
                        "pk", flat=True
                    )
                )
                moved = len(change(segment, live, timezone.now())) if live else 0
                if moved:
                    # By difference, in the batch's transaction: counting every member after
                    # each batch made a large job quadratic. The count committed with the
                    # cursor stays right if the job stops here and resumes.
                    delta = -moved if params.get("remove") else moved
                    Segment.objects.filter(pk=segment.pk).update(
                        member_count=F("member_count") + delta
                    )
                changed += moved
                cursor, processed = ids[-1], processed + len(ids)
                summary = {"cursor": cursor, "processed": processed, "changed": changed}
                Job.objects.filter(pk=job.pk).update(result=summary, done=processed)
            if len(ids) < STATIC_JOB_BATCH:
                break
        else:
            _enqueue_static_members(job.pk)
            return
    except Exception as exc:
        logger.exception("static list job %s failed", job.pk)
        try:
            # The batches committed so far count; the count by difference may have drifted.
            _static_finish(segment, timezone.now())
        except Exception:  # the job's own error is the one to report
            logger.exception("could not recount static list %s", segment.pk)
        jobs.job_fail(job_id=job.pk, error=_refresh_error_text(exc))
        return
    # Once per job: the exact count (whatever a concurrent change did meanwhile) and today's
    # point of the growth chart.
    _static_finish(segment, timezone.now())
    jobs.job_finish(
        job_id=job.pk, result={"cursor": cursor, "processed": processed, "changed": changed}
    )


# Auto-tags -------------------------------------------------------------------------------------


def _rule_tag_events(ids: list[int], tag: Tag, *, added: bool, now: dt.datetime) -> None:
    events_append(
        contact_ids=ids,
        name="tag_added" if added else "tag_removed",
        properties={"tag_id": tag.pk, "tag": str(tag), "source": TagSource.RULE},
        occurred_at=now,
    )


def _auto_tags_apply(
    segment: Segment, *, entered: list[int], exited: list[int], now: dt.datetime
) -> None:
    changed: set[int] = set()
    for rule in segment.auto_tags.filter(is_active=True).select_related("tag__group"):
        changed.update(_tag_contacts(rule.tag, entered, now))
        if rule.remove_on_exit:
            changed.update(_untag_contacts(rule.tag, exited, now))
    # Queued in one statement, in id order: segments written side by side lock the queue's rows
    # in the same order, never crosswise.
    _tags_changed(sorted(changed))


def _tag_contacts(tag: Tag, ids: list[int], now: dt.datetime) -> list[int]:
    """Give `tag` to the contacts `ids` (from the rule); return those who did not hold it:
    the ones this statement inserted, so that two writers at once (a refresh and a sync, two
    syncs) record each tag_added once between them."""
    added: list[int] = []
    for batch in _batches(ids):
        added += insert_new(
            ContactTag,
            [
                {"contact_id": pk, "tag": tag, "source": TagSource.RULE, "created_at": now}
                for pk in batch
            ],
            returning="contact",
        )
    added.sort()
    if added:
        _rule_tag_events(added, tag, added=True, now=now)
    return added


def _untag_contacts(tag: Tag, ids: list[int], now: dt.datetime) -> list[int]:
    """Take the rule's `tag` off the contacts `ids`; return those this statement took it off
    (as _tag_contacts: each tag_removed once, whoever else removes it at the same time)."""
    removed: list[int] = []
    for batch in _batches(ids):
        # Only the assignments the rule made: a tag an operator set by hand stays.
        removed += delete_returning(
            ContactTag.objects.filter(tag=tag, contact_id__in=batch, source=TagSource.RULE),
            returning="contact",
        )
    removed.sort()
    if removed:
        _rule_tag_events(removed, tag, added=False, now=now)
    return removed


def _tags_changed(ids: list[int]) -> None:
    # Other segments may read this tag: queue the contacts for the next incremental pass
    # rather than re-entering the refresh from inside it.
    if ids:
        mark_dirty(contact_ids=ids, topics=[TAGS])


def auto_tags_sync(*, segment: Segment, rule: AutoTagRule | None = None) -> tuple[int, int]:
    """Bring auto-tags fully in line with the segment's members; return (added, removed)."""
    now = timezone.now()
    rules = [rule] if rule is not None else list(segment.auto_tags.filter(is_active=True))
    added = removed = 0
    # Anti-joins (NOT EXISTS), never NOT IN: PostgreSQL hashes a NOT IN list only while it fits
    # in work_mem, and probes it row by row beyond that (every full refresh runs this).
    member = SegmentMembership.objects.filter(segment=segment, contact_id=OuterRef("contact_id"))
    for r in rules:
        with transaction.atomic():
            # The segment's lock, as every membership writer takes it (a no-op inside a
            # refresh): otherwise a refresh committing meanwhile could take a contact out
            # that this sync then tags from the members it read before.
            _lock_segment(segment)
            has_tag = ContactTag.objects.filter(tag=r.tag, contact_id=OuterRef("contact_id"))
            missing = list(
                SegmentMembership.objects.filter(segment=segment)
                .filter(~Exists(has_tag))
                .values_list("contact_id", flat=True)
            )
            tagged = _tag_contacts(r.tag, missing, now)
            untagged: list[int] = []
            if r.remove_on_exit:
                stale = list(
                    ContactTag.objects.filter(tag=r.tag, source=TagSource.RULE)
                    .filter(~Exists(member))
                    .values_list("contact_id", flat=True)
                )
                untagged = _untag_contacts(r.tag, stale, now)
            _tags_changed(sorted({*tagged, *untagged}))
            added += len(tagged)
            removed += len(untagged)
    return added, removed


def _auto_tag_loop_reader(*, segment: Segment, tag_id: int) -> str | None:
    """The name of the segment, `segment` itself or one it reads (through stored rules), whose
    rule reads the tag: keeping that tag in sync with `segment` would feed the segment's own
    membership back into its rule, and its members would leave and enter in turn, pass after
    pass, each time with events, journey entries and tag changes."""
    if tag_id in rule_tag_refs(segment.rule):
        return segment.name
    ancestors = Segment.objects.filter(pk__in=segment_ancestors(segment)).order_by("name")
    for name, rule in ancestors.values_list("name", "rule"):
        if tag_id in rule_tag_refs(rule):
            return name
    return None


def _auto_tag_loop_error(*, tag_name: str, segment_name: str, reader: str) -> ValidationFailed:
    return ValidationFailed(
        _(
            "The segment “%(reader)s” reads the tag “%(tag)s”, so the tag cannot follow the "
            "segment “%(segment)s”: its members would enter and leave in turn as the tag "
            "is added and removed."
        )
        % {"reader": reader, "tag": tag_name, "segment": segment_name},
        code="tag_loop",
        details={"field": "tag"},
    )


def _auto_tag_check_loops(*, segment: Segment) -> None:
    """After `segment`'s rule changed: refuse the change if a tag kept in sync with it, or with
    a segment that reads it, is now read by the segment that keeps it (or one it reads)."""
    affected = {segment.pk}
    frontier = {segment.pk}
    while frontier:
        frontier = (
            set(Segment.objects.filter(depends_on__in=frontier).values_list("pk", flat=True))
            - affected
        )
        affected |= frontier
    rules = AutoTagRule.objects.filter(segment_id__in=affected, is_active=True).select_related(
        "segment", "tag"
    )
    for rule in rules:
        keeper = segment if rule.segment_id == segment.pk else rule.segment
        reader = _auto_tag_loop_reader(segment=keeper, tag_id=rule.tag_id)
        if reader is not None:
            raise _auto_tag_loop_error(
                tag_name=rule.tag.name, segment_name=keeper.name, reader=reader
            )


def auto_tag_check_free(*, tag: Tag, segment: Segment) -> None:
    """Refuse a tag that an active rule of another segment already keeps in sync, or that the
    segment's own rule reads (directly or through the segments it reads)."""
    reader = _auto_tag_loop_reader(segment=segment, tag_id=tag.pk)
    if reader is not None:
        raise _auto_tag_loop_error(tag_name=tag.name, segment_name=segment.name, reader=reader)
    other = (
        AutoTagRule.objects.filter(tag=tag, is_active=True)
        .exclude(segment=segment)
        .select_related("segment")
        .first()
    )
    if other is not None:
        raise ValidationFailed(
            _(
                "The tag “%(tag)s” already follows the segment “%(segment)s”; a tag can follow "
                "one segment only."
            )
            % {"tag": tag.name, "segment": other.segment.name},
            code="tag_in_use",
        )


def auto_tag_rule_create(*, segment: Segment, tag: Tag, remove_on_exit: bool = True) -> AutoTagRule:
    """Keep `tag` in sync with `segment` from now on (and apply it to today's members).

    A contact holds a tag once, whoever gave it: two segments keeping the same tag would take
    it off each other's members on exit, so a tag follows one segment only.
    """
    auto_tag_check_free(tag=tag, segment=segment)
    rule, _created = AutoTagRule.objects.update_or_create(
        segment=segment,
        tag=tag,
        defaults={"remove_on_exit": remove_on_exit, "is_active": True},
    )
    auto_tags_sync(segment=segment, rule=rule)
    return rule


REFRESH_JOB_KIND = "segments.refresh"


def segment_refresh_request(*, segment: Segment, actor: AbstractBaseUser | None) -> Job:
    """Queue a full refresh ("refresh now") in the worker; return the job the page watches."""
    if segment.kind == SegmentKind.STATIC or segment.is_archived:
        raise ValidationFailed(
            _("Only an active rule-based segment can be refreshed."), code="not_refreshable"
        )
    job = jobs.job_create(
        kind=REFRESH_JOB_KIND,
        created_by=actor if actor is not None and actor.is_authenticated else None,
        params={"segment_id": segment.pk},
    )
    Segment.objects.filter(pk=segment.pk).update(refresh_job=job)
    segment.refresh_job = job
    transaction.on_commit(lambda: _enqueue_refresh(segment.pk, job.pk))
    return job


def _enqueue_refresh(segment_id: int, job_id: int) -> None:
    from segments import tasks  # tasks imports this module

    tasks.refresh.delay(segment_id, job_id)


def segment_refresh_by_id(*, segment_id: int, job_id: int | None = None) -> tuple[int, int]:
    """The worker's entry point for "refresh now" (skips segments archived meanwhile). With
    `job_id`, the job says how it went: the page watching it stops at a failure too."""
    job = Job.objects.filter(pk=job_id, kind=REFRESH_JOB_KIND).first() if job_id else None
    if job is not None and jobs.job_is_finished(job):
        return 0, 0  # a redelivered message: that refresh ran already
    segment = Segment.objects.filter(pk=segment_id, is_archived=False).first()
    if segment is None:
        if job is not None:
            jobs.job_fail(
                job_id=job.pk, error=_("The segment was archived or deleted before it refreshed.")
            )
        return 0, 0
    if job is not None:
        jobs.job_start(job_id=job.pk)
    try:
        entered, exited = segment_refresh(segment=segment)
    except Exception as exc:
        logger.exception("refresh of segment %s failed", segment.pk)
        now = timezone.now()
        error = _refresh_failed(segment, exc, now, retry_at=now + REFRESH_RETRY)
        if job is not None:
            jobs.job_fail(job_id=job.pk, error=error)
        return 0, 0
    if job is not None:
        jobs.job_finish(job_id=job.pk, result={"entered": entered, "exited": exited})
    return entered, exited
