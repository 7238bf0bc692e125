"""Time from SIGKILL of a training worker to its job resuming on another, with the production
lease settings (or any given through LORAFLEET_* variables), embedded or cluster.

    python bench/bench_recovery.py                  # embedded: SQLite + the workers' reconciler thread
    python bench/bench_recovery.py --mode cluster   # PostgreSQL + Redis + a `lorafleet reconcile` process

Two real workers share one registry; a job trains; the worker holding its lease is SIGKILLed. We
read off the registry's events when the dead worker was noticed (`requeued`, after the lease +
grace + a reconciler pass) and when the other worker resumed from the last checkpoint
(`resumed`), and how many steps were repeated.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

import benchlib  # noqa: F401  (environment + sys.path)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--mode", choices=["embedded", "cluster"], default="embedded")
    ap.add_argument("--max-steps", type=int, default=3000)
    args = ap.parse_args()

    from orchestrator.announce import sending_session
    from orchestrator.registry import db
    from orchestrator.registry.db import session_scope
    from orchestrator.services.jobs import get_job, job_events, submit_job
    from orchestrator.services.tenants import create_tenant
    from tests.integration.faults import make_fleet, sigkill, start_reconciler, stop_fleet
    from tests.integration.workers import worker_env
    from tests.registry_fixtures import create_pg_database, drop_pg_database, pg_database_url

    home = Path(tempfile.mkdtemp(prefix="lorafleet-recovery-"))
    env = {**worker_env(home), "LORAFLEET_CHECKPOINT_EVERY": "50"}
    # The production lease defaults, unless the caller set them.
    if "LORAFLEET_LEASE_SECONDS" in os.environ:
        env["LORAFLEET_LEASE_SECONDS"] = os.environ["LORAFLEET_LEASE_SECONDS"]
    else:
        env.pop("LORAFLEET_LEASE_SECONDS", None)
    pg_name = None
    if args.mode == "cluster":
        import redis

        pg_name = create_pg_database()
        env["LORAFLEET_DATABASE_URL"] = pg_database_url(pg_name)
        env["LORAFLEET_BROKER_URL"] = "redis://127.0.0.1:6379/6"
        db.upgrade(env["LORAFLEET_DATABASE_URL"])
        redis.Redis.from_url(env["LORAFLEET_BROKER_URL"]).flushdb()
    fleet = make_fleet(env, home, "embedded", names=("ka", "kb"))  # reconciler started below
    s = fleet.settings
    if args.mode == "cluster":  # the cluster's reconciler container, at the configured interval
        fleet.reconciler = start_reconciler(env, home / "reconciler.log", every=s.reconcile_every_s)
    try:
        with sending_session(s) as session:  # the job's message is sent once it committed
            create_tenant(session, "recovery", max_running=1)
            job_id = submit_job(session, "recovery", {"task": "sst2", "base_model": "tiny-bert", "rank": 4,
                                                      "max_steps": args.max_steps, "batch_size": 8,
                                                      "eval_size": 16}).id

        def events():
            with session_scope(s) as session:
                return list(job_events(session, job_id))

        def step() -> int:
            with session_scope(s) as session:
                return get_job(session, job_id).job.progress_step or 0

        while not any(e.kind == "checkpoint" for e in events()) or step() < 60:
            time.sleep(0.2)
        _, victim = fleet.owner(job_id)
        sigkill(victim)
        killed = time.time()
        while not any(e.kind == "resumed" for e in events()):
            time.sleep(0.2)
        evs = events()
        requeued = next(e for e in evs if e.kind == "requeued")
        resumed = next(e for e in evs if e.kind == "resumed")
        print(json.dumps({
            "mode": args.mode, "lease_seconds": s.lease_seconds, "heartbeat_seconds": s.heartbeat_seconds,
            "reconcile_every_s": s.reconcile_every_s,
            "kill_to_noticed_s": round(requeued.ts.timestamp() - killed, 1),
            "kill_to_resumed_s": round(resumed.ts.timestamp() - killed, 1),
            "steps_repeated": requeued.data["step"] - resumed.data["step"],
            "checkpoint_every": s.checkpoint_every,
        }, indent=2))
    finally:
        stop_fleet(fleet)
        db.forget_engine(s.database_url)
        if pg_name is not None:
            drop_pg_database(pg_name)


if __name__ == "__main__":
    sys.exit(main())
