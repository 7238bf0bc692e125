"""Reports from the registry: benchmark (tenants × tasks), cost, and method comparison.

queries.py (SQL, GROUP BY and windows) → build.py (fill the model) → model.py (dataclasses) →
render/ (one module per format) and charts.py (matplotlib, for HTML).
"""

from orchestrator.reports.build import (
    PICKS,
    benchmark_report,
    check_prices,
    compare_report,
    cost_report,
    make_filters,
)
from orchestrator.reports.model import BenchmarkReport, CompareReport, CostReport, Filters

__all__ = [
    "PICKS",
    "BenchmarkReport",
    "CompareReport",
    "CostReport",
    "Filters",
    "benchmark_report",
    "check_prices",
    "compare_report",
    "cost_report",
    "make_filters",
]
