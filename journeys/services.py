import datetime as dt
import logging

from django.db import transaction
from django.db.models import Count, Max, Q
from django.utils import timezone
from django.utils.translation import gettext as _

from channels.services import delivery_plan
from contacts.models import Contact, MergeRecord
from contacts.services import events_append
from core.errors import ValidationFailed
from journeys.models import (
    Enrollment,
    EnrollmentStatus,
    Journey,
    JourneyStatus,
    JourneyStep,
    StepKind,
)
from segments.models import Segment

logger = logging.getLogger(__name__)

# Enrollments advanced per claim transaction; each costs a few queries.
ADVANCE_BATCH = 100


@transaction.atomic
def journey_activate(*, journey: Journey) -> Journey:
    """Put a journey live after checking that it can run."""
    # An archived segment is never refreshed: nobody would enter it, and the journey would
    # never start. Its row is locked so that an archive running now waits (and, seeing this
    # journey, refuses) rather than slipping between this check and the save.
    trigger = (
        Segment.objects.select_for_update(no_key=True)
        .filter(pk=journey.trigger_segment_id)
        .values("name", "is_archived")
        .first()
    )
    if trigger and trigger["is_archived"]:
        raise ValidationFailed(
            _("The segment “%(segment)s” that starts this journey is archived; restore it first.")
            % {"segment": trigger["name"]},
            code="trigger_archived",
        )
    steps = list(journey.steps.all())
    if not steps:
        raise ValidationFailed(_("A journey needs at least one step."), code="no_steps")
    for step in steps:
        if step.kind == StepKind.SEND and (step.channel is None or not step.channel.is_active):
            raise ValidationFailed(
                _("Step %(position)s sends through a missing or inactive channel.")
                % {"position": step.position},
                code="bad_channel",
            )
    journey.status = JourneyStatus.LIVE
    journey.save(update_fields=["status", "updated_at"])
    return journey


def journey_pause(*, journey: Journey) -> Journey:
    journey.status = JourneyStatus.PAUSED
    journey.save(update_fields=["status", "updated_at"])
    return journey


# Contacts enrolled per statement when a segment admits many at once.
ENROLL_BATCH = 2000


def journeys_enroll_on_segment_entry(*, segment: Segment, contact_ids: list[int]) -> int:
    """Enroll contacts that entered `segment` in every live journey it triggers."""
    enrolled = 0
    for journey in Journey.objects.filter(trigger_segment=segment, status=JourneyStatus.LIVE):
        for start in range(0, len(contact_ids), ENROLL_BATCH):
            enrolled += enrollments_create(
                journey=journey, contact_ids=contact_ids[start : start + ENROLL_BATCH]
            )
    return enrolled


def enrollments_create(*, journey: Journey, contact_ids: list[int]) -> int:
    """Start the journey for each contact not in it (or finished, unless re-entry is allowed)."""
    history = (
        Enrollment.objects.filter(journey=journey, contact_id__in=contact_ids)
        .values("contact_id")
        .annotate(last=Max("occurrence"), active=Count("pk", filter=Q(status="active")))
    )
    last_by_contact: dict[int, int] = {}
    blocked: set[int] = set()
    for row in history:
        last_by_contact[row["contact_id"]] = row["last"]
        if row["active"] or not journey.allow_reentry:
            blocked.add(row["contact_id"])
    now = timezone.now()
    rows = [
        Enrollment(
            journey=journey,
            contact_id=contact_id,
            occurrence=last_by_contact.get(contact_id, 0) + 1,
            next_run_at=now,
            enrolled_at=now,
        )
        for contact_id in dict.fromkeys(contact_ids)
        if contact_id not in blocked
    ]
    if not rows:
        return 0
    # A concurrent enroller may have won for some contacts; the unique occurrence keeps one.
    Enrollment.objects.bulk_create(rows, ignore_conflicts=True)
    created = list(
        Enrollment.objects.filter(
            journey=journey, contact_id__in=[r.contact_id for r in rows], enrolled_at=now
        ).values_list("contact_id", flat=True)
    )
    events_append(
        contact_ids=created,
        name="journey_enrolled",
        properties={"journey_id": journey.pk, "journey": journey.name},
        occurred_at=now,
    )
    return len(created)


def enrollment_create(*, journey: Journey, contact_id: int) -> Enrollment | None:
    """Enroll one contact; None when they are already in (or may not re-enter)."""
    if not enrollments_create(journey=journey, contact_ids=[contact_id]):
        return None
    return Enrollment.objects.filter(journey=journey, contact_id=contact_id).latest("occurrence")


def _run_steps(enrollment: Enrollment, steps: list[JourneyStep], now: dt.datetime) -> bool:
    """Run steps from the enrollment's position until a wait or the end; True if a send planned."""
    planned = False
    by_position = {s.position: s for s in steps}
    positions = sorted(by_position)
    remaining = [p for p in positions if p >= enrollment.step_position]
    for position in remaining:
        step = by_position[position]
        if step.kind == StepKind.WAIT:
            enrollment.step_position = position + 1
            enrollment.next_run_at = now + dt.timedelta(seconds=step.wait_seconds)
            if step.wait_seconds > 0:
                return planned
            continue
        _delivery, created = delivery_plan(
            idempotency_key=(
                f"journey:{enrollment.journey_id}:step:{step.pk}:enrollment:{enrollment.pk}"
            ),
            contact=enrollment.contact,
            channel=step.channel,
            payload={"title": step.title, "body": step.body, "journey": enrollment.journey.name},
            send_at=now,
        )
        planned = planned or created
        enrollment.step_position = position + 1
    enrollment.status = EnrollmentStatus.COMPLETED
    enrollment.finished_at = now
    enrollment.next_run_at = None
    return planned


def enrollments_advance_due(*, limit: int = ADVANCE_BATCH) -> tuple[int, int]:
    """Advance due enrollments of live journeys; return (advanced, deliveries planned)."""
    now = timezone.now()
    advanced = planned = 0
    with transaction.atomic():
        due = list(
            Enrollment.objects.select_for_update(skip_locked=True, of=("self",))
            .select_related("journey", "contact")
            .filter(
                status=EnrollmentStatus.ACTIVE,
                next_run_at__lte=now,
                journey__status=JourneyStatus.LIVE,
            )
            .order_by("next_run_at", "pk")[:limit]
        )
        steps_by_journey: dict[int, list[JourneyStep]] = {}
        for enrollment in due:
            steps = steps_by_journey.setdefault(
                enrollment.journey_id,
                list(
                    JourneyStep.objects.filter(journey_id=enrollment.journey_id).select_related(
                        "channel"
                    )
                ),
            )
            if _run_steps(enrollment, steps, now):
                planned += 1
            enrollment.save(update_fields=["step_position", "next_run_at", "status", "finished_at"])
            advanced += 1
        if planned:
            from channels.tasks import dispatch_due

            # Wake the sender now rather than at its next tick; the tick stays the safety net.
            transaction.on_commit(dispatch_due.delay)
    return advanced, planned


def enrollments_advance_all_due(*, max_batches: int = 50) -> int:
    total = 0
    for _batch in range(max_batches):
        advanced, _planned = enrollments_advance_due()
        total += advanced
        if advanced < ADVANCE_BATCH:
            break
    return total


@transaction.atomic
def enrollments_merge(*, record: MergeRecord, survivor: Contact, duplicate: Contact) -> None:
    """Move the duplicate's enrollments to the survivor; where the survivor already has the
    same journey and occurrence, end the duplicate's instead (it stays on the duplicate)."""
    taken = set(Enrollment.objects.filter(contact=survivor).values_list("journey_id", "occurrence"))
    moved: list[int] = []
    exited: list[dict] = []
    now = timezone.now()
    for row in Enrollment.objects.select_for_update().filter(contact=duplicate).order_by("pk"):
        if (row.journey_id, row.occurrence) not in taken:
            moved.append(row.pk)
        elif row.status == EnrollmentStatus.ACTIVE:
            exited.append(
                {
                    "id": row.pk,
                    "status": row.status,
                    "next_run_at": row.next_run_at.isoformat() if row.next_run_at else None,
                    "finished_at": None,
                }
            )
    Enrollment.objects.filter(pk__in=moved).update(contact=survivor)
    Enrollment.objects.filter(pk__in=[e["id"] for e in exited]).update(
        status=EnrollmentStatus.EXITED, finished_at=now, next_run_at=None
    )
    record.moved["journeys.enrollment"] = moved
    record.moved["journeys.enrollment_exited"] = exited
    record.save(update_fields=["moved"])


@transaction.atomic
def enrollments_unmerge(*, record: MergeRecord, survivor: Contact, duplicate: Contact) -> None:
    """Give the duplicate back the enrollments enrollments_merge moved or ended."""
    Enrollment.objects.filter(pk__in=record.moved.get("journeys.enrollment", [])).update(
        contact=duplicate
    )
    for row in record.moved.get("journeys.enrollment_exited", []):
        next_run_at = row["next_run_at"]
        Enrollment.objects.filter(pk=row["id"], contact=duplicate).update(
            status=row["status"],
            finished_at=None,
            next_run_at=dt.datetime.fromisoformat(next_run_at) if next_run_at else None,
        )
