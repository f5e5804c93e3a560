"""The contact list by keyset vs the raw SQL that fetches the same rows (PostgreSQL).

    DATABASE_URL=postgres://postgres@127.0.0.1:5432/scrm_bench_list \
        .venv/bin/python bench/contact_list.py --contacts 1000000

Fills the contact table to --contacts rows (set-based INSERT ... SELECT generate_series, with a
tag on every tenth contact), then times fetching one page of 50 rows, first page and a page deep
in the list (90% down), two ways: the app's path (contacts.selectors.contact_list for a superuser
+ core.pagination.keyset_page, which also loads each row's stage and tags) and the hand-written SQL
that fetches the same 51 contact rows and their tags. Each is the median of --repeat runs.
Prints both and their ratio (target <= 1.5x); also prints the full HTML page time for reference.
"""

import argparse
import os
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
os.environ.setdefault("DJANGO_SETTINGS_MODULE", "config.settings")

import django

django.setup()

from django.contrib.auth import get_user_model  # noqa: E402
from django.core.management import call_command  # noqa: E402
from django.db import connection  # noqa: E402
from django.test import Client  # noqa: E402

from contacts.models import Contact, Tag, TagGroup  # noqa: E402
from contacts.selectors import contact_list  # noqa: E402
from contacts.services import stages_ensure_defaults  # noqa: E402
from core.pagination import keyset_page  # noqa: E402

PAGE = 50
RAW_PAGE = """
    SELECT c.id, c.name, c.nickname, c.phone, c.city, c.source, c.lifecycle_stage, c.created_at,
           s.name
    FROM contacts_contact c JOIN contacts_stage s ON s.key = c.lifecycle_stage
    WHERE c.merged_into_id IS NULL AND (%s::bigint IS NULL OR c.id < %s::bigint)
    ORDER BY c.id DESC LIMIT %s
"""
RAW_TAGS = """
    SELECT ct.contact_id, t.name, t.color FROM contacts_contacttag ct
    JOIN contacts_tag t ON t.id = ct.tag_id WHERE ct.contact_id = ANY(%s)
"""


def fill(n: int) -> None:
    have = Contact.objects.count()
    if have >= n:
        return
    group, _ = TagGroup.objects.get_or_create(name="兴趣")
    tag, _ = Tag.objects.get_or_create(group=group, name="护肤")
    with connection.cursor() as cursor:
        cursor.execute(
            """
            INSERT INTO contacts_contact (created_at, updated_at, name, nickname, gender, phone,
                email, province, city, source, channel_code, utm_source, utm_medium, utm_campaign,
                utm_content, utm_term, lifecycle_stage, attributes)
            SELECT now() - (g || ' seconds')::interval, now(), '客户' || g, '', 'unknown',
                '+86138' || lpad(g::text, 8, '0'), '', '上海', '上海', '小程序', '', '', '', '',
                '', '', 'new', '{}'::jsonb
            FROM generate_series(%s, %s) AS g
            """,
            [have + 1, n],
        )
        cursor.execute(
            "INSERT INTO contacts_contacttag (contact_id, tag_id, source, created_at) "
            "SELECT id, %s, 'import', now() FROM contacts_contact WHERE id %% 10 = 0 "
            "ON CONFLICT DO NOTHING",
            [tag.pk],
        )
        cursor.execute("ANALYZE contacts_contact; ANALYZE contacts_contacttag")


def median_ms(fn, repeat: int) -> float:
    fn()  # warm
    times = []
    for _ in range(repeat):
        started = time.perf_counter()
        fn()
        times.append((time.perf_counter() - started) * 1000)
    return statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--contacts", type=int, default=1_000_000)
    parser.add_argument("--repeat", type=int, default=30)
    args = parser.parse_args()
    if connection.vendor != "postgresql":
        raise SystemExit("Run against PostgreSQL: set DATABASE_URL=postgres://...")
    call_command("migrate", verbosity=0)
    stages_ensure_defaults()
    started = time.perf_counter()
    fill(args.contacts)
    print(f"{Contact.objects.count():,} contacts ready ({time.perf_counter() - started:.1f} s)")

    user, _ = get_user_model().objects.get_or_create(
        username="bench-admin", defaults={"is_superuser": True, "is_staff": True}
    )
    ids = Contact.objects.order_by("-id").values_list("id", flat=True)
    deep_after = ids[int(args.contacts * 0.9)]
    client = Client(HTTP_HOST="127.0.0.1")
    client.force_login(user)

    print(f"{'page':<12}{'app (ms)':>10}{'raw SQL (ms)':>14}{'ratio':>8}{'HTML page (ms)':>16}")
    for label, after in (("first", None), ("deep (90%)", deep_after)):

        def app(after=after):
            page = keyset_page(contact_list(user=user), after=after, size=PAGE)
            for contact in page.items:
                contact.lifecycle_stage.name  # noqa: B018  (the list shows it)
                list(contact.contact_tags.all())

        def raw(after=after):
            with connection.cursor() as cursor:
                cursor.execute(RAW_PAGE, [after, after, PAGE + 1])
                rows = cursor.fetchall()
                cursor.execute(RAW_TAGS, [[r[0] for r in rows[:PAGE]]])
                cursor.fetchall()

        def html(after=after):
            url = "/contacts/" + (f"?after={after}" if after else "")
            assert client.get(url).status_code == 200

        app_ms, raw_ms = median_ms(app, args.repeat), median_ms(raw, args.repeat)
        html_ms = median_ms(html, max(5, args.repeat // 5))
        print(f"{label:<12}{app_ms:>10.2f}{raw_ms:>14.2f}{app_ms / raw_ms:>7.2f}x{html_ms:>16.1f}")


if __name__ == "__main__":
    main()
