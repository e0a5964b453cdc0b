"""How fast the checkout fast lane can be: minutes from a checkout drop's start to the
SameSlotTest's first flag, by store volume and drop size, against the hourly lane's floor.

Synthetic slots (the detector's own contract, no warehouse): checkout starts per 5 minutes
~ Poisson(7 x volume) with 15% day-to-day noise, conversion 0.6, purchases ~ Poisson(4.7 x
volume). Volume 1 is the demo store (1,500 sessions/h: about 7 checkouts and 5 purchases
per 5 minutes at midday). A drop of the given size starts at 12:00 on the scored day; each
cell is the median over seeds of the minutes until the first flagged slot ends (the
conversion or the purchases series, whichever is first), `-` when not flagged within 3
hours. The baseline is the hourly lane's floor: the earliest it can alert is after the
hour ends and its schedule runs (65 minutes, from a drop at the top of the hour), so the
ratio column is fast lane / 65.

Also printed: false flags per day on undropped days (all volumes), and the cost of scoring
one slot for 27 series (what one fast-lane run scores).

    uv run python bench/fast_lane.py [--seeds 5]
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import pandas as pd

from detectors.slots import SameSlotTest

HOURLY_FLOOR_MIN = 65.0
DAYS = 9
START = pd.Timestamp("2026-11-01", tz="UTC")
SLOTS = pd.date_range(START, periods=288 * DAYS, freq="5min")
LIVE = START + pd.Timedelta(days=DAYS - 1)
BREAK = LIVE + pd.Timedelta(hours=12)


def series(volume: float, drop: float, seed: int) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    after = SLOTS >= BREAK
    day_noise = np.repeat(rng.normal(1.0, 0.15, DAYS), 288).clip(0.5)
    n = rng.poisson(7 * volume * day_noise).astype(float)
    k = rng.binomial(n.astype(int), np.where(after, 0.6 * (1 - drop), 0.6)).astype(float)
    purchases = rng.poisson(4.7 * volume * day_noise * np.where(after, 1 - drop, 1.0))
    frame = pd.concat([
        pd.DataFrame({"series_id": "checkout_conversion_rate|all", "ts": SLOTS,
                      "numerator": k, "denominator": n}),
        pd.DataFrame({"series_id": "purchases|all", "ts": SLOTS,
                      "numerator": purchases.astype(float), "denominator": np.nan}),
    ], ignore_index=True)
    frame["value"] = frame["numerator"] / frame["denominator"].fillna(1.0)
    return frame


def minutes_to_flag(volume: float, drop: float, seed: int) -> tuple[float, int]:
    frame = series(volume, drop, seed)
    live = frame[frame["ts"] >= LIVE]
    scored = SameSlotTest().fit(frame[frame["ts"] < LIVE]).score(live).join(live[["ts"]])
    before = int(scored.loc[scored["ts"] < BREAK, "is_anomaly"].sum())
    hits = scored[scored["is_anomaly"] & (scored["ts"] >= BREAK)
                  & (scored["ts"] < BREAK + pd.Timedelta(hours=3))]
    if hits.empty:
        return float("nan"), before
    return (hits["ts"].min() + pd.Timedelta(minutes=5) - BREAK) / pd.Timedelta(minutes=1), before


def slot_cost(repeats: int = 20) -> float:
    """Seconds to fit and score one slot of 27 series (9 cohorts x 3 metrics)."""
    frame = pd.concat([series(1.0, 0.0, seed).assign(series_id=lambda f, s=seed: f["series_id"]
                                                      + f"&cohort{s}")
                       for seed in range(14)], ignore_index=True)
    frame = frame[frame["series_id"].isin(frame["series_id"].unique()[:27])]
    slot = BREAK
    history, current = frame[frame["ts"] < slot], frame[frame["ts"] == slot]
    started = time.perf_counter()
    for _ in range(repeats):
        SameSlotTest().fit(history).score(current)
    return (time.perf_counter() - started) / repeats


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seeds", type=int, default=5)
    args = parser.parse_args()
    volumes = (1, 5, 20, 100)
    drops = (0.05, 0.1, 0.2, 0.5, 1.0)
    rows, false_flags = [], 0
    for volume in volumes:
        row = {"volume (x demo)": volume, "checkouts / 5 min": 7 * volume}
        for drop in drops:
            results = [minutes_to_flag(volume, drop, seed) for seed in range(args.seeds)]
            false_flags += sum(before for _, before in results)
            found = [m for m, _ in results if not np.isnan(m)]
            median = float(np.median(found)) if len(found) * 2 > len(results) else float("nan")
            row[f"-{drop:.0%} min"] = median
            row[f"-{drop:.0%} ratio"] = median / HOURLY_FLOOR_MIN
        rows.append(row)
    table = pd.DataFrame(rows)
    print("Minutes from a drop's start to the fast lane's first flag (median over "
          f"{args.seeds} seeds) and ratio to the hourly lane's 65-minute floor:")
    print(table.round(2).to_string(index=False, na_rep="-"))
    quiet_days = 0.5 * len(volumes) * len(drops) * args.seeds  # 12 h before each break
    print(f"\nfalse flags before the breaks: {false_flags} in {quiet_days:.0f} series-days "
          f"x 2 series ({false_flags / quiet_days:.3f} per day)")
    print(f"scoring one slot of 27 series: {slot_cost() * 1000:.0f} ms")


if __name__ == "__main__":
    main()
