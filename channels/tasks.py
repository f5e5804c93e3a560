from celery import shared_task

from channels import services


# acks_late + reject_on_worker_lost: if the worker dies mid-run the tick is redelivered; the
# claim/lease protocol on the rows, not Celery, guarantees each message goes out once.
@shared_task(name="channels.dispatch_due", acks_late=True, reject_on_worker_lost=True)
def dispatch_due() -> int:
    return services.deliveries_dispatch_due()


@shared_task(name="channels.recover_expired", acks_late=True, reject_on_worker_lost=True)
def recover_expired() -> int:
    return services.deliveries_recover_expired()


@shared_task(name="channels.send_realtime", acks_late=True, reject_on_worker_lost=True)
def send_realtime(delivery_id: int) -> None:
    services.delivery_send_now(delivery_id=delivery_id)
