"""One slot of the fast lane: bring the slot metrics up to date, score the slot.

Where the numbers come from:

* hours the hourly pipeline has loaded (`raw.ingest_log`): from `raw.events`, recomputed when
  the hour was (re)loaded after they were last computed (late data);
* the running hour (and any earlier hour not loaded yet): straight from its landing files,
  read with the same contract projection and validity rules as ingest, so a bad row the
  hourly lane will quarantine does not count here either. Nothing is written to raw.

Cohorts are chosen once per UTC day from the week before it (the whole store plus the
largest device, OS, browser and country values by checkout starts, and the largest payment
providers by attempts), so a day's baseline and its scores are about the same cohorts.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from pathlib import Path

import pandas as pd

from funnelwatch.fastlane.config import (
    METRICS,
    PROVIDER_DIMENSION,
    SESSION_DIMENSIONS,
    FastLaneConfig,
)
from funnelwatch.fastlane.metrics import cohort_frame, slot_metrics
from funnelwatch.fastlane.quality import DQ_AFTERMATH_HOURS, HELD_BACK, hold_back
from funnelwatch.fastlane.store import SCHEMA, SCORES, SLOT_METRICS, ensure_fastlane_schema
from funnelwatch.ingest.loader import FILE_ERRORS, LandingFileError, culprit, landing_rows
from funnelwatch.landing import as_utc_hour, event_files
from funnelwatch.quality.incidents import failed_hours
from funnelwatch.warehouse import EVENTS_TABLE, INGEST_LOG_TABLE, ensure_raw_schema

COHORTS = f"{SCHEMA}.cohorts"


@dataclass
class SlotResult:
    slot_start: datetime
    cohorts: list[str] = field(default_factory=list)
    scored: pd.DataFrame = field(default_factory=pd.DataFrame)
    raw_hours_refreshed: int = 0
    landing_files: int = 0
    # unreadable landing files left out of the slot (ingest sets them aside the same way)
    files_set_aside: list[str] = field(default_factory=list)

    @property
    def flagged(self) -> pd.DataFrame:
        if self.scored.empty:
            return self.scored
        return self.scored[self.scored["is_anomaly"]]

    @property
    def held_back(self) -> pd.DataFrame:
        """Flags the data-quality guard held back (funnelwatch/fastlane/quality.py)."""
        if self.scored.empty:
            return self.scored
        return self.scored[self.scored["reason"].fillna("").str.startswith(HELD_BACK)]


def slot_start_of(value: datetime | str | pd.Timestamp, slot_minutes: int = 5) -> datetime:
    ts = pd.Timestamp(value)
    ts = ts.tz_localize("UTC") if ts.tzinfo is None else ts.tz_convert("UTC")
    return ts.floor(f"{slot_minutes}min").to_pydatetime()


def day_cohorts(con, day: datetime, config: FastLaneConfig) -> list[tuple[str, str]]:
    """The day's cohorts, chosen on first use from the `cohort_days` before the day."""
    rows = con.execute(f"SELECT dimension, value FROM {COHORTS} WHERE day = $d ORDER BY rank",
                       {"d": day}).fetchall()
    if rows:
        return [(d, v) for d, v in rows if d != "all"]
    since = day - timedelta(days=config.cohort_days)
    shares = []
    for dimension, event_type, counted in (
        *((d, "checkout_start", "DISTINCT session_id") for d in SESSION_DIMENSIONS),
        (PROVIDER_DIMENSION, "payment_attempt", "*"),
    ):
        # the dimension is from our allow-list (config), not user input
        shares += con.execute(
            f"""SELECT $dim, {dimension}, count({counted}) / sum(count({counted})) OVER ()
                FROM {EVENTS_TABLE}
                WHERE event_time >= $since AND event_time < $day AND event_type = $type
                GROUP BY {dimension}""",
            {"dim": dimension, "since": since, "day": day, "type": event_type},
        ).fetchall()
    chosen = sorted(((share, d, v) for d, v, share in shares
                     if v is not None and share >= config.min_share), reverse=True)
    chosen = chosen[: config.max_cohorts]
    con.executemany(f"INSERT INTO {COHORTS} VALUES (?, ?, ?, ?)",
                    [(day, "all", "all", 0)] + [(day, d, v, i + 1)
                                                for i, (_, d, v) in enumerate(chosen)])
    return [(d, v) for _, d, v in chosen]


def _stale_raw_hours(con, start: datetime, end: datetime, cohorts: list[str]) -> list[datetime]:
    """Loaded hours in [start, end) whose slot metrics from raw are missing, incomplete for
    the day's cohorts, or older than the hour's latest load."""
    rows = con.execute(
        f"""WITH loaded AS (
                SELECT event_hour, max(ingested_at) AS ingested_at FROM {INGEST_LOG_TABLE}
                WHERE event_hour >= $start AND event_hour < $end GROUP BY event_hour),
            computed AS (
                SELECT date_trunc('hour', slot_start) AS event_hour,
                       min(computed_at) AS computed_at, count(DISTINCT cohort) AS cohorts
                FROM {SLOT_METRICS}
                WHERE source = 'raw' AND slot_start >= $start AND slot_start < $end
                  AND list_contains($cohorts, cohort)
                GROUP BY ALL)
            SELECT l.event_hour FROM loaded l LEFT JOIN computed c USING (event_hour)
            WHERE c.event_hour IS NULL OR c.cohorts < $n OR c.computed_at < l.ingested_at
            ORDER BY 1""",
        {"start": start, "end": end, "cohorts": cohorts, "n": len(cohorts)},
    ).fetchall()
    return [pd.Timestamp(r[0]).tz_convert("UTC").to_pydatetime() for r in rows]


def _runs(hours: list[datetime]) -> list[tuple[datetime, datetime]]:
    """Contiguous runs of hours as [start, end) windows."""
    runs: list[list[datetime]] = []
    for hour in hours:
        if runs and hour - runs[-1][1] == timedelta(hours=1):
            runs[-1][1] = hour
        else:
            runs.append([hour, hour])
    return [(a, b + timedelta(hours=1)) for a, b in runs]


def replace_slot_metrics(con, frame: pd.DataFrame, start: datetime, end: datetime,
                         source: str) -> None:
    con.execute(f"DELETE FROM {SLOT_METRICS} WHERE slot_start >= $s AND slot_start < $e",
                {"s": start, "e": end})
    if frame.empty:
        return
    rows = frame.assign(source=source, computed_at=pd.Timestamp.now(tz="UTC"))
    rows["computed_at"] = rows["computed_at"].astype("datetime64[us, UTC]")
    con.register("_fastlane_rows", rows)
    try:
        con.execute(f"""INSERT INTO {SLOT_METRICS} SELECT slot_start, metric, cohort, numerator,
                          denominator, value, source, computed_at FROM _fastlane_rows""")
    finally:
        con.unregister("_fastlane_rows")


def refresh_slot_metrics(con, landing: Path | str, slot_start: datetime,
                         config: FastLaneConfig) -> SlotResult:
    """Make `fastlane.slot_metrics` current for the slot's history and the slot itself."""
    result = SlotResult(slot_start)
    slot = timedelta(minutes=config.slot_minutes)
    day = slot_start.replace(hour=0, minute=0, second=0, microsecond=0)
    cohorts = cohort_frame(day_cohorts(con, day, config))
    result.cohorts = cohorts["cohort"].tolist()
    hour = as_utc_hour(slot_start)
    history_start = hour - timedelta(days=config.history_days)
    slot_end = slot_start + slot
    stale = _stale_raw_hours(con, history_start, hour + timedelta(hours=1), result.cohorts)
    for start, end in _runs(stale):
        frame = slot_metrics(con, EVENTS_TABLE, {}, start, end, cohorts, config.slot_minutes)
        replace_slot_metrics(con, frame, start, end, "raw")
        result.raw_hours_refreshed += int((end - start) / timedelta(hours=1))
    # The hours the longest window reaches into that are not loaded yet: from landing.
    window_start = slot_end - max(config.windows) * slot
    loaded = {pd.Timestamp(r[0]).to_pydatetime() for r in con.execute(
        f"SELECT DISTINCT event_hour FROM {INGEST_LOG_TABLE} WHERE event_hour >= $s",
        {"s": as_utc_hour(window_start)}).fetchall()}
    for h in sorted({as_utc_hour(window_start), hour}):
        if h in loaded:
            continue
        files = event_files(landing, h)
        end = min(h + timedelta(hours=1), slot_end)
        frame = _landing_slot_metrics(con, files, h, end, cohorts, config, result)
        result.landing_files += len(files)
        replace_slot_metrics(con, frame, h, end, "landing")
    return result


def _landing_slot_metrics(con, files: list[Path], hour: datetime, end: datetime,
                          cohorts: pd.DataFrame, config: FastLaneConfig,
                          result: SlotResult) -> pd.DataFrame:
    """Slot metrics of [hour, end) from the hour's landing files, leaving out (and naming in
    `result.files_set_aside`) any file that cannot be read, as ingest sets it aside. `files` is
    trimmed to the files read. The files are read on a cursor of its own: a read error there
    must not abort the caller's transaction."""
    reader = con.cursor()
    try:
        reader.execute("SET TimeZone = 'UTC'")
        while True:
            try:
                rows = landing_rows(reader, files)
                params = {**rows.params, "hour_start": hour, "hour_end": hour + timedelta(hours=1)}
                try:
                    return slot_metrics(reader, rows.sql, params, hour, end, cohorts,
                                        config.slot_minutes, valid_only=True)
                except FILE_ERRORS as exc:  # unreadable past its footer: find which file
                    raise culprit(reader, files, exc) from exc
            except LandingFileError as bad:
                if bad.path not in files:
                    raise
                files.remove(bad.path)
                result.files_set_aside.append(str(bad))
    finally:
        reader.close()


def series_frame(con, start: datetime, end: datetime, cohorts: list[str]) -> pd.DataFrame:
    """Slot metrics of [start, end] (both inclusive) as the detectors' long frame."""
    frame = con.execute(
        f"""SELECT metric || '|' || cohort AS series_id, slot_start AS ts, metric, cohort,
                   numerator, denominator, value
            FROM {SLOT_METRICS}
            WHERE slot_start >= $s AND slot_start <= $t AND list_contains($c, cohort)
            ORDER BY series_id, ts""",
        {"s": start, "t": end, "c": cohorts},
    ).df()
    frame["ts"] = pd.to_datetime(frame["ts"], utc=True)
    return frame


def score_frame(frame: pd.DataFrame, first_slot: datetime, config: FastLaneConfig,
                failed_hours: Iterable = ()) -> pd.DataFrame:
    """Score the slots of `frame` from `first_slot` on, fitted on the slots before it, then
    hold back the flags a data fault explains (funnelwatch/fastlane/quality.py; `failed_hours`:
    hours with an open data-quality incident). Scoring many slots at once equals scoring them
    one by one (no look-ahead)."""
    first = pd.Timestamp(first_slot)
    watched = frame[frame["metric"].isin(METRICS)]
    current = watched[watched["ts"] >= first]
    scores = config.detector().fit(watched[watched["ts"] < first]).score(current)
    scored = pd.concat([current[["ts", "metric", "cohort", "value"]], scores], axis=1)
    scored = scored.rename(columns={"ts": "slot_start"}).reset_index(drop=True)
    scored.insert(1, "event_hour", scored["slot_start"].dt.floor("h"))
    scored["scored_at"] = pd.Timestamp.now(tz="UTC")
    for column in ("slot_start", "event_hour", "scored_at"):
        scored[column] = pd.to_datetime(scored[column], utc=True).astype("datetime64[us, UTC]")
    hold_back(scored, frame[frame["ts"] >= first - pd.Timedelta(
        minutes=config.slot_minutes * max(config.windows))], config, failed_hours)
    return scored


def store_scores(con, scored: pd.DataFrame, start: datetime, end: datetime) -> None:
    """Replace the scores of slots in [start, end) with `scored`."""
    con.execute(f"DELETE FROM {SCORES} WHERE slot_start >= $s AND slot_start < $e",
                {"s": start, "e": end})
    if scored.empty:
        return
    con.register("_fastlane_scores", scored)
    try:
        con.execute(f"""INSERT INTO {SCORES} SELECT slot_start, event_hour, metric, cohort,
                          value, expected, lower, upper, p_value, severity, direction,
                          is_anomaly, window_slots, window_observed, window_expected,
                          baseline_days, reason, scored_at FROM _fastlane_scores""")
    finally:
        con.unregister("_fastlane_scores")


def ensure_lane_tables(con) -> None:
    con.execute("SET TimeZone = 'UTC'")  # slots and hours are UTC (date_trunc follows it)
    ensure_fastlane_schema(con)
    con.execute(f"""CREATE TABLE IF NOT EXISTS {COHORTS} (
                      day TIMESTAMPTZ, dimension VARCHAR, value VARCHAR, rank INTEGER)""")


def score_slot(con, landing: Path | str, slot_start: datetime | str,
               config: FastLaneConfig | None = None) -> SlotResult:
    """Refresh the slot metrics and score the slot (`fastlane.scores`, replaced per slot).
    One transaction."""
    config = config or FastLaneConfig()
    slot_start = slot_start_of(slot_start, config.slot_minutes)
    ensure_raw_schema(con)
    ensure_lane_tables(con)
    con.execute("BEGIN TRANSACTION")
    try:
        result = refresh_slot_metrics(con, landing, slot_start, config)
        frame = series_frame(con, slot_start - timedelta(days=config.history_days), slot_start,
                             result.cohorts)
        hour = as_utc_hour(slot_start)
        failed = failed_hours(con, hour - timedelta(hours=DQ_AFTERMATH_HOURS),
                              hour + timedelta(hours=1))
        scored = score_frame(frame, slot_start, config, failed)
        store_scores(con, scored, slot_start, slot_start + timedelta(minutes=config.slot_minutes))
        con.execute("COMMIT")
    except BaseException:
        con.execute("ROLLBACK")
        raise
    result.scored = scored
    return result


def process_slot(con, landing: Path | str, slot_start: datetime | str,
                 config: FastLaneConfig | None = None, policy=None, analyse=None,
                 localise=None, closures=None):
    """Score the slot, then group the hour's flagged points (hourly and fast lane) into
    incidents through the same lifecycle as the hourly lane: (SlotResult, HourResult)."""
    from funnelwatch.incidents.lifecycle import process_hour

    result = score_slot(con, landing, slot_start, config)
    hour_result = process_hour(con, as_utc_hour(result.slot_start), policy, analyse, localise,
                               closures)
    return result, hour_result
