"""JSON: the report's `to_dict()`, keys in the model's fixed order."""

from __future__ import annotations

import json
from typing import Any


def render_json(report: Any) -> str:
    return json.dumps(report.to_dict(), indent=2, allow_nan=False) + "\n"
