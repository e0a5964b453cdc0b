"""Detection delay and false alarms of the sequential test (detectors/sequential.py).

    .venv/bin/python bench/sequential.py            # 40 series per cell, 1,000 quiet series
    .venv/bin/python bench/sequential.py --quick    # 10 per cell, 200 quiet series

Simulated checkout conversion (k of n checkout starts, the simulated store's ratios from
docs/evaluation.md: 84.5 checkout starts per 1,500 sessions, conversion 0.55, beta-binomial
noise with intra-class correlation 0.002, daily seasonality of volume), 4 weeks of history,
then a relative drop from a given hour of day. Delay = hours from the drop's first hour to the
first alarm (0 = flagged in its first hour). The threshold is computed for `--monitored`
series (default 3,000: the store's cube), i.e. the production multiplicity, whatever the
number simulated. False alarms: quiet series scored over 2 days at the default budget and at
a large one (so that enough alarms happen to measure the rate against its bound).
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from detectors.sequential import SequentialTest

HISTORY_HOURS = 24 * 28
STARTS_PER_SESSION = 84.5 / 1500
CHECKOUT_CONVERSION = 0.55


def checkout_series(n_series, sessions_per_hour, drop=0.0, drop_hours=0, extra_hours=48,
                    seed=0, rho=0.002, start="2024-01-01"):
    """Checkout conversion (k of n checkout starts) per series: daily seasonality of volume,
    beta-binomial noise (intra-class correlation rho) and a relative drop over the last
    `drop_hours` hours of the `extra_hours` after the 4-week history."""
    rng = np.random.default_rng(seed)
    hours = HISTORY_HOURS + extra_hours
    ts = pd.date_range(start, periods=hours, freq="h")
    season = 1 + 0.5 * np.sin(2 * np.pi * (ts.hour.to_numpy() - 9) / 24)
    n = rng.poisson(sessions_per_hour * STARTS_PER_SESSION * np.tile(season, (n_series, 1)))
    p = np.full(n.shape, CHECKOUT_CONVERSION)
    if drop_hours:
        p[:, hours - drop_hours:] *= 1 - drop
    p = rng.beta(p * (1 - rho) / rho, (1 - p) * (1 - rho) / rho)
    k = rng.binomial(n, p).astype(float)
    n = n.astype(float)
    with np.errstate(invalid="ignore", divide="ignore"):
        value = np.where(n > 0, k / n, np.nan)
    return pd.DataFrame({
        "series_id": np.repeat([f"checkout_conversion_rate|c{i}" for i in range(n_series)], hours),
        "ts": np.tile(ts.to_numpy(), n_series),
        "value": value.ravel(), "numerator": k.ravel(), "denominator": n.ravel(),
    })


def split_at(frame, hours_after):
    """(4-week history, the next `hours_after` hours)."""
    cut = frame["ts"].min() + pd.Timedelta(hours=HISTORY_HOURS)
    hist = frame[frame["ts"] < cut]
    cur = frame[(frame["ts"] >= cut) & (frame["ts"] < cut + pd.Timedelta(hours=hours_after))]
    return hist, cur


def first_alarm_hours(frame, det, drop_start, scored_hours=48):
    """Hours from the drop's start to each series' first alarm (inf: never)."""
    hist, cur = split_at(frame, scored_hours)
    r = cur.join(det.fit(hist).score(cur)[["is_anomaly"]])
    flagged = r[r["is_anomaly"] & (r["ts"] >= drop_start)]
    first = flagged.groupby("series_id")["ts"].min()
    delay = ((first - drop_start) / pd.Timedelta(hours=1)).reindex(r["series_id"].unique())
    return delay.fillna(np.inf).to_numpy()


def delays(per_cell, monitored, start_hours=(0, 6, 12, 18)):
    rows = []
    for sessions in (1310, 180):
        for drop in (0.10, 0.20, 0.50):
            d = []
            for j, offset in enumerate(start_hours):  # drops starting at several hours of day
                frame = checkout_series(per_cell, sessions, drop=drop, drop_hours=48 - offset,
                                        seed=100 + j)
                start = frame["ts"].min() + pd.Timedelta(hours=HISTORY_HOURS + offset)
                d.append(first_alarm_hours(frame, SequentialTest(n_series=monitored), start,
                                           scored_hours=48))
            d = np.concatenate(d)
            caught = np.isfinite(d)
            rows.append({
                "sessions/h": sessions, "checkout starts/h": round(sessions * STARTS_PER_SESSION, 1),
                "drop": f"{drop:.0%}", "series": len(d),
                "caught within 2 days": caught.mean(),
                "in first hour": (d == 0).mean(),
                "median delay h": float(np.median(d)) if caught.mean() >= 0.5 else np.inf,
                "p90 delay h": float(np.sort(d)[int(np.ceil(0.9 * len(d))) - 1]),
            })
    return pd.DataFrame(rows)


def false_alarms(n_series, days=2):
    frame = checkout_series(n_series, 1310, extra_hours=24 * days, seed=7)
    hist, cur = split_at(frame, 24 * days)
    rows = []
    for sensitivity, budget in (("medium", 0.3), ("medium", 1e9), ("high", 1e9)):
        det = SequentialTest(sensitivity=sensitivity, false_alarms_per_day=budget).fit(hist)
        r = det.score(cur)
        alarms = int(r["is_anomaly"].sum())
        rows.append({
            "sensitivity": sensitivity, "budget alerts/day (all series)": budget,
            "series": n_series, "days": days, "alarms": alarms,
            "per series-day": alarms / (n_series * days),
            "bound per series-day": 24 * det.threshold_,
            "per day, all series": alarms / days,
        })
    return pd.DataFrame(rows)


def main(argv=None):
    ap = argparse.ArgumentParser()
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--monitored", type=int, default=3000)
    a = ap.parse_args(argv)
    per_cell, quiet = (3, 200) if a.quick else (10, 1000)
    pd.set_option("display.width", 200)
    t0 = time.perf_counter()
    print(f"Detection delay (threshold for {a.monitored} monitored series, alarm p < "
          f"{0.3 / a.monitored / 24:.2g} per series-hour), {per_cell} series x 4 start hours "
          "per cell:")
    print(delays(per_cell, a.monitored).to_string(index=False, float_format=lambda v: f"{v:.2f}"))
    print(f"\nFalse alarms on {quiet} quiet series (1,310 sessions/h), 2 days:")
    print(false_alarms(quiet).to_string(index=False, float_format=lambda v: f"{v:.3g}"))
    print(f"\n{time.perf_counter() - t0:.0f} s")


if __name__ == "__main__":
    main()
