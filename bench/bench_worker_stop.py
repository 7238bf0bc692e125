"""How long an idle embedded worker takes to stop on SIGTERM (Ctrl-C, a deploy, every test's
teardown): the transport that notices the shutdown request at its next look (worker.transport)
vs the same transport waiting out Celery's 2 s drain timeout (bench/worker_stop_app.py), side
by side, rounds alternating.

Per run: start `celery … worker --pool solo` on a fresh embedded home, wait until it is ready and
idle for a second, SIGTERM, then time (a) until its `workers` row says stopped (the worker's own
shutdown done) and (b) until the process has exited.

usage: python bench/bench_worker_stop.py [--rounds 3]      prints one JSON object
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

APPS = {"notices": "worker.celery_app", "waits_out": "worker_stop_app"}


def one_stop(app: str) -> dict[str, float]:
    from tests.integration.workers import wait_for, worker_env

    home = Path(tempfile.mkdtemp(prefix="bench-stop-"))
    env = {**worker_env(home), "PYTHONPATH": f"{ROOT}{os.pathsep}{ROOT / 'bench'}"}
    log = home / "worker.log"
    argv = [sys.executable, "-m", "celery", "-A", app, "worker", "-Q", "gpu", "--pool", "solo",
            "--loglevel", "info", "--without-gossip", "--without-mingle", "--without-heartbeat"]
    with open(log, "w") as out:
        proc = subprocess.Popen(argv, cwd=ROOT, env=env, stdout=out, stderr=subprocess.STDOUT,
                                start_new_session=True)
    try:
        wait_for(lambda: " ready." in log.read_text(), 120, "the worker to start")
        time.sleep(1.0)
        t0 = time.time()
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=60)
        exited = time.time() - t0
    finally:
        if proc.poll() is None:
            proc.kill()
    with sqlite3.connect(home / "registry.db") as db:
        stopped_at = db.execute("SELECT stopped_at FROM workers").fetchone()[0]
    stopped = datetime.fromisoformat(stopped_at).replace(tzinfo=UTC).timestamp() - t0
    return {"to_stopped_s": stopped, "to_exit_s": exited}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    runs: dict[str, list[dict[str, float]]] = {name: [] for name in APPS}
    for i in range(args.rounds):
        order = list(APPS) if i % 2 == 0 else list(reversed(APPS))
        for name in order:
            runs[name].append(one_stop(APPS[name]))
    med = {name: {k: statistics.median(r[k] for r in rs) for k in ("to_stopped_s", "to_exit_s")}
           for name, rs in runs.items()}
    print(json.dumps({
        "rounds": args.rounds,
        "median": med,
        "ratio_to_stopped": med["notices"]["to_stopped_s"] / med["waits_out"]["to_stopped_s"],
        "ratio_to_exit": med["notices"]["to_exit_s"] / med["waits_out"]["to_exit_s"],
        "load_avg": os.getloadavg(),
    }, indent=2))


if __name__ == "__main__":
    main()
