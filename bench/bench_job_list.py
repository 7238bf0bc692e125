"""The API's job list over 100,000 jobs of one tenant on PostgreSQL: `list_fine_tuning_jobs` (keyset
pages on (created_at, id), the index `ix_jobs_tenant_id_created_at_id`, 3 queries a page to
complete the job objects) at the first page and deep in the list, beside the CLI's `list_jobs`
at the same depth (LIMIT/OFFSET: a scan of every row before the page) as the baseline, in one run.

usage: python bench/bench_job_list.py [--jobs 100000] [--runs 25] [--url postgresql+psycopg://...]
Without --url a fresh database is created on the local server (tests/registry_fixtures) and
dropped at the end. Prints one JSON object: p50/p95 ms per case and the ratio deep OFFSET / deep
keyset. Rows are inserted with one multi-row INSERT per 10,000 (jobs of 10 tenants, one measured).
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from datetime import timedelta
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

CHUNK = 10_000
SPEC = {"task": "sst2", "method": "lora", "rank": 4, "base_model": "tiny-bert", "max_steps": 5, "seed": 42,
        "lr": 0.0005, "batch_size": 16}


def _fill(url: str, n: int) -> str:
    from sqlalchemy import insert

    from orchestrator.registry import db
    from orchestrator.registry.models import Job, Tenant, new_id, utcnow

    tenants = [new_id() for _ in range(10)]
    start = utcnow() - timedelta(days=30)
    with db.session_factory(url)() as s:
        s.execute(insert(Tenant), [{"id": t, "slug": f"t{i}", "name": f"t{i}", "max_running": 2,
                                    "created_at": start} for i, t in enumerate(tenants)])
        for offset in range(0, n, CHUNK):
            s.execute(insert(Job), [{
                "id": new_id(), "tenant_id": tenants[0] if i % 2 == 0 else tenants[1 + i % 9],
                "state": "succeeded", "kind": "train", "spec": SPEC, "task": "sst2", "method": "lora",
                "rank": 4, "base_model": "tiny-bert", "priority": 0, "attempts": 1, "max_attempts": 3,
                "cancel_requested": False, "dispatch_count": 1, "created_at": start + timedelta(seconds=i),
                "metadata_": {"batch": str(i % 100)}} for i in range(offset, min(n, offset + CHUNK))])
            s.commit()
        s.commit()
    return "t0"


def _time(fn, runs: int) -> dict[str, float]:
    fn()  # warm: connection, statement cache
    samples = []
    for _ in range(runs):
        t0 = time.perf_counter()
        fn()
        samples.append((time.perf_counter() - t0) * 1000)
    samples.sort()
    p95 = samples[int(0.95 * (len(samples) - 1))]
    return {"p50_ms": round(statistics.median(samples), 2), "p95_ms": round(p95, 2)}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--jobs", type=int, default=100_000)
    parser.add_argument("--runs", type=int, default=25)
    parser.add_argument("--url")
    args = parser.parse_args()

    from sqlalchemy import text

    from orchestrator.registry import db
    from orchestrator.services.fine_tuning_views import list_fine_tuning_jobs
    from orchestrator.services.jobs import list_jobs

    created = None
    url = args.url
    if url is None:
        sys.path.insert(0, str(ROOT / "tests"))
        from registry_fixtures import create_pg_database, drop_pg_database, pg_database_url

        created = create_pg_database()
        url = pg_database_url(created)
    try:
        db.upgrade(url)
        t0 = time.perf_counter()
        tenant = _fill(url, args.jobs)
        fill_s = time.perf_counter() - t0
        session = db.session_factory(url)()
        session.execute(text("ANALYZE"))
        session.commit()
        mine = args.jobs // 2
        depth = mine - 40  # a page near the end of the tenant's list
        deep_after = list_jobs(session, tenant=tenant, limit=1, offset=depth - 1)[0].id
        cases = {
            "keyset_first_page": lambda: list_fine_tuning_jobs(session, tenant, limit=20),
            "keyset_deep_page": lambda: list_fine_tuning_jobs(session, tenant, after=deep_after, limit=20),
            "keyset_metadata_filter": lambda: list_fine_tuning_jobs(session, tenant, limit=20,
                                                                    metadata={"batch": "42"}),
            "offset_deep_page_baseline": lambda: list_jobs(session, tenant=tenant, limit=20, offset=depth),
        }
        page, _ = list_fine_tuning_jobs(session, tenant, after=deep_after, limit=20)
        expected = [j.id for j in list_jobs(session, tenant=tenant, limit=20, offset=depth)]
        assert [j["id"] for j in page] == expected, "keyset and offset pages differ"
        results = {name: _time(fn, args.runs) for name, fn in cases.items()}
        session.close()
        out = {"jobs": args.jobs, "tenant_jobs": mine, "depth": depth, "fill_s": round(fill_s, 1),
               "cases": results,
               "deep_offset_over_keyset": round(results["offset_deep_page_baseline"]["p50_ms"]
                                                / results["keyset_deep_page"]["p50_ms"], 1)}
        print(json.dumps(out, indent=2))
    finally:
        db.forget_engine(url)
        if created is not None:
            drop_pg_database(created)


if __name__ == "__main__":
    main()
