"""`report cost` and `report benchmark` on a synthetic registry of 1,000 tenants and 100,000 adapters.

Builds the registry in bulk (Core executemany in chunks) on PostgreSQL and/or SQLite: every
tenant gets the same number of succeeded training jobs, each with its adapter, usage (some jobs
with a lost first attempt), validation metrics and a train-loss row; 5 % more jobs failed; one
untuned baseline per task; 10 % of the adapters re-evaluated. Then, side by side in one run:

- each report's service call (SQL + filling the model), median of --repeat runs, with the
  report-index migration applied (head) and without it (its down_revision), so the indexes'
  effect is a ratio measured here;
- rendering the result (json, terminal table), and the whole command in a fresh process
  (`lorafleet report cost --format json`), which adds interpreter start-up and imports;
- the query plans (EXPLAIN / EXPLAIN QUERY PLAN) of the main statements, also for one tenant.

usage: python bench/bench_reports.py [--backend postgresql|sqlite|both] [--tenants 1000]
       [--adapters 100000] [--repeat 3] [--plans]
Prints one JSON object (and the plans as text when --plans).
"""

from __future__ import annotations

import argparse
import json
import os
import random
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path

import benchlib  # noqa: F401  (sys.path, environment)
from sqlalchemy import text

from lora_engine.catalog import GLUE_TASKS, TASKS
from orchestrator.registry import db
from orchestrator.registry.models import Adapter, Job, Metric, Tenant, Usage
from orchestrator.reports import benchmark_report, cost_report, make_filters
from orchestrator.reports.benchmark import benchmark_rows
from orchestrator.reports.cost import cost_by_device, cost_jobs_by_state, cost_quality, cost_storage
from orchestrator.reports.render import render
from orchestrator.reports.scope import explain

ROOT = Path(__file__).resolve().parents[1]
PG_ADMIN = os.environ.get("LORAFLEET_TEST_POSTGRES_URL", "postgresql://postgres@127.0.0.1:5432/postgres")
PRICES = {"cpu": 0.05, "cuda": 2.5, "cuda:NVIDIA H100": 4.0}
DEVICES = ("cpu", "cuda:NVIDIA H100 80GB HBM3", "cuda:NVIDIA A100-SXM4-40GB")
TASK_POOL = (*GLUE_TASKS, "e2e")
METHODS = (("lora", 4), ("lora", 8), ("lora", 16), ("rslora", 8), ("dora", 8), ("full", 8))
CHUNK = 10_000
REPORT_INDEX_REVISION = "2026_12_01_reports"


def _rows(n_tenants: int, n_adapters: int, seed: int = 0):
    """Rows per table (dicts for Core inserts), deterministic for a seed."""
    rng = random.Random(seed)
    t0 = datetime(2026, 1, 1, tzinfo=UTC)
    tenants = [
        {
            "id": str(uuid.UUID(int=rng.getrandbits(128))),
            "slug": f"t{i:04d}",
            "name": f"Tenant {i}",
            "max_running": 2,
            "created_at": t0,
        }
        for i in range(n_tenants)
    ]
    jobs, adapters, usage, metrics = [], [], [], []
    per_tenant = n_adapters // n_tenants
    n_failed = max(n_adapters // 20, 1)

    def job(tenant, task, method, rank, state, kind, when, attempts):
        base = TASKS[task].base_model
        row = {
            "id": str(uuid.UUID(int=rng.getrandbits(128))),
            "tenant_id": tenant["id"],
            "kind": kind,
            "state": state,
            "spec": {"task": task, "method": method, "rank": rank, "base_model": base},
            "task": task,
            "method": method,
            "rank": rank,
            "base_model": base,
            "priority": 0,
            "attempts": attempts,
            "max_attempts": 3,
            "cancel_requested": False,
            "created_at": when,
            "dispatch_count": 1,
        }
        jobs.append(row)
        return row

    def use(j, attempt, device, seconds, examples):
        usage.append(
            {
                "job_id": j["id"],
                "tenant_id": j["tenant_id"],
                "attempt": attempt,
                "device": device,
                "device_seconds": seconds,
                "wall_seconds": seconds,
                "peak_memory_bytes": 10**9,
                "examples": examples,
                "tokens": examples * 40,
                "created_at": j["created_at"],
            }
        )

    def metric(j, adapter_id, split, name, value, source="job", when=None):
        metrics.append(
            {
                "job_id": j["id"],
                "adapter_id": adapter_id,
                "tenant_id": j["tenant_id"],
                "split": split,
                "name": name,
                "value": value,
                "source": source,
                "created_at": when or j["created_at"],
            }
        )

    for i in range(n_adapters):
        tenant = tenants[i // per_tenant % n_tenants]
        task = TASK_POOL[rng.randrange(len(TASK_POOL))]
        method, rank = METHODS[rng.randrange(len(METHODS))]
        when = t0 + timedelta(minutes=i)
        retried = rng.random() < 0.1
        j = job(tenant, task, method, rank, "succeeded", "train", when, 2 if retried else 1)
        device = DEVICES[rng.randrange(len(DEVICES))]
        if retried:
            use(j, 1, device, rng.uniform(10, 300), 500)
        use(j, j["attempts"], device, rng.uniform(60, 3600), 4000)
        total = 135_000_000 if task == "e2e" else 22_700_000
        trainable = total if method == "full" else rank * 12_000
        a_id = str(uuid.UUID(int=rng.getrandbits(128)))
        adapters.append(
            {
                "id": a_id,
                "tenant_id": tenant["id"],
                "job_id": j["id"],
                "path": f"/a/{a_id}",
                "sha256": "0" * 64,
                "bytes": trainable * 4 + 2048,
                "trainable_params": trainable,
                "total_params": total,
                "base_model": j["base_model"],
                "task": task,
                "method": method,
                "rank": rank,
                "created_at": when + timedelta(seconds=30),
            }
        )
        for name in TASKS[task].metrics:
            metric(
                j, a_id, "validation", name, rng.uniform(0.5, 0.95) if name not in ("nist", "cider") else 5.0
            )
        metric(j, a_id, "train", "loss", rng.uniform(0.1, 1.0))
        if rng.random() < 0.1:
            re_job = job(tenant, task, method, rank, "succeeded", "reevaluate", when + timedelta(days=30), 1)
            metric(
                re_job,
                a_id,
                "validation",
                TASKS[task].primary_metric,
                rng.uniform(0.5, 0.95),
                "reevaluation",
                when + timedelta(days=30),
            )
    for i in range(n_failed):
        tenant = tenants[rng.randrange(n_tenants)]
        j = job(tenant, "sst2", "lora", 8, "failed", "train", t0 + timedelta(minutes=i, seconds=7), 1)
        use(j, 1, DEVICES[0], rng.uniform(5, 100), 100)
    for task in TASK_POOL:
        j = job(tenants[0], task, "none", 0, "succeeded", "evaluate", t0, 1)
        use(j, 1, "cpu", 30.0, 0)
        metric(j, None, "validation", TASKS[task].primary_metric, 0.5)
    return {Tenant: tenants, Job: jobs, Adapter: adapters, Usage: usage, Metric: metrics}


def build(url: str, n_tenants: int, n_adapters: int) -> dict[str, int]:
    data = _rows(n_tenants, n_adapters)
    engine = db.make_engine(url)
    try:
        with engine.begin() as conn:
            for model, rows in data.items():
                for start in range(0, len(rows), CHUNK):
                    conn.execute(model.__table__.insert(), rows[start : start + CHUNK])
        with engine.connect() as conn:
            conn.exec_driver_sql("ANALYZE")
            conn.commit()
    finally:
        engine.dispose()
    return {model.__tablename__: len(rows) for model, rows in data.items()}


def _server_cpu_s(pid: int | None) -> float:
    """CPU seconds a PostgreSQL backend (same machine) has used so far: utime + stime in /proc."""
    if pid is None:
        return 0.0
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _backend_pid(session) -> int | None:
    if session.get_bind().dialect.name != "postgresql":
        return None
    pid = session.execute(text("SELECT pg_backend_pid()")).scalar()
    session.rollback()
    return int(pid)


def timed(session, fn, repeat: int) -> tuple[dict[str, float], object]:
    """Over `repeat` runs: min and median wall seconds (min: the least disturbed on a shared box),
    and the median CPU seconds of this process plus of the PostgreSQL backend serving it — what
    the call costs regardless of how many other processes share the cores."""
    walls, cpus, result = [], [], None
    for _ in range(repeat):
        pid = _backend_pid(session)
        server0, client0, t = _server_cpu_s(pid), time.process_time(), time.perf_counter()
        result = fn()
        walls.append(time.perf_counter() - t)
        cpus.append(time.process_time() - client0 + _server_cpu_s(pid) - server0)
    return {
        "wall_min": round(min(walls), 3),
        "wall_median": round(statistics.median(walls), 3),
        "cpu_median": round(statistics.median(cpus), 3),
    }, result


def measure(url: str, repeat: int) -> dict[str, object]:
    db.forget_engine(url)
    session = db.session_factory(url)()
    f = make_filters()
    one = make_filters(tenants=["t0007"])
    try:
        out: dict[str, object] = {}
        out["cost_s"], cost = timed(session, lambda: cost_report(session, f, PRICES, 0.023), repeat)
        out["benchmark_latest_s"], bench = timed(
            session, lambda: benchmark_report(session, f, "latest"), repeat
        )
        out["benchmark_best_s"], _ = timed(session, lambda: benchmark_report(session, f, "best"), repeat)
        out["cost_one_tenant_s"], _ = timed(session, lambda: cost_report(session, one, PRICES, 0.023), repeat)
        out["benchmark_one_tenant_s"], _ = timed(
            session, lambda: benchmark_report(session, one, "latest"), repeat
        )
        for name, report in (("cost", cost), ("benchmark", bench)):
            for fmt in ("json", "table"):
                out[f"render_{name}_{fmt}_s"], _ = timed(session, lambda r=report, x=fmt: render(r, x), 1)
        out["benchmark_cells"], out["cost_tenants"] = len(bench.cells), len(cost.tenants)
        return out
    finally:
        session.close()


def command_seconds(url: str, args: list[str]) -> dict[str, float]:
    """The whole command in a fresh process: wall seconds and the child's CPU seconds."""
    env = dict(
        os.environ,
        LORAFLEET_DATABASE_URL=url,
        LORAFLEET_PRICES=",".join(f"{k}={v}" for k, v in PRICES.items()),
        PYTHONPATH=str(ROOT),
        LORAFLEET_HOME=tempfile.mkdtemp(prefix="bench-reports-home-"),
    )
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    t = time.perf_counter()
    subprocess.run(
        [sys.executable, "-m", "orchestrator.cli.main", "report", *args],
        env=env,
        check=True,
        stdout=subprocess.DEVNULL,
        cwd=ROOT,
    )
    wall = time.perf_counter() - t
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = after.ru_utime + after.ru_stime - before.ru_utime - before.ru_stime
    shutil.rmtree(env["LORAFLEET_HOME"], ignore_errors=True)
    return {"wall": round(wall, 3), "client_cpu": round(cpu, 3)}


def plans(url: str) -> str:
    session = db.session_factory(url)()
    f, one = make_filters(), make_filters(tenants=["t0007"])
    out = []
    try:
        for title, stmt in (
            ("benchmark (latest), all tenants", benchmark_rows(f, "latest")),
            ("benchmark (latest), one tenant", benchmark_rows(one, "latest")),
            ("cost by device (and money, examples), all tenants", cost_by_device(f, PRICES)),
            ("cost by device, one tenant", cost_by_device(one, PRICES)),
            ("cost: gain over the untuned baseline, all tenants", cost_quality(f)),
            ("cost: jobs by state, all tenants", cost_jobs_by_state(f)),
            ("cost: storage, all tenants", cost_storage(f)),
        ):
            out.append(f"--- {title}\n{explain(session, stmt)}")
    finally:
        session.close()
    return "\n".join(out)


def run_backend(backend: str, args: argparse.Namespace) -> dict[str, object]:
    if backend == "postgresql":
        import psycopg

        name = "lorafleet_bench_reports"
        with psycopg.connect(PG_ADMIN, autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
            conn.execute(f'CREATE DATABASE "{name}"')
            # Parallel workers would escape the backend's CPU accounting (and 2 cores gain nothing).
            conn.execute(f'ALTER DATABASE "{name}" SET max_parallel_workers_per_gather = 0')
        url = db.normalize_url(PG_ADMIN.rsplit("/", 1)[0] + f"/{name}")
    else:
        folder = Path(tempfile.mkdtemp(prefix="bench-reports-"))
        url = f"sqlite:///{folder / 'registry.db'}"
    try:
        db.upgrade(url)
        t = time.perf_counter()
        counts = build(url, args.tenants, args.adapters)
        result: dict[str, object] = {"rows": counts, "build_s": round(time.perf_counter() - t, 1)}
        result["with_report_indexes"] = measure(url, args.repeat)
        result["command_cost_json_s"] = command_seconds(url, ["cost", "--format", "json"])
        result["command_cost_table_s"] = command_seconds(url, ["cost"])
        result["command_benchmark_json_s"] = command_seconds(url, ["benchmark", "--format", "json"])
        result["command_benchmark_table_s"] = command_seconds(url, ["benchmark"])
        if args.plans:
            result["plans"] = plans(url)
        from alembic.script import ScriptDirectory

        down = (
            ScriptDirectory.from_config(db.alembic_config(url))
            .get_revision(REPORT_INDEX_REVISION)
            .down_revision
        )
        db.downgrade(url, down)
        result["without_report_indexes"] = measure(url, args.repeat)
        db.upgrade(url)
        return result
    finally:
        db.forget_engine(url)
        if backend == "sqlite":
            shutil.rmtree(folder, ignore_errors=True)
        if backend == "postgresql":
            import psycopg

            with psycopg.connect(PG_ADMIN, autocommit=True) as conn:
                conn.execute('DROP DATABASE IF EXISTS "lorafleet_bench_reports" WITH (FORCE)')


def load_average() -> float:
    return round(os.getloadavg()[0], 1)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--backend", choices=("postgresql", "sqlite", "both"), default="both")
    parser.add_argument("--tenants", type=int, default=1000)
    parser.add_argument("--adapters", type=int, default=100_000)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--plans", action="store_true", help="Print the query plans too.")
    args = parser.parse_args()
    backends = ("postgresql", "sqlite") if args.backend == "both" else (args.backend,)
    report = {
        "tenants": args.tenants,
        "adapters": args.adapters,
        "repeat": args.repeat,
        "cpus": os.cpu_count(),
        "load_average_1m_at_start": load_average(),
    }
    for backend in backends:
        report[backend] = run_backend(backend, args)
    report["load_average_1m_at_end"] = load_average()
    plan_text = {b: report[b].pop("plans") for b in backends if "plans" in report[b]}
    print(json.dumps(report, indent=2))
    for backend, plan in plan_text.items():
        print(f"\n===== query plans: {backend} =====\n{plan}")


if __name__ == "__main__":
    main()
