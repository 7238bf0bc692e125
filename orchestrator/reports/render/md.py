"""Markdown: each of the report's tables as a GitHub pipe table, its notes as a list below."""

from __future__ import annotations

from typing import Any

from orchestrator.reports.model import Table


def _escape(text: str) -> str:
    return text.replace("\\", "\\\\").replace("|", "\\|").replace("\n", " ")


def table_md(table: Table) -> str:
    lines = [f"## {table.title}", ""]
    if table.rows:
        lines.append("| " + " | ".join(_escape(c.header) for c in table.columns) + " |")
        lines.append("|" + "|".join("---:" if c.align == "right" else ":---" for c in table.columns) + "|")
        lines += ["| " + " | ".join(_escape(v) for v in row) + " |" for row in table.text_rows()]
    else:
        lines.append("_(nothing in the registry matches)_")
    if table.notes:
        lines.append("")
        lines += [f"- {_escape(n)}" for n in table.notes]
    return "\n".join(lines) + "\n"


def render_md(report: Any) -> str:
    return "\n".join(table_md(t) for t in report.tables())
