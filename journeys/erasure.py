"""Journeys' part of erasing a person (contacts.services.erasure) and of the copy of their data.

Enrollments are all journeys hold about a person, and the enrollment counts on the journey
pages are counted from them, so deleting them is all an erasure needs. The messages a journey
planned for the person are channels' deliveries (channels.erasure).
"""

from typing import Any

from contacts.models import Erasure
from contacts.services import erasure_rows_delete
from journeys.models import Enrollment


def enrollments_erase(*, erasure: Erasure, contact_ids: list[int]) -> None:
    """End the erased contacts' journeys by deleting their enrollments.

    An advancer holding some of them (it locks its batch) finishes first. If that batch plans
    a message to this person, it waits for the contact row the erasure holds, and PostgreSQL
    breaks the deadlock by failing one side: an erasure is retried (contact_erase), an
    advancer's batch runs again on the next tick."""
    erasure_rows_delete(erasure=erasure, rows=Enrollment.objects.filter(contact_id__in=contact_ids))


def enrollments_personal_data(*, contact_ids: list[int]) -> dict[str, list[dict[str, Any]]]:
    """The journeys the person was enrolled in, as a section of their copy of their data."""
    rows = [
        {
            "contact_id": row.contact_id,
            "journey": row.journey.name,
            "occurrence": row.occurrence,
            "status": row.status,
            "enrolled_at": row.enrolled_at.isoformat(),
            "next_run_at": row.next_run_at.isoformat() if row.next_run_at else None,
            "finished_at": row.finished_at.isoformat() if row.finished_at else None,
        }
        for row in Enrollment.objects.filter(contact_id__in=contact_ids)
        .select_related("journey")
        .order_by("enrolled_at", "pk")
    ]
    return {"journeys.enrollments": rows}
