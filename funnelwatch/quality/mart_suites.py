"""Great Expectations suite over one hour of the cohort metrics mart, the detectors' input.

The events' suite (`suites.py`) says whether the hour's raw data can be trusted; this one says
whether dbt turned it into the mart whole: every rate a rate, the store-wide sessions equal to
the sessions in the raw events (a half-built or double-built hour fails), and the cohorts of
the same hour last week still present. Failures join the hour's data-quality incident.
"""

from __future__ import annotations

from datetime import datetime, timedelta

import duckdb
import pandas as pd

from funnelwatch.landing import as_utc_hour
from funnelwatch.quality.suites import CheckOutcome, _evidence, _gx_validate
from funnelwatch.warehouse import EVENTS_TABLE

METRICS_TABLE = "marts.fct_cohort_metrics_hourly"
MIN_COHORT_COVERAGE = 0.8  # a campaign that ends takes its ~7% of cohorts along

MART_CHECK_DESCRIPTIONS = {
    "cohort_metrics_rates_valid": "Every rate of fct_cohort_metrics_hourly for the hour lies "
    "in [0, 1] with numerator <= denominator.",
    "cohort_metrics_reconcile_sessions": "The mart's store-wide sessions for the hour equal the "
    "distinct sessions with an event in raw.events for that hour.",
    "cohort_metrics_cohort_coverage": f"At least {MIN_COHORT_COVERAGE:.0%} of the cohorts with "
    "sessions in the same hour a week earlier have sessions this hour.",
}
MART_CHECK_NAMES = tuple(MART_CHECK_DESCRIPTIONS)


def run_mart_suites(con: duckdb.DuckDBPyConnection, hour: datetime | str) -> list[CheckOutcome]:
    """Validate one hour of the cohort metrics mart. Reads only."""
    import great_expectations as gx

    hour = as_utc_hour(hour)
    rates = con.execute(
        f"""SELECT metric, cohort, value, numerator, denominator,
                   CAST(denominator - numerator AS DOUBLE) AS headroom
            FROM {METRICS_TABLE}
            WHERE event_hour = $h AND denominator IS NOT NULL AND denominator > 0""",
        {"h": hour},
    ).df()
    outcomes = []
    if rates.empty:
        outcomes.append(CheckOutcome("cohort_metrics_rates_valid", True,
                                     MART_CHECK_DESCRIPTIONS["cohort_metrics_rates_valid"],
                                     {"note": "no rates for this hour"}))
    else:
        in_range, headroom = _gx_validate(rates, [
            gx.expectations.ExpectColumnValuesToBeBetween(column="value", min_value=0, max_value=1),
            gx.expectations.ExpectColumnValuesToBeBetween(column="headroom", min_value=0),
        ])
        outcomes.append(CheckOutcome(
            "cohort_metrics_rates_valid", in_range.success and headroom.success,
            MART_CHECK_DESCRIPTIONS["cohort_metrics_rates_valid"],
            {"value_in_0_1": _evidence(in_range), "numerator_le_denominator": _evidence(headroom),
             "rates": len(rates)}))

    mart_sessions, raw_sessions = con.execute(
        f"""SELECT
              (SELECT max(value) FROM {METRICS_TABLE}
               WHERE event_hour = $h AND metric = 'sessions' AND cohort = 'all'),
              (SELECT count(DISTINCT session_id) FROM {EVENTS_TABLE} WHERE event_hour = $h)""",
        {"h": hour},
    ).fetchone()
    coverage = con.execute(
        f"""WITH before AS (
                SELECT cohort FROM {METRICS_TABLE}
                WHERE event_hour = $before AND metric = 'sessions' AND value > 0),
            now AS (
                SELECT cohort FROM {METRICS_TABLE}
                WHERE event_hour = $h AND metric = 'sessions' AND value > 0)
            SELECT (SELECT count(*) FROM before) AS before,
                   (SELECT count(*) FROM before WHERE cohort IN (SELECT cohort FROM now)) AS kept""",
        {"h": hour, "before": hour - timedelta(weeks=1)},
    ).df()
    before, kept = int(coverage["before"].iloc[0]), int(coverage["kept"].iloc[0])

    # Both one-row checks in one GE call (a call costs more than its rows).
    one_row = {"difference": [(mart_sessions or 0) - raw_sessions]}
    expectations = [gx.expectations.ExpectColumnValuesToBeBetween(
        column="difference", min_value=0, max_value=0)]
    if before:
        one_row["coverage"] = [kept / before]
        expectations.append(gx.expectations.ExpectColumnValuesToBeBetween(
            column="coverage", min_value=MIN_COHORT_COVERAGE))
    same, *covered = _gx_validate(pd.DataFrame(one_row), expectations)
    outcomes.append(CheckOutcome(
        "cohort_metrics_reconcile_sessions", same.success,
        MART_CHECK_DESCRIPTIONS["cohort_metrics_reconcile_sessions"],
        {"mart_sessions": mart_sessions, "raw_sessions": raw_sessions}))
    if not covered:
        outcomes.append(CheckOutcome("cohort_metrics_cohort_coverage", True,
                                     MART_CHECK_DESCRIPTIONS["cohort_metrics_cohort_coverage"],
                                     {"note": "no cohorts a week earlier (cold start): not checked"}))
    else:
        outcomes.append(CheckOutcome(
            "cohort_metrics_cohort_coverage", covered[0].success,
            MART_CHECK_DESCRIPTIONS["cohort_metrics_cohort_coverage"],
            {"cohorts_week_before": before, "still_present": kept,
             "coverage": round(kept / before, 4)}))
    return outcomes
