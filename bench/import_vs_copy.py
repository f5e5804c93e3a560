"""Contact import vs a raw COPY of the same CSV file into a bare table (PostgreSQL).

    DATABASE_URL=postgres://postgres@127.0.0.1:5432/scrm_bench_import \
        .venv/bin/python bench/import_vs_copy.py --rows 1000000

Generates a contact CSV (Chinese headers, UTF-8), times `COPY ... FROM STDIN` of it into a bare
table with the file's columns, then the app import of the same file into an empty contact pool
(fresh), then the import of a second file in which 20% of the rows changed (re-import). Prints
the ratios against the COPY (targets: ≤3× fresh, ≤5× re-import) and the peak RSS of this
process (target ≤600 MB). The database is migrated first and its contacts are deleted.

`--erased N`: first tombstone N people (as an erasure leaves them: keyed digests of a phone,
an email and a member number each), one in ten of them people of the file, so that both imports
run the check that keeps erased people out (every new row's identities digested and looked up);
compare with a run without it for what the check costs.
"""

import argparse
import os
import resource
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
os.environ.setdefault("DJANGO_SETTINGS_MODULE", "config.settings")

import django

django.setup()

from django.conf import settings  # noqa: E402
from django.core.files import File  # noqa: E402
from django.core.management import call_command  # noqa: E402
from django.db import connection  # noqa: E402

from contacts import importers  # noqa: E402
from contacts.models import (  # noqa: E402
    Contact,
    ContactTag,
    Erasure,
    ErasureSource,
    Identity,
    IdentityKind,
    SuppressedIdentity,
)
from contacts.services import identity_digest, stages_ensure_defaults  # noqa: E402
from core.models import Job  # noqa: E402

GEN_CHUNK = 100_000
CITIES = [("上海", "上海"), ("北京", "北京"), ("广东", "广州"), ("广东", "深圳"), ("浙江", "杭州")]
SOURCES = ["门店", "小程序", "公众号", "企业微信", "线下活动"]
TAGS = ["", "", "高价值", "老客", "高价值|新品关注"]
HEADERS = ["手机号", "姓名", "性别", "生日", "邮箱", "省份", "城市", "来源", "会员号", "标签"]


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


class CpuClock:
    """CPU seconds of this process and of its PostgreSQL backend (when on the same host).

    On a shared machine wall time stretches with everyone else's load; the CPU each side
    spent is the steadier measure of the work itself.
    """

    def __init__(self) -> None:
        with connection.cursor() as cursor:
            cursor.execute("SELECT pg_backend_pid()")
            self.stat = Path(f"/proc/{cursor.fetchone()[0]}/stat")
        self.tick = os.sysconf("SC_CLK_TCK")

    def read(self) -> tuple[float, float | None]:
        usage = resource.getrusage(resource.RUSAGE_SELF)
        try:
            fields = self.stat.read_text().rsplit(")", 1)[1].split()
            backend = (int(fields[11]) + int(fields[12])) / self.tick
        except OSError:
            backend = None
        return usage.ru_utime + usage.ru_stime, backend

    def since(self, start: tuple[float, float | None]) -> str:
        python, backend = self.read()
        db = (
            f"{backend - start[1]:.2f} s" if backend is not None and start[1] is not None else "n/a"
        )
        return f"cpu: python {python - start[0]:.2f} s, postgres backend {db}"


def generate(path: Path, rows: int, *, changed_share: float = 0.0, seed: int = 1) -> None:
    """Write `rows` contacts chunk by chunk; `changed_share` of them get a new name and city."""
    rng = np.random.default_rng(seed)
    with path.open("w", encoding="utf-8", newline="") as fh:
        fh.write(",".join(HEADERS) + "\n")
        for start in range(0, rows, GEN_CHUNK):
            n = min(GEN_CHUNK, rows - start)
            ids = np.arange(start, start + n)
            city_idx = ids % len(CITIES)
            changed = rng.random(n) < changed_share
            name_suffix = np.where(changed, "改", "")
            city_idx = np.where(changed, (city_idx + 1) % len(CITIES), city_idx)
            days = (ids * 37) % 15000
            frame = pd.DataFrame(
                {
                    "手机号": pd.Series(13000000000 + ids).astype(str),
                    "姓名": "客户" + pd.Series(ids).astype(str) + name_suffix,
                    "性别": np.where(ids % 2, "男", "女"),
                    "生日": (pd.Timestamp("1960-01-01") + pd.to_timedelta(days, unit="D")).strftime(
                        "%Y-%m-%d"
                    ),
                    "邮箱": "user" + pd.Series(ids).astype(str) + "@example.com",
                    "省份": [CITIES[i][0] for i in city_idx],
                    "城市": [CITIES[i][1] for i in city_idx],
                    "来源": [SOURCES[i % len(SOURCES)] for i in ids],
                    "会员号": "VIP" + pd.Series(ids).astype(str),
                    "标签": [TAGS[i % len(TAGS)] for i in ids],
                }
            )
            frame.to_csv(fh, header=False, index=False)


def tombstone(people: int, *, rows: int) -> None:
    """Leave tombstones of `people` erased people, one in ten of them rows of the file (their
    rows are then rejected by both imports), as contact_erase leaves them."""
    erasure = Erasure.objects.create(source=ErasureSource.ADMIN, reference="bench")
    in_file = np.arange(0, rows, max(rows // max(people // 10, 1), 1))[: people // 10]
    others = np.arange(rows, rows + people - len(in_file))
    tombstones = []
    for i in np.concatenate([in_file, others]).tolist():
        for kind, value in (
            (IdentityKind.PHONE, f"+86{13000000000 + i}"),
            (IdentityKind.EMAIL, f"user{i}@example.com"),
            (IdentityKind.EXTERNAL_ID, f"VIP{i}"),
        ):
            digest = identity_digest(kind=kind, app_id="", value=value)
            tombstones.append(SuppressedIdentity(erasure=erasure, kind=kind, digest=digest))
    SuppressedIdentity.objects.bulk_create(tombstones, batch_size=5000, ignore_conflicts=True)
    print(f"tombstoned: {people:,} people ({len(in_file):,} of them in the file)")


def raw_copy(path: Path) -> float:
    columns = ", ".join(f"c{i} text" for i in range(len(HEADERS)))
    with connection.cursor() as cursor:
        cursor.execute("DROP TABLE IF EXISTS bench_raw_copy")
        cursor.execute(f"CREATE TABLE bench_raw_copy ({columns})")
    start = time.perf_counter()
    with connection.cursor() as cursor:
        sql = "COPY bench_raw_copy FROM STDIN WITH (FORMAT csv, HEADER true)"
        with cursor.cursor.copy(sql) as copy, path.open("rb") as fh:
            while block := fh.read(1 << 20):
                copy.write(block)
    elapsed = time.perf_counter() - start
    with connection.cursor() as cursor:
        cursor.execute("DROP TABLE bench_raw_copy")
    return elapsed


def app_import(path: Path) -> tuple[float, dict]:
    with path.open("rb") as fh:
        job = importers.import_upload(file=File(fh, name=path.name), user=None)
    spec = importers.ImportSpec(mapping=job.params["mapping"], key="phone")
    # What importers.import_start records, without going through a broker.
    job.params = {**job.params, "mapping": spec.mapping, "key": spec.key, "started": True}
    job.save(update_fields=["params"])
    start = time.perf_counter()
    result = importers.import_run(job_id=job.pk)
    elapsed = time.perf_counter() - start
    job.refresh_from_db()
    if job.status != "succeeded":
        raise SystemExit(f"import failed: {job.error}")
    (Path(settings.MEDIA_ROOT) / job.input_file).unlink(missing_ok=True)
    return elapsed, result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--erased", type=int, default=0, help="tombstone this many people first")
    args = parser.parse_args()
    if connection.vendor != "postgresql":
        raise SystemExit("Run this against PostgreSQL: set DATABASE_URL.")

    call_command("migrate", verbosity=0)
    stages_ensure_defaults()
    tables = ", ".join(m._meta.db_table for m in (Contact, Identity, ContactTag))
    with connection.cursor() as cursor:
        cursor.execute(f"TRUNCATE {tables} CASCADE")
    Job.objects.filter(kind=importers.JOB_KIND).delete()
    Erasure.objects.all().delete()
    if args.erased:
        tombstone(args.erased, rows=args.rows)

    with tempfile.TemporaryDirectory() as tmp:
        fresh_file = Path(tmp) / "contacts.csv"
        changed_file = Path(tmp) / "contacts-20pct-changed.csv"
        generate(fresh_file, args.rows)
        generate(changed_file, args.rows, changed_share=0.2, seed=2)
        size_mb = fresh_file.stat().st_size / 1e6
        print(f"rows: {args.rows:,}  file: {size_mb:.1f} MB  chunk: {importers.CHUNK_ROWS:,}")
        print(f"peak RSS after generating the files: {peak_rss_mb():.0f} MB")

        clock = CpuClock()
        start = clock.read()
        copy_s = raw_copy(fresh_file)
        print(f"raw COPY into a bare table:   {copy_s:8.2f} s  ({clock.since(start)})")

        start = clock.read()
        fresh_s, fresh = app_import(fresh_file)
        print(
            f"app import, fresh:           {fresh_s:8.2f} s  ratio {fresh_s / copy_s:5.2f}x "
            f"(target <= 3x)  created {fresh['created']:,} rejected {fresh['rejected']:,}"
            f"  ({clock.since(start)})"
        )
        start = clock.read()
        again_s, again = app_import(changed_file)
        print(
            f"app re-import, 20% changed:  {again_s:8.2f} s  ratio {again_s / copy_s:5.2f}x "
            f"(target <= 5x)  updated {again['updated']:,} created {again['created']:,}"
            f"  ({clock.since(start)})"
        )
    rss = peak_rss_mb()
    print(f"peak RSS: {rss:.0f} MB (target <= 600 MB)")
    print(
        f"rows/s: copy {args.rows / copy_s:,.0f}  fresh {args.rows / fresh_s:,.0f}  "
        f"re-import {args.rows / again_s:,.0f}"
    )


if __name__ == "__main__":
    main()
