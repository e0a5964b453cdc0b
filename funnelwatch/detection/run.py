"""Score a window of hours: load series, fit the ensemble on what came before, score, keep
the verdicts. A multi-hour window (a backfill) is scored one UTC day at a time, each day with
a model fitted only on the hours before it, so a backfill sees what a live run would have
seen, to the day.

Prophet models outlive the run: stored ones (`detection.prophet_models`) are put into the
ensemble's Prophet cache before the first chunk, and the models (re)fitted here are saved back,
so an hourly run refits a series only when its model is older than the detector's
`refit_every` (7 days), not every hour."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime, timedelta

import duckdb
import pandas as pd

from funnelwatch.detection.cube_scan import scan_window
from funnelwatch.detection.model_store import load_prophet_models, save_prophet_models
from funnelwatch.detection.planned import (
    DQ_AFTERMATH,
    campaign_windows,
    suppress_after_data_quality,
    suppress_outside_campaigns,
)
from funnelwatch.detection.series import load_series
from funnelwatch.detection.shards import WindowPlan, fit_and_score, plan_window
from funnelwatch.quality.incidents import failed_hours


@dataclass
class Shard:
    """Score only shard `index` of `count` (by cohort), with the window plan every shard shares
    (funnelwatch/detection/shards.py). The result is the shard's raw verdicts: the merge
    (`merge_shards`) clears planned changes and feedback and saves the Prophet models once."""

    index: int
    count: int
    plan: WindowPlan


@dataclass
class WindowResult:
    scored: pd.DataFrame
    skipped_hours: set[datetime] = field(default_factory=set)
    series: int = 0
    chunks: int = 0
    prophet_fitted: int = 0  # Prophet fits done in this call (~0.2 s each)
    prophet_reused: int = 0  # series scored with a model fitted before this call (stored)
    prophet_saved: int = 0  # models written to detection.prophet_models
    planned_cleared: int = 0  # alerts cleared: campaign not running, hour after a DQ incident
    feedback_cleared: int = 0  # alerts cleared by incident feedback (funnelwatch.incidents.feedback)
    scan_alerts: int = 0  # alerts of the subset scan over cohorts that are not series
    models: pd.DataFrame | None = None  # a shard's refitted Prophet models, saved by the merge


def _chunks(start: datetime, end: datetime) -> list[tuple[datetime, datetime]]:
    if end - start <= timedelta(hours=1):
        return [(start, end)]
    out, cursor = [], start
    while cursor < end:
        nxt = min(end, (pd.Timestamp(cursor).floor("D") + pd.Timedelta(days=1)).to_pydatetime())
        out.append((cursor, nxt))
        cursor = nxt
    return out


def holidays_frame(con: duckdb.DuckDBPyConnection) -> pd.DataFrame | None:
    try:
        return con.execute(
            "SELECT holiday_date, holiday_name AS name FROM marts.dim_holidays ORDER BY holiday_date"
        ).df()
    except duckdb.CatalogException:
        return None


def score_window(
    con: duckdb.DuckDBPyConnection,
    start: datetime,
    end: datetime,
    make_ensemble,
    history_days: int = 28,
    persist_models: bool = True,
    shard: Shard | None = None,
    cube_scan: bool = True,
    cube_scan_false_alarms_per_day: float = 0.1,
) -> WindowResult:
    """`make_ensemble()` returns a fresh detectors.Ensemble (kept across chunks, so its Prophet
    cache and refit schedule carry over). With `persist_models`, the stored Prophet models of
    the window's series are imported into `ensemble.prophet_` before the first chunk and the
    models (re)fitted in this call are saved back (see model_store); a `shard` returns them in
    `models` instead (shards write no shared table; the merge saves them). With `cube_scan`,
    every cohort of up to three dimensions that is not a monitored series is scanned too
    (funnelwatch.detection.cube_scan) and its alerts join the scored rows (once per window:
    a shard leaves it to the merge)."""
    ensemble = make_ensemble()
    prophet = (
        ensemble.prophet_
        if getattr(ensemble, "use_prophet", False) and getattr(ensemble, "prophet_top_n", 0) > 0
        else None
    )
    frames, skipped, series = [], set(), set()
    before: dict = {}  # series_id -> the CachedModel object in the cache before any fit here
    reused: set[str] = set()
    fits_before = prophet.n_fits_ if prophet is not None else 0
    loaded = False
    chunks = _chunks(start, end)
    for chunk_index, (chunk_start, chunk_end) in enumerate(chunks):
        history, current, skipped_here = load_series(
            con, chunk_start, chunk_end, history_days,
            shard=None if shard is None else (shard.index, shard.count))
        skipped |= skipped_here
        if current.empty:
            continue
        owned = None
        if shard is not None:
            owned = current.pop("owned").to_numpy(dtype=bool)
            history = history.drop(columns="owned")
        series |= set(current["series_id"][owned] if owned is not None
                      else current["series_id"])
        if prophet is not None and not loaded and not history.empty:
            loaded = True
            if persist_models:
                ids = set(history["series_id"]) | set(current["series_id"])
                prophet.import_models(load_prophet_models(con, ids))
            before = dict(prophet.models_)
        if history.empty:
            scored = None
        elif shard is not None:
            scored = fit_and_score(ensemble, shard.plan.contexts[chunk_index], history, current)
        else:
            scored = ensemble.fit(history).score(current)
        if prophet is not None and scored is not None:
            for sid in getattr(ensemble, "prophet_series_", []):
                cached = prophet.models_.get(sid)
                if cached is not None and before.get(sid) is cached:
                    reused.add(sid)
        if scored is None:  # nothing before this window at all: every series is cold
            scored = pd.DataFrame(index=current.index)
            scored["is_anomaly"] = False
            scored["severity"] = 0.0
            scored["why"] = "cold start: no history"
        frame = current.join(scored.drop(columns=[c for c in scored.columns
                                                  if c in current.columns]))
        if owned is not None:  # context rows of the store cohort another shard owns
            frame = frame[owned].assign(chunk=chunk_index)
        frames.append(frame)
    saved = 0
    models = None
    if prophet is not None and loaded:
        refitted = [sid for sid, c in prophet.models_.items() if before.get(sid) is not c]
        if shard is not None:
            models = prophet.export_models([sid for sid in refitted if sid in series])
        elif persist_models and refitted:
            saved = save_prophet_models(con, prophet.export_models(refitted))
    out = pd.concat(frames, ignore_index=True) if frames else pd.DataFrame()
    result = WindowResult(
        out, skipped, len(series), len(chunks),
        prophet_fitted=(prophet.n_fits_ - fits_before) if prophet is not None else 0,
        prophet_reused=len(reused),
        prophet_saved=saved,
        models=models,
    )
    if shard is None:
        if cube_scan:
            add_cube_scan(con, start, end, result, cube_scan_false_alarms_per_day)
        finish_window(con, start, end, result)
    return result


def add_cube_scan(con: duckdb.DuckDBPyConnection, start: datetime, end: datetime,
                  result: WindowResult, false_alarms_per_day: float = 0.1) -> None:
    """Every other cohort of up to three dimensions, by the subset scan over the leaves: its
    alerts join the scored rows (in place; before planned changes and feedback clear them)."""
    out = result.scored
    if out.empty:
        return
    found = scan_window(con, start, end, set(out["cohort"].astype(str)),
                        false_alarms_per_day=false_alarms_per_day)
    if len(found):
        result.scan_alerts = len(found)
        result.scored = pd.concat([out, found], ignore_index=True)


def merge_shards(con: duckdb.DuckDBPyConnection, start: datetime, end: datetime,
                 shards: list[WindowResult], cube_scan: bool = True,
                 cube_scan_false_alarms_per_day: float = 0.1) -> WindowResult:
    """The shards' results as the single-process run gives them: the rows in its order
    (chunk, series, hour), the subset scan's alerts added once, planned changes and feedback
    cleared once over all of them, the refitted Prophet models saved once."""
    frames = [r.scored for r in shards if not r.scored.empty]
    out = pd.DataFrame()
    if frames:
        out = (pd.concat(frames, ignore_index=True)
               .sort_values(["chunk", "series_id", "ts"], kind="stable")
               .drop(columns="chunk").reset_index(drop=True))
    models = [r.models for r in shards if r.models is not None and len(r.models)]
    saved = save_prophet_models(con, pd.concat(models, ignore_index=True)) if models else 0
    result = WindowResult(
        out, set().union(*(r.skipped_hours for r in shards)),
        sum(r.series for r in shards), max((r.chunks for r in shards), default=0),
        prophet_fitted=sum(r.prophet_fitted for r in shards),
        prophet_reused=sum(r.prophet_reused for r in shards), prophet_saved=saved,
    )
    if cube_scan:
        add_cube_scan(con, start, end, result, cube_scan_false_alarms_per_day)
    finish_window(con, start, end, result)
    return result


def finish_window(con: duckdb.DuckDBPyConnection, start: datetime, end: datetime,
                  result: WindowResult) -> None:
    """Clear the alerts of planned changes, the data-quality aftermath and incident feedback,
    and shape the rows as `detection.anomalies` takes them (in place)."""
    out = result.scored
    planned_cleared = feedback_cleared = 0
    if not out.empty:
        planned_cleared = suppress_outside_campaigns(out, campaign_windows(con, start, end))
        planned_cleared += suppress_after_data_quality(
            out, failed_hours(con, start - DQ_AFTERMATH, end))
        # --- incident feedback (funnelwatch/incidents/feedback.py): false alarms raise their
        # series' threshold, 'expected' windows are suppressed. No incidents schema -> no rules.
        from funnelwatch.incidents.feedback import active_feedback, apply_feedback

        out, feedback_cleared = apply_feedback(out, active_feedback(con, start, end))
        # --- end incident feedback
        out = out.rename(columns={"ts": "event_hour"})
        if "detectors_fired" in out.columns:
            out["detectors_fired"] = out["detectors_fired"].apply(
                lambda v: list(v) if isinstance(v, (list, tuple)) else [])
    result.scored = out
    result.planned_cleared, result.feedback_cleared = planned_cleared, feedback_cleared


def plan_sharded_window(con: duckdb.DuckDBPyConnection, start: datetime, end: datetime,
                        make_ensemble, history_days: int = 28) -> WindowPlan:
    """What every shard of the window shares, over all series (shards.plan_window), for the
    same chunks score_window scores."""
    return plan_window(con, _chunks(start, end), make_ensemble(), history_days)
