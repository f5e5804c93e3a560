from django.conf import settings
from django.db import transaction
from django_celery_beat.models import IntervalSchedule, PeriodicTask

MANAGED_PREFIX = "scrm: "


@transaction.atomic
def periodic_tasks_sync() -> list[str]:
    """Write SCRM_PERIODIC_TASKS to the beat schedule and drop managed tasks no longer declared."""
    written: list[str] = []
    for name, spec in settings.SCRM_PERIODIC_TASKS.items():
        every = float(spec["every_seconds"])
        if every >= 1 and every == int(every):
            schedule, _ = IntervalSchedule.objects.get_or_create(
                every=int(every), period=IntervalSchedule.SECONDS
            )
        else:
            raise ValueError(f"{name}: every_seconds must be a whole number of seconds >= 1")
        full_name = MANAGED_PREFIX + name
        PeriodicTask.objects.update_or_create(
            name=full_name,
            defaults={
                "task": spec["task"],
                "interval": schedule,
                "crontab": None,
                "queue": spec.get("queue", ""),
                "enabled": True,
                "one_off": False,
            },
        )
        written.append(full_name)
    PeriodicTask.objects.filter(name__startswith=MANAGED_PREFIX).exclude(name__in=written).delete()
    return written
