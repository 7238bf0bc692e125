"""Reports from the registry: benchmark (tenants × tasks), cost, and method comparison.

One module per report (benchmark.py, cost.py, compare.py), each with its model, its tables, its
SQL (GROUP BY and windows) and the service that fills it; what they share in scope.py (filters,
the scoped jobs, the primary-metric join) and tables.py (the columns every renderer reads) →
render/ (one module per format) and charts.py (matplotlib, for HTML).
"""

from orchestrator.reports.benchmark import PICKS, BenchmarkReport, benchmark_report
from orchestrator.reports.compare import CompareReport, compare_report
from orchestrator.reports.cost import CostReport, check_prices, cost_report
from orchestrator.reports.scope import Filters, make_filters

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
