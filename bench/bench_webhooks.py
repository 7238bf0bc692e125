"""Webhook latency: a job's end (the commit that writes its event) -> the receiver has it.

Three paths, measured side by side in one run against the same real local receiver:
- `floor`: a bare signed POST from this process (what any delivery costs: HTTP on loopback);
- `own_worker`: the job ends in the process whose sender thread delivers (an embedded worker
  ending its own job: the commit wakes the sender at once);
- `reconciler`: the job ends in this process, a separate `lorafleet reconcile --every 5`
  process delivers (the cluster's reconciler container; it polls the outbox every
  LORAFLEET_WEBHOOK_POLL_S, default 0.5 s, so about half of that is added on average).
Jobs are ended by cancelling queued jobs (a tenant whose quota lets nothing run), spaced by a
random pause so the poll's phase is uniform. Target: p50 <= 1 s on the reconciler path.

usage: python bench/bench_webhooks.py [--events 40] [--database-url postgresql://...]
(the given database is migrated to head; default: a fresh SQLite registry in a temporary home).
Prints one JSON object: p50/p90/max seconds per path and each p50 over the floor's.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from benchlib import DEFAULT_DATA, ROOT

from orchestrator.config import load_settings
from orchestrator.registry import db
from orchestrator.registry.db import session_scope
from orchestrator.services.jobs import cancel_job, submit_job
from orchestrator.services.tenants import create_tenant
from orchestrator.services.webhooks import create_webhook
from orchestrator.webhook_delivery import WebhookSender, make_client
from orchestrator.webhook_signing import new_secret, signed_headers
from tests.webhook_receiver import Receiver

SPEC = {"task": "sst2", "method": "lora", "rank": 4, "base_model": "tiny-bert", "max_steps": 2}


def _summary(latencies: list[float]) -> dict[str, float]:
    ordered = sorted(latencies)
    return {"n": len(ordered), "p50_s": round(statistics.median(ordered), 4),
            "p90_s": round(ordered[int(0.9 * (len(ordered) - 1))], 4), "max_s": round(ordered[-1], 4)}


def _end_jobs(settings, slug: str, receiver: Receiver, events: int, rng: random.Random) -> list[float]:
    latencies = []
    for _ in range(events):
        time.sleep(rng.uniform(0.0, 0.6))
        with session_scope(settings) as s:
            job_id = submit_job(s, slug, dict(SPEC), settings=settings).id
            cancel_job(s, job_id)
            ended = time.time()  # cancel_job returned: its transaction (and the event) committed
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            hit = next((r for r in receiver.received if json.loads(r.body)["data"]["id"] == job_id), None)
            if hit is not None:
                latencies.append(hit.at - ended)
                break
            time.sleep(0.005)
        else:
            raise SystemExit(f"job {job_id}'s webhook did not arrive within 30 s")
    return latencies


def _floor(receiver: Receiver, settings, events: int) -> list[float]:
    secret, body = new_secret(), b'{"id":"evt_floor"}'
    latencies = []
    with make_client(settings) as client:
        for i in range(events):
            started = time.time()
            headers = signed_headers(secret, f"msg_{i}", int(started), body)
            client.post(receiver.url, content=body, headers=headers)
            latencies.append(receiver.received[-1].at - started)
    return latencies


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--events", type=int, default=40)
    parser.add_argument("--database-url", default=None)
    args = parser.parse_args()
    home = Path(tempfile.mkdtemp(prefix="lorafleet-bench-webhooks-"))
    env = {**os.environ, "LORAFLEET_HOME": str(home), "LORAFLEET_DATA_DIR": DEFAULT_DATA,
           "PYTHONPATH": str(ROOT), "LORAFLEET_BROKER_URL": "memory://"}
    if args.database_url:
        env["LORAFLEET_DATABASE_URL"] = args.database_url
    settings = load_settings(env)
    db.upgrade(settings.database_url)
    receiver = Receiver()
    rng = random.Random(0)
    with session_scope(settings) as s:
        for slug in ("own-worker", "reconciler"):
            create_tenant(s, f"{slug}-{os.getpid()}", max_running=0)
            create_webhook(s, f"{slug}-{os.getpid()}", receiver.url)
    results = {"floor": _summary(_floor(receiver, settings, args.events))}
    receiver.received.clear()

    sender = WebhookSender(settings)
    sender.start()
    own = _end_jobs(settings, f"own-worker-{os.getpid()}", receiver, args.events, rng)
    results["own_worker"] = _summary(own)
    sender.stop()
    sender.join(10)

    log = open(home / "reconciler.log", "w")  # noqa: SIM115
    proc = subprocess.Popen([sys.executable, "-m", "orchestrator.cli.main", "reconcile", "--every", "5"],
                            cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT)
    try:
        time.sleep(3.0)  # its start-up
        results["reconciler"] = _summary(_end_jobs(settings, f"reconciler-{os.getpid()}", receiver,
                                                   args.events, rng))
    finally:
        proc.terminate()
        proc.wait(10)
        receiver.close()
    floor = results["floor"]["p50_s"]
    for name in ("own_worker", "reconciler"):
        results[name]["p50_over_floor"] = round(results[name]["p50_s"] / floor, 1)
    results.update(registry=settings.database_url.split(":", 1)[0], poll_s=settings.webhook_poll_s,
                   target_p50_s=1.0, met=results["reconciler"]["p50_s"] <= 1.0,
                   load_avg=os.getloadavg()[0])
    print(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
