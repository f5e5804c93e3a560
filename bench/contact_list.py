"""The contact list by keyset vs the raw SQL that fetches the same rows (PostgreSQL).

    DATABASE_URL=postgres://postgres@127.0.0.1:5432/scrm_bench_list \
        .venv/bin/python bench/contact_list.py --contacts 1000000

Fills the contact table to --contacts rows (set-based INSERT ... SELECT generate_series: every
lifecycle stage, an owner on every third contact, a store on every fifth, one tag on every tenth
and another on every seventh), then times fetching one page of 50 rows, first page and a page
deep in the list (90% down), three ways: the list view's own data path for a superuser
(contacts.views.contact_list_data: scoping, filters, contacts.selectors.contact_list_page and the
rows the template shows: name, masked phone, city, source, stage name, owner, store, created time
and tags with colours); hand-written SQL that fetches the same 51 rows with their names and the
page's tags; and a replay of the two statements the app sent (the cost of the SQL alone). They
run in turn within each repetition, so load from other processes hits all alike; each figure is
the median of --repeat runs, and "best" is the ratio of the fastest runs. Prints the app / raw
ratio (target <= 1.5x) and the app / same-SQL ratio; also the full HTML page time for reference.
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
from django.http import QueryDict  # noqa: E402
from django.test import Client  # noqa: E402
from django.test.utils import CaptureQueriesContext  # noqa: E402

from contacts.models import Contact, Store, Tag, TagGroup  # noqa: E402
from contacts.services import stages_ensure_defaults  # noqa: E402
from contacts.views import contact_list_data  # noqa: E402

PAGE = 50
STAGES = ["new", "interested", "first_purchase", "repeat", "loyal", "dormant", "churned"]
# The same columns and joins as contact_list_page: the stage is an inner join (never null),
# owner and store are optional.
RAW_PAGE = """
    SELECT c.id, c.name, c.nickname, c.phone, c.city, c.source, c.lifecycle_stage, s.name,
           u.username, st.name, c.created_at
    FROM contacts_contact c
    JOIN contacts_stage s ON s.key = c.lifecycle_stage
    LEFT JOIN auth_user u ON u.id = c.owner_id
    LEFT JOIN contacts_store st ON st.id = c.store_id
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
    skin = Tag.objects.get_or_create(
        group=TagGroup.objects.get_or_create(name="兴趣")[0], name="护肤"
    )[0]
    vip = Tag.objects.get_or_create(
        group=TagGroup.objects.get_or_create(name="价值")[0], name="高价值", color="#dc2626"
    )[0]
    owners = [
        get_user_model().objects.get_or_create(username=f"clerk{i}")[0].pk for i in range(1, 6)
    ]
    stores = [
        Store.objects.get_or_create(code=f"s{i}", defaults={"name": f"门店{i}"})[0].pk
        for i in range(1, 4)
    ]
    with connection.cursor() as cursor:
        cursor.execute(
            """
            INSERT INTO contacts_contact (created_at, updated_at, name, nickname, gender, phone,
                email, province, city, source, channel_code, utm_source, utm_medium, utm_campaign,
                utm_content, utm_term, lifecycle_stage, attributes, lead_score, owner_id,
                store_id)
            SELECT now() - (g || ' seconds')::interval, now(), '客户' || g, '', 'unknown',
                '+86138' || lpad(g::text, 8, '0'), '', '上海', '上海', '小程序', '', '', '', '',
                '', '', (%s::text[])[1 + g %% 7], '{}'::jsonb, 0,
                CASE WHEN g %% 3 = 0 THEN (%s::bigint[])[1 + g %% 5] END,
                CASE WHEN g %% 5 = 0 THEN (%s::bigint[])[1 + g %% 3] END
            FROM generate_series(%s, %s) AS g
            """,
            [STAGES, owners, stores, have + 1, n],
        )
        for tag, every in ((skin, 10), (vip, 7)):
            cursor.execute(
                "INSERT INTO contacts_contacttag (contact_id, tag_id, source, created_at) "
                "SELECT id, %s, 'import', now() FROM contacts_contact WHERE id %% %s = 0 "
                "ON CONFLICT DO NOTHING",
                [tag.pk, every],
            )
        cursor.execute("ANALYZE contacts_contact; ANALYZE contacts_contacttag")


def paired_timings(fns, repeat: int) -> list[tuple[float, float]]:
    """(median, best) ms of each of `fns`, run in turn so that other processes hit all alike."""
    for fn in fns:
        fn()
    times: list[list[float]] = [[] for _ in fns]
    for _ in range(repeat):
        for fn, fn_times in zip(fns, times, strict=True):
            started = time.perf_counter()
            fn()
            fn_times.append((time.perf_counter() - started) * 1000)
    return [(statistics.median(t), min(t)) for t in times]


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

    def app_page(after):
        data = QueryDict(mutable=True)
        if after:
            data["after"] = str(after)
        return contact_list_data(data=data, user=user)[1]

    def raw_page(after):
        with connection.cursor() as cursor:
            cursor.execute(RAW_PAGE, [after, after, PAGE + 1])
            rows = cursor.fetchall()
            cursor.execute(RAW_TAGS, [[r[0] for r in rows[:PAGE]]])
            return rows, cursor.fetchall()

    app_sql = {}
    for after in (None, deep_after):
        with CaptureQueriesContext(connection) as app_queries:
            page = app_page(after)
        rows, tags = raw_page(after)
        # Same rows, names and tags: the comparison is only honest if both fetch the same data.
        assert [(r.pk, r.stage_name, r.owner, r.store) for r in page.items] == [
            (r[0], r[7], r[8] or "", r[9] or "") for r in rows[:PAGE]
        ]
        assert sorted(t for r in page.items for t in r.tags) == sorted(t[1:] for t in tags)
        assert len(app_queries) == 2, [q["sql"] for q in app_queries]
        app_sql[after] = [q["sql"] for q in app_queries]

    # "raw" is the hand-written SQL (joins for the names); "same SQL" replays the two statements
    # the app sent, so app / same SQL is the cost of the ORM and of building the rows alone.
    # Other processes on the machine skew the medians; the load average says how much.
    print(f"load average before: {os.getloadavg()[0]:.2f}")
    # The ratio of the best runs approximates an idle machine.
    print(
        f"{'page':<12}{'app (ms)':>10}{'raw SQL (ms)':>14}{'ratio':>8}{'best':>8}"
        f"{'same SQL (ms)':>15}{'ratio':>8}{'HTML page (ms)':>16}"
    )
    for label, after in (("first", None), ("deep (90%)", deep_after)):

        def app(after=after):
            app_page(after)

        def raw(after=after):
            raw_page(after)

        def same(after=after):
            with connection.cursor() as cursor:
                for sql in app_sql[after]:
                    cursor.execute(sql)
                    cursor.fetchall()

        def html(after=after):
            url = "/contacts/" + (f"?after={after}" if after else "")
            assert client.get(url).status_code == 200

        (app_ms, app_best), (raw_ms, raw_best), (same_ms, _) = paired_timings(
            [app, raw, same], args.repeat
        )
        html_ms = median_ms(html, max(5, args.repeat // 5))
        print(
            f"{label:<12}{app_ms:>10.2f}{raw_ms:>14.2f}{app_ms / raw_ms:>7.2f}x"
            f"{app_best / raw_best:>7.2f}x{same_ms:>15.2f}{app_ms / same_ms:>7.2f}x{html_ms:>16.1f}"
        )
    print(f"load average after: {os.getloadavg()[0]:.2f}")


if __name__ == "__main__":
    main()
