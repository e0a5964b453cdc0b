"""Reports and alerts never name a cohort smaller than the minimum size (privacy).

Root cause may localise to a narrow combination (`country=AU&device_type=tablet&...`). Before
an analysis is stored on an incident (and so before any report, alert or `funnelwatch
incident` shows it), each localised cohort that had fewer than
`FUNNELWATCH_MIN_COHORT_SESSIONS` sessions in the analysed window is replaced by a masked
label and its numbers are dropped. Cohorts over product categories or payment providers are
not sets of sessions and are not masked here (docs/privacy.md).
"""

from __future__ import annotations

from datetime import datetime, timedelta

import duckdb

# The session attributes of marts.fct_funnel_hourly (fixed names, never user input).
from funnelwatch.incidents.rca.constants import SESSION_DIMENSIONS

# SESSION_DIMENSIONS: the session attributes of marts.fct_funnel_hourly (fixed names).
from funnelwatch.privacy import is_small, mask_cohort, min_cohort_sessions


def cohort_sessions(con: duckdb.DuckDBPyConnection, filters: dict, start: datetime,
                    end: datetime) -> float | None:
    """Session-hours of a cohort of session attributes in [start, end), or in the same hours a
    week before if that is more (a cohort whose traffic vanished, an ended campaign, was not a
    small group of people); None for a cohort over anything else (category, payment
    provider)."""
    if any(k not in SESSION_DIMENSIONS for k in filters):
        return None
    conditions = "".join(f" AND {k} = ?" for k in filters)
    week = timedelta(days=7)
    (now, before) = con.execute(
        "SELECT coalesce(sum(sessions) FILTER (WHERE event_hour >= ?), 0), "
        "coalesce(sum(sessions) FILTER (WHERE event_hour < ?), 0) FROM marts.fct_funnel_hourly "
        f"WHERE ((event_hour >= ? AND event_hour < ?) OR (event_hour >= ? AND event_hour < ?))"
        f"{conditions}",
        [start, end - week, start, end, start - week, end - week, *filters.values()],
    ).fetchone()
    return float(max(now, before))


def mask_small_cohorts(con: duckdb.DuckDBPyConnection, rca: dict, start: datetime,
                       end: datetime, minimum: int | None = None) -> dict:
    """`rca` with every localised cohort below the minimum size masked (in place, returned)."""
    minimum = min_cohort_sessions() if minimum is None else minimum
    for rank, row in enumerate(rca.get("where") or []):
        filters = row.get("filters") or {}
        if not filters:
            continue
        size = cohort_sessions(con, filters, start, end)
        if size is None or not is_small(size, minimum):
            continue
        row.update(cohort=mask_cohort(row.get("cohort", ""), size, minimum), filters={},
                   actual=None, expected=None, masked=True)
        if rank == 0:  # the funnel table describes the top cohort: its rates go too
            for step in rca.get("funnel") or []:
                step["cohort_rate"] = step["cohort_expected_rate"] = step["change"] = None
    return rca
