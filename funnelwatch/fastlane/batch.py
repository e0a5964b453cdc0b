"""The fast lane over a range of loaded hours at once (evaluation, benchmarks).

Scores exactly what `score_slot` would have scored slot by slot (the detector never looks
ahead, tests/test_slot_detector.py), from raw.events, one day per detector call."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta

import pandas as pd

from funnelwatch.fastlane.config import FastLaneConfig
from funnelwatch.fastlane.lane import (
    day_cohorts,
    ensure_lane_tables,
    replace_slot_metrics,
    score_frame,
    series_frame,
    store_scores,
)
from funnelwatch.fastlane.metrics import cohort_frame, slot_metrics
from funnelwatch.fastlane.quality import DQ_AFTERMATH_HOURS
from funnelwatch.landing import as_utc_hour
from funnelwatch.quality.incidents import failed_hours
from funnelwatch.warehouse import EVENTS_TABLE, INGEST_LOG_TABLE


@dataclass
class RangeResult:
    days: int  # whole days scored
    slots_scored: int
    points_scored: int
    flagged: int
    alerting_days: int


def score_range(con, start: datetime, end: datetime, config: FastLaneConfig | None = None
                ) -> RangeResult:
    """Slot metrics from raw.events for [start - history, end) and the scores of every slot
    of the whole days in [start, end)."""
    config = config or FastLaneConfig()
    ensure_lane_tables(con)
    first_day = pd.Timestamp(as_utc_hour(start)).ceil("D").to_pydatetime()
    days = []
    day = first_day
    while day + timedelta(days=1) <= end:
        days.append(day)
        day += timedelta(days=1)
    cohorts_by_day = {d: cohort_frame(day_cohorts(con, d, config)) for d in days}
    every = pd.concat(cohorts_by_day.values()).drop_duplicates("cohort") if days else None
    result = RangeResult(len(days), 0, 0, 0, 0)
    if every is None:
        return result
    # Only loaded hours: zero-filled slots before the data began would be a baseline of 0.
    first_loaded = con.execute(f"SELECT min(event_hour) FROM {INGEST_LOG_TABLE}").fetchall()[0][0]
    if first_loaded is None:
        return result
    history_start = max(first_day - timedelta(days=config.history_days),
                        pd.Timestamp(first_loaded).to_pydatetime())
    metrics = slot_metrics(con, EVENTS_TABLE, {}, history_start, days[-1] + timedelta(days=1),
                           every, config.slot_minutes)
    replace_slot_metrics(con, metrics, history_start, days[-1] + timedelta(days=1), "raw")
    for day, cohorts in cohorts_by_day.items():
        day_end = day + timedelta(days=1)
        frame = series_frame(con, day - timedelta(days=config.history_days),
                             day_end - timedelta(minutes=config.slot_minutes),
                             cohorts["cohort"].tolist())
        failed = failed_hours(con, day - timedelta(hours=DQ_AFTERMATH_HOURS), day_end)
        scored = score_frame(frame, day, config, failed)
        store_scores(con, scored, day, day_end)
        result.slots_scored += scored["slot_start"].nunique()
        result.points_scored += len(scored)
        result.flagged += int(scored["is_anomaly"].sum())
        # a day with the baseline days the detector needs (the rest is its cold start)
        result.alerting_days += day >= history_start + timedelta(days=config.min_baseline_days)
    return result
