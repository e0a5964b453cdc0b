"""Causal post-processing of a univariate severity stream (used by ``bench/nab.py``).

A plain value series has no volume test to calibrate its alerts, and its detectors keep firing
while a deviation persists. Two causal filters of one series' score stream (each output point uses
only that point and earlier ones), the way an alerting layer would treat the ensemble's severity:

* :func:`series_relative`: weight a score by its rank among the series' own last ``window``
  scores, ``rank ** power`` (rank in 0..1): a score that is routine for this series (a noisy
  series deviates often) is damped, a score in the top ~1 % of its recent history is kept. A soft
  per-series alert budget.
* :func:`onset_only`: alert de-duplication: keep a score only if it exceeds every score of the
  previous ``window`` points, so a persisting deviation reports its onset, not every point.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

SERIES_RELATIVE_WINDOW = 8640  # points (30 days of 5-minute data)
SERIES_RELATIVE_POWER = 64  # rank 0.99 -> 0.53, 0.995 -> 0.73, 0.999 -> 0.94
ONSET_WINDOW = 288  # points (one day of 5-minute data)


def series_relative(
    scores, window: int = SERIES_RELATIVE_WINDOW, power: float = SERIES_RELATIVE_POWER
) -> np.ndarray:
    """score x rank ** power, rank = the score's percentile rank (ties averaged) among the last
    ``window`` scores including itself; 0 until 100 scores exist. Causal."""
    s = pd.Series(np.asarray(scores, dtype=float)).fillna(0.0)
    rank = s.rolling(window, min_periods=100).rank(pct=True).fillna(0.0).to_numpy()
    return s.to_numpy() * rank**power


def onset_only(scores, window: int = ONSET_WINDOW) -> np.ndarray:
    """Causal alert de-duplication: keep a point's score only if it exceeds every score of the
    previous ``window`` points (so a persisting deviation reports its onset, not every point)."""
    s = pd.Series(np.asarray(scores, dtype=float))
    prev = s.shift(1).rolling(window, min_periods=1).max().fillna(0.0).to_numpy()
    return np.where(s.to_numpy() > prev, s.to_numpy(), 0.0)
