from celery import shared_task

from segments import influence, rfm, scoring, services, static_import


@shared_task(name="segments.refresh_contacts")
def refresh_contacts(contact_ids: list[int]) -> None:
    services.segment_refresh_contacts(contact_ids=contact_ids)


@shared_task(name="segments.tick")
def tick() -> dict[str, int]:
    return services.segments_tick()


# "Refresh now": the job (absent in messages queued before jobs were passed) is what the page
# watches, failures included.
@shared_task(name="segments.refresh")
def refresh(segment_id: int, job_id: int | None = None) -> tuple[int, int]:
    return services.segment_refresh_by_id(segment_id=segment_id, job_id=job_id)


# Adding a large filtered contact list to a static list; re-enqueues itself between runs.
@shared_task(name="segments.static_members", acks_late=True)
def static_members(job_id: int) -> None:
    services.segment_static_members_job_run(job_id=job_id)


# Adding the contacts listed in an uploaded file to a static list; a redelivery of a finished
# job changes nothing, and a rerun adds nobody twice.
@shared_task(name="segments.static_import", acks_late=True)
def static_import_file(job_id: int) -> None:
    static_import.segment_static_import_job_run(job_id=job_id)


@shared_task(name="segments.refresh_all")
def refresh_all() -> int:
    return services.segments_refresh_all()


# After a change too large to list contact by contact (a big import): the segments that follow
# changes are rebuilt in full, in dependency order; the scheduled ones keep their own schedule.
@shared_task(name="segments.refresh_on_change")
def refresh_on_change() -> int:
    return services.segments_refresh_on_change()


# Beat runs it daily without a job; the "recompute now" button passes one for the page to watch.
@shared_task(name="segments.rfm_recompute")
def rfm_recompute(job_id: int | None = None) -> int:
    return rfm.rfm_recompute_run(job_id=job_id).pk


@shared_task(name="segments.lead_scores_daily")
def lead_scores_daily() -> dict[str, int]:
    return scoring.lead_scores_daily()


@shared_task(name="segments.lead_scores_recompute")
def lead_scores_recompute() -> int:
    return scoring.lead_scores_recompute_all()


@shared_task(name="segments.lead_scores_fit")
def lead_scores_fit(contact_ids: list[int] | None = None) -> tuple[int, int]:
    return scoring.lead_scores_fit(contact_ids=contact_ids)


# Beat runs it nightly without a job; the KOC page's "recompute now" passes one to watch.
@shared_task(name="segments.influence_compute")
def influence_compute(job_id: int | None = None) -> dict[str, int]:
    return influence.influence_recompute_run(job_id=job_id)


# A new or changed event rule scores the past events in its window; idempotent (it replaces the
# rule's awards there), batched by contact inside the service.
@shared_task(name="segments.lead_score_rule_backfill", acks_late=True)
def lead_score_rule_backfill(rule_id: int) -> int:
    return scoring.score_rule_backfill(rule_id=rule_id)


# A saved threshold moves the contacts whose score already reaches it; idempotent.
@shared_task(name="segments.lead_score_threshold_apply", acks_late=True)
def lead_score_threshold_apply(threshold_id: int) -> int:
    return scoring.threshold_apply(threshold_id=threshold_id)
