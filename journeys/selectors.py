from django.db.models import Count, Q, QuerySet

from contacts.models import Contact
from journeys.models import Enrollment, EnrollmentStatus, Journey, JourneyStep


def journey_list() -> QuerySet[Journey]:
    return Journey.objects.select_related("trigger_segment").annotate(
        active_count=Count("enrollments", filter=Q(enrollments__status=EnrollmentStatus.ACTIVE)),
        completed_count=Count(
            "enrollments", filter=Q(enrollments__status=EnrollmentStatus.COMPLETED)
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
