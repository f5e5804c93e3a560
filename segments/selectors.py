import datetime as dt
from dataclasses import dataclass
from typing import Any

from django.db.models import QuerySet

from contacts.models import Contact
from segments.models import Segment, SegmentKind, SegmentMembership
from segments.rules.compiler import Compiler


def segment_list(*, include_archived: bool = False) -> QuerySet[Segment]:
    qs = Segment.objects.all()
    return qs if include_archived else qs.filter(is_archived=False)


def segment_members(*, segment: Segment) -> QuerySet[Contact]:
    return Contact.objects.filter(segment_memberships__segment=segment).select_related(
        "lifecycle_stage"
    )


def segments_for_contact(*, contact: Contact) -> QuerySet[SegmentMembership]:
    return SegmentMembership.objects.filter(contact=contact).select_related("segment")


def segment_name_taken(*, name: str, exclude: Segment | None = None) -> bool:
    qs = Segment.objects.filter(name=name)
    if exclude is not None:
        qs = qs.exclude(pk=exclude.pk)
    return qs.exists()


@dataclass
class RuleLine:
    depth: int
    text: str


@dataclass
class ExplainNode:
    """One node of a rule with whether the contact satisfies it right now."""

    path: str
    node: dict
    matched: bool
    children: list["ExplainNode"]


def segment_explain(
    *, segment: Segment, contact: Contact, now: dt.datetime | None = None
) -> ExplainNode | None:
    """Why a contact is in or out: every group and condition of the rule, true or false.

    One small query per node (a rule holds at most 100): each node's compiled condition,
    restricted to this contact. None for a static list (membership there is by hand).
    """
    if segment.kind == SegmentKind.STATIC:
        return None
    compiler = Compiler(now)
    base = Contact.objects.filter(pk=contact.pk, merged_into__isnull=True)

    def walk(node: dict, path: str) -> ExplainNode:
        children = []
        if "op" in node:
            children = [
                walk(child, f"{path}.conditions[{i}]")
                for i, child in enumerate(node.get("conditions") or [])
            ]
        matched = base.filter(compiler.node(node, path)).exists()
        return ExplainNode(path=path, node=node, matched=matched, children=children)

    return walk(segment.rule, "rule")


# Builder, list and detail pages (segment builder UI) ----------------------------------------


def segment_rule_lines(*, rule: Any) -> list[RuleLine]:
    """Every kind of condition as indented lines in words (store, owner, segment and tag ids
    resolved to names)."""
    from segments.rule_labels import Names, describe_condition, describe_group

    names = Names.for_rule(rule)
    out: list[RuleLine] = []

    def walk(node: Any, depth: int) -> None:
        if not isinstance(node, dict):
            out.append(RuleLine(depth, str(node)))
        elif "op" in node:
            out.append(RuleLine(depth, describe_group(node)))
            for child in node.get("conditions") or []:
                walk(child, depth + 1)
        else:
            out.append(RuleLine(depth, describe_condition(node, names)))

    walk(rule, 0)
    return out


def segment_size_series(*, segment_ids: list[int], days: int = 30) -> dict[int, list[int]]:
    """Member counts per segment, one per day up to today, oldest first (one query).

    The series covers the last `days` days and ends today. A day without a recorded count takes
    the last one recorded before it (a size stays what it was until it is counted again), also
    from before the window; days before the first count ever recorded are left out, so a series
    may start late but never has a gap.
    """
    from django.db.models import Exists, OuterRef
    from django.utils import timezone

    from segments.models import SegmentSize

    today = timezone.localdate()
    start = today - dt.timedelta(days=days - 1)
    # The window's rows and, per segment, the last row before it: no row of the same segment
    # lies between this one and the window's start.
    later_before_start = SegmentSize.objects.filter(
        segment_id=OuterRef("segment_id"), day__gt=OuterRef("day"), day__lt=start
    )
    rows = (
        SegmentSize.objects.filter(segment_id__in=segment_ids, day__lte=today)
        .filter(~Exists(later_before_start))
        .order_by("segment_id", "day")
        .values_list("segment_id", "day", "member_count")
    )
    known: dict[int, dict[dt.date, int]] = {pk: {} for pk in segment_ids}
    for segment_id, day, count in rows:
        known[segment_id][max(day, start)] = count
    series: dict[int, list[int]] = {}
    for pk, counts in known.items():
        values: list[int] = []
        last: int | None = None
        for offset in range(days):
            last = counts.get(start + dt.timedelta(days=offset), last)
            if last is not None:
                values.append(last)
        series[pk] = values
    return series


# Recent events are enough to suggest names; scanning the whole table would be slow.
RECENT_EVENT_SAMPLE = 5000
STANDARD_EVENT_NAMES = (
    "page_view",
    "view_product",
    "add_to_cart",
    "purchase",
    "refund",
    "sign_in",
    "share",
    "form_submitted",
    "qr_scanned",
    "referral_accepted",
    "message_sent",
    "message_failed",
    "message_delivered",
    "message_opened",
    "message_clicked",
    "tag_added",
    "tag_removed",
    "segment_entered",
    "segment_exited",
    "stage_changed",
    "journey_enrolled",
)


def event_names_known() -> list[str]:
    """The standard event names (docs/events.md) plus names seen in recent events."""
    from contacts.models import Event

    recent_ids = Event.objects.order_by("-pk").values("pk")[:RECENT_EVENT_SAMPLE]
    seen = set(Event.objects.filter(pk__in=recent_ids).values_list("name", flat=True).distinct())
    return sorted(seen | set(STANDARD_EVENT_NAMES))


def segment_membership_of(*, segment: Segment, contact_id: int) -> SegmentMembership | None:
    return SegmentMembership.objects.filter(segment=segment, contact_id=contact_id).first()


# What segments.merging.memberships_merge does with a segment place (the merge preview names it).
MERGE_KEPT = "kept"  # only the survivor is in: its place stays
MERGE_KEPT_ONCE = "kept_once"  # both are in: the survivor keeps its place and entry time
MERGE_MOVED = "moved"  # only the duplicate is in: its place and entry time go to the survivor
# Only the duplicate is in a live rule-based segment: the place goes to the survivor if the
# merged contact matches the rule, otherwise it is removed.
MERGE_IF_MATCHES = "if_matches"


@dataclass(frozen=True)
class SegmentMergeRow:
    segment: Segment
    survivor_entered_at: dt.datetime | None
    duplicate_entered_at: dt.datetime | None
    outcome: str

    @property
    def entered_at_after(self) -> dt.datetime | None:
        """The survivor's entry time after the merge (if it keeps or gets the place)."""
        return self.survivor_entered_at or self.duplicate_entered_at


@dataclass(frozen=True)
class SegmentMergePreview:
    rows: list[SegmentMergeRow]

    def _count(self, *outcomes: str) -> int:
        return sum(1 for row in self.rows if row.outcome in outcomes)

    @property
    def survivor_count(self) -> int:
        return sum(1 for row in self.rows if row.survivor_entered_at)

    @property
    def duplicate_count(self) -> int:
        return sum(1 for row in self.rows if row.duplicate_entered_at)

    @property
    def after_count(self) -> int:
        """Places the survivor holds right after the merge, whatever the rules say."""
        return self._count(MERGE_KEPT, MERGE_KEPT_ONCE, MERGE_MOVED)

    @property
    def undecided_count(self) -> int:
        return self._count(MERGE_IF_MATCHES)


def segment_merge_preview(*, survivor: Contact, duplicate: Contact) -> SegmentMergePreview:
    """What a merge of `duplicate` into `survivor` does with their segment places, by name.

    Mirrors segments.merging.memberships_merge: in a segment both are in, the survivor keeps
    its own place; the duplicate's place in a static list or an archived segment goes to the
    survivor; in a live rule-based segment it goes to the survivor only if the merged contact
    matches the rule, which only the merge itself can tell.
    """
    places: dict[int, dict[int, dt.datetime]] = {}
    segments: dict[int, Segment] = {}
    for row in SegmentMembership.objects.filter(
        contact_id__in=[survivor.pk, duplicate.pk]
    ).select_related("segment"):
        segments[row.segment_id] = row.segment
        places.setdefault(row.segment_id, {})[row.contact_id] = row.entered_at
    rows = []
    for pk, held in places.items():
        segment, mine, theirs = segments[pk], held.get(survivor.pk), held.get(duplicate.pk)
        if theirs is None:
            outcome = MERGE_KEPT
        elif mine is not None:
            outcome = MERGE_KEPT_ONCE
        elif segment.kind == SegmentKind.STATIC or segment.is_archived:
            outcome = MERGE_MOVED
        else:
            outcome = MERGE_IF_MATCHES
        rows.append(SegmentMergeRow(segment, mine, theirs, outcome))
    rows.sort(key=lambda row: (row.segment.name, row.segment.pk))
    return SegmentMergePreview(rows=rows)
