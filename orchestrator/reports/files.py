"""Reports written to files: one format to one path, or everything into a folder (`report all`)."""

from __future__ import annotations

import os
import tempfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from sqlalchemy.orm import Session

from orchestrator.reports.build import benchmark_report, compare_report, cost_report
from orchestrator.reports.model import Filters
from orchestrator.reports.render import FORMATS, SUFFIX, render
from orchestrator.reports.render.html import render_html

COMBINED_HTML = "report.html"


def write_atomic(path: Path, text: str) -> None:
    """Write `text` to `path` through a temporary file in the same folder (never half written)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.fchmod(fd, 0o644)  # mkstemp makes it private; a report is an ordinary file
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def build_all(
    session: Session,
    filters: Filters,
    *,
    pick: str,
    prices: Mapping[str, float],
    storage_price_gb_month: float,
) -> dict[str, Any]:
    """The three reports, by name (the cost report with its per-adapter points, for the charts)."""
    return {
        "benchmark": benchmark_report(session, filters, pick),
        "cost": cost_report(session, filters, prices, storage_price_gb_month, with_points=True),
        "compare": compare_report(session, filters),
    }


def write_all(folder: Path, reports: Mapping[str, Any]) -> list[Path]:
    """Each report in every format (`<name>.<suffix>`) and one combined report.html (last)."""
    paths = []
    for name, report in reports.items():
        for fmt in FORMATS:
            path = folder / f"{name}.{SUFFIX[fmt]}"
            write_atomic(path, render(report, fmt))
            paths.append(path)
    path = folder / COMBINED_HTML
    write_atomic(path, render_html(list(reports.values())))
    paths.append(path)
    return paths
