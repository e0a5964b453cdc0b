"""The detector contract: configure in ``__init__``, ``fit(history)``, ``score(current)``.

Frames are LONG: one row per (series_id, ts). Input columns:

* ``series_id`` (str), ``ts`` (tz-aware UTC or naive UTC datetime64), ``value`` (float, NaN ok);
* optionally ``numerator`` / ``denominator`` (float; denominator NaN for count metrics).

``score(current)`` returns a frame aligned to ``current`` (same index) with ``SCORE_COLUMNS``.
"""

from __future__ import annotations

from abc import ABC, abstractmethod

import numpy as np
import pandas as pd

REQUIRED_COLUMNS = ("series_id", "ts", "value")
OPTIONAL_COLUMNS = ("numerator", "denominator")
SCORE_COLUMNS = [
    "expected",
    "lower",
    "upper",
    "score",
    "p_value",
    "direction",
    "is_anomaly",
    "reason",
]


class NotFittedError(ValueError, AttributeError):
    """Raised when ``score`` is called before ``fit`` (same spirit as scikit-learn's)."""


def normalize_ts(ts: pd.Series) -> pd.Series:
    """Timestamps as naive UTC ``datetime64[ns]`` (tz-aware inputs are converted to UTC)."""
    if not pd.api.types.is_datetime64_any_dtype(ts):
        try:
            ts = pd.to_datetime(ts, utc=True)
        except (ValueError, TypeError) as exc:
            raise ValueError(f"column 'ts' is not a datetime column: {exc}") from exc
    if getattr(ts.dt, "tz", None) is not None:
        ts = ts.dt.tz_convert("UTC").dt.tz_localize(None)
    return ts.astype("datetime64[ns]")


def validate_frame(frame: pd.DataFrame, *, name: str = "frame", require_counts: bool = False):
    """Check and normalise a long input frame; returns a copy (same index).

    Raises ``ValueError`` for a non-DataFrame, missing columns, null series ids / timestamps and
    duplicate (series_id, ts) pairs.
    """
    if not isinstance(frame, pd.DataFrame):
        raise ValueError(  # noqa: TRY004 - one exception type for every input problem
            f"{name} must be a pandas DataFrame, got {type(frame).__name__}"
        )
    needed = list(REQUIRED_COLUMNS) + (list(OPTIONAL_COLUMNS) if require_counts else [])
    missing = [c for c in needed if c not in frame.columns]
    if missing:
        raise ValueError(
            f"{name} is missing required column(s) {missing}; has {list(frame.columns)}"
        )
    if not frame.index.is_unique:
        raise ValueError(f"{name} has a non-unique index; reset_index() first")
    out = frame.copy()
    if out["series_id"].isna().any():
        raise ValueError(f"{name} has null series_id values")
    out["series_id"] = out["series_id"].astype(str)
    out["ts"] = normalize_ts(out["ts"])
    if out["ts"].isna().any():
        raise ValueError(f"{name} has null timestamps in 'ts'")
    dup = out.duplicated(["series_id", "ts"], keep=False)
    if dup.any():
        first = out.loc[dup, ["series_id", "ts"]].iloc[0]
        raise ValueError(
            f"{name} has {int(dup.sum())} rows with duplicate (series_id, ts), "
            f"e.g. ({first['series_id']!r}, {first['ts']})"
        )
    out["value"] = pd.to_numeric(out["value"], errors="coerce").astype(float)
    for col in OPTIONAL_COLUMNS:
        if col in out.columns:
            out[col] = pd.to_numeric(out[col], errors="coerce").astype(float)
        else:
            out[col] = np.nan
    return out


def empty_scores(index: pd.Index) -> pd.DataFrame:
    """A score frame with neutral values (no anomaly), aligned to ``index``."""
    n = len(index)
    return pd.DataFrame(
        {
            "expected": np.full(n, np.nan),
            "lower": np.full(n, np.nan),
            "upper": np.full(n, np.nan),
            "score": np.zeros(n),
            "p_value": np.full(n, np.nan),
            "direction": np.full(n, "none", dtype=object),
            "is_anomaly": np.zeros(n, dtype=bool),
            "reason": np.full(n, "", dtype=object),
        },
        index=index,
    )


def direction_of(delta: np.ndarray) -> np.ndarray:
    """'up' / 'down' / 'none' from the sign of observed - expected (NaN -> 'none')."""
    delta = np.asarray(delta, dtype=float)
    out = np.full(delta.shape, "none", dtype=object)
    out[delta > 0] = "up"
    out[delta < 0] = "down"
    return out


class Detector(ABC):
    """Abstract detector: configure in ``__init__``, ``fit(history)``, ``score(current)``.

    Subclasses implement ``_fit`` and ``_score`` on validated frames; ``score`` returns a frame
    with exactly ``SCORE_COLUMNS`` (plus detector-specific extras) aligned to ``current``.
    """

    name: str = "detector"
    requires_counts: bool = False

    def __init__(self, sensitivity: float | str = "medium"):
        from detectors.config import thresholds

        self.sensitivity = sensitivity
        self.thresholds_ = thresholds(sensitivity)
        self.fitted_ = False

    # public API -------------------------------------------------------------------------
    def fit(self, history: pd.DataFrame) -> Detector:
        hist = validate_frame(history, name="history", require_counts=self.requires_counts)
        self._fit(hist)
        self.fitted_ = True
        return self

    def score(self, current: pd.DataFrame) -> pd.DataFrame:
        self._check_fitted()
        cur = validate_frame(current, name="current", require_counts=self.requires_counts)
        out = self._score(cur)
        missing = [c for c in SCORE_COLUMNS if c not in out.columns]
        assert not missing, f"{self.name} produced no {missing}"
        return out

    def fit_score(self, history: pd.DataFrame, current: pd.DataFrame) -> pd.DataFrame:
        return self.fit(history).score(current)

    def _check_fitted(self) -> None:
        if not getattr(self, "fitted_", False):
            raise NotFittedError(
                f"{type(self).__name__} is not fitted yet: call fit(history) before score(current)"
            )

    # to implement -------------------------------------------------------------------------
    @abstractmethod
    def _fit(self, history: pd.DataFrame) -> None: ...

    @abstractmethod
    def _score(self, current: pd.DataFrame) -> pd.DataFrame: ...
