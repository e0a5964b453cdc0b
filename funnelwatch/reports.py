"""Small read-only views of the marts used by the CLI summary and Dagster metadata."""

from __future__ import annotations

from datetime import datetime

import duckdb
import pandas as pd

_FUNNEL_SQL = """
SELECT event_hour,
       sum(sessions) AS sessions,
       sum(product_view_sessions) AS product_views,
       sum(add_to_cart_sessions) AS add_to_carts,
       sum(checkout_start_sessions) AS checkouts,
       sum(purchase_sessions) AS purchases,
       round(sum(revenue), 2) AS revenue,
       round(sum(purchase_sessions) / nullif(sum(checkout_start_sessions), 0), 3)
           AS checkout_conversion,
       round(sum(purchase_sessions) / nullif(sum(sessions), 0), 4) AS session_conversion
FROM {table}
WHERE event_hour >= $since AND event_hour < $until
GROUP BY event_hour
ORDER BY event_hour
"""


def hourly_funnel(
    con: duckdb.DuckDBPyConnection,
    until: datetime | None = None,
    hours: int = 24,
    table: str = "marts.fct_funnel_hourly",
) -> pd.DataFrame:
    """The store-wide funnel per hour for the `hours` before `until` (default: the last
    loaded hour). `table` is a fixed name chosen by the caller, never user input."""
    if until is None:
        last = con.execute(f"SELECT max(event_hour) FROM {table}").fetchone()[0]
        if last is None:
            return pd.DataFrame()
        until = pd.Timestamp(last) + pd.Timedelta(hours=1)
    since = pd.Timestamp(until) - pd.Timedelta(hours=hours)
    frame = con.execute(
        _FUNNEL_SQL.format(table=table), {"since": since.to_pydatetime(), "until": until}
    ).df()
    if not frame.empty:
        frame["event_hour"] = pd.to_datetime(frame["event_hour"], utc=True).dt.strftime(
            "%Y-%m-%d %H:00"
        )
    return frame


def funnel_markdown(frame: pd.DataFrame) -> str:
    if frame.empty:
        return "_no funnel rows yet_"
    return frame.to_markdown(index=False)


_TOP_ANOMALIES_SQL = """
SELECT strftime(event_hour, '%Y-%m-%d %H:00') AS hour, metric, cohort,
       round(value, 4) AS value, round(expected, 4) AS expected,
       round(severity) AS severity, direction
FROM detection.anomalies
WHERE is_anomaly AND event_hour >= $since
ORDER BY severity DESC, event_hour
LIMIT $limit
"""


def top_anomalies(con: duckdb.DuckDBPyConnection, hours: int = 24, limit: int = 10) -> pd.DataFrame:
    """The most severe anomalies of the last `hours` scored hours (empty before detection ran)."""
    try:
        last = con.execute("SELECT max(event_hour) FROM detection.anomalies").fetchone()[0]
    except duckdb.CatalogException:
        return pd.DataFrame()
    if last is None:
        return pd.DataFrame()
    since = pd.Timestamp(last) - pd.Timedelta(hours=hours - 1)
    return con.execute(_TOP_ANOMALIES_SQL, {"since": since.to_pydatetime(), "limit": limit}).df()
