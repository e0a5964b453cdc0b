"""The fast lane's tables: `fastlane.slot_metrics` (what happened per slot and cohort) and
`fastlane.scores` (every scored slot with its verdict; incidents read the flagged rows)."""

from __future__ import annotations

import duckdb

SCHEMA = "fastlane"
SLOT_METRICS = f"{SCHEMA}.slot_metrics"
SCORES = f"{SCHEMA}.scores"


def ensure_fastlane_schema(con: duckdb.DuckDBPyConnection) -> None:
    con.execute(f"CREATE SCHEMA IF NOT EXISTS {SCHEMA}")
    # source: 'landing' (read from the running hour's files) or 'raw' (from raw.events once
    # the hourly pipeline loaded the hour: authoritative, late data included).
    con.execute(
        f"""CREATE TABLE IF NOT EXISTS {SLOT_METRICS} (
              slot_start TIMESTAMPTZ, metric VARCHAR, cohort VARCHAR, numerator DOUBLE,
              denominator DOUBLE, value DOUBLE, source VARCHAR, computed_at TIMESTAMPTZ)"""
    )
    con.execute(
        f"""CREATE TABLE IF NOT EXISTS {SCORES} (
              slot_start TIMESTAMPTZ, event_hour TIMESTAMPTZ, metric VARCHAR, cohort VARCHAR,
              value DOUBLE, expected DOUBLE, lower DOUBLE, upper DOUBLE, p_value DOUBLE,
              severity DOUBLE, direction VARCHAR, is_anomaly BOOLEAN, window_slots INTEGER,
              window_observed DOUBLE, window_expected DOUBLE, baseline_days INTEGER,
              reason VARCHAR, scored_at TIMESTAMPTZ)"""
    )


def flagged_points_sql() -> str:
    """The fast lane's flagged points of hour `$h`, one per series (its worst slot), in the
    shape of detection.anomalies' flagged points (incidents read both)."""
    return f"""SELECT metric, cohort, max(severity) AS severity,
                      arg_max(direction, severity) AS direction,
                      arg_max(value, severity) AS value, arg_max(expected, severity) AS expected
               FROM {SCORES} WHERE event_hour = $h AND is_anomaly
               GROUP BY metric, cohort"""
