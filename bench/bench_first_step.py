"""Time to the first step as a user meets it: `lorafleet job submit` to a running `lorafleet worker`.

Everything goes through the real processes of the embedded default: a fresh LORAFLEET_HOME in a
temporary folder, `lorafleet worker` started as a subprocess and waited for (" ready." in its
log), then `lorafleet job submit --max-steps 3 --wait` run one after the other as subprocesses
(the console command a tenant types). The figures are the registry's own record:

- `to_first_step_s`: the job's `submitted` event → its first `progress` event (written by the
  first heartbeat, right after the first optimiser step);
- `step_s`: the median duration of steps 2 and 3, from the `progress` events of those steps (the
  last step always writes one; a step-2 event is written when the heartbeat throttle lets it, else
  steps 2–3 are the interval from step 1's event to step 3's, halved);
- `overhead_s` = `to_first_step_s` − `step_s`: what the tenant waits beyond one step's compute.
  The issue's goals: warm (median of the jobs after the first) ≤ 0.5 s; cold (the first job on the
  base after the worker is ready) ≤ the base model's own load time + 1 s.
- `cold_restarted`: the first job after the same worker is stopped and started again (the base is
  loaded again; the tokenised data are on disk from the first run);
- `stages_s`: median seconds from `submitted` to each event kind before the first progress
  (`dispatched`, `claimed`, `phase`), to show which leg the time is in.
- `load_s`: the base model loaded alone in a fresh subprocess (`lora_engine.models.load_base_model`,
  the call the worker makes), after the imports the worker does at ready (the engine and
  `lora_engine.models.import_loaders`): the base's own load time.

`--before REV` runs the same measurements on the code of git revision REV too (extracted with
`git archive` into a temporary folder; the worker and the CLI then import that code), in the same
run, so load on a shared machine hits both alike. The workers keep tokenised data in the
`--data-cache` folder (LORAFLEET_DATA_CACHE), emptied before each base and code (`cold` then
includes tokenising) unless `--keep-data-cache`. The 1-minute load average is printed at the start
and the end: on a shared machine, read the figures against it.

usage: python bench/bench_first_step.py [--bases minilm-l6:sst2,smollm2-135m:e2e] [--warm 10]
                                        [--before REV] [--keep-data-cache]
Prints one JSON object. Needs LORAFLEET_DATA_DIR (the shared data folder; see benchlib).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from benchlib import DEFAULT_DATA, ROOT

READY_TIMEOUT_S = 180
JOB_TIMEOUT_S = 600
LOAD_SNIPPET = """
import json, sys, time
from lora_engine.catalog import TASKS
from lora_engine.models import import_loaders, load_base_model
import lora_engine.recipe  # the worker imports the engine at ready, before any job
import_loaders()  # and what a first load would import: what remains is the base's own load
info = TASKS[sys.argv[2]]
t0 = time.perf_counter()
load_base_model(sys.argv[1], info.kind, info.num_labels if info.kind == "classification" else None)
print(json.dumps({"load_s": time.perf_counter() - t0}))
"""


def code_env(home: Path, code: Path, data_cache: Path) -> dict[str, str]:
    """The environment of the worker and the CLI: the embedded default under `home`, `code` imported."""
    env = {
        **os.environ,
        "HF_HUB_OFFLINE": "1",
        "TRANSFORMERS_OFFLINE": "1",
        "TOKENIZERS_PARALLELISM": "false",
        "OMP_WAIT_POLICY": "PASSIVE",
        "LORAFLEET_HOME": str(home),
        "LORAFLEET_DATA_DIR": DEFAULT_DATA,
        "LORAFLEET_DATA_CACHE": str(data_cache),
        "LORAFLEET_DEVICE": "cpu",
        "LORAFLEET_CHECKPOINT_EVERY": "1000",  # no checkpoint inside a 3-step job
        # A keep-alive beat before the first step (a slow cold load on a loaded machine) would
        # write a step-0 `progress` event and throttle step 1's: beat only between steps here.
        "LORAFLEET_LEASE_SECONDS": "1200",
        "LORAFLEET_HEARTBEAT_SECONDS": "600",
        "PYTHONPATH": str(code),
    }
    for name in ("LORAFLEET_DATABASE_URL", "LORAFLEET_BROKER_URL", "LORAFLEET_ARTIFACTS"):
        env.pop(name, None)
    return env


def lorafleet(env: dict[str, str], code: Path, *args: str) -> str:
    done = subprocess.run([sys.executable, "-m", "orchestrator.cli.main", *args], env=env, cwd=code,
                          capture_output=True, text=True, timeout=JOB_TIMEOUT_S)
    if done.returncode != 0:
        raise SystemExit(f"lorafleet {' '.join(args)} failed ({done.returncode}):\n{done.stderr[-3000:]}")
    return done.stdout


def start_worker(env: dict[str, str], code: Path, log_path: Path) -> subprocess.Popen:
    with open(log_path, "w") as log:
        proc = subprocess.Popen(
            [sys.executable, "-m", "orchestrator.cli.main", "worker", "--loglevel", "info"],
            env=env, cwd=code, stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
        )
    deadline = time.monotonic() + READY_TIMEOUT_S
    while " ready." not in log_path.read_text(errors="replace"):
        if proc.poll() is not None or time.monotonic() > deadline:
            stop_worker(proc)
            raise SystemExit(f"`lorafleet worker` did not get ready:\n{log_path.read_text()[-3000:]}")
        time.sleep(0.2)
    return proc


def stop_worker(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()


def job_timing(env: dict[str, str], job_id: str) -> dict:
    """The figures of one finished job, from its events in the registry."""
    from sqlalchemy import select
    from sqlalchemy.orm import Session

    from orchestrator.config import load_settings
    from orchestrator.registry.db import make_engine
    from orchestrator.registry.models import JobEvent

    # Read as it is, never migrated: with --before the registry is the old code's, and upgrading
    # it here to this code's head would leave the old CLI a revision it does not know.
    engine = make_engine(load_settings(env).database_url)
    try:
        with Session(engine) as s:
            rows = s.scalars(select(JobEvent).where(JobEvent.job_id == job_id).order_by(JobEvent.id))
            events = [(e.kind, e.ts, e.data) for e in rows]
    finally:
        engine.dispose()
    submitted = next(ts for kind, ts, _ in events if kind == "submitted")
    progress = {int(data["step"]): ts for kind, ts, data in events if kind == "progress"}
    if not {1, 3} <= set(progress):
        raise SystemExit(f"job {job_id}: progress events at steps {sorted(progress)}, need 1 and 3")
    first = 1
    stages: dict[str, float] = {}
    for kind, ts, _ in events:
        if ts > progress[first]:
            break
        stages.setdefault(kind, (ts - submitted).total_seconds())
    if 2 in progress:
        step = statistics.median([(progress[2] - progress[1]).total_seconds(),
                                  (progress[3] - progress[2]).total_seconds()])
    else:
        step = (progress[3] - progress[1]).total_seconds() / 2
    to_first = (progress[first] - submitted).total_seconds()
    return {"to_first_step_s": to_first, "step_s": step, "overhead_s": to_first - step, "stages_s": stages}


def run_base(code: Path, base: str, task: str, warm: int, data_cache: Path) -> dict:
    """A fresh home and worker; one cold job, then `warm` jobs, one after the other."""
    home = Path(tempfile.mkdtemp(prefix="bench-first-step-"))
    env = code_env(home, code, data_cache)
    try:
        lorafleet(env, code, "tenant", "create", "bench", "--max-running", "1")

        def submit(seed: int) -> dict:
            shown = json.loads(lorafleet(
                env, code, "job", "submit", "--tenant", "bench", "--task", task, "--base-model", base,
                "--max-steps", "3", "--batch-size", "8", "--eval-size", "4", "--eval-every", "0",
                "--seed", str(seed), "--wait", "--json",
            ))
            if shown["state"] != "succeeded":
                tail = (home / "worker.log").read_text()[-3000:]
                raise SystemExit(f"job {shown['id']} {shown['state']}:\n{tail}")
            return job_timing(env, shown["id"])

        proc = start_worker(env, code, home / "worker.log")
        try:
            jobs = [submit(seed) for seed in range(warm + 1)]
        finally:
            stop_worker(proc)
        # A restarted worker: cold again, but the data were tokenised once already (on disk).
        proc = start_worker(env, code, home / "worker-restarted.log")
        try:
            restarted = submit(warm + 1)
        finally:
            stop_worker(proc)
    finally:
        shutil.rmtree(home, ignore_errors=True)
    cold, rest = jobs[0], jobs[1:]

    def med(key: str) -> float:
        return round(statistics.median(j[key] for j in rest), 3)

    kinds = [k for k in cold["stages_s"] if all(k in j["stages_s"] for j in rest)]
    def rounded(job: dict) -> dict:
        return {k: (round(v, 3) if isinstance(v, float) else {s: round(x, 3) for s, x in v.items()})
                for k, v in job.items()}

    return {
        "cold": rounded(cold),
        "cold_restarted": rounded(restarted),
        "warm_median": {"to_first_step_s": med("to_first_step_s"), "step_s": med("step_s"),
                        "overhead_s": med("overhead_s"),
                        "stages_s": {k: round(statistics.median(j["stages_s"][k] for j in rest), 3)
                                     for k in kinds}},
        "warm_overhead_s": [round(j["overhead_s"], 3) for j in rest],
    }


def load_time(base: str, task: str) -> float:
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "PYTHONPATH": str(ROOT)}
    done = subprocess.run([sys.executable, "-c", LOAD_SNIPPET, base, task], env=env, cwd=ROOT,
                          capture_output=True, text=True, timeout=JOB_TIMEOUT_S, check=True)
    return round(json.loads(done.stdout.strip().splitlines()[-1])["load_s"], 3)


def extract(rev: str, into: Path) -> Path:
    """The tree of git revision `rev`, unpacked under `into` (no worktree, no checkout)."""
    archive = subprocess.run(["git", "-C", str(ROOT), "archive", rev], capture_output=True, check=True).stdout
    subprocess.run(["tar", "-x", "-C", str(into)], input=archive, check=True)
    return into


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--bases", default="minilm-l6:sst2,smollm2-135m:e2e",
                        help="comma-separated base:task pairs")
    parser.add_argument("--warm", type=int, default=10, help="jobs after the first, per base")
    parser.add_argument("--before", metavar="REV", help="also measure git revision REV, in the same run")
    parser.add_argument("--keep-data-cache", action="store_true",
                        help="keep the tokenised-data cache folder between runs (cold then hits it)")
    parser.add_argument("--data-cache", type=Path,
                        default=Path(tempfile.gettempdir()) / "bench-first-step-data-cache")
    args = parser.parse_args()
    pairs = [tuple(p.split(":", 1)) for p in args.bases.split(",")]
    scratch = Path(tempfile.mkdtemp(prefix="bench-first-step-code-"))
    variants = {"now": ROOT}
    if args.before:
        variants = {"before": extract(args.before, scratch), **variants}
    try:
        out: dict = {"warm_jobs": args.warm, "max_steps": 3, "load_average_start": os.getloadavg()[0],
               "bases": {}}
        for base, task in pairs:
            entry = {"task": task, "load_s": load_time(base, task)}
            for name, code in variants.items():
                if not args.keep_data_cache:
                    shutil.rmtree(args.data_cache, ignore_errors=True)
                entry[name] = run_base(code, base, task, args.warm, args.data_cache)
            out["bases"][base] = entry
        out["load_average_end"] = os.getloadavg()[0]
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    print(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()
