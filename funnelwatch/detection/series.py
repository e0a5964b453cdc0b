"""Cohort-metric series for the detectors, read from `marts.fct_cohort_metrics_hourly`.

A series is one (metric, cohort); `series_id` is `metric|cohort`. Hours a
data-quality incident covers are left out of both history and the scored window: a broken hour
must neither page anyone nor teach the detectors that broken is normal.
"""

from __future__ import annotations

from datetime import datetime, timedelta

import duckdb
import pandas as pd

from detectors.config import STORE_COHORT  # every detection shard reads it as context
from funnelwatch.quality.incidents import ensure_quality_schema, failed_hours

METRICS_TABLE = "marts.fct_cohort_metrics_hourly"
SEPARATOR = "|"  # as detectors.config.make_series_id


def load_series(
    con: duckdb.DuckDBPyConnection,
    start: datetime,
    end: datetime,
    history_days: int = 28,
    shard: tuple[int, int] | None = None,
) -> tuple[pd.DataFrame, pd.DataFrame, set[datetime]]:
    """(history, current, skipped_hours): the long frames the detectors take.

    history: [start - history_days, start); current: [start, end). Both have series_id, ts
    (UTC), metric, cohort, cohort_dimensions, value, numerator, denominator.

    With `shard` = (i, n), only the cohorts of shard i of n (by DuckDB's hash of the cohort)
    and, as context for every shard, the whole store's series (`cohort = 'all'`); the frames
    then have a boolean `owned` column, False on context rows of another shard."""
    ensure_quality_schema(con)
    params = {"history_start": start - timedelta(days=history_days), "end": end}
    owned, in_shard = "", ""
    if shard is not None:
        owned = ", hash(m.cohort) % $shards = $shard AS owned"
        in_shard = "AND (hash(m.cohort) % $shards = $shard OR m.cohort = $store)"
        params.update(shard=shard[0], shards=shard[1], store=STORE_COHORT)
    frame = con.execute(
        f"""SELECT m.metric || '{SEPARATOR}' || m.cohort AS series_id,
                   m.event_hour AS ts, m.metric, m.cohort, m.cohort_dimensions,
                   CAST(m.value AS DOUBLE) AS value,
                   CAST(m.numerator AS DOUBLE) AS numerator,
                   CAST(m.denominator AS DOUBLE) AS denominator{owned}
            FROM {METRICS_TABLE} AS m
            WHERE m.event_hour >= $history_start AND m.event_hour < $end
              AND m.event_hour NOT IN (SELECT event_hour FROM quality.incident_hours)
              {in_shard}
            ORDER BY series_id, ts""",
        params,
    ).df()
    skipped = failed_hours(con, start, end)
    frame["ts"] = pd.to_datetime(frame["ts"], utc=True).astype("datetime64[us, UTC]")
    is_current = frame["ts"] >= pd.Timestamp(start)
    return (
        frame[~is_current].reset_index(drop=True),
        frame[is_current].reset_index(drop=True),
        skipped,
    )
