"""Markdown: each of the report's tables as a GitHub pipe table, its notes as a list below.

Text is `printable` (a Markdown file is read in a terminal too), and the characters that make
Markdown syntax in a table cell (`_SYNTAX`) are backslash-escaped, so a name such as
`[x](javascript:...)` or `<img onerror=...>` stays text."""

from __future__ import annotations

import re
from typing import Any

from orchestrator.reports.tables import Table
from orchestrator.text import printable

# The pipe (a cell's end), code spans, emphasis, raw HTML and autolinks (`<`), and the `(` of an
# inline link or image (`[x](url)`: a bracket alone, as in "75.0 [3]", is text).
_SYNTAX = re.compile(r"([\\`*|<>]|(?<=\])\()")


def _escape(text: str) -> str:
    return _SYNTAX.sub(r"\\\1", printable(text))


def table_md(table: Table) -> str:
    lines = [f"## {_escape(table.title)}", ""]
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
