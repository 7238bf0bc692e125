"""CSV: every figure of the report in long form, one per row, with fixed columns (RECORD_COLUMNS).

Raw registry values (metrics on the registry's scale, seconds, bytes): a spreadsheet or pandas
pivots them as it likes; nothing is rounded. Every cell goes through `orchestrator.text.csv_cell`:
numbers stay numbers (a negative metric too), text that a spreadsheet would run as a formula
(`=`, `+`, `-`, `@`, tab, CR first) gets a leading apostrophe.
"""

from __future__ import annotations

import csv
import io
from typing import Any

from orchestrator.reports.tables import RECORD_COLUMNS
from orchestrator.text import csv_cell


def render_csv(report: Any) -> str:
    out = io.StringIO()
    writer = csv.DictWriter(out, fieldnames=RECORD_COLUMNS, lineterminator="\n")
    writer.writeheader()
    for record in report.records():
        writer.writerow({k: csv_cell(v) for k, v in record.items()})
    return out.getvalue()
