"""Reports written to files: one format to one path, or everything into a folder (`report all`)."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

from sqlalchemy.orm import Session

from lora_engine.atomic import atomic_write_text
from orchestrator.reports.build import benchmark_report, compare_report, cost_report
from orchestrator.reports.model import Filters
from orchestrator.reports.render import FORMATS, SUFFIX, render
from orchestrator.reports.render.html import render_html

COMBINED_HTML = "report.html"


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
            atomic_write_text(path, render(report, fmt))
            paths.append(path)
    path = folder / COMBINED_HTML
    atomic_write_text(path, render_html(list(reports.values())))
    paths.append(path)
    return paths
