"""Reports written to files: one format to one path, or everything into a folder (`report all`)."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

from sqlalchemy.orm import Session

from lora_engine.atomic import atomic_folder
from orchestrator.reports.benchmark import benchmark_report
from orchestrator.reports.charts import charts_for
from orchestrator.reports.compare import compare_report
from orchestrator.reports.cost import cost_report
from orchestrator.reports.render import FORMATS, SUFFIX, render
from orchestrator.reports.render.html import render_html
from orchestrator.reports.scope import Filters

COMBINED_HTML = "report.html"
REPORTS = ("benchmark", "cost", "compare")
# Every file `report all` writes: each report in every format, then the combined page.
FILE_NAMES = (*(f"{name}.{SUFFIX[fmt]}" for name in REPORTS for fmt in FORMATS), COMBINED_HTML)


def build_all(
    session: Session,
    filters: Filters,
    *,
    pick: str,
    prices: Mapping[str, float],
    storage_price_gb_month: float,
) -> dict[str, Any]:
    """The three reports, by name (REPORTS; the cost report with its per-adapter points, for the
    charts)."""
    return {
        "benchmark": benchmark_report(session, filters, pick),
        "cost": cost_report(session, filters, prices, storage_price_gb_month, with_points=True),
        "compare": compare_report(session, filters),
    }


def render_all(reports: Mapping[str, Any]) -> dict[str, str]:
    """{file name: text}: each report in every format and one combined report.html (last); each
    report's charts are drawn once, for its own page and the combined one."""
    charts = {name: charts_for(report) for name, report in reports.items()}
    texts = {}
    for name, report in reports.items():
        for fmt in FORMATS:
            texts[f"{name}.{SUFFIX[fmt]}"] = (render_html([report], charts=[charts[name]]) if fmt == "html"
                                               else render(report, fmt))
    texts[COMBINED_HTML] = render_html(list(reports.values()), charts=list(charts.values()))
    return texts


def write_all(folder: Path, reports: Mapping[str, Any]) -> list[Path]:
    """Write `render_all` into `folder`, whole or not at all: everything is rendered first (a
    chart that fails writes nothing), then written into a new sibling folder that is renamed to
    `folder` (lora_engine.atomic). An existing `folder` is swapped out only once the new one is
    complete, so a failure (a full disk) leaves it as it was and leaves no half-written folder.
    The caller has checked the place (orchestrator.destinations): new, empty, or an earlier
    `report all`, whose files are all replaced."""
    texts = render_all(reports)
    with atomic_folder(folder, replace=folder.is_dir()) as tmp:
        for name, text in texts.items():
            (tmp / name).write_text(text, encoding="utf-8")
    return [folder / name for name in texts]
