"""Evidence that accumulates: a window-limited one-sided GLR on counts, per series.

For each scored hour t and each window length w of ``WINDOW_GRID`` (1 .. 72 h), the hours
(t - w, t] of the series are pooled and tested against the seasonal expectation:

* **rates** (k of n): the binomial generalised likelihood ratio of the pooled K = sum k out of
  N = sum n against E = sum n p_t, p_t = the series' pooled rate at that hour of day over the
  history *before* the longest window (every trial of ~4 weeks at that hour: steady, and not
  contaminated by the hours being tested), shrunk towards the series' rate over all hours and
  that towards the metric's rate over every cohort (``PRIOR_TRIALS`` pseudo-trials each: a
  young or small series with no success at that hour does not expect a rate of 0);
* **counts** (x): the Poisson GLR of K = sum x against E = sum mu_t, mu_t = the hour-of-week
  baseline's expectation.

Overdispersion (quasi-likelihood): the deviance is divided by phi = V / V0, the variance the
history says the pooled sum has under no change (V) over the binomial / Poisson variance (V0).
For rates V = sum n p (1 - p) (1 + (n - 1) rho) + the variance of the expectation itself
(n^2 p (1 - p) (1 + (n_bar - 1) rho) / T, T = the pooled trials at that hour of day plus the
prior's pseudo-trials), rho per
series by moments on the history's residuals against the same expectation (the beta-binomial's
intra-class correlation). For counts V = sum max(sigma_t^2, mu_t), sigma_t the baseline's
out-of-sample residual sigma (it holds the negative-binomial excess and the error of the median).
The signed root r = sign(K - E) sqrt(2 LLR / phi) is ~N(0, 1) under no change (more exact than a
Wald z for small counts), so each window gives a one-sided p in the alerting direction
(``config.METRIC_DIRECTIONS``; 'both' tests either side, 'none' is never tested).

Multiplicity and the threshold (``alarm_pvalue``):

* across windows: Bonferroni over the m windows tested (x 2 sides for 'both'):
  p_seq = min(1, m x min_w p_w);
* across series and time: the budget is ``false_alarms_per_day`` alerts per day over all
  monitored series (default 0.3, the issue's aim), split evenly over the S series that can
  alert (Bonferroni, a per-series budget of F / S per series-day), capped at the sensitivity's
  hourly alpha x 24 for small deployments; one test per series-hour, so the per-hour threshold
  is p* = min(F / S, 24 alpha) / 24. A quiet series is then flagged in at most F / S of its
  days, and the whole store raises at most F false alerts a day (both bounds, Bonferroni being
  conservative when tests are correlated: the windows are nested, the hours overlap).

Rules kept per window: a window counts only with pooled volume N >= ``min_denominator`` (rates)
or max(K, E) >= ``min_count`` (counts), and for counts only with a practical effect
(K / E - 1 >= ``min_count_rise`` or <= -``min_count_drop``). Evidence is reported only while
the scored hour itself moves the alerting way (a shift that has ended stops alerting).

State: none across calls. ``fit`` keeps the last ``max(WINDOW_GRID) - 1`` hours of each series
and the pooled expectation; ``score`` recomputes every window from them, so a re-run or a
backfill of the same hours gives the same answer.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
from scipy import special, stats

from detectors import config as cfg
from detectors.base import Detector, direction_of
from detectors.baselines import HourOfWeekBaseline
from detectors.config import log10p

# Window lengths (hours) tested at every scored hour: about 1.5x apart, so a drop that has
# lasted w hours is always tested on a window within ~20% of w (and the Bonferroni factor
# stays 12, not 72). Up to three days: a 15% drop at five trials an hour (the seeded iOS
# Safari x ig_sale case) reaches the threshold only on a 72 h window (48 h: p = 5e-4).
WINDOW_GRID = (1, 2, 3, 4, 6, 8, 12, 16, 24, 32, 48, 72)
# The prior a rate's expectation is shrunk towards (empirical Bayes): the hour of day's pooled
# rate towards the series' rate over all hours, and that towards the metric's rate over every
# cohort. Without it a young or small series whose few trials at that hour had no success (a
# JS-error rate: 0 of 40) or no failure (a payment step: 12 of 12) expects a rate of 0 or 1,
# and the next single error or failure is "100,000x expected" (the 4-day smoke run paged 60
# times a day on such hours). The prior's strength is set by how far a level may plausibly sit
# from its parent, relative to the rarer outcome's rate q = min(p, 1 - p): an hour of day's
# rate within ~30 % of its series' (a Beta prior with that sd has (1 - q) / (0.3^2 q)
# pseudo-trials: ~1,100 for a 1 % error rate, ~11 for a 50 % step), a cohort's within ~50 %
# of the metric's.
HOUR_OF_DAY_REL_SD = 0.3
COHORT_REL_SD = 0.5


def alarm_pvalue(n_series: int, sensitivity: float | str = "medium",
                 false_alarms_per_day: float = cfg.FALSE_ALARMS_PER_DAY) -> float:
    """Per series-hour p-value threshold: min(F / S, 24 alpha) / 24 (see module docstring)."""
    alpha = cfg.thresholds(sensitivity).alpha
    per_series_day = min(false_alarms_per_day / max(int(n_series), 1), 24.0 * alpha)
    return per_series_day / 24.0


class SequentialTest(Detector):
    """Window-limited one-sided binomial / Poisson GLR with estimated overdispersion."""

    name = "sequential"

    def __init__(
        self,
        sensitivity: float | str = "medium",
        baseline: HourOfWeekBaseline | None = None,
        windows: tuple[int, ...] = WINDOW_GRID,
        false_alarms_per_day: float = cfg.FALSE_ALARMS_PER_DAY,
        n_series: int | None = None,
        directions: dict[str, str] | None = None,
        min_denominator: float = cfg.MIN_DENOMINATOR,
        min_count: float = cfg.MIN_COUNT,
        min_count_rise: float = cfg.MIN_COUNT_RISE,
        min_count_drop: float = cfg.MIN_COUNT_DROP,
        max_rho: float = 0.2,
        hour_of_day_rel_sd: float = HOUR_OF_DAY_REL_SD,
        cohort_rel_sd: float = COHORT_REL_SD,
    ):
        super().__init__(sensitivity)
        windows = tuple(sorted({int(w) for w in windows}))
        if not windows or windows[0] < 1:
            raise ValueError(f"windows must be positive hour counts, got {windows!r}")
        if false_alarms_per_day <= 0:
            raise ValueError(f"false_alarms_per_day must be > 0, got {false_alarms_per_day}")
        self.baseline, self.windows = baseline, windows
        self.false_alarms_per_day, self.n_series = false_alarms_per_day, n_series
        self.directions = dict(cfg.METRIC_DIRECTIONS if directions is None else directions)
        self.min_denominator, self.min_count = min_denominator, min_count
        self.min_count_rise, self.min_count_drop = min_count_rise, min_count_drop
        self.max_rho = max_rho
        if hour_of_day_rel_sd < 0 or cohort_rel_sd < 0:
            raise ValueError("hour_of_day_rel_sd and cohort_rel_sd must be >= 0 (0: no prior)")
        self.hour_of_day_rel_sd, self.cohort_rel_sd = hour_of_day_rel_sd, cohort_rel_sd

    # ------------------------------------------------------------------------------------------
    def _allowed(self, sids: np.ndarray) -> np.ndarray:
        return np.array(
            [self.directions.get(cfg.split_series_id(s)[0], cfg.DEFAULT_DIRECTION) for s in sids],
            dtype=object,
        )

    def _fit(self, history: pd.DataFrame) -> None:
        if self.baseline is not None and getattr(self.baseline, "fitted_", False):
            self.baseline_ = self.baseline
        else:
            self.baseline_ = HourOfWeekBaseline(self.sensitivity)
            self.baseline_._fit(history)
            self.baseline_.fitted_ = True
        h = history[["series_id", "ts", "value", "numerator", "denominator"]]
        self.is_rate_ = h.groupby("series_id")["denominator"].apply(lambda s: s.notna().any())
        ids = self.is_rate_.index.to_numpy()
        self.n_series_ = (
            int(self.n_series) if self.n_series is not None
            else int((self._allowed(ids) != "none").sum())
        )
        last = h.groupby("series_id")["ts"].transform("max")
        in_tail = h["ts"] > last - pd.Timedelta(hours=self._lead_hours())
        self.tail_ = h[in_tail]
        # the expectation of a rate: its pooled rate per hour of day over the history before
        # the replayed hours (so the hours a window tests are not part of their own baseline).
        # A young series (a new store, the 4-day smoke run: less than the replay plus 3 days)
        # pools the history before the longest window instead, else it would have no
        # expectation at all and no rate of it would ever be tested.
        first = h.groupby("series_id")["ts"].transform("min")
        span = last - first
        young = span < pd.Timedelta(hours=self._lead_hours() + 72)
        # a young series pools what lies before its longest window, but at least the first
        # half of its history (a 3-day-old store would otherwise have nothing at all)
        young_cut = last - (span / 2).clip(upper=pd.Timedelta(hours=max(self.windows)))
        in_pool = np.where(young, h["ts"] <= young_cut, ~in_tail)
        rates = h[in_pool & h["series_id"].isin(set(ids[self.is_rate_.to_numpy()]))]
        rates = rates[(rates["denominator"] >= 1) & rates["numerator"].notna()]
        pool = rates.groupby([rates["series_id"], rates["ts"].dt.hour.rename("hod")])[
            ["numerator", "denominator"]].agg(["sum", "count"])
        self.pool_, self.series_prior_, self.metric_prior_ = _shrunk_pool(pd.DataFrame({
            "k": pool[("numerator", "sum")], "n": pool[("denominator", "sum")],
            "hours": pool[("denominator", "count")]}), self.hour_of_day_rel_sd,
            self.cohort_rel_sd)
        # overdispersion of the rate around that expectation (method of moments)
        r = rates.join(self.pool_, on=["series_id", rates["ts"].dt.hour.rename("hod")])
        p = np.clip(r["p"], 1e-6, 1 - 1e-6)
        k, n = r["numerator"], r["denominator"]
        base = n * p * (1 - p)
        num = ((k - n * p) ** 2 - base).groupby(r["series_id"]).sum()
        den = (base * (n - 1)).groupby(r["series_id"]).sum()
        self.rho_ = (num / den.where(den > 0)).clip(lower=0.0, upper=self.max_rho).fillna(0.0)
        self.threshold_ = alarm_pvalue(self.n_series_, self.sensitivity, self.false_alarms_per_day)

    # ------------------------------------------------------------------------------------------
    def _rows(self, f: pd.DataFrame) -> pd.DataFrame:
        """Per row: observed K, trials N (rates), expected E and the no-change variance V."""
        sids = f["series_id"].to_numpy()
        is_rate = self.is_rate_.reindex(sids).fillna(False).to_numpy(dtype=bool).copy()
        is_rate |= f["denominator"].notna().to_numpy()
        out = pd.DataFrame(index=f.index)
        out["is_rate"] = is_rate
        hod = f["ts"].dt.hour.to_numpy()
        pool = self.pool_.reindex(pd.MultiIndex.from_arrays([sids, hod]))
        # an hour of day the pool never saw (a young series: its first day's evening) expects
        # the series' rate, a series the pool never saw its metric's, each with the weight of
        # its prior alone
        series = self.series_prior_.reindex(sids)
        metric = self.metric_prior_.reindex([cfg.split_series_id(x)[0] for x in sids])
        p = pool["p"].to_numpy()
        trials = pool["n"].to_numpy() + pool["prior_n"].to_numpy()
        for level in (series, metric):
            gap = ~np.isfinite(p)
            p = np.where(gap, level["p"].to_numpy(), p)
            trials = np.where(gap, level["prior_n"].to_numpy(), trials)
        with np.errstate(divide="ignore", invalid="ignore"):
            p = np.clip(p, 1e-6, 1 - 1e-6)
            nbar = np.nan_to_num(pool["n"].to_numpy() / pool["hours"].to_numpy(), nan=1.0)
        # the expectation's own error: a Beta posterior over the pooled trials and the prior's
        n = f["denominator"].to_numpy()
        k = f["numerator"].to_numpy()
        rho = self.rho_.reindex(sids).fillna(0.0).to_numpy()
        ok_rate = is_rate & np.isfinite(k) & np.isfinite(n) & (n >= 1) & np.isfinite(p)
        with np.errstate(invalid="ignore"):
            v_rate = (n * p * (1 - p) * (1 + (n - 1) * rho)
                      + n**2 * p * (1 - p) * (1 + (nbar - 1) * rho) / trials)
        base = self.baseline_.expected(f)
        mu = np.clip(base["expected"].to_numpy(), 1e-3, None)
        sigma = base["sigma"].to_numpy()
        x = f["value"].to_numpy()
        ok_count = ~is_rate & np.isfinite(x) & (x >= 0) & np.isfinite(mu) & np.isfinite(sigma)
        ok = np.where(is_rate, ok_rate, ok_count)
        out["ok"] = ok
        out["k"] = np.where(ok, np.where(is_rate, k, x), 0.0)
        out["n"] = np.where(ok & is_rate, n, 0.0)
        out["e"] = np.where(ok, np.where(is_rate, n * p, mu), 0.0)
        out["v"] = np.where(ok, np.where(is_rate, v_rate, np.fmax(sigma**2, mu)), 0.0)
        return out

    def _score(self, current: pd.DataFrame) -> pd.DataFrame:
        cols = ["series_id", "ts", "value", "numerator", "denominator"]
        t_first = current["ts"].min()
        t0 = t_first.floor("h") - pd.Timedelta(hours=self._lead_hours())
        tail = self.tail_[(self.tail_["ts"] >= t0) & (self.tail_["ts"] < t_first)]
        tail = tail[tail["series_id"].isin(set(current["series_id"]))]
        f = pd.concat([tail[cols], current[cols]], ignore_index=True)
        # a current row replaces a history row of the same (series, hour)
        f = f.drop_duplicates(["series_id", "ts"], keep="last")
        labels = f.index.to_numpy()
        f = f.reset_index(drop=True)
        rows = self._rows(f)
        codes, uniques = pd.factorize(f["series_id"].to_numpy())
        # hour buckets from t0 (sub-hourly rows add into their hour)
        hour = np.floor(((f["ts"] - t0) / pd.Timedelta(hours=1)).to_numpy()).astype(int)
        n_s, n_h = len(uniques), int(hour.max()) + 1
        # dense (series x hour) grids with a leading zero column, cumulated: a window sum is
        # one subtraction per (series, hour, window)
        cum = {}
        for c in ("k", "n", "e", "v"):
            g = np.zeros((n_s, n_h + 1))
            np.add.at(g, (codes, hour + 1), rows[c].to_numpy())
            cum[c] = np.cumsum(g, axis=1)
        first_row = pd.Series(np.arange(len(f))).groupby(codes).first().to_numpy()
        is_rate = rows["is_rate"].to_numpy()[first_row]
        allowed = self._allowed(np.asarray(uniques))
        m = len(self.windows) * np.where(allowed == "both", 2, 1)
        res = {name: np.full((n_s, n_h), np.nan) for name in ("p", "w", "K", "N", "E")}
        # Replay hour by hour from t0 so that, as in a textbook CUSUM, the statistic restarts
        # after each alarm: a window never reaches back to or before the last alarmed hour, so
        # one extreme hour alarms once (not for the next 48 h of windows that contain it) and
        # a sustained shift re-alarms as fresh evidence accumulates. Starting 2 x the longest
        # window before the first scored hour makes the replay deterministic from the data.
        restart = np.zeros(n_s, dtype=int)  # windows cover columns (lo, hh] with lo >= restart
        for hh in range(1, n_h + 1):
            best_p = np.full(n_s, np.inf)
            best = {name: np.full(n_s, np.nan) for name in ("w", "K", "N", "E")}
            for w in self.windows:
                lo = hh - w
                if lo < 0:
                    break
                K, N, E, V = (cum[c][:, hh] - cum[c][:, lo] for c in ("k", "n", "e", "v"))
                p = self._window_pvalue(K, N, E, V, is_rate, allowed)
                enough = np.where(is_rate, N >= self.min_denominator,
                                  np.fmax(K, E) >= self.min_count)
                with np.errstate(divide="ignore", invalid="ignore"):
                    rel = K / E - 1.0
                effect = is_rate | (rel >= self.min_count_rise) | (rel <= -self.min_count_drop)
                better = enough & effect & (lo >= restart) & np.isfinite(p) & (p < best_p)
                best_p = np.where(better, p, best_p)
                for name, val in (("w", w), ("K", K), ("N", N), ("E", E)):
                    best[name] = np.where(better, val, best[name])
            p_seq = np.where(np.isfinite(best_p), np.minimum(1.0, m * best_p), np.nan)
            res["p"][:, hh - 1] = p_seq
            for name, value in best.items():
                res[name][:, hh - 1] = value
            restart = np.where(p_seq <= self.threshold_, hh, restart)
        cur_pos = np.flatnonzero(labels >= len(tail))  # current rows (all survive the dedup)
        orig = labels[cur_pos] - len(tail)  # their position in current
        cc, jj = codes[cur_pos], hour[cur_pos]
        got = {name: res[name][cc, jj] for name in res}
        here = rows.iloc[cur_pos]
        rate_row = is_rate[cc]
        qualified = np.isfinite(got["p"])
        p_seq = got["p"]
        evidence = np.where(
            qualified, log10p(np.nan_to_num(p_seq, nan=1.0)) / -np.log10(self.threshold_), 0.0)
        out = pd.DataFrame(index=current.index[orig])
        with np.errstate(divide="ignore", invalid="ignore"):
            expected = np.where(rate_row, here["e"] / here["n"], here["e"])
            ratio = got["K"] / got["E"]  # observed / expected, of the best window
        out["expected"] = np.where(here["ok"], expected, np.nan)
        out["lower"], out["upper"] = np.nan, np.nan
        out["score"] = evidence
        out["p_value"] = p_seq
        out["direction"] = direction_of(np.where(qualified, got["K"] - got["E"], np.nan))
        out["is_anomaly"] = evidence > 1.0
        out["qualified"] = qualified
        out["window_hours"] = got["w"]
        unit = np.where(rate_row, "of", "vs")
        out["reason"] = [
            (f"sequential {w:.0f} h: {k:.0f} {u} {nn:.0f}, {r_:.2f}x expected {e:.4g}, "
             f"p={q:.2g} over {mm} windows (alarm p<{self.threshold_:.2g})") if ok_
            else "low volume"
            for ok_, w, k, u, nn, r_, e, q, mm in zip(
                qualified, got["w"], got["K"], unit,
                np.where(rate_row, got["N"], got["E"]), ratio, got["E"], p_seq, m[cc])
        ]
        return out.reindex(current.index)

    def _lead_hours(self) -> int:
        """Hours of history replayed before the first scored hour."""
        return 2 * max(self.windows) - 1

    @staticmethod
    def _window_pvalue(K, N, E, V, is_rate, allowed) -> np.ndarray:
        """One-sided p of the pooled window in the allowed direction (two-sided for 'both')."""
        with np.errstate(divide="ignore", invalid="ignore"):
            p0 = np.clip(E / N, 1e-9, 1 - 1e-9)
            ph = np.clip(K / N, 0.0, 1.0)
            llr_rate = (special.xlogy(K, ph) - special.xlogy(K, p0)
                        + special.xlogy(N - K, 1 - ph) - special.xlogy(N - K, 1 - p0))
            v0_rate = N * p0 * (1 - p0)
            llr_count = special.xlogy(K, K) - special.xlogy(K, E) - (K - E)
            llr = np.where(is_rate, llr_rate, llr_count)
            v0 = np.where(is_rate, v0_rate, E)
            phi = np.fmax(V / v0, 1.0)
            r = np.sign(K - E) * np.sqrt(np.clip(2.0 * llr / phi, 0.0, None))
        usable = np.isfinite(r) & (E > 0) & np.where(is_rate, N >= 1, True)
        r = np.where(usable, r, 0.0)
        # 'both': the side the data moved, the other side is paid for in the window count
        p = np.where(allowed == "down", stats.norm.cdf(r),
                     np.where(allowed == "up", stats.norm.sf(r), stats.norm.sf(np.abs(r))))
        return np.where(usable & (allowed != "none"), np.minimum(p, 1.0), np.nan)


def prior_trials(p: np.ndarray, rel_sd: float) -> np.ndarray:
    """Pseudo-trials of a Beta prior with mean p whose sd is ``rel_sd`` x the rarer outcome's
    rate q = min(p, 1 - p): (1 - q) / (rel_sd^2 q), at least 1 (0 trials for rel_sd 0: no
    prior; none where p is unknown)."""
    if rel_sd == 0:
        return np.zeros_like(np.asarray(p, dtype=float))
    q = np.clip(np.minimum(p, 1 - p), 1e-6, 0.5)
    return np.where(np.isfinite(p), np.maximum(1.0, (1 - q) / (rel_sd**2 * q)), 0.0)


def _shrunk_pool(pool: pd.DataFrame, hour_rel_sd: float, cohort_rel_sd: float
                 ) -> tuple[pd.DataFrame, pd.DataFrame, pd.DataFrame]:
    """(pool, series, metric): the pooled (series, hour of day) trials with ``p``, the
    expected rate shrunk in two levels (metric over every cohort and hour -> series over all
    hours -> hour of day, each (k + m p_parent) / (n + m), m = ``prior_trials``) and
    ``prior_n``, the hour level's m; per series its rate over all hours with the hour level's
    m; per metric its rate with the series level's m (the fallbacks of hours and series the
    pool never saw)."""
    empty = pd.DataFrame({"p": pd.Series(dtype=float), "prior_n": pd.Series(dtype=float)})
    if pool.empty:
        return pool.assign(p=pd.Series(dtype=float), prior_n=pd.Series(dtype=float)), empty, empty
    sids = pool.index.get_level_values(0)
    metric = pd.Index([cfg.split_series_id(s)[0] for s in sids])
    per_series = pool.groupby(level=0)[["k", "n"]].sum()
    # The metric's level is its whole-store series where the fit has one (it does in every
    # shard of a sharded run, so a shard's priors equal the single process's), else the pool of
    # every cohort the fit holds.
    split = [cfg.split_series_id(s) for s in per_series.index]
    series_metric = pd.Index([m for m, _ in split])
    is_store = np.array([cohort == cfg.STORE_COHORT for _, cohort in split], dtype=bool)
    store = per_series[is_store].set_axis(series_metric[is_store])
    per_metric = store.combine_first(pool.groupby(metric.to_numpy())[["k", "n"]].sum())
    with np.errstate(divide="ignore", invalid="ignore"):
        metric_p = per_metric["k"] / per_metric["n"]
        metric_m = prior_trials(metric_p.to_numpy(), cohort_rel_sd)
        p_parent = metric_p.reindex(series_metric).to_numpy()
        m_parent = pd.Series(metric_m, index=metric_p.index).reindex(series_metric).to_numpy()
        series_p = (per_series["k"].to_numpy() + m_parent * np.nan_to_num(p_parent)) / (
            per_series["n"].to_numpy() + m_parent)
        series_m = prior_trials(series_p, hour_rel_sd)
        series = pd.DataFrame({"p": series_p, "prior_n": series_m}, index=per_series.index)
        p_series = series["p"].reindex(sids).to_numpy()
        m_hour = series["prior_n"].reindex(sids).to_numpy()
        p = (pool["k"].to_numpy() + m_hour * np.nan_to_num(p_series)) / (
            pool["n"].to_numpy() + m_hour)
    metrics = pd.DataFrame({"p": metric_p.to_numpy(), "prior_n": metric_m}, index=metric_p.index)
    return pool.assign(p=p, prior_n=m_hour), series, metrics
