"""Cost of each detector (fit and score, per series) and of the ensemble per hourly partition.

    .venv/bin/python bench/detect.py            # 1k / 5k / 20k series partitions
    .venv/bin/python bench/detect.py --quick    # smaller: 1k / 5k, fewer Prophet series

Synthetic funnel data: per cohort `sessions` (Poisson count with daily + weekly seasonality) and
three rates (binomial), 4 weeks of hourly history + the hour to score. Timings are wall-clock
on this machine, single process.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from detectors import (
    CountTest,
    CUSUMDetector,
    Ensemble,
    EWMABaseline,
    HourOfWeekBaseline,
    MultivariateDetector,
    ProphetDetector,
    RateTest,
)

RATES = (("session_conversion_rate", 0.03), ("add_to_cart_rate", 0.2), ("checkout_start_rate", 0.1))


def synth(n_series: int, hours: int = 24 * 28 + 1, seed: int = 0) -> pd.DataFrame:
    """n_series = 4 x cohorts series (sessions + 3 rates per cohort)."""
    rng = np.random.default_rng(seed)
    n_coh = max(1, n_series // 4)
    ts = pd.date_range("2024-01-01", periods=hours, freq="h")
    hod, dow = ts.hour.to_numpy(), ts.day_of_week.to_numpy()
    season = (1 + 0.6 * np.sin(2 * np.pi * (hod - 9) / 24)) * (1 + 0.2 * (dow >= 5))
    scale = 1500.0 / (1 + np.arange(n_coh)) ** 0.8 + 5
    sess = rng.poisson(scale[:, None] * season[None, :]).astype(float)  # cohorts x hours
    cohorts = np.array([f"c{i}" for i in range(n_coh)])
    parts = []
    T = len(ts)

    def frame(metric, num, den):
        val = num / np.where(den > 0, den, np.nan) if den is not None else num
        return pd.DataFrame(
            {
                "series_id": np.repeat([f"{metric}|{c}" for c in cohorts], T),
                "ts": np.tile(ts.to_numpy(), n_coh),
                "value": val.ravel(),
                "numerator": num.ravel(),
                "denominator": den.ravel() if den is not None else np.nan,
            }
        )

    parts.append(frame("sessions", sess, None))
    for m, p in RATES:
        parts.append(frame(m, rng.binomial(sess.astype(int), p).astype(float), sess))
    return pd.concat(parts, ignore_index=True)


def split(df):
    last = df["ts"].max()
    return df[df["ts"] < last], df[df["ts"] == last]


def timed(fn, *args):
    t0 = time.perf_counter()
    out = fn(*args)
    return out, time.perf_counter() - t0


def per_detector(n_series: int, n_prophet: int):
    df = synth(n_series)
    hist, cur = split(df)
    rates_h, rates_c = hist[hist["denominator"].notna()], cur[cur["denominator"].notna()]
    cnt_h, cnt_c = hist[hist["denominator"].isna()], cur[cur["denominator"].isna()]
    rows = []
    for name, det, h, c in (
        ("hour_of_week", HourOfWeekBaseline(), hist, cur),
        ("ewma", EWMABaseline(), hist, cur),
        ("cusum", CUSUMDetector(), hist, cur),
        ("rate_test (beta-binomial)", RateTest(), rates_h, rates_c),
        ("count_test (neg-binomial)", CountTest(), cnt_h, cnt_c),
        ("multivariate (ECOD)", MultivariateDetector(), hist, cur),
    ):
        _, tf = timed(det.fit, h)
        _, ts_ = timed(det.score, c)
        n = h["series_id"].nunique()
        rows.append((name, n, tf / n, ts_ / n))
    sids = hist["series_id"].unique()[:n_prophet]
    ph, pc = hist[hist["series_id"].isin(sids)], cur[cur["series_id"].isin(sids)]
    det = ProphetDetector()
    _, tf = timed(det.fit, ph)
    _, ts_ = timed(det.score, pc)
    rows.append(("prophet", len(sids), tf / len(sids), ts_ / len(sids)))
    out = pd.DataFrame(
        rows, columns=["detector", "series", "fit_s_per_series", "score_s_per_series"]
    )
    base = (out["fit_s_per_series"] + out["score_s_per_series"]).min()
    out["ratio_vs_cheapest"] = (out["fit_s_per_series"] + out["score_s_per_series"]) / base
    return out


def ensemble_scaling(sizes, top_n: int):
    rows = []
    for n in sizes:
        hist, cur = split(synth(n, seed=n))
        ens = Ensemble(prophet_top_n=top_n)
        _, t_cold = timed(ens.fit, hist)
        fit_cold = dict(ens.timings_["fit"])
        _, t_warm = timed(ens.fit, hist)  # next partition: Prophet models reused
        res, t_score = timed(ens.score, cur)
        rows.append(
            {
                "series": n,
                "rows_history": len(hist),
                "fit_cold_s": t_cold,
                "prophet_fit_s": fit_cold.get("prophet", 0.0),
                "fit_cached_s": t_warm,
                "score_s": t_score,
                "partition_s (cached)": t_warm + t_score,
                "ms_per_series": 1e3 * (t_warm + t_score) / n,
                "anomalies": int(res["is_anomaly"].sum()),
            }
        )
        print(f"  {n} series done", flush=True)
    out = pd.DataFrame(rows)
    out["ratio_vs_smallest"] = out["partition_s (cached)"] / out["partition_s (cached)"].iloc[0]
    return out


def main(argv=None):
    ap = argparse.ArgumentParser()
    ap.add_argument("--quick", action="store_true")
    a = ap.parse_args(argv)
    n_det, n_prophet = (400, 2) if a.quick else (1000, 5)
    sizes = [1000, 5000] if a.quick else [1000, 5000, 20000]
    top_n = 10 if a.quick else 50
    pd.set_option("display.width", 200)
    print(
        f"Per-detector cost, {n_det} synthetic series (Prophet: {n_prophet} series), "
        "4 weeks hourly history, 1 hour scored"
    )
    print(per_detector(n_det, n_prophet).to_string(index=False, float_format=lambda v: f"{v:.2e}"))
    print(
        f"\nEnsemble per hourly partition (Prophet capped at the {top_n} highest-volume series; "
        "'cold' = first fit incl. Prophet fits, 'cached' = later partitions reusing the models)"
    )
    print(ensemble_scaling(sizes, top_n).to_string(index=False, float_format=lambda v: f"{v:.3f}"))


if __name__ == "__main__":
    main()
