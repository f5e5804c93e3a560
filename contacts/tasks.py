from celery import shared_task

from contacts import bulk, exporters, importers, services


# acks_late: a worker that dies mid-import gets the message redelivered; the upsert is
# idempotent, so running the job again only finishes it.
@shared_task(name="contacts.import_contacts", acks_late=True)
def import_contacts(job_id: int) -> None:
    importers.import_run(job_id=job_id)


@shared_task(name="contacts.export_contacts", acks_late=True)
def export_contacts(job_id: int) -> None:
    exporters.export_run(job_id=job_id)


# acks_late: a redelivered run resumes from the job's saved cursor; tagging is idempotent.
@shared_task(name="contacts.bulk_tag", acks_late=True)
def bulk_tag(job_id: int) -> None:
    bulk.bulk_tag_job_run(job_id=job_id)


@shared_task(name="contacts.expire_tags")
def expire_tags() -> int:
    return services.contact_tags_expire()
