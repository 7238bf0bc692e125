"""The submit path under load: `job submit` latency, `job list` over thousands of jobs, and a
`submit-batch` of 1,000 jobs, on the embedded default (SQLite registry and broker).

Everything runs in fresh `lorafleet` processes (what a script calling the CLI pays), side by side
with two baselines measured in the same run: a bare `python -c pass` and `lorafleet --help`.
The same submit is also timed through the `lorafleet` console script with no CLI server (what the
client's check for a server adds) and with one running (`lorafleet cli-server start`: the command
runs in a forked child of a process that has imported everything; wall time only, since that
child's CPU is not ours to count).
A third baseline is the stack's floor: a process that only imports click, SQLAlchemy's core with
SQLite's dialect, pydantic and pydantic-settings (what a submit through this stack cannot avoid).
Also reports which modules the submit path imports and the slowest of them (`-X importtime`).

usage: python bench/bench_submit.py [--runs 7] [--jobs 3600] [--batch 1000]
Prints one JSON object (with the 1-minute load average at start and end). The machine is shared,
so compare the ratios, not the seconds; `cpu_s` (each process's user + sys seconds) moves far
less with the load than the wall clock does. LORAFLEET_DATA_DIR, when set, is passed on (the Makefile
sets it: the `auto` budget then counts the task's training rows at submit).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SPEC = {"task": "sst2", "rank": 4, "base_model": "tiny-bert", "max_steps": 5}
# What any submit in a fresh process pays with this stack before it does anything: the CLI, the
# registry's SQL layer without the ORM (SQLite's dialect), the spec's validator, the settings.
STACK_FLOOR = "import click, sqlalchemy, sqlalchemy.dialects.sqlite, pydantic, pydantic_settings"
HEAVY = ("torch", "transformers", "celery", "kombu", "sqlalchemy", "alembic", "pydantic", "yaml", "numpy")


def _env(home: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("LORAFLEET_")}
    env.update(LORAFLEET_HOME=str(home), LORAFLEET_DATA_ROOTS=str(home.parent), HF_HUB_OFFLINE="1",
               LORAFLEET_TENANT_MAX_QUEUED="100000",
               PYTHONPATH=os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")])))
    if os.environ.get("LORAFLEET_DATA_DIR"):  # as the Makefile sets it: the auto budget counts SST-2
        env["LORAFLEET_DATA_DIR"] = os.environ["LORAFLEET_DATA_DIR"]
    return env


def _script(env: dict[str, str], *args: str) -> subprocess.CompletedProcess:
    """The `lorafleet` console script (served when env's LORAFLEET_CLI_SOCKET has a server)."""
    return subprocess.run([str(Path(sys.executable).with_name("lorafleet")), *args], env=env,
                          capture_output=True, text=True, check=True, cwd=ROOT)


def _cli(env: dict[str, str], *args: str, extra: tuple[str, ...] = ()) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, *extra, "-m", "orchestrator.cli.main", *args], env=env,
                          capture_output=True, text=True, check=True, cwd=ROOT)


def _timed(fn, runs: int, cpu: list[float] | None = None) -> list[float]:
    """Wall seconds of `runs` calls; with `cpu`, also each call's child CPU seconds (user + sys),
    which a loaded machine inflates far less than the wall clock."""
    walls = []
    for _ in range(runs):
        r0 = resource.getrusage(resource.RUSAGE_CHILDREN)
        t0 = time.perf_counter()
        fn()
        walls.append(time.perf_counter() - t0)
        r1 = resource.getrusage(resource.RUSAGE_CHILDREN)
        if cpu is not None:
            cpu.append(r1.ru_utime + r1.ru_stime - r0.ru_utime - r0.ru_stime)
    return walls


def _submit_args(i: int) -> list[str]:
    return ["job", "submit", "--tenant", "bench", "--task", "sst2", "--rank", "4",
            "--base-model", "tiny-bert", "--max-steps", str(5 + i)]


def import_profile(env: dict[str, str]) -> dict:
    """Heavy modules loaded by one `job submit`, and the slowest imports (cumulative ms)."""
    done = _cli(env, *_submit_args(0), extra=("-X", "importtime"))
    rows = []
    for line in done.stderr.splitlines():
        if line.startswith("import time:") and "|" in line:
            _, cumulative, name = (part.strip() for part in line.removeprefix("import time:").split("|"))
            if cumulative.isdigit():
                rows.append((name, int(cumulative) / 1000))
    top = [(n, ms) for n, ms in rows if "." not in n.strip()]
    top.sort(key=lambda r: -r[1])
    loaded = sorted({n.strip().split(".")[0] for n, _ in rows} & set(HEAVY))
    return {"heavy_modules_loaded": loaded, "slowest_top_level_imports_ms": top[:10]}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--runs", type=int, default=7)
    parser.add_argument("--jobs", type=int, default=3600)
    parser.add_argument("--batch", type=int, default=1000)
    args = parser.parse_args()
    load_before = os.getloadavg()[0]
    with tempfile.TemporaryDirectory(prefix="bench-submit-") as tmp:
        home = Path(tmp) / "home"
        env = _env(home)
        _cli(env, "tenant", "create", "bench")
        unserved = {**env, "LORAFLEET_CLI_SOCKET": str(Path(tmp) / "run" / "none.sock")}
        served = {**env, "LORAFLEET_CLI_SOCKET": str(Path(tmp) / "run" / "cli.sock")}
        _cli(served, "cli-server", "start")
        # Interleaved, one of each per round, so a load spike on the shared machine hits them all.
        bare, floor, helps, submits, scripts, serves = [], [], [], [], [], []
        cpu: dict[str, list[float]] = {"bare": [], "floor": [], "help": [], "submit": [], "list": []}
        for i in range(args.runs):
            bare += _timed(lambda: subprocess.run([sys.executable, "-c", "pass"], check=True), 1, cpu["bare"])
            floor += _timed(lambda: subprocess.run([sys.executable, "-c", STACK_FLOOR], check=True), 1,
                            cpu["floor"])
            helps += _timed(lambda: _cli(env, "--help"), 1, cpu["help"])
            submits += _timed(lambda i=i: _cli(env, *_submit_args(i)), 1, cpu["submit"])
            scripts += _timed(lambda i=i: _script(unserved, *_submit_args(i)), 1)
            serves += _timed(lambda i=i: _script(served, *_submit_args(i)), 1)
        profile = import_profile(env)

        batch = Path(tmp) / "batch.jsonl"
        batch.write_text("".join(json.dumps({"tenant": "bench", **SPEC, "seed": i}) + "\n"
                                 for i in range(args.batch)))
        batch_s = _timed(lambda: _cli(env, "job", "submit-batch", str(batch)), 1)[0]

        # Fill the registry to --jobs queued jobs (in-process, one transaction per 1,000).
        os.environ.update({k: v for k, v in env.items() if k.startswith("LORAFLEET_")})
        from orchestrator.registry.db import session_scope
        from orchestrator.services.jobs import list_jobs, submit_batch

        with session_scope() as s:
            have = len(list_jobs(s, limit=args.jobs + 1))
            while have < args.jobs:
                n = min(1000, args.jobs - have)
                submit_batch(s, [{"tenant": "bench", **SPEC, "seed": have + i} for i in range(n)])
                have += n
        list_page, list_helps, list_served = [], [], []
        for _ in range(args.runs):
            list_helps += _timed(lambda: _cli(env, "--help"), 1)
            list_page += _timed(lambda: _cli(env, "job", "list"), 1, cpu["list"])
            list_served += _timed(lambda: _script(served, "job", "list"), 1)
        list_all = _timed(lambda: _cli(env, "job", "list", "--limit", "10000", "--json"), 3)
        served_count = json.loads(_cli(served, "cli-server", "status", "--json").stdout)["served"]
        _cli(served, "cli-server", "stop")

    med = statistics.median
    print(json.dumps({
        "runs": args.runs,
        "load_average_1min": [round(load_before, 2), round(os.getloadavg()[0], 2)],  # start, end
        "data_dir": env.get("LORAFLEET_DATA_DIR"),
        "python_bare_s": round(med(bare), 3),
        "stack_floor_s": round(med(floor), 3),  # STACK_FLOOR's imports alone
        "help_s": round(med(helps), 3),
        "submit_s": round(med(submits), 3),
        "submit_minus_bare_s": round(med(submits) - med(bare), 3),
        "submit_over_help": round(med(submits) / med(helps), 2),
        "submit_over_bare": round(med(submits) / med(bare), 1),
        "submit_console_script_s": round(med(scripts), 3),  # no server: the client's check included
        "submit_served_s": round(med(serves), 3),  # `lorafleet cli-server start` running
        "served_over_submit": round(med(serves) / med(submits), 3),
        "served_commands": served_count,  # all the served runs, so none fell back to its own process
        "list_page_over_help": round(med(list_page) / med(list_helps), 2),
        "cpu_s": {k: round(med(v), 3) for k, v in cpu.items()},
        "cpu_submit_over_help": round(med(cpu["submit"]) / med(cpu["help"]), 2),
        "submit_batch": {"jobs": args.batch, "seconds": round(batch_s, 2),
                         "jobs_per_s": round(args.batch / batch_s, 1)},
        "job_list": {"jobs_in_registry": args.jobs, "default_page_s": round(med(list_page), 3),
                     "default_page_served_s": round(med(list_served), 3),
                     "all_json_s": round(med(list_all), 3)},
        "submit_imports": profile,
    }, indent=2))


if __name__ == "__main__":
    main()
