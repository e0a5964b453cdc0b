"""Small helpers: UTC validation, JSON-friendly formatting, z-scores against a baseline."""

from __future__ import annotations

import math
from datetime import UTC, datetime

import pandas as pd

from funnelwatch.incidents.rca.constants import BASELINE_ERROR


def _utc(ts: datetime, name: str) -> datetime:
    if not isinstance(ts, datetime):
        raise ValueError(f"{name} must be a datetime, got {type(ts).__name__}")  # noqa: TRY004
    if ts.tzinfo is None:
        raise ValueError(f"{name} must be timezone-aware (UTC), got naive {ts.isoformat()}")
    return ts.astimezone(UTC)


def _iso(ts) -> str | None:
    if ts is None or (isinstance(ts, float) and math.isnan(ts)) or ts is pd.NaT:
        return None
    return pd.Timestamp(ts).tz_convert("UTC").isoformat()


def _f(x, nd: int = 6):
    """Float for JSON (None for NaN / inf)."""
    if x is None:
        return None
    x = float(x)
    if not math.isfinite(x):
        return None
    return round(x, nd)


def _relative(onset: datetime, at) -> str:
    minutes = (onset - pd.Timestamp(at).to_pydatetime()).total_seconds() / 60.0
    if minutes >= 0:
        return f"{minutes:.0f} min before the onset ({onset:%H:%M} UTC)"
    if minutes > -60:
        return f"in the first hour of the loss ({onset:%H:%M} UTC)"
    return f"{-minutes:.0f} min after the onset ({onset:%H:%M} UTC)"


def _rate_z(n: float, d: float, r: float) -> float:
    """z of ``n`` successes out of ``d`` against an expected rate ``r`` (binomial + 5 % baseline)."""
    e = d * r
    var = d * r * (1 - r) + (BASELINE_ERROR * e) ** 2 + 1.0
    return (n - e) / math.sqrt(var)


def _count_z(actual: float, expected: float) -> float:
    var = expected + (BASELINE_ERROR * expected) ** 2 + 1.0
    return (actual - expected) / math.sqrt(var)
