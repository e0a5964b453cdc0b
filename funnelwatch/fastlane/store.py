"""The fast lane's tables: `fastlane.slot_metrics` (what happened per slot and cohort) and
`fastlane.scores` (every scored slot with its verdict; incidents read the flagged rows)."""

from __future__ import annotations

import duckdb
import pandas as pd

from funnelwatch.fastlane.quality import HELD_BACK
from funnelwatch.warehouse import has_table

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


def _has_scores(con: duckdb.DuckDBPyConnection) -> bool:
    return has_table(con, SCORES)


def flagged_points(con: duckdb.DuckDBPyConnection, hour) -> pd.DataFrame:
    """The fast lane's flagged points of `hour`, one per series (its worst slot), in the shape
    of detection's flagged points (incidents read both). Empty before the lane ever ran."""
    if not _has_scores(con):
        return pd.DataFrame(columns=["metric", "cohort", "severity", "direction", "value",
                                     "expected", "window_hours"])
    # its windows are slots of the hour: one hour of evidence
    return con.execute(
        f"""SELECT metric, cohort, max(severity) AS severity,
                   arg_max(direction, severity) AS direction,
                   arg_max(value, severity) AS value, arg_max(expected, severity) AS expected,
                   1.0 AS window_hours
            FROM {SCORES} WHERE event_hour = $h AND is_anomaly
            GROUP BY metric, cohort""",
        {"h": hour},
    ).df()


def slot_health(con: duckdb.DuckDBPyConnection, series: list[tuple[str, str]], start, end
                ) -> pd.DataFrame:
    """Per (metric, cohort) of `series`, the fast lane's slots of the hours in (start, end]:
    how many were scored (a slot held back by the data-quality guard proves nothing either
    way, so it is not counted) and how many flagged."""
    columns = ["metric", "cohort", "scored", "flagged"]
    if not series or not _has_scores(con):
        return pd.DataFrame(columns=columns)
    return con.execute(
        f"""SELECT metric, cohort, count(*) AS scored, count(*) FILTER (WHERE is_anomaly) AS flagged
            FROM {SCORES}
            WHERE event_hour > $s AND event_hour <= $e
              AND list_contains($keys, metric || '|' || cohort)
              AND NOT starts_with(coalesce(reason, ''), $held)
            GROUP BY metric, cohort""",
        {"s": start, "e": end, "keys": [f"{m}|{c}" for m, c in series], "held": HELD_BACK},
    ).df()
