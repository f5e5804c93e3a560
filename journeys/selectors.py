from dataclasses import dataclass

from django.db.models import Count, Q, QuerySet

from contacts.models import Contact
from journeys.models import Enrollment, EnrollmentStatus, Journey, JourneyStep


def journey_list(*, contacts: QuerySet[Contact] | None = None) -> QuerySet[Journey]:
    """Journeys with their active and completed enrollment counts, counting only the
    enrollments of `contacts` (those the user may see) when given.

    Enrollments left with merged-away contacts never count: nobody sees those contacts, and the
    survivor usually holds its own enrollment for the same journey, so they would count a
    customer twice.
    """
    if contacts is None:
        among = Q(enrollments__contact__merged_into__isnull=True)
    else:
        among = Q(enrollments__contact__in=contacts)
    return Journey.objects.select_related("trigger_segment").annotate(
        active_count=Count(
            "enrollments", filter=among & Q(enrollments__status=EnrollmentStatus.ACTIVE)
        ),
        completed_count=Count(
            "enrollments", filter=among & Q(enrollments__status=EnrollmentStatus.COMPLETED)
        ),
    )


def enrollments_for_contact(*, contact: Contact) -> QuerySet[Enrollment]:
    return Enrollment.objects.filter(contact=contact).select_related("journey")


def journey_steps(*, journey: Journey) -> QuerySet[JourneyStep]:
    return (
        JourneyStep.objects.filter(journey=journey).select_related("channel").order_by("position")
    )


def journey_enrollments(
    *, journey: Journey, contacts: QuerySet[Contact] | None = None
) -> QuerySet[Enrollment]:
    """A journey's enrollments with their contacts, for keyset pages (newest first); only of
    `contacts` (those the user may see) when given."""
    qs = Enrollment.objects.filter(journey=journey).select_related("contact")
    return qs.filter(contact__in=contacts) if contacts is not None else qs


# What journeys.services.enrollments_merge does with an enrollment (the merge preview names it).
MERGE_KEPT = "kept"  # only the survivor has this journey pass: it stays
MERGE_MOVED = "moved"  # only the duplicate has it: it moves to the survivor, status and all
# Both have the same journey pass: the survivor keeps its own; the duplicate's, still active,
# is ended (exited) and stays with the merged-away contact.
MERGE_ENDS = "ends"
# Both have it and the duplicate's has finished: that one stays with the merged-away contact.
MERGE_STAYS = "stays"


@dataclass(frozen=True)
class EnrollmentMergeRow:
    journey: Journey
    occurrence: int
    survivor: Enrollment | None
    duplicate: Enrollment | None
    outcome: str

    @property
    def after(self) -> Enrollment:
        """The enrollment the survivor holds for this journey pass after the merge."""
        return self.survivor or self.duplicate


def enrollments_merge_preview(*, survivor: Contact, duplicate: Contact) -> list[EnrollmentMergeRow]:
    """What a merge of `duplicate` into `survivor` does with their journey enrollments, one
    row per journey pass (journey and occurrence), by journey name.

    Mirrors journeys.services.enrollments_merge: a pass only the duplicate has moves to the
    survivor; in a pass both have, the survivor keeps its own and the duplicate's, if still
    active, is ended.
    """
    held: dict[tuple[int, int], dict[int, Enrollment]] = {}
    for row in Enrollment.objects.filter(contact__in=[survivor.pk, duplicate.pk]).select_related(
        "journey"
    ):
        held.setdefault((row.journey_id, row.occurrence), {})[row.contact_id] = row
    rows = []
    for (_journey, occurrence), pair in held.items():
        mine, theirs = pair.get(survivor.pk), pair.get(duplicate.pk)
        if theirs is None:
            outcome = MERGE_KEPT
        elif mine is None:
            outcome = MERGE_MOVED
        elif theirs.status == EnrollmentStatus.ACTIVE:
            outcome = MERGE_ENDS
        else:
            outcome = MERGE_STAYS
        journey = (mine or theirs).journey
        rows.append(EnrollmentMergeRow(journey, occurrence, mine, theirs, outcome))
    rows.sort(key=lambda row: (row.journey.name, row.journey.pk, row.occurrence))
    return rows
