"""What the benchmark scripts share: paths, offline/threading environment, `--set key=value`."""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))
os.environ.setdefault("HF_HUB_OFFLINE", "1")
# libgomp's default busy-waiting turns a shared, oversubscribed CPU into a 10x slowdown.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
# Absolute: a bench may run code from another folder (bench_first_step's --before), where a relative
# LORAFLEET_DATA_DIR such as ../shared/data names nothing.
DEFAULT_DATA = os.path.abspath(os.environ.get("LORAFLEET_DATA_DIR", str(ROOT.parent / "shared" / "data")))


def parse_overrides(items: list[str]) -> dict:
    """`key=value` pairs; values parsed as JSON when they parse (numbers, lists), else strings."""
    out = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep:
            raise SystemExit(f"--set expects key=value, got {item!r}")
        try:
            out[key] = json.loads(value)
        except json.JSONDecodeError:
            out[key] = value
    return out
