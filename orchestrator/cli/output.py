"""What people read: tables that fit 80 columns, records, and the formats of ids, times and sizes.

Tables are drawn by rich (imported inside the functions, so `lorafleet --help` does not load it):
short ids, relative times and abbreviated cells by default, so `job list` fits an 80-column
terminal; `--wide` shows full ids, ISO times and the wide-only columns, never truncated.
Scripts read `--json`, not tables.

Every string printed here goes through `orchestrator.text.printable` (names, file names, labels and
messages may hold terminal escape sequences), and rich gets `Text` objects, never markup strings
(a name such as `[/]` would be read as a closing tag).
"""

from __future__ import annotations

import json
import sys
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from orchestrator.text import printable

SHORT_ID = 8
DEFAULT_WIDTH = 80


@dataclass(frozen=True)
class Column:
    """One table column: `key` of the row, how to format it, and whether only `--wide` shows it."""

    key: str
    header: str | None = None
    fmt: Callable[[Any, bool], str] | None = None  # (value, wide) -> text
    wide_only: bool = False
    justify: str = "left"
    # The column that shrinks (with an ellipsis) when the table is wider than the terminal.
    flexible: bool = False

    def text(self, row: Mapping[str, Any], wide: bool) -> str:
        value = row.get(self.key)
        if self.fmt is not None:
            return self.fmt(value, wide)
        return cell(value, wide, key=self.key)


# ---- formats ----------------------------------------------------------------------------------


def short_id(value: Any, wide: bool = False) -> str:
    if value is None:
        return "-"
    return str(value) if wide else str(value)[:SHORT_ID]


def parse_time(value: Any) -> datetime | None:
    if value is None or value == "":
        return None
    moment = value if isinstance(value, datetime) else datetime.fromisoformat(str(value))
    return moment if moment.tzinfo else moment.replace(tzinfo=UTC)


def ago(value: Any, wide: bool = False, now: datetime | None = None) -> str:
    """'42s ago', '5m ago', '3h ago', '2d ago' (wide: the ISO time)."""
    moment = parse_time(value)
    if moment is None:
        return "-"
    if wide:
        return moment.isoformat(timespec="seconds")
    return f"{duration((now or datetime.now(UTC)) - moment)} ago"


def duration(seconds: Any) -> str:
    """A short duration: 45s, 12m03s, 3h05m, 2d04h."""
    if seconds is None:
        return "-"
    s = int(seconds.total_seconds() if hasattr(seconds, "total_seconds") else seconds)
    s = max(s, 0)
    if s < 60:
        return f"{s}s"
    if s < 3600:
        return f"{s // 60}m{s % 60:02d}s"
    if s < 86400:
        return f"{s // 3600}h{s % 3600 // 60:02d}m"
    return f"{s // 86400}d{s % 86400 // 3600:02d}h"


def human_bytes(value: Any, wide: bool = False) -> str:
    if value is None:
        return "-"
    if wide:
        return str(value)
    size = float(value)
    for unit in ("B", "kB", "MB", "GB"):
        if size < 1000 or unit == "GB":
            return f"{size:.0f} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1000
    return str(value)


def number(value: Any, wide: bool = False) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return repr(value) if wide else f"{value:.4g}"
    return str(value)


def cell(value: Any, wide: bool = False, *, key: str = "") -> str:
    """A value as a table cell, by its kind and by the usual meaning of its key."""
    if value is None:
        return "-"
    if key == "id" or key.endswith("_id"):
        return short_id(value, wide)
    if key.endswith("_at") or isinstance(value, datetime):
        return ago(value, wide)
    if key == "bytes" or key.endswith("_bytes"):
        return human_bytes(value, wide)
    if isinstance(value, int | float) and not isinstance(value, bool):
        return number(value, wide)
    if isinstance(value, Mapping | list):
        return json.dumps(value, default=str) if value else "-"
    return str(value)


# ---- tables and records -----------------------------------------------------------------------


def console(*, stderr: bool = False, wide: bool = False) -> Any:
    """A rich Console: the terminal's width, or 80 columns when not a terminal (wide: no limit)."""
    from rich.console import Console

    stream = sys.stderr if stderr else sys.stdout
    width = None if stream.isatty() else DEFAULT_WIDTH
    if wide:
        width = 10_000
    # highlight=False: rich would otherwise colour numbers and paths inside our plain cells.
    return Console(file=stream, width=width, highlight=False, soft_wrap=False)


def print_table(
    rows: Sequence[Mapping[str, Any]],
    columns: Sequence[Column | str],
    *,
    empty: str = "(none)",
    wide: bool = False,
) -> None:
    """Rows as an aligned table of `columns` (names or Column), headers in capitals."""
    import click

    if not rows:
        click.echo(empty)
        return
    from rich import box
    from rich.table import Table
    from rich.text import Text

    cols = [c if isinstance(c, Column) else Column(c) for c in columns]
    cols = [c for c in cols if wide or not c.wide_only]
    cells = [[printable(c.text(row, wide)) for c in cols] for row in rows]
    headers = [(c.header or c.key).upper() for c in cols]
    natural = [max(len(h), *(len(r[i]) for r in cells)) for i, h in enumerate(headers)]
    out = console(wide=wide)
    # Only the flexible columns give way (with an ellipsis) when the table is wider than the
    # terminal; ids, states and numbers keep their full width.
    fixed = sum(w + 2 for w, c in zip(natural, cols, strict=True) if not c.flexible)
    flexible = [i for i, c in enumerate(cols) if c.flexible]
    room = max((out.width - fixed) // max(len(flexible), 1) - 2, 8)
    table = Table(box=box.SIMPLE_HEAD, show_edge=False, pad_edge=False, padding=(0, 1), expand=False,
                  header_style="bold")
    for i, (c, header) in enumerate(zip(cols, headers, strict=True)):
        width = natural[i] if i not in flexible or wide else min(natural[i], room)
        table.add_column(Text(header), justify=c.justify, no_wrap=True,  # type: ignore[arg-type]
                         overflow="ellipsis", min_width=width, max_width=width)
    for r in cells:
        table.add_row(*(Text(v) for v in r))
    out.print(table)


def print_record(record: Mapping[str, Any], *, skip: Iterable[str] = (), indent: int = 0) -> None:
    """`key  value` lines; nested mappings print as indented sub-records, lists one item a line."""
    skip = set(skip)
    keys = [k for k in record if k not in skip]
    # Keys may be data too (a data set's label counts): printable like the values.
    names = {k: printable(k) for k in keys}
    width = max((len(n) for n in names.values()), default=0)
    pad = " " * indent
    for key in keys:
        value = record[key]
        if isinstance(value, Mapping) and value:
            echo(f"{pad}{names[key]}")
            print_record(value, indent=indent + 2)
        elif isinstance(value, list) and value:
            echo(f"{pad}{names[key]}")
            for item in value:
                if isinstance(item, Mapping):
                    pairs = ", ".join(f"{k}={cell(v, True, key=str(k))}" for k, v in item.items())
                    echo(f"{pad}  - {pairs}")
                else:
                    echo(f"{pad}  - {cell(item, True)}")
        else:
            echo(f"{pad}{names[key].ljust(width)}  {cell(value, True, key=str(key))}")


def echo(line: Any = "", *, err: bool = False) -> None:
    """One line for people (stdout, or stderr with `err`), every character a terminal would obey
    escaped: the way every line with a name, a label or a message in it is printed."""
    import click

    click.echo(printable(line), err=err)


def print_document(text: str) -> None:
    """A whole document (CSV, JSON, Markdown) on stdout: exact when piped or redirected (a file
    gets the data as it is), escaped line by line when stdout is a terminal."""
    import click

    click.echo(printable(text, multiline=True) if sys.stdout.isatty() else text, nl=False)
