"""Robust baselines, vectorised over thousands of series (groupby / numpy, no per-point loop).

* :class:`HourOfWeekBaseline`: median of the same hour-of-week over the last K weeks, sigma from
  the MAD of the residuals per hour-of-day; when a slot has fewer than ``min_weeks`` values it
  falls back to the same hour-of-day over the last D days (median, MAD of residuals), then to the
  whole series over the last D days.
* :class:`EWMABaseline`: exponentially weighted mean with a band from the EW variance (of the
  values, or of the one-step errors when larger).

Score scale of both: |value - expected| / sigma (a robust z-score, sigma units). p_value is NaN
(shape detectors carry no calibrated probability; the rate-aware tests in ``stats`` do).
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from detectors.base import Detector, direction_of

MAD_TO_SIGMA = 1.4826
# out-of-sample / in-sample ratio of the median absolute residual against a median of k values
# (simulated, normal data): in-sample residuals understate the error of the next value.
_INSAMPLE_FACTOR = {
    1: 1.0,
    2: 1.72,
    3: 2.59,
    4: 1.58,
    5: 1.56,
    6: 1.40,
    7: 1.34,
    8: 1.29,
    9: 1.26,
    10: 1.22,
}


def _insample_factor(count: pd.Series) -> np.ndarray:
    c = count.to_numpy(dtype=float)
    out = np.array([_INSAMPLE_FACTOR.get(int(k), 1.0 + 2.2 / k) if k > 0 else 1.0 for k in c])
    return out


def _mad_stats(frame: pd.DataFrame, keys: list[str]) -> pd.DataFrame:
    """median, MAD-sigma and count of ``value`` per ``keys`` (NaN values ignored)."""
    f = frame[keys + ["value"]].dropna(subset=["value"])
    g = f.groupby(keys, sort=False)["value"]
    med = g.median().rename("median")
    f = f.join(med, on=keys)
    f["absdev"] = (f["value"] - f["median"]).abs()
    mad = f.groupby(keys, sort=False)["absdev"].median().rename("mad")
    cnt = g.size().rename("count")
    out = pd.concat([med, mad, cnt], axis=1)
    out["sigma"] = MAD_TO_SIGMA * out["mad"]
    return out.drop(columns="mad")


class HourOfWeekBaseline(Detector):
    """Same hour-of-week median / MAD over the last ``weeks`` weeks (fallbacks: hour-of-day over the
    last ``days`` days, then the series over the last ``days`` days).

    sigma is floored at ``rel_floor`` x |expected| and at ``series_floor`` x the series' residual
    sigma (against the hour-of-day medians of the last ``days`` days) and at ``meanabs_floor`` x
    the series' mean absolute residual (so a series whose MAD is 0, e.g. mostly zeros, has a
    finite sigma), so a flat history does not make every tiny wiggle infinitely anomalous.
    """

    name = "hour_of_week"

    def __init__(
        self,
        sensitivity: float | str = "medium",
        weeks: int = 4,
        days: int = 7,
        min_weeks: int = 2,
        min_days: int = 3,
        rel_floor: float = 0.01,
        series_floor: float = 0.25,
        band_factor: float = 1.0,
        resid_inflation: float = 1.0,
        volume_floor: bool = True,
        meanabs_floor: float = 0.5,
    ):
        super().__init__(sensitivity)
        self.weeks, self.days = weeks, days
        self.min_weeks, self.min_days = min_weeks, min_days
        self.rel_floor, self.series_floor = rel_floor, series_floor
        self.band_factor = band_factor
        self.resid_inflation = resid_inflation
        self.volume_floor = volume_floor
        self.meanabs_floor = meanabs_floor

    def _fit(self, history: pd.DataFrame) -> None:
        h = history[["series_id", "ts", "value"]]
        last = h.groupby("series_id")["ts"].transform("max")
        hw = h[h["ts"] > last - pd.Timedelta(weeks=self.weeks)].copy()
        hw["how"] = hw["ts"].dt.dayofweek * 24 + hw["ts"].dt.hour
        hw["hod"] = hw["ts"].dt.hour
        self.how_ = _mad_stats(hw, ["series_id", "how"])
        hd = hw[hw["ts"] > last.loc[hw.index] - pd.Timedelta(days=self.days)].copy()
        self.hod_ = _mad_stats(hd, ["series_id", "hod"])
        self.all_ = _mad_stats(hd, ["series_id"])
        # sigma: a per-slot MAD of 2-4 values is too noisy, so sigma is the MAD of the residuals
        # (value - slot median) pooled per (series, hour-of-day); each residual is scaled by the
        # out-of-sample / in-sample factor for a median of that many values (_INSAMPLE_FACTOR).
        rw = hw.join(self.how_[["median", "count"]], on=["series_id", "how"])
        rw = rw[rw["count"] >= self.min_weeks]
        rw["value"] = (rw["value"] - rw["median"]) * _insample_factor(rw["count"])
        self.sig_w_ = _mad_stats(rw[["series_id", "hod", "value"]], ["series_id", "hod"])["sigma"]
        rd = hd.join(self.hod_[["median", "count"]], on=["series_id", "hod"])
        rd["value"] = (rd["value"] - rd["median"]) * _insample_factor(rd["count"])
        self.sig_d_ = _mad_stats(rd[["series_id", "value"]], ["series_id"])["sigma"]
        # mean absolute residual (x 1.2533, normal-consistent): > 0 whenever any residual is, so
        # zero-inflated / step-like series (MAD = 0) still get a finite sigma
        self.meanabs_ = 1.2533 * rd["value"].abs().groupby(rd["series_id"]).mean()
        self.last_ts_ = h.groupby("series_id")["ts"].max()

    def expected(self, frame: pd.DataFrame) -> pd.DataFrame:
        """expected, sigma, source and the number of values behind ``expected`` for each row of
        a validated frame (same index)."""
        f = pd.DataFrame(
            {
                "series_id": frame["series_id"].to_numpy(),
                "how": (frame["ts"].dt.dayofweek * 24 + frame["ts"].dt.hour).to_numpy(),
                "hod": frame["ts"].dt.hour.to_numpy(),
            }
        )
        w = f.join(self.how_, on=["series_id", "how"])
        d = f.join(self.hod_, on=["series_id", "hod"])
        a = f.join(self.all_, on=["series_id"])
        sw = f.join(self.sig_w_, on=["series_id", "hod"])["sigma"].to_numpy()
        sd = f.join(self.sig_d_, on=["series_id"])["sigma"].to_numpy()
        ma = self.meanabs_.reindex(f["series_id"].to_numpy()).to_numpy()
        use_w = (w["count"] >= self.min_weeks).to_numpy()
        use_d = ~use_w & (d["count"] >= self.min_days).to_numpy()
        use_a = ~use_w & ~use_d & (a["count"] >= 1).to_numpy()
        exp = np.full(len(f), np.nan)
        sig = np.full(len(f), np.nan)
        cnt = np.zeros(len(f))
        src = np.full(len(f), "none", dtype=object)
        for mask, part, s_, label in (
            (use_w, w, sw, "hour-of-week"),
            (use_d, d, sd, "hour-of-day"),
            (use_a, a, a["sigma"].to_numpy(), "recent"),
        ):
            exp[mask] = part["median"].to_numpy()[mask]
            sig[mask] = self.resid_inflation * s_[mask]
            cnt[mask] = part["count"].to_numpy()[mask]
            src[mask] = label
        floor = np.fmax(
            np.fmax(self.rel_floor * np.abs(exp), self.series_floor * sd), self.meanabs_floor * ma
        )
        floor = np.where(np.isfinite(floor), floor, 0.0)
        if self.volume_floor and "denominator" in frame.columns:
            # a rate's sigma is never below its binomial noise at this point's volume
            n = frame["denominator"].to_numpy(dtype=float)
            pe = np.clip(exp, 0.0, 1.0)
            with np.errstate(divide="ignore", invalid="ignore"):
                bf = np.sqrt(pe * (1 - pe) / n)
            floor = np.where(np.isfinite(bf) & (n > 0), np.maximum(floor, bf), floor)
        sig = np.maximum(np.nan_to_num(sig, nan=0.0), floor)
        sig = np.where(sig > 0, sig, 1e-9)
        sig = np.where(np.isnan(exp), np.nan, sig)
        return pd.DataFrame(
            {"expected": exp, "sigma": sig, "source": src, "count": cnt}, index=frame.index
        )

    def _score(self, current: pd.DataFrame) -> pd.DataFrame:
        e = self.expected(current)
        z_thr = self.thresholds_.z * self.band_factor
        x = current["value"].to_numpy()
        exp, sig = e["expected"].to_numpy(), e["sigma"].to_numpy()
        z = np.abs(x - exp) / sig
        z = np.where(np.isfinite(z), z, 0.0)
        out = pd.DataFrame(index=current.index)
        out["expected"] = exp
        out["lower"] = exp - z_thr * sig
        out["upper"] = exp + z_thr * sig
        out["score"] = z
        out["p_value"] = np.nan
        out["direction"] = direction_of(x - exp)
        out["is_anomaly"] = z > z_thr
        out["reason"] = [
            f"{s} median {m:.4g}, robust z={zz:.1f}" if s != "none" else "no baseline"
            for s, m, zz in zip(e["source"], exp, z)
        ]
        out["sigma"] = sig
        return out


class EWMABaseline(Detector):
    """Exponentially weighted mean with a band of +-z x sqrt(EW variance) (``span`` in points).

    ``fit`` runs the EW recursions over the history (pandas ewm per series) and keeps the last
    state; ``score`` compares every current point with that state (causal: current points do not
    update it). Call ``fit`` again on the extended history to move forward.
    """

    name = "ewma"

    def __init__(
        self,
        sensitivity: float | str = "medium",
        span: int = 48,
        min_periods: int = 12,
        rel_floor: float = 0.01,
        band_factor: float = 1.0,
        max_points: int | None = None,
    ):
        super().__init__(sensitivity)
        self.span, self.min_periods = span, min_periods
        self.rel_floor, self.band_factor = rel_floor, band_factor
        # the EW state forgets exponentially: ~10 spans of history reproduce it to < 1e-8
        self.max_points = max_points or 10 * span

    def _fit(self, history: pd.DataFrame) -> None:
        h = history[["series_id", "ts", "value"]].dropna(subset=["value"])
        h = h.sort_values(["series_id", "ts"])
        h = h[h.groupby("series_id").cumcount(ascending=False) < self.max_points]
        g = h.groupby("series_id", sort=False)["value"]
        mean = g.ewm(span=self.span, adjust=True).mean().reset_index(level=0, drop=True)
        last = ~h["series_id"].duplicated(keep="last")
        # band variance: the larger of the EW variance of the values and the EW mean of the squared
        # one-step-ahead errors (the first covers a state that is some steps old, the second jumps)
        prev_mean = mean.groupby(h["series_id"]).shift(1)
        err2 = (h["value"] - prev_mean) ** 2
        var = (
            err2.groupby(h["series_id"], sort=False)
            .ewm(span=self.span, adjust=True, ignore_na=True)
            .mean()
            .reset_index(level=0, drop=True)
        )
        var_x = g.ewm(span=self.span, adjust=True).var().reset_index(level=0, drop=True)
        var = np.fmax(var, var_x)
        n = g.transform("size")
        state = pd.DataFrame(
            {"mean": mean[last].to_numpy(), "var": var[last].to_numpy(), "n": n[last].to_numpy()},
            index=h.loc[last, "series_id"].to_numpy(),
        )
        state.loc[state["n"] < self.min_periods, ["mean", "var"]] = np.nan
        self.state_ = state

    def _score(self, current: pd.DataFrame) -> pd.DataFrame:
        st = self.state_.reindex(current["series_id"].to_numpy())
        exp = st["mean"].to_numpy()
        sig = np.sqrt(st["var"].to_numpy())
        sig = np.maximum(np.nan_to_num(sig, nan=0.0), self.rel_floor * np.abs(exp))
        sig = np.where(sig > 0, sig, 1e-9)
        x = current["value"].to_numpy()
        z = np.abs(x - exp) / sig
        z = np.where(np.isfinite(z), z, 0.0)
        z_thr = self.thresholds_.z * self.band_factor
        out = pd.DataFrame(index=current.index)
        out["expected"] = exp
        out["lower"] = exp - z_thr * sig
        out["upper"] = exp + z_thr * sig
        out["score"] = z
        out["p_value"] = np.nan
        out["direction"] = direction_of(x - exp)
        out["is_anomaly"] = z > z_thr
        out["reason"] = [f"EWMA {m:.4g}, z={zz:.1f}" for m, zz in zip(exp, z)]
        out["sigma"] = sig
        return out
