"""The whole cohort cube: every cohort of up to three dimensions scanned each hour, not only
the configured series (issue 15 §3).

Reads the leaf table `marts.fct_funnel_hourly` (one row per hour and combination of every
session dimension), runs `detectors.SubsetScan` one UTC day at a time (each day fitted only on
the hours before it, as `run.score_window` does for the series) and returns its alerts as
`detection.anomalies` rows. Cohorts monitored as series are left to their own sequential
test; hours a data-quality incident covers are left out of history and scoring.
"""

from __future__ import annotations

from datetime import datetime, timedelta

import duckdb
import pandas as pd

from funnelwatch.incidents.rca.constants import (
    LEAF_DIMENSIONS,
    OTHER_RATE_METRICS,
    RATE_METRICS,
    UNKNOWN_LABEL,
    stage_column,
)
from funnelwatch.warehouse import has_table
from rootcause import format_cohort, parse_cohort

LEAF_TABLE = "marts.fct_funnel_hourly"
# rate metric -> (numerator column, denominator column) of the leaf table: the funnel's
# conversions as fct_cohort_metrics_hourly defines them, and the error rates
SCANNED_RATES = {
    **{metric: (stage_column(num), stage_column(den)) for metric, (num, den) in RATE_METRICS.items()},
    **OTHER_RATE_METRICS,
}


def canonical(cohort: str) -> str:
    """A cohort name with its dimensions sorted (`os=iOS&browser=Safari` ->
    `browser=Safari&os=iOS`), as the scan names cohorts."""
    try:
        return format_cohort(parse_cohort(cohort))
    except ValueError:
        return cohort


def load_leaves(con: duckdb.DuckDBPyConnection, start: datetime, end: datetime) -> pd.DataFrame:
    """Leaf rows of [start, end) without the hours of data-quality incidents."""
    if not has_table(con, LEAF_TABLE):
        return pd.DataFrame()
    # a reader: it never creates the quality schema (there are no failed hours before it)
    skip_failed = ("AND event_hour NOT IN (SELECT event_hour FROM quality.incident_hours)"
                   if has_table(con, "quality.incident_hours") else "")
    # the leaf dimensions (utm_source / utm_medium are near-copies of the campaign), unknown
    # values named as the root cause names them
    dims = ", ".join(f"coalesce({d}, '{UNKNOWN_LABEL[d]}') AS {d}" for d in LEAF_DIMENSIONS)
    columns = sorted({c for pair in SCANNED_RATES.values() for c in pair})
    sums = ", ".join(f"CAST(sum({c}) AS DOUBLE) AS {c}" for c in columns)
    frame = con.execute(
        f"""SELECT event_hour AS ts, {dims}, {sums} FROM {LEAF_TABLE}
            WHERE event_hour >= $start AND event_hour < $end
              {skip_failed}
            GROUP BY ALL""",
        {"start": start, "end": end},
    ).df()
    frame["ts"] = pd.to_datetime(frame["ts"], utc=True).astype("datetime64[us, UTC]")
    return frame


def scan_window(
    con: duckdb.DuckDBPyConnection,
    start: datetime,
    end: datetime,
    monitored: set[str],
    history_days: int = 14,
    false_alarms_per_day: float = 0.1,
) -> pd.DataFrame:
    """The scan's alerts for the hours of [start, end) as scored rows (`ts` as the series'
    scored rows have it, `is_anomaly` true, `detectors_fired` ['subset_scan']); empty without
    a leaf table or history. `monitored`: the cohorts scored as series (any dimension order),
    which their own test covers."""
    from detectors.subset_scan import SubsetScan  # numpy / scipy: imported when a run needs it

    leaves = load_leaves(con, start - timedelta(days=history_days), end)
    if leaves.empty:
        return pd.DataFrame()
    exclude = {canonical(c) for c in monitored}
    history = leaves[leaves["ts"] < pd.Timestamp(start)]
    current = leaves[leaves["ts"] >= pd.Timestamp(start)]
    if history.empty or current.empty:
        return pd.DataFrame()
    # one pass over the whole window: the scan pools its expectation afresh at each UTC day
    scan = SubsetScan(SCANNED_RATES, list(LEAF_DIMENSIONS), exclude=exclude,
                      history_days=history_days, false_alarms_per_day=false_alarms_per_day)
    alerts = scan.fit(history).score(current)
    if alerts.empty:
        return pd.DataFrame()
    return alerts.assign(
        is_anomaly=True, lower=float("nan"), upper=float("nan"),
        detectors_fired=[["subset_scan"]] * len(alerts),
        series_id=alerts["metric"] + "|" + alerts["cohort"],
    )
