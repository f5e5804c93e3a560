from django.core.management.base import BaseCommand, CommandError

from core.errors import DomainError
from core.services import api_key_create


class Command(BaseCommand):
    help = "Create an API key; the raw key is printed once, as the last line."

    def add_arguments(self, parser):
        parser.add_argument("name")
        parser.add_argument("--rate", default="", help="Throttle rate such as 1200/minute.")
        parser.add_argument(
            "--personal-data-requests",
            action="store_true",
            help="Allow the key to erase people and read full copies of their data (PIPL).",
        )

    def handle(self, *args, name: str, rate: str, personal_data_requests: bool, **options):
        try:
            key, raw = api_key_create(
                name=name, throttle_rate=rate, personal_data_requests=personal_data_requests
            )
        except DomainError as exc:
            raise CommandError(exc.message) from exc
        self.stderr.write(f"Created API key '{key.name}' (prefix {key.prefix}). Store it now:")
        self.stdout.write(raw)
