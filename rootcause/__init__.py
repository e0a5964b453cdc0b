"""Multi-dimensional root-cause localisation (pure Python: no Dagster, no I/O).

``Localizer(max_dimensions=None, top_k=3).localize(leaves, dimensions, kpi="additive"|"ratio")``
ranks the cohorts (``os=iOS&browser=Safari``-style dimension-value combinations) that explain a
window's deviation of an additive or ratio KPI; several simultaneous causes are each accepted
(``root_cause``). Leaves carry ``actual``, ``expected``, ``denominator`` and ``variance``
(``additive_leaves`` / ``ratio_leaves`` derive them). See docs/rootcause.md.
"""

from rootcause.cohorts import ALL, format_cohort, parse_cohort
from rootcause.leaves import LEAF_COLUMNS, additive_leaves, ratio_leaves
from rootcause.localize import (
    KPI_KINDS,
    RESULT_COLUMNS,
    Localizer,
    cohort_mask,
    cohort_z,
    residual_z,
)

__all__ = [
    "ALL",
    "KPI_KINDS",
    "LEAF_COLUMNS",
    "RESULT_COLUMNS",
    "Localizer",
    "additive_leaves",
    "cohort_mask",
    "cohort_z",
    "format_cohort",
    "parse_cohort",
    "ratio_leaves",
    "residual_z",
]
