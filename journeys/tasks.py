from celery import shared_task

from journeys import services


@shared_task(name="journeys.advance_due", acks_late=True, reject_on_worker_lost=True)
def advance_due() -> int:
    return services.enrollments_advance_all_due()
