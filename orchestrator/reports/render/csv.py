"""CSV: every figure of the report in long form, one per row, with fixed columns (RECORD_COLUMNS).

Raw registry values (metrics on the registry's scale, seconds, bytes): a spreadsheet or pandas
pivots them as it likes; nothing is rounded.
"""

from __future__ import annotations

import csv
import io
from typing import Any

from orchestrator.reports.model import RECORD_COLUMNS


def render_csv(report: Any) -> str:
    out = io.StringIO()
    writer = csv.DictWriter(out, fieldnames=RECORD_COLUMNS, lineterminator="\n")
    writer.writeheader()
    for record in report.records():
        writer.writerow(
            {k: "" if v is None else (repr(v) if isinstance(v, float) else v) for k, v in record.items()}
        )
    return out.getvalue()
