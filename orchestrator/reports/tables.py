"""What every renderer reads: a report's tables (terminal, Markdown, HTML) and its long-form
records (the CSV).

Each report (benchmark.py, cost.py, compare.py) has three views, all derived from the same fields:
- `to_dict()`: everything, raw registry values (metrics on the registry's scale, seconds, bytes),
  stable keys — what `--json` prints;
- `records()`: the same figures in long form with fixed columns (RECORD_COLUMNS, `record`) — the CSV;
- `tables()`: what a person reads, a list of `Table`s.

A table is a list of columns and a list of rows of any type; a column is declared on one line —
its header, how its value is read from a row, and its kind (how the value is shown):

    Column("ckpt MB", lambda r: r.checkpoint_bytes, "mb")

so adding a column to a report's table is that one line.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Generic, TypeVar

from orchestrator.reports.references import points

# The CSV's fixed columns: every figure of a report, one per row (`record`).
RECORD_COLUMNS = ("section", "tenant", "task", "base_model", "method", "rank", "device", "name", "value")
GB = 1e9
R = TypeVar("R")


@dataclass(frozen=True)
class Column(Generic[R]):
    """One column of a table, declared on one line: its header, how its value is read from a row,
    and its kind (a key of FORMATS: how the value is shown; "name" is text aligned left)."""

    header: str
    get: Callable[[R], Any]
    kind: str = "text"

    def __post_init__(self) -> None:
        if self.kind not in FORMATS:  # a typo fails where the column is declared, not when shown
            allowed = ", ".join(FORMATS)
            raise ValueError(f"column {self.header!r}: unknown kind {self.kind!r}; allowed: {allowed}")

    @property
    def align(self) -> str:
        return "left" if self.kind == "name" else "right"


def _money(v: float) -> str:
    """4 decimals; below a cent, 3 significant digits (CPU minutes cost fractions of a cent)."""
    if v == 0 or abs(v) >= 0.01:
        return f"${v:,.4f}"
    return f"${v:.{2 - math.floor(math.log10(abs(v)))}f}"


def _ratio(v: float) -> str:
    return f"{v:.1f}×" if v < 100 else f"{v:,.0f}×"


FORMATS = {
    "text": str,
    "name": str,
    "int": lambda v: f"{int(v):,}",
    "points": lambda v: f"{points('accuracy', v):.1f}",  # a fraction metric, in points
    "num": lambda v: f"{v:.2f}",
    "delta": lambda v: f"{v:+.1f}",
    "money": lambda v: _money(v),
    "hours": lambda v: f"{v:,.4f}",
    "seconds": lambda v: f"{v:,.1f}",
    "mb": lambda v: f"{v / 1e6:,.2f}",
    "mb0": lambda v: f"{v / 1e6:,.0f}",
    "gb": lambda v: f"{v / GB:,.4f}",
    "percent": lambda v: f"{100 * v:.2f}%",
    "ratio": _ratio,
    "rate": lambda v: f"{v:,.1f}",
}


def fmt(value: Any, kind: str) -> str:
    if value is None:
        return "-"
    if isinstance(value, str):
        return value
    return FORMATS[kind](value)


# A terminal table stops after this many rows (the other formats carry every row).
TERMINAL_ROWS = 100


@dataclass
class Table(Generic[R]):
    """What every renderer reads: rows of any type, each cell read from its row by its column."""

    key: str
    title: str
    columns: list[Column[R]]
    rows: list[R]
    notes: list[str] = field(default_factory=list)
    keep_last: int = 0  # trailing rows (totals, references) a shortened terminal table still shows

    def text_rows(self) -> list[list[str]]:
        return [[fmt(c.get(row), c.kind) for c in self.columns] for row in self.rows]


def record(section: str, name: str, value: Any, **keys: Any) -> dict[str, Any]:
    """One CSV row: `keys` fill the RECORD_COLUMNS they name, the others stay empty."""
    out = {c: keys.get(c) for c in RECORD_COLUMNS}
    out.update(section=section, name=name, value=value)
    return out
