"""The `detection.anomalies` table: every scored point of every monitored series per hour,
with the ensemble's verdict. Incidents and alerts (next layer) read the rows flagged
`is_anomaly`; analysts and the UI read the rest for context."""

from __future__ import annotations

from datetime import datetime

import duckdb
import pandas as pd

from funnelwatch.warehouse import has_table

SCHEMA = "detection"
TABLE = f"{SCHEMA}.anomalies"
COLUMNS = {
    "event_hour": "TIMESTAMPTZ",
    "metric": "VARCHAR",
    "cohort": "VARCHAR",
    "cohort_dimensions": "VARCHAR",
    "value": "DOUBLE",
    "numerator": "DOUBLE",
    "denominator": "DOUBLE",
    "expected": "DOUBLE",
    "lower": "DOUBLE",
    "upper": "DOUBLE",
    "score": "DOUBLE",
    "p_value": "DOUBLE",
    "severity": "DOUBLE",
    "direction": "VARCHAR",
    "is_anomaly": "BOOLEAN",
    "detectors_fired": "VARCHAR[]",
    "why": "VARCHAR",
    "scored_at": "TIMESTAMPTZ",
    # the hours of evidence behind a verdict (the sequential test's or the scan's window): a
    # drop flagged after six hours pooled is localised and analysed over those six hours
    "window_hours": "DOUBLE",
}


def ensure_detection_schema(con: duckdb.DuckDBPyConnection) -> None:
    con.execute(f"CREATE SCHEMA IF NOT EXISTS {SCHEMA}")
    cols = ", ".join(f'"{n}" {t}' for n, t in COLUMNS.items())
    con.execute(f"CREATE TABLE IF NOT EXISTS {TABLE} ({cols})")
    # a warehouse scored before a column existed gets it (NULL for its old rows)
    for name, sql_type in COLUMNS.items():
        con.execute(f'ALTER TABLE {TABLE} ADD COLUMN IF NOT EXISTS "{name}" {sql_type}')


def replace_window(
    con: duckdb.DuckDBPyConnection, start: datetime, end: datetime, scored: pd.DataFrame
) -> int:
    """Replace the window's rows with `scored` in one transaction (re-runs are idempotent)."""
    ensure_detection_schema(con)
    frame = scored.copy()
    frame["scored_at"] = pd.Timestamp.now(tz="UTC")
    for column in COLUMNS:
        if column not in frame.columns:
            frame[column] = None
    frame = frame[list(COLUMNS)]
    frame["event_hour"] = pd.to_datetime(frame["event_hour"], utc=True).astype(
        "datetime64[us, UTC]"
    )
    frame["scored_at"] = frame["scored_at"].astype("datetime64[us, UTC]")
    # Explicit types: DuckDB infers an object column's type from a sample of its first rows,
    # and a column whose sample is all missing (cold-start rows have no p-value, no reasons)
    # is typed NULL, after which the first real value fails to cast. So: plain objects with
    # None for missing, and the whole frame analysed.
    for column, sql_type in COLUMNS.items():
        if sql_type == "VARCHAR":
            values = frame[column].astype(object)
            frame[column] = values.where(values.notna(), None).map(
                lambda v: v if v is None else str(v))
        elif sql_type == "DOUBLE":
            frame[column] = pd.to_numeric(frame[column], errors="coerce").astype("float64")
        elif sql_type == "BOOLEAN":
            frame[column] = frame[column].astype("boolean")
        elif sql_type == "VARCHAR[]":
            frame[column] = [list(v) if isinstance(v, (list, tuple)) else [] for v in frame[column]]
    con.execute("BEGIN TRANSACTION")
    try:
        con.execute(
            f"DELETE FROM {TABLE} WHERE event_hour >= $s AND event_hour < $e",
            {"s": start, "e": end},
        )
        con.execute(f"SET pandas_analyze_sample = {max(len(frame), 1000):d}")
        con.register("_scored", frame)
        con.execute(f"INSERT INTO {TABLE} SELECT * FROM _scored")
        con.unregister("_scored")
        con.execute("COMMIT")
    except BaseException:
        con.execute("ROLLBACK")
        raise
    return len(frame)


def _has_table(con: duckdb.DuckDBPyConnection) -> bool:
    return has_table(con, TABLE)


def _has_window(con: duckdb.DuckDBPyConnection) -> bool:
    return bool(con.execute(
        "SELECT count(*) FROM information_schema.columns WHERE table_schema = $s "
        "AND table_name = $t AND column_name = 'window_hours'",
        {"s": SCHEMA, "t": TABLE.split(".")[1]}).fetchone()[0])


POINT_COLUMNS = ["metric", "cohort", "severity", "direction", "value", "expected",
                 "window_hours"]


def flagged_points(con: duckdb.DuckDBPyConnection, hour: datetime) -> pd.DataFrame:
    """The hour's flagged points, one row per series (incidents read these). Empty, with the
    columns, before detection ever ran: the reader never creates detection's schema."""
    if not _has_table(con):
        return pd.DataFrame(columns=POINT_COLUMNS)
    # a table scored before verdicts kept their window: one hour of evidence each
    window = "coalesce(window_hours, 1)" if _has_window(con) else "1.0"
    return con.execute(
        f"""SELECT metric, cohort, severity, direction, value, expected,
                   {window} AS window_hours FROM {TABLE}
            WHERE event_hour = $h AND is_anomaly""",
        {"h": hour},
    ).df()


def series_health(con: duckdb.DuckDBPyConnection, series: list[tuple[str, str]],
                  start: datetime, end: datetime) -> pd.DataFrame:
    """Per (metric, cohort) of `series`, over the hours in (start, end]: how many were scored,
    how many of those were unflagged and inside the expected band (`good`), how many flagged.
    Series never scored in the window have no row."""
    columns = ["metric", "cohort", "scored", "good", "flagged"]
    if not series or not _has_table(con):
        return pd.DataFrame(columns=columns)
    return con.execute(
        f"""SELECT metric, cohort, count(*) AS scored,
                   count(*) FILTER (WHERE NOT coalesce(is_anomaly, false)
                                    AND (lower IS NULL OR value >= lower)
                                    AND (upper IS NULL OR value <= upper)) AS good,
                   count(*) FILTER (WHERE is_anomaly) AS flagged
            FROM {TABLE}
            WHERE event_hour > $s AND event_hour <= $e
              AND list_contains($keys, metric || '|' || cohort)
            GROUP BY metric, cohort""",
        {"s": start, "e": end, "keys": [f"{m}|{c}" for m, c in series]},
    ).df()


def evidence_start(con: duckdb.DuckDBPyConnection, points: list[tuple[str, str, datetime]]
                   ) -> datetime | None:
    """The earliest hour of evidence behind flagged `points` ((metric, cohort, event_hour)):
    min(event_hour - (window_hours - 1) h); None when none of them is stored flagged."""
    if not points or not _has_table(con) or not _has_window(con):
        return None
    row = con.execute(
        f"""WITH p AS (SELECT unnest($metrics) AS metric, unnest($cohorts) AS cohort,
                              unnest($hours::TIMESTAMPTZ[]) AS event_hour)
            SELECT min(a.event_hour
                       - to_hours(CAST(coalesce(a.window_hours, 1) - 1 AS BIGINT)))
            FROM {TABLE} AS a JOIN p USING (metric, cohort, event_hour)
            WHERE a.is_anomaly""",
        {"metrics": [m for m, _, _ in points], "cohorts": [c for _, c, _ in points],
         "hours": [h for _, _, h in points]},
    ).fetchone()
    return None if row is None or row[0] is None else row[0]
