from celery import shared_task

from segments import services


@shared_task(name="segments.refresh_contacts")
def refresh_contacts(contact_ids: list[int]) -> None:
    services.segment_refresh_contacts(contact_ids=contact_ids)


@shared_task(name="segments.refresh_all")
def refresh_all() -> int:
    return services.segments_refresh_all()
