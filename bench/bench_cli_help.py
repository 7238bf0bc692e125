"""How fast `lorafleet --help` answers, and which heavy modules the CLI's start-up imports.

The CLI must import no torch, transformers or celery at start-up (target: well under 0.3 s).
Runs `python -m orchestrator.cli.main --help` (what the console script runs) N times in fresh
processes and reports the median wall time; then, in one more fresh process, lists which of the
heavy modules are in `sys.modules` after building the `--help` text, and the slowest imports by
`python -X importtime` (cumulative microseconds).

usage: python bench/bench_cli_help.py [--runs 10]
Prints one JSON object.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
HEAVY = (
    "torch",
    "transformers",
    "celery",
    "kombu",
    "sqlalchemy",
    "alembic",
    "pydantic",
    "numpy",
    "peft",
    "redis",
    "psycopg",
    "yaml",
)
PROBE = f"""
import sys
from click.testing import CliRunner
from orchestrator.cli.main import cli
CliRunner().invoke(cli, ["--help"])
import json
print(json.dumps(sorted(m for m in {HEAVY!r} if m in sys.modules)))
"""


def _env() -> dict[str, str]:
    return dict(
        os.environ, PYTHONPATH=os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))
    )


def help_wall_seconds(runs: int) -> list[float]:
    walls = []
    for _ in range(runs):
        t0 = time.perf_counter()
        subprocess.run(
            [sys.executable, "-m", "orchestrator.cli.main", "--help"],
            check=True,
            env=_env(),
            stdout=subprocess.DEVNULL,
            cwd=ROOT,
        )
        walls.append(time.perf_counter() - t0)
    return walls


def python_startup_seconds(runs: int) -> float:
    """The floor: a bare interpreter start, measured the same way."""
    walls = []
    for _ in range(runs):
        t0 = time.perf_counter()
        subprocess.run([sys.executable, "-c", "pass"], check=True)
        walls.append(time.perf_counter() - t0)
    return statistics.median(walls)


def slowest_imports(top: int = 8) -> list[tuple[str, float]]:
    out = subprocess.run(
        [sys.executable, "-X", "importtime", "-m", "orchestrator.cli.main", "--help"],
        capture_output=True,
        text=True,
        env=_env(),
        cwd=ROOT,
        check=True,
    )
    rows = []
    for line in out.stderr.splitlines():
        # "import time:  self_us | cumulative_us | <indent>name"; top-level imports are not indented.
        if not line.startswith("import time:") or "cumulative" in line:
            continue
        _self_us, cumulative_us, name = line.split(":", 1)[1].split("|")
        if not name.startswith("  "):
            rows.append((name.strip(), round(int(cumulative_us) / 1e6, 4)))
    return sorted(rows, key=lambda r: -r[1])[:top]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=10)
    args = parser.parse_args()
    walls = help_wall_seconds(args.runs)
    probe = subprocess.run(
        [sys.executable, "-c", PROBE], capture_output=True, text=True, env=_env(), cwd=ROOT, check=True
    )
    report = {
        "runs": args.runs,
        "median_s": round(statistics.median(walls), 4),
        "min_s": round(min(walls), 4),
        "max_s": round(max(walls), 4),
        "python_startup_median_s": round(python_startup_seconds(args.runs), 4),
        "target_s": 0.3,
        "heavy_modules_imported": json.loads(probe.stdout.strip().splitlines()[-1]),
        "slowest_top_level_imports_s": slowest_imports(),
    }
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
