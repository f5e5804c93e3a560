import re

from django.conf import settings
from django.db import transaction
from django_celery_beat.models import CrontabSchedule, IntervalSchedule, PeriodicTask

MANAGED_PREFIX = "scrm: "
CLOCK = re.compile(r"^([01]?\d|2[0-3]):([0-5]\d)$")


def _interval(name: str, spec: dict) -> IntervalSchedule:
    every = float(spec["every_seconds"])
    if every < 1 or every != int(every):
        raise ValueError(f"{name}: every_seconds must be a whole number of seconds >= 1")
    schedule, _ = IntervalSchedule.objects.get_or_create(
        every=int(every), period=IntervalSchedule.SECONDS
    )
    return schedule


def _daily(name: str, spec: dict) -> CrontabSchedule:
    """A once-a-day schedule at a local clock time ("02:30", in settings.TIME_ZONE)."""
    match = CLOCK.match(str(spec["daily_at"]).strip())
    if match is None:
        raise ValueError(f"{name}: daily_at must be a time of day like 02:30")
    hour, minute = int(match[1]), int(match[2])
    schedule, _ = CrontabSchedule.objects.get_or_create(
        minute=str(minute),
        hour=str(hour),
        day_of_week="*",
        day_of_month="*",
        month_of_year="*",
        timezone=settings.TIME_ZONE,
    )
    return schedule


@transaction.atomic
def periodic_tasks_sync() -> list[str]:
    """Write SCRM_PERIODIC_TASKS to the beat schedule and drop managed tasks no longer declared.

    Each task runs either every N seconds (`every_seconds`) or once a day at a local clock time
    (`daily_at`: heavy daily passes belong to the quiet hours, whenever beat was started).
    """
    written: list[str] = []
    for name, spec in settings.SCRM_PERIODIC_TASKS.items():
        if "daily_at" in spec:
            schedules = {"interval": None, "crontab": _daily(name, spec)}
        else:
            schedules = {"interval": _interval(name, spec), "crontab": None}
        full_name = MANAGED_PREFIX + name
        PeriodicTask.objects.update_or_create(
            name=full_name,
            defaults={
                "task": spec["task"],
                **schedules,
                "queue": spec.get("queue", ""),
                "enabled": True,
                "one_off": False,
            },
        )
        written.append(full_name)
    PeriodicTask.objects.filter(name__startswith=MANAGED_PREFIX).exclude(name__in=written).delete()
    return written
