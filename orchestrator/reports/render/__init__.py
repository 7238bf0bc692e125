"""One renderer per format; each takes a report (or several, for the combined HTML page)."""

from __future__ import annotations

from typing import Any

FORMATS = ("table", "md", "csv", "json", "html")
# File name suffix of each format (`report all --out DIR`).
SUFFIX = {"table": "txt", "md": "md", "csv": "csv", "json": "json", "html": "html"}


def render(report: Any, fmt: str) -> str:
    """`report` as text in `fmt` (the terminal table without colour)."""
    if fmt == "table":
        from orchestrator.reports.render.table import render_table

        return render_table(report)
    if fmt == "md":
        from orchestrator.reports.render.md import render_md

        return render_md(report)
    if fmt == "csv":
        from orchestrator.reports.render.csv import render_csv

        return render_csv(report)
    if fmt == "json":
        from orchestrator.reports.render.json import render_json

        return render_json(report)
    if fmt == "html":
        from orchestrator.reports.render.html import render_html

        return render_html([report])
    raise ValueError(f"unknown format {fmt!r}; allowed: {', '.join(FORMATS)}")
