"""Rate-aware statistical tests: is the observed k of n (or the count x) surprising given its
volume? A drop in a cohort with 40 sessions is weaker evidence than the same drop with 40,000.

* :class:`RateTest`: binomial or beta-binomial test of k = numerator out of n = denominator
  against the expected rate. The beta-binomial's overdispersion rho is estimated per series from
  the history (method of moments on the in-sample residuals against the baseline, times ``rho_inflation``
  = 1.5 because in-sample residuals understate the error), plus a term for the uncertainty of the
  expected rate itself ((pi/2) / (values behind the median x mean denominator)); so series whose
  rate genuinely wanders hour to hour need more evidence. Default family: beta-binomial (the
  binomial family uses only the expected-rate term).
* :class:`CountTest`: Poisson or negative-binomial test of a count against the expected count
  (NB dispersion estimated per series from the history). Default family: negative binomial.

The expected value comes from a baseline (default: :class:`HourOfWeekBaseline` fitted on the same
history), or from an ``expected`` column in the frame passed to ``score`` when present (the
ensemble passes its own baseline that way).

Score scale: -log10(p_value) (two-sided p). ``is_anomaly`` = p < alpha(sensitivity).
The band (lower/upper) is the normal approximation of the (1 - alpha) interval with the fitted
dispersion. For n > ``exact_max_n`` the beta-binomial p-value uses the same normal approximation
(continuity corrected); the exact beta-binomial CDF is a slow sum in scipy.
"""

from __future__ import annotations

from abc import abstractmethod

import numpy as np
import pandas as pd
from scipy import stats

from detectors.base import Detector, direction_of
from detectors.baselines import HourOfWeekBaseline
from detectors.config import log10p


def _two_sided(cdf_k: np.ndarray, sf_km1: np.ndarray) -> np.ndarray:
    return np.clip(2.0 * np.minimum(cdf_k, sf_km1), 0.0, 1.0)


def binomial_pvalue(k, n, p) -> np.ndarray:
    """Two-sided binomial p-value of k successes out of n at rate p (vectorised)."""
    k, n, p = (np.asarray(a, dtype=float) for a in (k, n, p))
    return _two_sided(stats.binom.cdf(k, n, p), stats.binom.sf(k - 1, n, p))


def betabinomial_pvalue(k, n, p, rho, exact_max_n: int = 300) -> np.ndarray:
    """Two-sided beta-binomial p-value (intra-class correlation rho; rho -> 0 is binomial)."""
    k, n, p, rho = np.broadcast_arrays(*(np.asarray(a, dtype=float) for a in (k, n, p, rho)))
    out = np.full(k.shape, np.nan)
    rho = np.clip(rho, 1e-9, 0.999)
    exact = n <= exact_max_n
    if exact.any():
        a = p[exact] * (1 - rho[exact]) / rho[exact]
        b = (1 - p[exact]) * (1 - rho[exact]) / rho[exact]
        ke, ne = k[exact], n[exact]
        out[exact] = _two_sided(
            stats.betabinom.cdf(ke, ne, a, b), stats.betabinom.sf(ke - 1, ne, a, b)
        )
    approx = ~exact
    if approx.any():
        kk, nn, pp, rr = k[approx], n[approx], p[approx], rho[approx]
        sd = np.sqrt(nn * pp * (1 - pp) * (1 + (nn - 1) * rr))
        z = (np.abs(kk - nn * pp) - 0.5).clip(min=0) / sd
        out[approx] = np.clip(2 * stats.norm.sf(z), 0, 1)
    return out


def poisson_pvalue(x, mu) -> np.ndarray:
    x, mu = np.asarray(x, dtype=float), np.asarray(mu, dtype=float)
    return _two_sided(stats.poisson.cdf(x, mu), stats.poisson.sf(x - 1, mu))


def negbin_pvalue(x, mu, alpha) -> np.ndarray:
    """Two-sided NB p-value, Var = mu + alpha mu^2 (alpha -> 0 is Poisson)."""
    x, mu, alpha = np.broadcast_arrays(*(np.asarray(a, dtype=float) for a in (x, mu, alpha)))
    out = poisson_pvalue(x, mu)
    nb = alpha > 1e-6
    if nb.any():
        r = 1.0 / alpha[nb]
        q = r / (r + mu[nb])
        out[nb] = _two_sided(stats.nbinom.cdf(x[nb], r, q), stats.nbinom.sf(x[nb] - 1, r, q))
    return out


class _StatTest(Detector):
    requires_counts = True

    def __init__(self, sensitivity: float | str = "medium", baseline: Detector | None = None):
        super().__init__(sensitivity)
        self.baseline = baseline

    def _fit(self, history: pd.DataFrame) -> None:
        if self.baseline is None:
            self.baseline_ = HourOfWeekBaseline(self.sensitivity)
        else:
            self.baseline_ = self.baseline
        if not getattr(self.baseline_, "fitted_", False) or self.baseline is None:
            self.baseline_._fit(history)
            self.baseline_.fitted_ = True
        h = self._prepare(history)
        self._fit_dispersion(h)

    def _expected(self, frame: pd.DataFrame) -> np.ndarray:
        exp = self.baseline_.expected(frame)["expected"].to_numpy()
        if "expected" in frame.columns:
            given = pd.to_numeric(frame["expected"], errors="coerce").to_numpy(dtype=float)
            exp = np.where(np.isfinite(given), given, exp)
        return exp

    @abstractmethod
    def _prepare(self, frame: pd.DataFrame) -> pd.DataFrame:
        """The history/current frame with the columns this test needs (per subclass)."""

    @abstractmethod
    def _fit_dispersion(self, h: pd.DataFrame) -> None:
        """Estimate the per-series overdispersion from history (per subclass)."""


class RateTest(_StatTest):
    """Binomial / beta-binomial test of numerator out of denominator against the expected rate."""

    name = "rate_test"

    def __init__(
        self,
        sensitivity: float | str = "medium",
        family: str = "betabinomial",
        baseline: Detector | None = None,
        max_rho: float = 0.2,
        exact_max_n: int = 300,
        rho_inflation: float = 1.5,
    ):
        super().__init__(sensitivity, baseline)
        self.rho_inflation = rho_inflation
        if family not in ("binomial", "betabinomial"):
            raise ValueError(f"family must be 'binomial' or 'betabinomial', got {family!r}")
        self.family, self.max_rho, self.exact_max_n = family, max_rho, exact_max_n

    def _fit(self, history: pd.DataFrame) -> None:
        h = history[history["denominator"] >= 1]
        sums = h.groupby("series_id")[["numerator", "denominator"]].sum()
        self.pooled_ = sums["numerator"] / sums["denominator"].where(sums["denominator"] > 0)
        self.nbar_ = history.groupby("series_id")["denominator"].mean()
        super()._fit(history)

    def _prepare(self, frame):
        f = frame.copy()
        p = self._expected(f)
        # Rare events (a few JS errors an hour in a small cohort): the median of hourly rates is
        # 0 because most hours have none, and 2 of 44 against "0" looks like p=1e-5. Where the
        # baseline expects fewer than one event (or one non-event) an hour, the series' pooled
        # rate (all events / all trials of the history) is the better estimate.
        if hasattr(self, "pooled_") and hasattr(self, "nbar_"):
            sids = f["series_id"].to_numpy()
            pooled = self.pooled_.reindex(sids).to_numpy(dtype=float)
            nbar = self.nbar_.reindex(sids).to_numpy(dtype=float)
            p0 = np.nan_to_num(p, nan=0.0)
            rare = np.isfinite(pooled) & (p0 * np.nan_to_num(nbar) < 1.0)
            p = np.where(rare, np.fmax(p, pooled), p)
            # the same at the top: a step nearly everyone passes has a median rate of 1
            rare_miss = np.isfinite(pooled) & ((1.0 - p0) * np.nan_to_num(nbar) < 1.0)
            p = np.where(rare_miss, np.fmin(p, pooled), p)
        f["p"] = np.clip(p, 1e-6, 1 - 1e-6)
        # uncertainty of the expected rate itself (a median of `count` rates, each from about
        # mean-denominator trials) folded into rho: Var(p_hat) ~ (pi/2) p(1-p) / (count * n_bar)
        cnt = self.baseline_.expected(f)["count"].to_numpy()
        nbar = (
            self.nbar_.reindex(f["series_id"].to_numpy()).to_numpy()
            if hasattr(self, "nbar_")
            else f["denominator"].to_numpy()
        )
        with np.errstate(divide="ignore", invalid="ignore"):
            f["rho_p"] = np.nan_to_num((np.pi / 2) / (np.maximum(cnt, 1) * nbar), nan=0.0)
        return f

    def _fit_dispersion(self, h):
        h = h[(h["denominator"] >= 1) & h["numerator"].notna() & h["p"].notna()]
        k, n, p = h["numerator"], h["denominator"], h["p"]
        base = n * p * (1 - p)
        num = ((k - n * p) ** 2 - base).groupby(h["series_id"]).sum()
        den = (base * (n - 1)).groupby(h["series_id"]).sum()
        rho = (num / den.where(den > 0)).clip(lower=0.0, upper=self.max_rho).fillna(0.0)
        self.rho_ = rho if self.family == "betabinomial" else rho * 0.0
        if self.family == "binomial":
            self.rho_inflation = 0.0

    def _score(self, current):
        f = self._prepare(current)
        k = np.round(f["numerator"].to_numpy())
        n = np.round(f["denominator"].to_numpy())
        p = f["p"].to_numpy()
        rho = (
            self.rho_inflation * self.rho_.reindex(f["series_id"].to_numpy()).fillna(0.0).to_numpy()
        )
        rho = rho + f["rho_p"].to_numpy()
        ok = np.isfinite(k) & np.isfinite(n) & (n >= 1) & np.isfinite(p)
        pv = np.full(len(f), np.nan)
        if ok.any():
            if self.family == "binomial":
                pv[ok] = binomial_pvalue(k[ok], n[ok], p[ok])
            else:
                pv[ok] = betabinomial_pvalue(k[ok], n[ok], p[ok], rho[ok], self.exact_max_n)
        alpha = self.thresholds_.alpha
        zq = stats.norm.isf(alpha / 2)
        with np.errstate(invalid="ignore", divide="ignore"):
            sd_rate = np.sqrt(p * (1 - p) * (1 + (n - 1) * rho) / n)
        out = pd.DataFrame(index=current.index)
        out["expected"] = np.where(np.isfinite(p), p, np.nan)
        out["lower"] = np.clip(p - zq * sd_rate, 0, 1)
        out["upper"] = np.clip(p + zq * sd_rate, 0, 1)
        out["score"] = np.where(ok, log10p(pv), 0.0)
        out["p_value"] = pv
        out["direction"] = direction_of(np.where(ok, k - n * p, np.nan))
        out["is_anomaly"] = ok & (pv < alpha)
        fam = "beta-binomial" if self.family == "betabinomial" else "binomial"
        out["reason"] = [
            f"{fam} p={q:.2g}: {kk:.0f}/{nn:.0f} vs expected {pp:.3g}" if o else "no volume"
            for o, q, kk, nn, pp in zip(ok, pv, k, n, p)
        ]
        out["rho"] = rho
        return out


class CountTest(_StatTest):
    """Poisson / negative-binomial test of a count (``value``) against the expected count."""

    name = "count_test"

    def __init__(
        self,
        sensitivity: float | str = "medium",
        family: str = "negbin",
        baseline: Detector | None = None,
        max_alpha: float = 5.0,
    ):
        super().__init__(sensitivity, baseline)
        if family not in ("poisson", "negbin"):
            raise ValueError(f"family must be 'poisson' or 'negbin', got {family!r}")
        self.family, self.max_alpha = family, max_alpha
        self.requires_counts = False

    def _prepare(self, frame):
        f = frame.copy()
        f["mu"] = np.clip(self._expected(f), 1e-3, None)
        return f

    def _fit_dispersion(self, h):
        h = h[h["value"].notna() & h["mu"].notna()]
        x, mu = h["value"], h["mu"]
        num = ((x - mu) ** 2 - mu).groupby(h["series_id"]).sum()
        den = (mu**2).groupby(h["series_id"]).sum()
        a = (num / den.where(den > 0)).clip(lower=0.0, upper=self.max_alpha).fillna(0.0)
        self.alpha_ = a if self.family == "negbin" else a * 0.0

    def _score(self, current):
        f = self._prepare(current)
        x = np.round(f["value"].to_numpy())
        mu = f["mu"].to_numpy()
        a = self.alpha_.reindex(f["series_id"].to_numpy()).fillna(0.0).to_numpy()
        ok = np.isfinite(x) & np.isfinite(mu) & (x >= 0)
        pv = np.full(len(f), np.nan)
        if ok.any():
            pv[ok] = negbin_pvalue(x[ok], mu[ok], a[ok])
        alpha = self.thresholds_.alpha
        zq = stats.norm.isf(alpha / 2)
        sd = np.sqrt(mu + a * mu**2)
        out = pd.DataFrame(index=current.index)
        out["expected"] = mu
        out["lower"] = np.clip(mu - zq * sd, 0, None)
        out["upper"] = mu + zq * sd
        out["score"] = np.where(ok, log10p(pv), 0.0)
        out["p_value"] = pv
        out["direction"] = direction_of(np.where(ok, x - mu, np.nan))
        out["is_anomaly"] = ok & (pv < alpha)
        fam = "negative-binomial" if self.family == "negbin" else "Poisson"
        out["reason"] = [
            f"{fam} p={q:.2g}: {xx:.0f} vs expected {m:.4g}" if o else "no value"
            for o, q, xx, m in zip(ok, pv, x, mu)
        ]
        out["nb_alpha"] = a
        return out
