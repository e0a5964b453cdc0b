"""Multi-dimensional root-cause localisation (pure Python: no Dagster, no I/O).

``Localizer(max_dimensions=3, top_k=3).localize(leaves, dimensions, kpi="additive"|"ratio")``
ranks the cohorts (``os=iOS&browser=Safari``-style dimension-value combinations) that explain
one hour's deviation of an additive or ratio KPI. See docs/rootcause.md.
"""

from rootcause.localize import (
    ADDITIVE_COLUMNS,
    ALL,
    KPI_KINDS,
    RATIO_COLUMNS,
    RESULT_COLUMNS,
    Localizer,
    deviation_score,
    format_cohort,
    parse_cohort,
)

__all__ = [
    "ADDITIVE_COLUMNS",
    "ALL",
    "KPI_KINDS",
    "RATIO_COLUMNS",
    "RESULT_COLUMNS",
    "Localizer",
    "deviation_score",
    "format_cohort",
    "parse_cohort",
]
