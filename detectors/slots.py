"""Same-slot test: the fast lane's detector for 5-minute slots.

A 5-minute slot of a small store holds a handful of checkouts, so a shape detector (median,
EWMA, Prophet) has nothing to work with. What a slot does have is a count, and the same slot
of previous days to compare it with. `SameSlotTest` is rate-aware:

* For every scored slot and every window of the last ``windows`` slots (default 1, 3, 6 and
  12: 5, 15, 30 and 60 minutes), it sums the observed numerator / denominator (rates) or the
  count, and the same window on each of ``lag_days`` earlier days (the same time of day,
  yesterday back to a week, and the same weekday two and three weeks ago).
* Rates (``denominator`` given): beta-binomial tail of the observed successes at the pooled
  baseline rate. Its intra-class correlation is the day-to-day over-dispersion of the
  baseline windows, plus the uncertainty of the pooled rate itself (1 / baseline trials).
* Counts: negative-binomial tail at the baseline mean, over-dispersion from the baseline
  days' variance plus the uncertainty of the mean.
* The smallest one-sided p-value in the metric's alerting direction over the windows,
  times the number of windows (Bonferroni), is the point's p-value. Short windows catch a
  big break within minutes; long ones a smaller drop within the hour.
* Severity uses the ensemble's scale: E = -log10(p) / -log10(alpha), severity
  = 100 E / (1 + E), so 50 is the alert threshold, as in the hourly lane.

Practical significance: a rate must move by at least ``min_rate_change`` (relative), a count
by ``min_count_drop`` / ``min_count_rise``, and the window must have or expect at least
``min_expected`` events (successes of a rate, or the count). A slot needs
``min_baseline_days`` earlier days with the whole window observed, else it is not scored
(reason 'cold start').

Same contract as the other detectors: ``fit(history)`` keeps the earlier slots (the days
before and the earlier slots of today), ``score(current)`` scores the current slots; a
window may reach back into history. Frames are long: series_id, ts (slot start), value,
numerator, denominator.
"""

from __future__ import annotations

import warnings

import numpy as np
import pandas as pd
from scipy import stats

from detectors.base import Detector, direction_of, empty_scores
from detectors.config import log10p, metric_direction, split_series_id

DEFAULT_WINDOWS = (1, 3, 6, 12)
DEFAULT_LAG_DAYS = (1, 2, 3, 4, 5, 6, 7, 14, 21)
PRIOR_DISPERSION_DOF = 4.0


class SameSlotTest(Detector):
    """Observed window of slots vs the same window on earlier days (beta-binomial / NB)."""

    name = "same_slot_test"
    requires_counts = True

    def __init__(
        self,
        sensitivity: float | str = "medium",
        *,
        slot_minutes: int = 5,
        windows: tuple[int, ...] = DEFAULT_WINDOWS,
        lag_days: tuple[int, ...] = DEFAULT_LAG_DAYS,
        alpha: float = 1e-6,
        min_baseline_days: int = 3,
        min_expected: float = 3.0,
        min_rate_change: float = 0.05,
        min_count_drop: float = 0.25,
        min_count_rise: float = 0.5,
        max_rho: float = 0.2,
        prior_trials: float = 20.0,
    ):
        super().__init__(sensitivity)
        if 60 % slot_minutes or slot_minutes <= 0:
            raise ValueError(f"slot_minutes must divide 60, got {slot_minutes}")
        if not windows or min(windows) < 1:
            raise ValueError(f"windows must be positive slot counts, got {windows}")
        if not 0 < alpha < 1:
            raise ValueError(f"alpha must be in (0, 1), got {alpha}")
        self.slot_minutes = slot_minutes
        self.windows = tuple(sorted(set(windows)))
        self.lag_days = tuple(sorted(set(lag_days)))
        self.alpha = alpha
        self.min_baseline_days = min_baseline_days
        self.min_expected = min_expected
        self.min_rate_change = min_rate_change
        self.min_count_drop = min_count_drop
        self.min_count_rise = min_count_rise
        self.max_rho = max_rho
        self.prior_trials = prior_trials

    @property
    def slot(self) -> pd.Timedelta:
        return pd.Timedelta(minutes=self.slot_minutes)

    def _fit(self, history: pd.DataFrame) -> None:
        self.history_ = history[["series_id", "ts", "numerator", "denominator"]].copy()

    def _series_rate(self, sids: np.ndarray, ts: pd.Series) -> np.ndarray:
        """Each rate series' rate over its history before the scored slot's day: the prior a
        window's baseline is shrunk to. Payment failures are rare: the same 5 minutes of a
        week of days often hold none, and a baseline of 0 would make one failure an alert.
        (Before the day, not the slot, so a day scored at once equals slot by slot.)"""
        out = np.full(len(sids), np.nan)
        days = ts.dt.floor("D").to_numpy()
        rates = self.history_[self.history_["denominator"] > 0]
        for day in np.unique(days):
            before = rates[rates["ts"] < day]
            sums = before.groupby("series_id")[["numerator", "denominator"]].sum()
            rate = (sums["numerator"] / sums["denominator"]).reindex(sids[days == day])
            out[days == day] = rate.to_numpy(dtype=float)
        return out

    # -- window sums on a regular slot grid ------------------------------------------------
    def _grid(self, frame: pd.DataFrame, column: str, index: pd.DatetimeIndex) -> pd.DataFrame:
        wide = frame.pivot(index="ts", columns="series_id", values=column)
        return wide.reindex(index)

    def _score(self, current: pd.DataFrame) -> pd.DataFrame:
        out = empty_scores(current.index)
        extra = {"window_slots": np.zeros(len(current), dtype=int),
                 "window_observed": np.full(len(current), np.nan),
                 "window_expected": np.full(len(current), np.nan),
                 "baseline_days": np.zeros(len(current), dtype=int),
                 "severity": np.zeros(len(current))}
        if current.empty:
            return out.assign(**extra)
        slot = self.slot
        if ((current["ts"] - current["ts"].dt.floor(slot)) != pd.Timedelta(0)).any():
            raise ValueError(f"current has ts values that are not {self.slot_minutes}-minute "
                             "slot starts")
        frame = pd.concat([self.history_, current[self.history_.columns]], ignore_index=True)
        frame = frame.drop_duplicates(["series_id", "ts"], keep="last")
        per_day = int(pd.Timedelta(days=1) / slot)
        reach = max(self.lag_days) * per_day + max(self.windows)
        grid = pd.date_range(current["ts"].min() - reach * slot, current["ts"].max(), freq=slot)
        is_rate = current["denominator"].notna().groupby(current["series_id"]).any()
        num = self._grid(frame, "numerator", grid)
        den = self._grid(frame, "denominator", grid)
        sids = current["series_id"].to_numpy()
        rows = grid.get_indexer(current["ts"])
        cols = num.columns.get_indexer(sids)
        rate_row = is_rate.reindex(sids).fillna(False).to_numpy()
        metrics = np.array([split_series_id(s)[0] for s in sids])
        allowed = np.array([metric_direction(m) for m in metrics])

        prior = self._series_rate(sids, current["ts"])
        best_p = np.ones(len(current))
        for w in self.windows:
            # NaN when any slot of the window is missing (not observed is not zero)
            k_all = num.rolling(w, min_periods=w).sum().to_numpy()
            n_all = den.rolling(w, min_periods=w).sum().to_numpy()
            k = k_all[rows, cols]
            n = n_all[rows, cols]
            lag_rows = np.stack([rows - d * per_day for d in self.lag_days])  # (lags, points)
            valid = lag_rows >= 0
            lag_rows = np.where(valid, lag_rows, 0)
            kb = np.where(valid, k_all[lag_rows, cols[None, :]], np.nan)
            nb = np.where(valid, n_all[lag_rows, cols[None, :]], np.nan)
            days = np.where(rate_row, np.isfinite(kb) & np.isfinite(nb) & (nb > 0),
                            np.isfinite(kb)).sum(axis=0)
            p_lo, p_hi, expected, observed = self._tails(k, n, kb, nb, rate_row, prior)
            p_dir = np.where(allowed == "down", p_lo,
                             np.where(allowed == "up", p_hi, np.fmin(p_lo, p_hi)))
            p_dir = np.where(allowed == "none", 1.0, p_dir)
            ok = (days >= self.min_baseline_days) & np.isfinite(p_dir)
            ok &= self._meaningful(observed, expected, rate_row, n)
            p_dir = np.where(ok, p_dir, 1.0)
            better = p_dir < best_p
            best_p = np.where(better, p_dir, best_p)
            extra["window_slots"] = np.where(better, w, extra["window_slots"])
            extra["window_observed"] = np.where(better, observed, extra["window_observed"])
            extra["window_expected"] = np.where(better, expected, extra["window_expected"])
            if w == self.windows[0]:  # the band and expected value of the slot itself
                out["expected"] = expected
                extra["baseline_days"] = days
                sd = self._slot_sd(expected, n, rate_row, kb, nb)
                z = stats.norm.isf(self.alpha / 2)
                out["lower"] = expected - z * sd
                out["upper"] = expected + z * sd
                out["reason"] = np.where(days >= self.min_baseline_days, "",
                                         "cold start: too few earlier days with this slot")

        p = np.clip(best_p * len(self.windows), 0.0, 1.0)
        evidence = log10p(p) / log10p(self.alpha)
        severity = np.where(p < 1.0, 100.0 * evidence / (1.0 + evidence), 0.0)
        out["p_value"] = p
        out["score"] = evidence
        out["is_anomaly"] = p < self.alpha
        out["direction"] = direction_of(extra["window_observed"] - extra["window_expected"])
        out.loc[out["is_anomaly"].to_numpy(), "reason"] = [
            f"{int(w) * self.slot_minutes} min: {o:.3g} vs {e:.3g} expected"
            for w, o, e in zip(extra["window_slots"][out["is_anomaly"].to_numpy()],
                               extra["window_observed"][out["is_anomaly"].to_numpy()],
                               extra["window_expected"][out["is_anomaly"].to_numpy()],
                               strict=True)
        ]
        extra["severity"] = severity
        return out.assign(**extra)

    def _tails(self, k, n, kb, nb, rate_row, prior):
        """One-sided p-values (low, high), expected and observed value of the window."""
        with np.errstate(divide="ignore", invalid="ignore"), warnings.catch_warnings():
            # all-NaN baselines (cold start) give NaN means and variances, handled below
            warnings.simplefilter("ignore", RuntimeWarning)
            # rates: beta-binomial at the pooled baseline rate, shrunk to the series' rate
            # with the weight of `prior_trials` trials
            use = np.isfinite(kb) & np.isfinite(nb) & (nb > 0)
            m = np.where(np.isfinite(prior), self.prior_trials, 0.0)
            ksum = np.where(use, kb, 0).sum(axis=0) + m * np.nan_to_num(prior)
            nsum = np.where(use, nb, 0).sum(axis=0) + m
            p0 = np.clip(ksum / nsum, 1e-6, 1 - 1e-6)
            pearson = np.where(use, (kb - nb * p0) ** 2 / (nb * p0 * (1 - p0)), 0).sum(axis=0)
            dof = np.maximum(use.sum(axis=0) - 1, 1)
            # A dispersion estimated from a few days is noisy (dof 2 with 3 baseline days):
            # shrunk towards 1 (binomial) with the weight of PRIOR_DISPERSION_DOF days.
            phi = np.maximum((pearson + PRIOR_DISPERSION_DOF) / (dof + PRIOR_DISPERSION_DOF),
                             1.0)
            nbar = np.where(use, nb, np.nan)
            nbar = np.nanmean(np.where(use.any(axis=0), nbar, 1.0), axis=0)
            rho = np.clip((phi - 1.0) / np.maximum(nbar - 1.0, 1.0), 0.0, self.max_rho)
            rho = np.clip(rho + 1.0 / np.maximum(nsum, 1.0), 1e-9, 0.999)
            a = p0 * (1 - rho) / rho
            b = (1 - p0) * (1 - rho) / rho
            n_int = np.nan_to_num(n, nan=0).round()
            k_int = np.nan_to_num(k, nan=0).round()
            rate_lo = stats.betabinom.cdf(k_int, n_int, a, b)
            rate_hi = stats.betabinom.sf(k_int - 1, n_int, a, b)
            rate_expected = p0
            rate_observed = k / n

            # counts: negative binomial at the baseline mean
            cb = np.where(np.isfinite(kb), kb, np.nan)
            days = np.isfinite(cb).sum(axis=0)
            mu = np.nanmean(np.where(days > 0, cb, 0.0), axis=0)
            var = np.nanvar(np.where(days > 1, cb, 0.0), axis=0, ddof=1) if cb.shape[0] > 1 \
                else np.zeros_like(mu)
            var = np.nan_to_num(var, nan=0.0)
            mu_safe = np.maximum(mu, 1e-9)
            disp = np.clip((var - mu_safe) / mu_safe**2, 0.0, 1.0)
            disp = disp + (1.0 + disp * mu_safe) / (np.maximum(days, 1) * mu_safe)
            r = 1.0 / disp
            q = r / (r + mu_safe)
            count_lo = stats.nbinom.cdf(k_int, r, q)
            count_hi = stats.nbinom.sf(k_int - 1, r, q)

        lo = np.where(rate_row, rate_lo, count_lo)
        hi = np.where(rate_row, rate_hi, count_hi)
        expected = np.where(rate_row, rate_expected, mu)
        observed = np.where(rate_row, rate_observed, k)
        missing = ~np.isfinite(k) | (rate_row & ~(np.nan_to_num(n) > 0))
        lo = np.where(missing, np.nan, lo)
        hi = np.where(missing, np.nan, hi)
        return lo, hi, expected, observed

    def _meaningful(self, observed, expected, rate_row, n):
        with np.errstate(divide="ignore", invalid="ignore"):
            change = observed / expected - 1.0
            # enough events to tell: a drop needs expected successes, a rise (failures)
            # needs observed ones; either way at least `min_expected`
            n = np.nan_to_num(n)
            rate_ok = (np.abs(change) >= self.min_rate_change) & (
                np.fmax(n * observed, n * expected) >= self.min_expected)
            count_ok = ((change <= -self.min_count_drop) | (change >= self.min_count_rise)) & (
                np.fmax(observed, expected) >= self.min_expected)
        return np.where(rate_row, rate_ok, count_ok)

    def _slot_sd(self, expected, n, rate_row, kb, nb):
        with np.errstate(divide="ignore", invalid="ignore"), warnings.catch_warnings():
            # a slot with one baseline day has no variance (NaN, then the expected count)
            warnings.simplefilter("ignore", RuntimeWarning)
            rate_sd = np.sqrt(expected * (1 - expected) / np.maximum(np.nan_to_num(n), 1))
            count_sd = np.sqrt(np.maximum(np.nan_to_num(np.nanvar(kb, axis=0)), expected))
        return np.where(rate_row, rate_sd, count_sd)
