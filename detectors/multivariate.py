"""Multivariate detector (PyOD): per cohort, the vector of its funnel step rates and log volumes at
an hour, to catch breaks that no single metric shows (several metrics each moving a little).

* Pivot: one row per (cohort, ts), one column per metric; rates as they are, count metrics as
  log1p(count). The metric and cohort come from ``series_id = "metric|cohort"`` (or ``metric`` /
  ``cohort`` columns when the frame has them).
* Per-cohort standardisation from the history: (x - median) / (1.4826 MAD) per (cohort, metric),
  clipped to +-``clip``; missing values (rate with denominator 0) -> 0. This puts small and large
  cohorts on one scale, so one model is fitted on the history vectors of ALL cohorts pooled.
* Model: ECOD (default; deterministic, no random state, linear cost) or IForest
  (``method='iforest'``, ``random_state`` fixed). At most ``max_train`` training rows (a fixed-seed
  subsample beyond that).
* Score scale: the PyOD decision score (ECOD: sum over features of -log tail probability).
  p_value: empirical, (1 + #training scores >= score) / (1 + N). is_anomaly: score above the
  (1 - mv_alpha) quantile of the training scores (the training maximum when N < 1 / mv_alpha), the
  threshold reported in ``upper``.

Output: NOT aligned to the input rows (its grain is (cohort, ts)): a frame with ``series_id`` =
``"__multivariate__|<cohort>"``, ``cohort``, ``ts`` and the score columns; direction is 'none' and
``reason`` names the features that deviate most.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from detectors.base import Detector, validate_frame
from detectors.config import COUNT_METRICS, SEP

MV_METRIC = "__multivariate__"


def _metric_cohort(frame: pd.DataFrame) -> tuple[pd.Series, pd.Series]:
    if "metric" in frame.columns and "cohort" in frame.columns:
        return frame["metric"].astype(str), frame["cohort"].astype(str)
    parts = frame["series_id"].str.split(SEP, n=1, expand=True)
    if parts.shape[1] < 2:
        raise ValueError(
            "multivariate detector needs series_id 'metric|cohort' or metric/cohort columns"
        )
    return parts[0], parts[1]


class MultivariateDetector(Detector):
    name = "multivariate"

    def __init__(
        self,
        sensitivity: float | str = "medium",
        method: str = "ecod",
        metrics: list[str] | None = None,
        max_train: int = 50_000,
        clip: float = 10.0,
        random_state: int = 0,
    ):
        super().__init__(sensitivity)
        if method not in ("ecod", "iforest"):
            raise ValueError(f"method must be 'ecod' or 'iforest', got {method!r}")
        self.method, self.metrics = method, metrics
        self.max_train, self.clip, self.random_state = max_train, clip, random_state

    def _pivot(self, frame: pd.DataFrame) -> pd.DataFrame:
        metric, cohort = _metric_cohort(frame)
        f = pd.DataFrame(
            {
                "cohort": cohort.to_numpy(),
                "ts": frame["ts"].to_numpy(),
                "metric": metric.to_numpy(),
                "value": frame["value"].to_numpy(),
            }
        )
        is_count = f["metric"].isin(COUNT_METRICS)
        f.loc[is_count, "value"] = np.log1p(f.loc[is_count, "value"].clip(lower=0))
        wide = f.pivot_table(
            index=["cohort", "ts"], columns="metric", values="value", aggfunc="first", dropna=False
        )
        return wide

    def _standardise(self, wide: pd.DataFrame) -> np.ndarray:
        wide = wide.reindex(columns=self.features_)
        cohorts = wide.index.get_level_values("cohort")
        med = self.med_.reindex(cohorts).to_numpy()
        sig = self.sig_.reindex(cohorts).to_numpy()
        X = (wide.to_numpy(dtype=float) - med) / sig
        X = np.nan_to_num(X, nan=0.0, posinf=self.clip, neginf=-self.clip)
        return np.clip(X, -self.clip, self.clip)

    def _fit(self, history: pd.DataFrame) -> None:
        wide = self._pivot(history)
        if self.metrics is not None:
            wide = wide.reindex(columns=self.metrics)
        self.features_ = list(wide.columns)
        g = wide.groupby(level="cohort")
        self.med_ = g.median()
        mad = (wide - self.med_.reindex(wide.index.get_level_values("cohort")).to_numpy()).abs()
        sig = 1.4826 * mad.groupby(level="cohort").median()
        floor = 0.01 * self.med_.abs()
        self.sig_ = sig.where(sig > floor, floor).where(lambda s: s > 0, 1e-6).fillna(1.0)
        X = self._standardise(wide)
        if len(X) > self.max_train:
            rng = np.random.default_rng(self.random_state)
            X = X[rng.choice(len(X), self.max_train, replace=False)]
        if self.method == "ecod":
            from pyod.models.ecod import ECOD

            self.model_ = ECOD(contamination=0.01)
        else:
            from pyod.models.iforest import IForest

            self.model_ = IForest(
                contamination=0.01, random_state=self.random_state, n_estimators=100
            )
        self.model_.fit(X)
        self.train_scores_ = np.sort(self.model_.decision_scores_)

    def score(self, current: pd.DataFrame) -> pd.DataFrame:  # not aligned: (cohort, ts) grain
        self._check_fitted()
        cur = validate_frame(current, name="current")
        return self._score(cur)

    def _score(self, current: pd.DataFrame) -> pd.DataFrame:
        wide = self._pivot(current)
        X = self._standardise(wide)
        s = self.model_.decision_function(X) if len(X) else np.zeros(0)
        n = len(self.train_scores_)
        ge = n - np.searchsorted(self.train_scores_, s, side="left")
        p = (1.0 + ge) / (1.0 + n)
        thr = self.train_scores_[
            int(np.clip(np.ceil((1 - self.thresholds_.mv_alpha) * n) - 1, 0, n - 1))
        ]
        cohorts = wide.index.get_level_values("cohort").to_numpy()
        top = np.argsort(-np.abs(X), axis=1)[:, :3]
        reasons = [
            f"ECOD score {sc:.1f} (p={pp:.2g}); most off: "
            + ", ".join(f"{self.features_[j]} {X[i, j]:+.1f}sd" for j in top[i])
            if self.method == "ecod"
            else f"IForest score {sc:.3f} (p={pp:.2g}); most off: "
            + ", ".join(f"{self.features_[j]} {X[i, j]:+.1f}sd" for j in top[i])
            for i, (sc, pp) in enumerate(zip(s, p))
        ]
        out = pd.DataFrame(
            {
                "series_id": [f"{MV_METRIC}{SEP}{c}" for c in cohorts],
                "cohort": cohorts,
                "ts": wide.index.get_level_values("ts").to_numpy(),
                "expected": np.nan,
                "lower": np.nan,
                "upper": thr,
                "score": s,
                "p_value": p,
                "direction": "none",
                "is_anomaly": s > thr,
                "reason": reasons,
            }
        )
        return out
