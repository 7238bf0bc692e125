"""Terminal tables through rich (it measures, wraps and aligns; nothing is padded by hand).

Every cell, title, header and note is a `Text` of `printable(...)`: never rich markup (a base
model folder named `[/]` is text), never a raw escape sequence (the `.txt` of `report all` is
read with `cat` as often as the terminal output is)."""

from __future__ import annotations

import io
from typing import Any

from orchestrator.reports.tables import TERMINAL_ROWS, Table
from orchestrator.text import printable


def _shown_rows(table: Table) -> list[list[Any]]:
    """The first TERMINAL_ROWS rows and the table's trailing `keep_last` ones (totals)."""
    if len(table.rows) <= TERMINAL_ROWS + table.keep_last:
        return table.rows
    tail = table.rows[len(table.rows) - table.keep_last :] if table.keep_last else []
    return table.rows[:TERMINAL_ROWS] + tail


def rich_table(table: Table) -> Any:
    from rich.table import Table as RichTable
    from rich.text import Text

    # Text objects, not strings: a cell such as "[3]" must never be read as rich markup.
    out = RichTable(
        title=Text(printable(table.title)),
        title_justify="left",
        caption=Text("\n".join(printable(n) for n in table.notes)) if table.notes else None,
        caption_justify="left",
    )
    for c in table.columns:
        out.add_column(Text(printable(c.header)), justify=c.align, overflow="fold")
    for row in Table(table.key, table.title, table.columns, _shown_rows(table)).text_rows():
        out.add_row(*(Text(printable(v)) for v in row))
    return out


def print_report(report: Any, console: Any) -> None:
    from rich.text import Text

    for table in report.tables():
        console.print(rich_table(table))
        omitted = len(table.rows) - len(_shown_rows(table))
        if omitted:
            # Thousands of tenants are no screenful: say so rather than scroll for minutes.
            console.print(
                Text(f"… {omitted:,} more rows not shown: --format md, csv, json or html has them all.")
            )
        console.print()


def terminal_console() -> Any:
    """A console for stdout: the terminal's width, or 160 columns when piped (not 80)."""
    import sys

    from rich.console import Console

    return Console() if sys.stdout.isatty() else Console(width=160)


def render_table(report: Any, width: int = 160) -> str:
    """The tables as plain text (no colour codes), `width` columns wide."""
    from rich.console import Console

    buffer = io.StringIO()
    console = Console(file=buffer, width=width, color_system=None, force_terminal=False, legacy_windows=False)
    print_report(report, console)
    return buffer.getvalue()
