"""HTML: one self-contained page (inline CSS, charts as inline base64 PNGs, no script, nothing
fetched), for one report or several (`report all` writes all three into report.html).

Every piece of text goes through `_text`: `printable` (no control or bidi character reorders or
hides a name) then HTML-escaped, quotes included (it also fills attributes): a base model folder
named `<script>` or `" onerror=` is shown as text."""

from __future__ import annotations

import base64
from collections.abc import Sequence
from datetime import UTC, datetime
from html import escape
from typing import Any

from orchestrator.reports.tables import Table
from orchestrator.text import printable

CSS = """
body { font-family: system-ui, -apple-system, "Segoe UI", sans-serif; margin: 2rem auto; max-width: 80rem;
       padding: 0 1rem; color: #1f2328; background: #fff; }
h1 { font-size: 1.6rem; } h2 { font-size: 1.3rem; margin-top: 2.5rem; border-bottom: 1px solid #d0d7de; }
h3 { font-size: 1.05rem; margin-top: 1.5rem; }
table { border-collapse: collapse; margin: 0.5rem 0; font-size: 0.85rem; }
th, td { border: 1px solid #d0d7de; padding: 0.25rem 0.5rem; }
th { background: #f6f8fa; }
td.num { text-align: right; font-variant-numeric: tabular-nums; white-space: nowrap; }
ul.notes { color: #57606a; font-size: 0.85rem; }
figure { margin: 1rem 0; } figure img { max-width: 100%; height: auto; border: 1px solid #d0d7de; }
figcaption { color: #57606a; font-size: 0.85rem; }
.meta { color: #57606a; font-size: 0.85rem; }
"""

TITLES = {"benchmark": "Benchmark", "cost": "Cost", "compare": "Methods compared"}


def _text(value: Any) -> str:
    return escape(printable(value), quote=True)


def _table(table: Table) -> str:
    head = "".join(f"<th>{_text(c.header)}</th>" for c in table.columns)
    body = "".join(
        "<tr>"
        + "".join(
            f'<td class="{"num" if c.align == "right" else "text"}">{_text(v)}</td>'
            for v, c in zip(row, table.columns, strict=True)
        )
        + "</tr>"
        for row in table.text_rows()
    )
    rows = (
        f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"
        if table.rows
        else "<p><em>(nothing in the registry matches)</em></p>"
    )
    notes = "".join(f"<li>{_text(n)}</li>" for n in table.notes)
    return f"<h3>{_text(table.title)}</h3>{rows}" + (f'<ul class="notes">{notes}</ul>' if notes else "")


def _figure(title: str, png: bytes) -> str:
    data = base64.b64encode(png).decode("ascii")
    return (
        f'<figure><img class="chart" alt="{_text(title)}" src="data:image/png;base64,{data}">'
        f"<figcaption>{_text(title)}</figcaption></figure>"
    )


def render_html(reports: Sequence[Any], title: str = "lorafleet report",
                charts: Sequence[list[tuple[str, bytes]]] | None = None) -> str:
    """The page of `reports`; `charts`: each report's `charts_for` when already drawn (drawing is
    most of the time a page takes)."""
    from orchestrator.reports.charts import charts_for

    sections = []
    for i, report in enumerate(reports):
        name = report.to_dict()["report"]
        parts = [f'<section id="{name}"><h2>{_text(TITLES.get(name, name))}</h2>']
        parts += [_figure(t, png) for t, png in (charts[i] if charts is not None else charts_for(report))]
        parts += [_table(t) for t in report.tables()]
        parts.append("</section>")
        sections.append("".join(parts))
    filters = reports[0].filters.to_dict() if reports else {}
    scope = ", ".join(f"{k}={v}" for k, v in filters.items() if v) or "every tenant, task and base model"
    generated = datetime.now(UTC).isoformat(timespec="seconds")
    return (
        "<!DOCTYPE html>\n"
        f'<html lang="en"><head><meta charset="utf-8"><title>{_text(title)}</title>'
        f'<meta name="viewport" content="width=device-width, initial-scale=1"><style>{CSS}</style></head>'
        f'<body><h1>{_text(title)}</h1><p class="meta">From the registry; scope: {_text(scope)}; '
        f"generated {generated}.</p>" + "".join(sections) + "</body></html>\n"
    )
