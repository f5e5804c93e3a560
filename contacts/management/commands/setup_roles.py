from django.core.management.base import BaseCommand

from contacts.roles import ROLES, roles_sync


class Command(BaseCommand):
    help = "Create or update the role groups (admin, operator, store_staff, analyst); idempotent."

    def handle(self, *args, **options):
        counts = roles_sync()
        for name, count in counts.items():
            self.stdout.write(f"{name} ({ROLES[name].label}): {count} permissions")
