"""Back-fill of a new lead-scoring event rule over a seeded pool (1,000,000 contacts, 10,000,000
events from `seed_demo`): how long the background job takes and what it holds in memory. Run it
on a copy of the benchmark database, since it adds a rule and its awards:

    psql -h 127.0.0.1 -U postgres -c "CREATE DATABASE scrm_bench_bf TEMPLATE scrm_bench_segments"
    DATABASE_URL=postgres://postgres@127.0.0.1:5432/scrm_bench_bf \
        .venv/bin/python manage.py shell -c "exec(open('bench/lead_score_backfill.py').read())"
    psql -h 127.0.0.1 -U postgres -c "DROP DATABASE scrm_bench_bf"

No ratio: there is no raw baseline for "rescore past events with caps and decay"; the figures
say whether the job is an overnight one or a coffee break.
"""

import resource
import time

from segments import scoring
from segments.models import LeadScoreAward

t0 = time.perf_counter()
rule = scoring.score_rule_create(
    data={
        "name": "下单（回填基准）",
        "kind": "event",
        "event_name": "purchase",
        "points": 5,
        "cap_points": 20,
        "cap_period": "week",
    }
)
print(f"rule {rule.pk} created in {time.perf_counter() - t0:.2f} s")
for run in ("back-fill", "second run (idempotent)"):
    t0 = time.perf_counter()
    rescored = scoring.score_rule_backfill(rule_id=rule.pk)
    took = time.perf_counter() - t0
    awards = LeadScoreAward.objects.filter(rule=rule).count()
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(
        f"{run}: {rescored} contacts rescored in {took:.1f} s; {awards} awards;"
        f" peak RSS {rss:.0f} MB"
    )
