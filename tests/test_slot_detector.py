"""SameSlotTest, the fast lane's detector: synthetic slot series with known breaks."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from detectors import NotFittedError
from detectors.slots import SameSlotTest

START = pd.Timestamp("2026-11-01", tz="UTC")
DAYS = 9
SLOTS = pd.date_range(START, periods=288 * DAYS, freq="5min")
LIVE = START + pd.Timedelta(days=DAYS - 1)
BREAK = LIVE + pd.Timedelta(hours=12)


def series(break_factor: float = 1.0, fail_rate_after: float | None = None, seed: int = 0):
    """Checkout conversion (~8 checkouts / slot at 60%), purchases (~5 / slot) and payment
    failures (5% of ~6 attempts / slot) with a break from BREAK on."""
    rng = np.random.default_rng(seed)
    after = SLOTS >= BREAK
    n = rng.poisson(8, len(SLOTS)).astype(float)
    k = rng.binomial(n.astype(int), np.where(after, 0.6 * break_factor, 0.6)).astype(float)
    c = rng.poisson(np.where(after, 5 * break_factor, 5.0)).astype(float)
    a = rng.poisson(6, len(SLOTS)).astype(float)
    fail = np.where(after & (fail_rate_after is not None), fail_rate_after or 0.0, 0.05)
    f = rng.binomial(a.astype(int), fail).astype(float)
    frames = [
        pd.DataFrame({"series_id": "checkout_conversion_rate|all", "ts": SLOTS,
                      "numerator": k, "denominator": n}),
        pd.DataFrame({"series_id": "purchases|all", "ts": SLOTS, "numerator": c,
                      "denominator": np.nan}),
        pd.DataFrame({"series_id": "payment_failure_rate|payment_provider=adyen", "ts": SLOTS,
                      "numerator": f, "denominator": a}),
    ]
    frame = pd.concat(frames, ignore_index=True)
    frame["value"] = np.where(frame["denominator"].notna(),
                              frame["numerator"] / frame["denominator"], frame["numerator"])
    return frame


def score_live(frame: pd.DataFrame, **kwargs) -> pd.DataFrame:
    history, current = frame[frame["ts"] < LIVE], frame[frame["ts"] >= LIVE]
    scored = SameSlotTest(**kwargs).fit(history).score(current)
    return scored.join(current[["series_id", "ts"]])


def first_flag(scored: pd.DataFrame, series_id: str):
    hits = scored[scored["is_anomaly"] & (scored["series_id"] == series_id)]
    return hits["ts"].min() if len(hits) else None


def test_a_quiet_day_raises_nothing():
    scored = score_live(series())
    assert not scored["is_anomaly"].any()
    assert (scored["severity"] < 50).all()
    assert scored["p_value"].between(0, 1).all()


def test_a_checkout_outage_is_flagged_within_half_an_hour_at_demo_volume():
    scored = score_live(series(break_factor=0.0))
    flagged = first_flag(scored, "checkout_conversion_rate|all")
    assert flagged is not None and BREAK <= flagged <= BREAK + pd.Timedelta(minutes=30)
    row = scored[(scored["series_id"] == "checkout_conversion_rate|all")
                 & (scored["ts"] == flagged)].iloc[0]
    assert row["direction"] == "down" and row["severity"] >= 50
    assert row["window_expected"] == pytest.approx(0.6, abs=0.05)
    assert "min:" in row["reason"]
    assert first_flag(scored, "purchases|all") is not None
    assert not scored[scored["ts"] < BREAK]["is_anomaly"].any(), "nothing before the break"


def test_payment_failures_are_flagged_upwards_only():
    up = score_live(series(fail_rate_after=0.5))
    assert first_flag(up, "payment_failure_rate|payment_provider=adyen") is not None
    assert (up.loc[up["is_anomaly"], "direction"] == "up").all()
    # fewer failures than usual is good news: never an alert
    down = score_live(series(fail_rate_after=0.0))
    assert first_flag(down, "payment_failure_rate|payment_provider=adyen") is None


def test_scoring_a_day_at_once_equals_scoring_slot_by_slot():
    """No look-ahead: a slot's verdict uses only itself and earlier slots."""
    frame = series(break_factor=0.3, seed=3)
    batch = score_live(frame).set_index(["series_id", "ts"])
    for slot in [BREAK - pd.Timedelta(minutes=5), BREAK + pd.Timedelta(minutes=25)]:
        history, current = frame[frame["ts"] < slot], frame[frame["ts"] == slot]
        one = SameSlotTest().fit(history).score(current).join(current[["series_id", "ts"]])
        one = one.set_index(["series_id", "ts"])
        pd.testing.assert_series_equal(one["p_value"], batch.loc[one.index, "p_value"])


def test_too_few_earlier_days_is_a_cold_start_not_an_alert():
    frame = series(break_factor=0.0)
    recent = frame[frame["ts"] >= LIVE - pd.Timedelta(days=2)]
    scored = score_live(recent)
    assert not scored["is_anomaly"].any()
    assert scored["reason"].str.startswith("cold start").all()


def test_bad_input_gets_a_clear_error():
    frame = series()
    with pytest.raises(NotFittedError):
        SameSlotTest().score(frame)
    shifted = frame.assign(ts=frame["ts"] + pd.Timedelta(minutes=2))
    with pytest.raises(ValueError, match="slot starts"):
        SameSlotTest().fit(frame[frame["ts"] < LIVE]).score(shifted[shifted["ts"] >= LIVE])
    with pytest.raises(ValueError, match="divide 60"):
        SameSlotTest(slot_minutes=7)
    with pytest.raises(ValueError, match="numerator"):
        SameSlotTest().fit(frame.drop(columns=["numerator"]))
