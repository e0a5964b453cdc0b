"""Detection of one window split across workers by cohort shard, merged exactly.

Scoring is per series except for four things the ensemble computes over all series of a
chunk (a UTC day of the window, see run.py). A shard that saw only its own series would give
other answers, so the window is planned once over all series and every shard gets the plan:

1. the sequential test's false-alarm budget is split over the number of monitored series:
   the plan counts them and every shard's ensemble gets `n_series`;
2. Prophet is fitted for the `prophet_top_n` highest-volume series of all: the plan ranks them
   exactly as the ensemble does, and a shard's `prophet_top_n` is the number of those it holds
   (the ranking is a stable sort by mean volume, so the top of a subset is the subset of the
   top);
3. a count's holiday allowance reads the whole store's series at the same hour: every shard
   loads the store cohort (`all`) as context and drops its rows unless it owns them;
4. the multivariate detector fits one model on all cohorts pooled, and PyOD's ECOD scores a
   batch against the training set and the batch itself: the plan fits and scores it once over
   all cohorts and the shards use those verdicts.

(2) and the series count of (1) restate a few lines of `detectors/ensemble.py` and
`detectors/sequential.py` (the detectors take no such hook yet); the sharded-vs-single test
(tests/test_detection_shards.py) fails the day they drift apart.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime

import numpy as np
import pandas as pd

from funnelwatch.detection.series import load_series


@dataclass
class ChunkContext:
    """What every shard of one chunk shares: the series count, the Prophet series and the
    multivariate verdicts of all series."""

    n_series: int
    prophet_series: frozenset[str]
    multivariate: pd.DataFrame | None  # MultivariateDetector.score output; None: no model


@dataclass
class WindowPlan:
    """The window's chunks' contexts, in chunk order (run._chunks)."""

    contexts: list[ChunkContext] = field(default_factory=list)


class _PlannedVerdicts:
    """Stands in for a shard ensemble's multivariate detector: its verdicts are the plan's,
    computed over all cohorts (the ensemble only reads `_score(current)`'s flagged
    (cohort, ts) pairs)."""

    def __init__(self, verdicts: pd.DataFrame):
        self.verdicts = verdicts

    def _score(self, current: pd.DataFrame) -> pd.DataFrame:
        return self.verdicts


def _monitored_count(series_ids, directions: dict[str, str]) -> int:
    from detectors import config as cfg

    return sum(
        directions.get(cfg.split_series_id(s)[0], cfg.DEFAULT_DIRECTION) != "none"
        for s in series_ids)


def _prophet_ranking(history: pd.DataFrame, first_seen: pd.Series, warm_up_hours: float,
                     top_n: int) -> tuple[list[str], pd.Series]:
    """(the top_n series Prophet is fitted for, the updated first-active times), as
    Ensemble._fit ranks them."""
    active = np.where(history["denominator"].notna(), history["denominator"] > 0,
                      history["value"].abs() > 0)
    first_active = history[active].groupby("series_id")["ts"].min()
    first_seen = pd.concat([first_seen, first_active]).groupby(level=0).min()
    fs = history.groupby("series_id")["ts"].min()
    span_h = (history.groupby("series_id")["ts"].max() - first_seen.reindex(fs.index)) / (
        pd.Timedelta(hours=1))
    vol = history.assign(vol=np.where(history["denominator"].notna(), history["denominator"],
                                      history["value"].abs())).groupby("series_id")["vol"].mean()
    vol = vol[span_h.reindex(vol.index) >= warm_up_hours]
    return list(vol.sort_values(ascending=False, kind="stable").index[:top_n]), first_seen


def plan_window(con, chunks: list[tuple[datetime, datetime]], ensemble, history_days: int
                ) -> WindowPlan:
    """The contexts of `chunks` over all series. `ensemble` is a fresh detectors.Ensemble
    configured as the shards' (its settings are read, it is not fitted)."""
    from detectors.multivariate import MultivariateDetector

    plan = WindowPlan()
    first_seen = pd.Series(dtype="datetime64[ns]")
    for chunk_start, chunk_end in chunks:
        history, current, _ = load_series(con, chunk_start, chunk_end, history_days)
        if history.empty or current.empty:
            plan.contexts.append(ChunkContext(0, frozenset(), None))
            continue
        n_series = (int(ensemble.n_series) if ensemble.n_series is not None
                    else _monitored_count(history["series_id"].unique(), ensemble.directions))
        top: list[str] = []
        if ensemble.use_prophet and ensemble.prophet_top_n > 0:
            top, first_seen = _prophet_ranking(history, first_seen, ensemble.warm_up_hours,
                                               ensemble.prophet_top_n)
        verdicts = None
        if (ensemble.use_multivariate and ensemble.mode == "rate"
                and history["metric"].nunique() >= 2):
            detector = MultivariateDetector(ensemble.sensitivity).fit(history)
            verdicts = detector.score(current)
        plan.contexts.append(ChunkContext(n_series, frozenset(top), verdicts))
    return plan


def fit_and_score(ensemble, context: ChunkContext, history: pd.DataFrame,
                  current: pd.DataFrame) -> pd.DataFrame:
    """Fit a shard's ensemble on its series (history) and score them (current) with the
    window plan's shared parts."""
    ensemble.n_series = context.n_series
    if ensemble.use_prophet:
        ensemble.prophet_top_n = len(context.prophet_series & set(history["series_id"]))
    # The multivariate model is the plan's: not fitted on the shard's cohorts alone.
    multivariate = ensemble.use_multivariate
    ensemble.use_multivariate = False
    try:
        ensemble.fit(history)
    finally:
        ensemble.use_multivariate = multivariate
    ensemble.mv_ = (_PlannedVerdicts(context.multivariate)
                    if context.multivariate is not None else None)
    return ensemble.score(current)
