from django.core.management.base import BaseCommand

from core.periodic import periodic_tasks_sync


class Command(BaseCommand):
    help = "Write the periodic tasks declared in settings.SCRM_PERIODIC_TASKS to celery beat."

    def handle(self, *args, **options):
        for name in periodic_tasks_sync():
            self.stdout.write(f"  {name}")
        self.stdout.write(self.style.SUCCESS("Periodic tasks are up to date."))
