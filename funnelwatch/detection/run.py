"""Score a window of hours: load series, fit the ensemble on what came before, score, keep
the verdicts. A multi-hour window (a backfill) is scored one UTC day at a time, each day with
a model fitted only on the hours before it, so a backfill sees what a live run would have
seen, to the day."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime, timedelta

import duckdb
import pandas as pd

from funnelwatch.detection.series import load_series


@dataclass
class WindowResult:
    scored: pd.DataFrame
    skipped_hours: set[datetime] = field(default_factory=set)
    series: int = 0
    chunks: int = 0


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
) -> WindowResult:
    """`make_ensemble()` returns a fresh detectors.Ensemble (kept across chunks, so its Prophet
    cache and refit schedule carry over)."""
    ensemble = make_ensemble()
    frames, skipped, series = [], set(), set()
    chunks = _chunks(start, end)
    for chunk_start, chunk_end in chunks:
        history, current, skipped_here = load_series(con, chunk_start, chunk_end, history_days)
        skipped |= skipped_here
        if current.empty:
            continue
        series |= set(current["series_id"])
        scored = ensemble.fit(history).score(current) if not history.empty else None
        if scored is None:  # nothing before this window at all: every series is cold
            scored = pd.DataFrame(index=current.index)
            scored["is_anomaly"] = False
            scored["severity"] = 0.0
            scored["why"] = "cold start: no history"
        frames.append(current.join(scored.drop(columns=[c for c in scored.columns
                                                        if c in current.columns])))
    out = pd.concat(frames, ignore_index=True) if frames else pd.DataFrame()
    if not out.empty:
        out = out.rename(columns={"ts": "event_hour"})
        if "detectors_fired" in out.columns:
            out["detectors_fired"] = out["detectors_fired"].apply(
                lambda v: list(v) if isinstance(v, (list, tuple)) else [])
    return WindowResult(out, skipped, len(series), len(chunks))
