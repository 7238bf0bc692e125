"""The job system under load: N queued jobs over T tenants against Redis + PostgreSQL.

    python bench/bench_job_system_load.py                # 10,000 jobs, 100 tenants, 4 workers
    python bench/bench_job_system_load.py --jobs 2000 --tenants 50 --workers 2

What runs is the real control plane: `submit_batch` (spec validation, one transaction per batch),
the messages sent once the batch committed (one Redis message per job + the dispatch record), and
W worker processes each looping over `worker.runner.run_job`: the fair-share claim (one
conditional UPDATE), the lease keep-alive, staging, publishing + hashing an adapter folder,
`finish_job_success`. Only the training step is replaced, by a bench fixture executor that
writes a 1 KB adapter folder at once (so the numbers are the system's, not torch's). The workers
call `run_job` directly instead of consuming the Redis messages through Celery: a message only
says "work is waiting", and the claim picks the job by fair share whatever the message named.

Measured: submit throughput (jobs/s, including the messages); claim latency p50/p99 (the
`claim_next` call: candidates query + conditional UPDATE, as the workers saw it); fairness: for
every window of claims, each tenant's share of the window's claims against its fair share
(1 / tenants with queued jobs at the window's start), summarised as Jain's index (1 = perfectly
even) and the min/max share ratio. Tenants submit unequal amounts (tenant i: ∝ 1/(1 + i % 10)),
and all of a tenant's jobs in one block (the worst order for a FIFO), so an age-ordered claim
shows up as unfair.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import os
import statistics
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

import benchlib  # noqa: F401  (environment + sys.path)

PG_ADMIN = os.environ.get("LORAFLEET_TEST_POSTGRES_URL", "postgresql://postgres@127.0.0.1:5432/postgres")
REDIS_URL = os.environ.get("LORAFLEET_BENCH_REDIS_URL", "redis://127.0.0.1:6379/6")
SPEC = {"task": "sst2", "method": "lora", "rank": 4, "base_model": "tiny-bert", "max_steps": 1}


def noop_executor(ctx):
    """The bench fixture: no training; a tiny adapter folder so publishing and hashing run."""
    from orchestrator.services.leases import UsageRecord
    from worker.executor import JobResult, StagedAdapter

    ctx.staging_dir.mkdir(parents=True, exist_ok=True)
    body = json.dumps({"job": ctx.job_id, "pad": "x" * 1000})
    (ctx.staging_dir / "adapter_config.json").write_text(body)
    return JobResult(metrics={"validation": {"accuracy": 0.5}}, usage=UsageRecord(device="bench"),
                     adapter=StagedAdapter(ctx.staging_dir, 1, 2))


def _env(db_url: str, home: Path) -> dict[str, str]:
    return {"LORAFLEET_HOME": str(home), "LORAFLEET_DATABASE_URL": db_url, "LORAFLEET_BROKER_URL": REDIS_URL,
            "LORAFLEET_ARTIFACTS": str(home / "artifacts"), "LORAFLEET_LEASE_SECONDS": "60",
            "LORAFLEET_HEARTBEAT_SECONDS": "15", "LORAFLEET_TENANT_MAX_RUNNING": "2"}


def worker_loop(env: dict[str, str], index: int, out: mp.Queue, budget: Any) -> None:
    os.environ.update(env)
    from orchestrator.config import load_settings
    from orchestrator.services import leases
    from worker import kinds, runner

    kinds.EXECUTORS["train"] = noop_executor  # this bench process only
    real_claim = leases.claim_next
    claims: list[tuple[float, float, str]] = []  # (end time, latency s, job id)

    def timed_claim(*args, **kwargs):
        t0 = time.perf_counter()
        job = real_claim(*args, **kwargs)
        if job is not None:
            claims.append((time.time(), time.perf_counter() - t0, job.id))
        return job

    leases.claim_next = timed_claim  # the runner imports it from there at each claim
    settings = load_settings(env)
    worker_id = f"bench-{index}:{os.getpid()}"
    idle = 0
    while idle < 3 and _take(budget):
        result = runner.run_job("any", worker_id=worker_id, settings=settings, cache=None)
        idle = idle + 1 if result.outcome == "skipped" else 0
        if result.outcome not in ("succeeded", "skipped"):
            print(f"worker {index}: {result}", file=sys.stderr)
    out.put(claims)


def _take(budget: Any) -> bool:
    """One more claim allowed by the shared claim budget (-1: no limit)."""
    with budget.get_lock():
        if budget.value == 0:
            return False
        if budget.value > 0:
            budget.value -= 1
        return True


def jain(shares: list[float]) -> float:
    return sum(shares) ** 2 / (len(shares) * sum(s * s for s in shares)) if shares else 1.0


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--jobs", type=int, default=10_000)
    ap.add_argument("--tenants", type=int, default=100)
    ap.add_argument("--workers", type=int, default=4)
    ap.add_argument("--batch", type=int, default=200, help="jobs per submit_batch call")
    ap.add_argument("--window", type=int, default=500, help="claims per fairness window")
    ap.add_argument("--claims", type=int, default=-1,
                    help="stop after this many claims (the rest stays queued: latency at a deep queue)")
    args = ap.parse_args()

    import psycopg
    import redis
    from sqlalchemy import func, select

    from orchestrator.announce import sending_session
    from orchestrator.config import load_settings
    from orchestrator.registry import db
    from orchestrator.registry.db import session_scope
    from orchestrator.registry.models import Job
    from orchestrator.services.jobs import submit_batch
    from orchestrator.services.tenants import create_tenant

    name = f"lorafleet_bench_faults_{uuid.uuid4().hex[:8]}"
    home = Path(tempfile.mkdtemp(prefix=f"{name}-"))  # the run's LORAFLEET_HOME, removed at the end
    with psycopg.connect(PG_ADMIN, autocommit=True) as admin:
        admin.execute(f'CREATE DATABASE "{name}"')
    db_url = PG_ADMIN.rsplit("/", 1)[0] + f"/{name}"
    redis.Redis.from_url(REDIS_URL).flushdb()
    env = _env(db_url, home)
    try:
        db.upgrade(db_url)
        settings = load_settings(env)
        weights = [1 / (1 + i % 10) for i in range(args.tenants)]
        counts = [max(1, round(args.jobs * w / sum(weights))) for w in weights]
        counts[0] += args.jobs - sum(counts)
        with session_scope(settings) as s:
            slugs = [create_tenant(s, f"t{i:03d}", max_running=2).slug for i in range(args.tenants)]
        items = [{"tenant": slug, "spec": {**SPEC, "seed": k}}
                 for slug, n in zip(slugs, counts, strict=True) for k in range(n)]

        t0 = time.perf_counter()
        for start in range(0, len(items), args.batch):
            with sending_session(settings) as s:  # the batch's messages are sent once it committed
                submit_batch(s, items[start:start + args.batch])
        submit_s = time.perf_counter() - t0

        with session_scope(settings) as s:
            tenant_of = dict(s.execute(select(Job.id, Job.tenant_id)).all())
            backlog: dict[str, int] = {}
            for tid in tenant_of.values():
                backlog[tid] = backlog.get(tid, 0) + 1

        out: mp.Queue = mp.get_context("spawn").Queue()
        ctx = mp.get_context("spawn")
        budget = ctx.Value("i", args.claims)
        procs = [ctx.Process(target=worker_loop, args=(env, i, out, budget)) for i in range(args.workers)]
        t1 = time.perf_counter()
        for p in procs:
            p.start()
        claims = [c for _ in procs for c in out.get()]
        for p in procs:
            p.join()
        run_s = time.perf_counter() - t1

        claims.sort()
        latencies = sorted(c[1] for c in claims)
        p50 = latencies[len(latencies) // 2]
        p99 = latencies[min(len(latencies) - 1, int(len(latencies) * 0.99))]
        windows = []
        remaining = dict(backlog)
        for w in range(0, len(claims), args.window):
            chunk = claims[w:w + args.window]
            active = [t for t, n in remaining.items() if n > 0]
            got: dict[str, int] = {}
            for _, _, job_id in chunk:
                tid = tenant_of[job_id]
                got[tid] = got.get(tid, 0) + 1
                remaining[tid] -= 1
            fair = len(chunk) / len(active)
            shares = [got.get(t, 0) / fair for t in active]
            windows.append({"window": w // args.window, "active_tenants": len(active),
                            "jain": round(jain(shares), 3), "min_share": round(min(shares), 2),
                            "max_share": round(max(shares), 2)})
        with session_scope(settings) as s:
            states = dict(s.execute(select(Job.state, func.count()).group_by(Job.state)).all())
        report = {
            "jobs": len(items), "tenants": args.tenants, "workers": args.workers,
            "submit_jobs_per_s": round(len(items) / submit_s, 1), "submit_s": round(submit_s, 2),
            "run_s": round(run_s, 2), "jobs_per_s": round(len(claims) / run_s, 1),
            "claims": len(claims), "claim_p50_ms": round(p50 * 1000, 2), "claim_p99_ms": round(p99 * 1000, 2),
            "states": states,
            "jain_median": statistics.median(w["jain"] for w in windows),
            "jain_min": min(w["jain"] for w in windows),
            "windows_first": windows[:3], "windows_last": windows[-2:],
        }
        print(json.dumps(report, indent=2))
    finally:
        db.forget_engine(db_url)
        with psycopg.connect(PG_ADMIN, autocommit=True) as admin:
            admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        redis.Redis.from_url(REDIS_URL).flushdb()
        import shutil

        shutil.rmtree(home, ignore_errors=True)


if __name__ == "__main__":
    main()
