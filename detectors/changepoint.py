"""CUSUM on standardised residuals, for sustained shifts (small persistent drops or rises).

Residual z_t = (x_t - expected_t) / sigma_t against a robust baseline (default
:class:`HourOfWeekBaseline` fitted on the history). Two one-sided CUSUMs, vectorised across
series (a loop over time steps, numpy over series):

    S+_t = max(0, S+_{t-1} + z_t - k)      S-_t = max(0, S-_{t-1} - z_t - k)

An alarm when S > h (k, h from sensitivity: k = 0.5, medium h = 5); after an alarm the sum restarts
from 0 (``reset_on_alarm``), so a persisting shift re-alarms every few points rather than on every
point. ``fit`` runs the recursions
over the last ``lookback`` points of the history (residuals in-sample against the same baseline)
so ``score`` continues from that state; current points are run in time order and each uses only
the ones before it. Score scale: max(S+, S-) in sigma units. ``run_start`` = the first timestamp
of the current run (the point after the CUSUM was last at 0).
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from detectors.base import Detector
from detectors.baselines import HourOfWeekBaseline


class CUSUMDetector(Detector):
    name = "cusum"

    def __init__(
        self,
        sensitivity: float | str = "medium",
        baseline: Detector | None = None,
        lookback: int = 48,
        clip_z: float = 6.0,
        reset_on_alarm: bool = True,
    ):
        super().__init__(sensitivity)
        self.baseline, self.lookback, self.clip_z = baseline, lookback, clip_z
        self.reset_on_alarm = reset_on_alarm

    def _fit(self, history: pd.DataFrame) -> None:
        if self.baseline is None:
            self.baseline_ = HourOfWeekBaseline(self.sensitivity)
            self.baseline_._fit(history)
            self.baseline_.fitted_ = True
        else:
            self.baseline_ = self.baseline
            if not getattr(self.baseline_, "fitted_", False):
                self.baseline_.fit(history)
        h = history.sort_values(["series_id", "ts"])
        h = h[h.groupby("series_id").cumcount(ascending=False) < self.lookback]
        z = self._residuals(h)
        self.state_ = self._run(h, z, None)[0]

    def _residuals(self, f: pd.DataFrame) -> np.ndarray:
        e = self.baseline_.expected(f)
        z = (f["value"].to_numpy() - e["expected"].to_numpy()) / e["sigma"].to_numpy()
        return np.clip(np.nan_to_num(z, nan=0.0, posinf=0.0, neginf=0.0), -self.clip_z, self.clip_z)

    def _run(self, f: pd.DataFrame, z: np.ndarray, state: pd.DataFrame | None):
        """Run the CUSUM over frame ``f`` (sorted by series, ts) from ``state``; returns
        (end state per series, S+ per row, S- per row, run start per row)."""
        k = self.thresholds_.cusum_k
        codes, uniques = pd.factorize(f["series_id"], sort=False)
        pos = f.groupby(codes).cumcount().to_numpy()
        n_series = len(uniques)
        T = int(pos.max()) + 1 if len(pos) else 0
        Z = np.zeros((n_series, T))
        M = np.zeros((n_series, T), dtype=bool)
        Z[codes, pos] = z
        M[codes, pos] = True
        TS = np.full((n_series, T), np.datetime64("NaT"), dtype="datetime64[ns]")
        TS[codes, pos] = f["ts"].to_numpy()
        sp = np.zeros(n_series)
        sn = np.zeros(n_series)
        start_p = np.full(n_series, np.datetime64("NaT"), dtype="datetime64[ns]")
        start_n = start_p.copy()
        if state is not None:
            st = state.reindex(uniques)
            sp = st["s_pos"].fillna(0.0).to_numpy()
            sn = st["s_neg"].fillna(0.0).to_numpy()
            start_p = st["start_pos"].to_numpy(dtype="datetime64[ns]")
            start_n = st["start_neg"].to_numpy(dtype="datetime64[ns]")
        SP, SN = np.zeros((n_series, T)), np.zeros((n_series, T))
        STP = np.full((n_series, T), np.datetime64("NaT"), dtype="datetime64[ns]")
        STN = STP.copy()
        for t in range(T):
            m = M[:, t]
            new_p = np.maximum(0.0, sp + Z[:, t] - k)
            new_n = np.maximum(0.0, sn - Z[:, t] - k)
            begin_p = (sp == 0) & (new_p > 0)
            begin_n = (sn == 0) & (new_n > 0)
            start_p = np.where(
                m & begin_p, TS[:, t], np.where(m & (new_p == 0), np.datetime64("NaT"), start_p)
            )
            start_n = np.where(
                m & begin_n, TS[:, t], np.where(m & (new_n == 0), np.datetime64("NaT"), start_n)
            )
            sp = np.where(m, new_p, sp)
            sn = np.where(m, new_n, sn)
            SP[:, t], SN[:, t], STP[:, t], STN[:, t] = sp, sn, start_p, start_n
            if self.reset_on_alarm:  # textbook CUSUM: restart after signalling
                h = self.thresholds_.cusum_h
                sp = np.where(m & (sp > h), 0.0, sp)
                sn = np.where(m & (sn > h), 0.0, sn)
        state = pd.DataFrame(
            {"s_pos": sp, "s_neg": sn, "start_pos": start_p, "start_neg": start_n}, index=uniques
        )
        return state, SP[codes, pos], SN[codes, pos], STP[codes, pos], STN[codes, pos]

    def _score(self, current: pd.DataFrame) -> pd.DataFrame:
        cur = current.sort_values(["series_id", "ts"])
        z = self._residuals(cur)
        _, sp, sn, stp, stn = self._run(cur, z, self.state_)
        e = self.baseline_.expected(cur)
        h = self.thresholds_.cusum_h
        up = sp >= sn
        s = np.where(up, sp, sn)
        out = pd.DataFrame(index=cur.index)
        out["expected"] = e["expected"].to_numpy()
        out["lower"] = out["expected"] - h * e["sigma"].to_numpy()
        out["upper"] = out["expected"] + h * e["sigma"].to_numpy()
        out["score"] = s
        out["p_value"] = np.nan
        out["direction"] = np.where(s > 0, np.where(up, "up", "down"), "none").astype(object)
        out["is_anomaly"] = s > h
        out["run_start"] = pd.to_datetime(np.where(up, stp, stn))
        out["reason"] = [
            f"CUSUM {d} {v:.1f} sigma since {rs}" if v > 0 else "CUSUM 0"
            for d, v, rs in zip(out["direction"], s, out["run_start"])
        ]
        return out.loc[current.index]
