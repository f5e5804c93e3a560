"""Event ingest through POST /api/v1/events vs direct inserts of the same events (PostgreSQL).

    DATABASE_URL=postgres://postgres@127.0.0.1:5432/scrm_bench_events \
        .venv/bin/python bench/events_ingest.py --events 100000

Both sides write the same events in batches of 500 into the same table, one transaction per
batch. The baseline is a multi-row INSERT through the raw psycopg cursor; the app path is the
whole request stack in-process (WSGI handler, API-key auth, throttling, serializers, per-item
validation, duplicate detection, signals). Prints events/s for each and the app's share of the
direct rate (target: >= 25%). The database is migrated first; earlier benchmark events are removed.
"""

import argparse
import datetime as dt
import json
import os
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
os.environ.setdefault("DJANGO_SETTINGS_MODULE", "config.settings")

import django

django.setup()

from django.core.management import call_command  # noqa: E402
from django.db import connection, transaction  # noqa: E402
from django.test import Client  # noqa: E402
from django.utils import timezone  # noqa: E402

from contacts.models import Contact, Event  # noqa: E402
from contacts.services import stages_ensure_defaults  # noqa: E402
from core.services import api_key_create  # noqa: E402

BATCH = 500
NAMES = ["page_view", "view_product", "add_to_cart", "sign_in", "share"]


def make_events(prefix: str, n: int, contact_ids: list[int]) -> list[dict]:
    # Spread one second apart, all in the past (the API rejects events from the future).
    base = timezone.now() - dt.timedelta(seconds=n + 3600)
    return [
        {
            "event_id": f"{prefix}-{i}",
            "name": NAMES[i % len(NAMES)],
            "occurred_at": (base + dt.timedelta(seconds=i)).isoformat(),
            "contact_id": contact_ids[i % len(contact_ids)],
            "properties": {"page": f"/p/{i % 97}", "sku": f"SKU-{i % 311}"},
        }
        for i in range(n)
    ]


def direct_insert(events: list[dict]) -> float:
    columns = "(event_id, contact_id, name, occurred_at, received_at, properties, value, source)"
    started = time.perf_counter()
    for start in range(0, len(events), BATCH):
        batch = events[start : start + BATCH]
        with transaction.atomic(), connection.cursor() as cursor:
            now = timezone.now()
            placeholders = ",".join(["(%s, %s, %s, %s, %s, %s, NULL, 'api')"] * len(batch))
            params: list = []
            for e in batch:
                params += [
                    e["event_id"],
                    e["contact_id"],
                    e["name"],
                    e["occurred_at"],
                    now,
                    json.dumps(e["properties"]),
                ]
            cursor.execute(
                f"INSERT INTO contacts_event {columns} VALUES {placeholders}",
                params,
            )
    return time.perf_counter() - started


def api_insert(events: list[dict], key: str) -> float:
    client = Client(HTTP_AUTHORIZATION=f"Api-Key {key}", HTTP_HOST="127.0.0.1")
    started = time.perf_counter()
    for start in range(0, len(events), BATCH):
        body = json.dumps({"events": events[start : start + BATCH]})
        response = client.post("/api/v1/events", body, content_type="application/json")
        if response.status_code != 200 or response.json()["accepted"] != len(
            events[start : start + BATCH]
        ):
            raise SystemExit(
                f"API refused a batch: {response.status_code} {response.content[:300]}"
            )
    return time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--events", type=int, default=100_000)
    parser.add_argument("--contacts", type=int, default=5_000)
    args = parser.parse_args()
    if connection.vendor != "postgresql":
        raise SystemExit("Run against PostgreSQL: set DATABASE_URL=postgres://...")

    call_command("migrate", verbosity=0)
    stages_ensure_defaults()
    Event.objects.filter(event_id__startswith="bench-").delete()
    if Contact.objects.count() < args.contacts:
        Contact.objects.bulk_create(
            [Contact(name=f"bench {i}") for i in range(args.contacts)], batch_size=5000
        )
    contact_ids = list(Contact.objects.values_list("pk", flat=True)[: args.contacts])
    _, key = api_key_create(name=f"bench {time.time()}", throttle_rate="1000000/minute")

    # Warm both paths (connections, caches, query plans) before timing.
    direct_insert(make_events("bench-warm-direct", BATCH, contact_ids))
    api_insert(make_events("bench-warm-api", BATCH, contact_ids), key)

    direct_s = direct_insert(make_events("bench-direct", args.events, contact_ids))
    api_s = api_insert(make_events("bench-api", args.events, contact_ids), key)
    Event.objects.filter(event_id__startswith="bench-").delete()

    direct_rate, api_rate = args.events / direct_s, args.events / api_s
    print(f"events: {args.events:,} in batches of {BATCH}, {len(contact_ids):,} contacts")
    print(f"direct INSERT : {direct_s:8.2f} s  {direct_rate:10,.0f} events/s")
    print(f"POST /events  : {api_s:8.2f} s  {api_rate:10,.0f} events/s")
    share = api_rate / direct_rate
    verdict = "meets" if share >= 0.25 else "misses"
    print(f"API / direct  : {share:8.1%}  ({verdict} the >= 25% target)")


if __name__ == "__main__":
    main()
