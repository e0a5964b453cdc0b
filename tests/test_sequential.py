"""The sequential test (detectors/sequential.py): detection delay on simulated drops, false
alarms on quiet series against the configured budget, and bad input."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from bench.sequential import HISTORY_HOURS, checkout_series, first_alarm_hours, split_at
from detectors import Ensemble
from detectors.sequential import WINDOW_GRID, SequentialTest, alarm_pvalue


@pytest.mark.parametrize(
    ("sessions", "drop", "median_within", "all_within"),
    [(1310, 0.5, 1, 3), (1310, 0.2, 12, 30), (180, 0.5, 12, 30)],
)
def test_drop_is_caught_after_the_hours_it_needs(sessions, drop, median_within, all_within):
    # drops start at 13:00 (the volume's upper half of the day); 20 series, 500 monitored
    frame = checkout_series(20, sessions, drop=drop, drop_hours=36, seed=3)
    start = frame["ts"].min() + pd.Timedelta(hours=HISTORY_HOURS + 12)
    delay = first_alarm_hours(frame, SequentialTest(n_series=500), start)
    # delay 0 = flagged in the drop's first hour
    assert np.median(delay) <= median_within
    assert (delay <= all_within).all()


def test_fifty_percent_drop_at_1310_sessions_is_mostly_flagged_in_its_first_hour():
    frame = checkout_series(40, 1310, drop=0.5, drop_hours=36, seed=4)
    start = frame["ts"].min() + pd.Timedelta(hours=HISTORY_HOURS + 12)
    delay = first_alarm_hours(frame, SequentialTest(n_series=500), start)
    assert (delay == 0).mean() >= 0.5 and (delay <= 1).mean() >= 0.9


def test_quiet_series_false_alarms_stay_within_the_budget():
    # sensitivity 'high' and a large budget make false alarms frequent enough to count:
    # 400 series x 2 days, budget min(200 / 400, 24 x alpha) per series-day
    n_series, days = 400, 2
    frame = checkout_series(n_series, 1310, extra_hours=24 * days, seed=5)
    hist, cur = split_at(frame, 24 * days)
    det = SequentialTest(sensitivity="high", false_alarms_per_day=200.0).fit(hist)
    r = det.score(cur)
    budget = 24 * det.threshold_  # per series-day
    assert budget == pytest.approx(min(200.0 / n_series, 24 * 1.778e-3), rel=1e-3)
    rate = r["is_anomaly"].sum() / (n_series * days)
    assert rate <= budget
    assert rate >= budget / 10  # calibrated, not merely silent
    assert r["p_value"].between(0, 1).all()


def test_threshold_is_a_bonferroni_share_of_the_daily_budget():
    assert alarm_pvalue(1, "medium") == pytest.approx(1e-4)  # capped at the hourly alpha
    assert alarm_pvalue(3000, "medium") == pytest.approx(0.3 / 3000 / 24)
    assert alarm_pvalue(3000, "medium", false_alarms_per_day=3.0) == pytest.approx(
        3.0 / 3000 / 24)
    # the series that can alert are counted, context-only metrics are not
    frame = checkout_series(3, 1310, seed=1)
    events = frame.assign(series_id=frame["series_id"].str.replace(
        "checkout_conversion_rate", "events"), denominator=np.nan)
    det = SequentialTest().fit(pd.concat([frame, events], ignore_index=True))
    assert det.n_series_ == 3


def test_one_extreme_hour_alarms_once_a_sustained_shift_keeps_alarming():
    frame = checkout_series(2, 1310, extra_hours=24, seed=6)
    hist, cur = split_at(frame, 24)
    cur = cur.copy()
    c0 = cur.index[cur["series_id"].str.endswith("c0")]
    c1 = cur.index[cur["series_id"].str.endswith("c1")]
    cur.loc[c0[10], "numerator"] = 0.0  # one broken hour
    cur.loc[c1[10:], "numerator"] = np.round(cur.loc[c1[10:], "numerator"] * 0.4)  # lasting
    cur["value"] = cur["numerator"] / cur["denominator"]
    r = SequentialTest().fit(hist).score(cur)
    assert r.loc[c0, "is_anomaly"].sum() == 1 and r.loc[c0[10], "is_anomaly"]
    assert r.loc[c1[:10], "is_anomaly"].sum() == 0 and r.loc[c1[10:], "is_anomaly"].mean() > 0.8
    assert "sequential 1 h" in r.loc[c0[10], "reason"]


def test_counts_use_the_seasonal_baseline_and_the_practical_effect():
    rng = np.random.default_rng(7)
    hours = HISTORY_HOURS + 24
    ts = pd.date_range("2024-01-01", periods=hours, freq="h")
    season = (1 + 0.6 * np.sin(2 * np.pi * (ts.hour - 9) / 24)) * (1 + 0.2 * (ts.dayofweek >= 5))
    mu = 400 * season.to_numpy()
    x = rng.poisson(mu).astype(float)
    x[-12:] = rng.poisson(mu[-12:] * 0.85)  # -15%: significant, below the 25% drop rule
    y = rng.poisson(mu).astype(float)
    y[-12:] = rng.poisson(mu[-12:] * 0.6)  # -40%
    frame = pd.DataFrame({
        "series_id": np.repeat(["purchases|small", "purchases|big"], hours),
        "ts": np.tile(ts, 2), "value": np.concatenate([x, y]),
    })
    hist, cur = split_at(frame, 24)
    r = cur.join(SequentialTest().fit(hist).score(cur))
    small, big = r[r["series_id"] == "purchases|small"], r[r["series_id"] == "purchases|big"]
    assert not small["is_anomaly"].any() and not big["is_anomaly"].iloc[:12].any()
    assert big["is_anomaly"].iloc[12:].all()
    assert (big.loc[big["is_anomaly"], "direction"] == "down").all()


def test_bad_input_gets_a_defined_answer():
    frame = checkout_series(6, 500, extra_hours=24, seed=8)
    sid = frame["series_id"]
    frame.loc[sid.str.endswith("c0") & (frame.index % 7 == 0), "numerator"] = np.nan  # NaN
    frame = frame[~(sid.str.endswith("c1") & (frame.index % 5 == 0))]  # gaps
    c2 = frame["series_id"].str.endswith("c2")
    frame.loc[c2, ["numerator", "denominator"]] = 0.0  # zeros
    frame.loc[c2, "value"] = np.nan
    c3 = frame["series_id"].str.endswith("c3")
    frame.loc[c3, ["numerator", "value"]] = frame.loc[c3, "denominator"]  # a constant rate of 1
    mid = frame["series_id"].str.endswith("c4") & (
        frame["ts"] < frame["ts"].min() + pd.Timedelta(days=27))
    frame = frame[~mid]  # a cohort that appears mid-history
    hist, cur = split_at(frame, 24)
    one = cur.iloc[[0]].assign(series_id="checkout_conversion_rate|one_point")
    cur = pd.concat([cur, one], ignore_index=True)
    r = SequentialTest().fit(hist).score(cur)
    assert r.index.equals(cur.index)
    assert r["p_value"].dropna().between(0, 1).all() and np.isfinite(r["score"]).all()
    assert not r.loc[cur["series_id"].str.endswith(("c2", "c3", "one_point")), "is_anomaly"].any()
    assert (r.loc[cur["series_id"].str.endswith("c2"), "reason"] == "low volume").all()


def test_window_grid_and_arguments():
    assert WINDOW_GRID[0] == 1 and max(WINDOW_GRID) == 72
    with pytest.raises(ValueError, match="windows"):
        SequentialTest(windows=(0, 2))
    with pytest.raises(ValueError, match="false_alarms_per_day"):
        SequentialTest(false_alarms_per_day=0)


def test_ensemble_alerts_on_accumulated_evidence_without_a_shape_detector():
    # a 25% drop at 1310 sessions/h: the sequential test alone makes alerts that no shape
    # detector agrees with (the old min(E_shape, E_stat) veto blocked every one of them)
    frame = checkout_series(1, 1310, drop=0.25, drop_hours=20, extra_hours=24, seed=9)
    hist, cur = split_at(frame, 24)
    r = Ensemble(use_prophet=False, n_series=500).fit(hist).score(cur)
    flagged = r[r["is_anomaly"]]
    assert not r["is_anomaly"].iloc[:4].any() and len(flagged) >= 1
    assert all("sequential" in f for f in flagged["detectors_fired"])
    assert flagged["why"].str.contains(r"sequential \d+ h").all()
    assert any(list(f) == ["sequential"] for f in flagged["detectors_fired"])


@pytest.mark.parametrize("rate", [0.01, 0.97])
def test_rare_events_in_a_young_series_expect_a_shrunk_rate_not_zero_or_one(rate):
    """A young store (3 days of history) with a 1% error rate (or a 97% step rate): most hours of day saw
    no error (no failure) in history. The expectation is shrunk towards the series' and the
    metric's rate, so quiet hours raise no alarm, while a real jump still does."""
    rng = np.random.default_rng(11)
    ts = pd.date_range("2026-11-16", periods=96, freq="h", tz="UTC")
    rows = []
    for cohort in ("all", "country=AU", "device_type=tablet", "browser=Firefox"):
        n = rng.poisson(60 if cohort != "all" else 600, len(ts)).astype(float)
        k = rng.binomial(n.astype(int), rate).astype(float)
        rows.append(pd.DataFrame({"series_id": f"js_error_session_rate|{cohort}", "ts": ts,
                                  "value": k / n, "numerator": k, "denominator": n}))
    frame = pd.concat(rows, ignore_index=True)
    hist, cur = frame[frame["ts"] < ts[72]], frame[frame["ts"] >= ts[72]]
    det = SequentialTest(n_series=1500, directions={"js_error_session_rate": "both"}).fit(hist)
    # every hour of day expects a rate strictly inside (0, 1), near the true one
    assert det.pool_["p"].between(rate / 5, 1 - (1 - rate) / 5).all()
    assert not det.score(cur)["is_anomaly"].any()
    # a tenfold error rate (or half the step rate) for three hours in one cohort is flagged
    jump = cur.copy()
    hit = jump.index[(jump["series_id"] == "js_error_session_rate|country=AU")][4:7]
    jump.loc[hit, "numerator"] = np.round(jump.loc[hit, "denominator"]
                                          * (0.1 if rate < 0.5 else 0.45))
    jump["value"] = jump["numerator"] / jump["denominator"]
    assert det.score(jump).loc[hit, "is_anomaly"].any()
    # without the prior, an hour of day that saw no error (no failure) in history expects a
    # rate of 0 (1), and three errors (failures) in an hour there page: the 4-day smoke run's failure
    bare = SequentialTest(n_series=1500, directions={"js_error_session_rate": "both"},
                          hour_of_day_rel_sd=0, cohort_rel_sd=0).fit(hist)
    pool = bare.pool_
    extreme = pool[(pool["k"] == 0) | (pool["k"] == pool["n"])].index[0]
    assert 0 < det.pool_.loc[extreme, "p"] < 1
    one = cur.copy()
    row = one.index[(one["series_id"] == extreme[0]) & (one["ts"].dt.hour == extreme[1])][0]
    one.loc[row, "numerator"] = 3.0 if rate < 0.5 else one.loc[row, "denominator"] - 3
    one["value"] = one["numerator"] / one["denominator"]
    assert bare.score(one).loc[row, "is_anomaly"]
    assert not det.score(one).loc[row, "is_anomaly"]


def test_a_young_series_expects_its_own_rate_at_hours_of_day_its_pool_never_saw():
    """A campaign launched 62 hours ago (the seeded iOS Safari x ig_sale case): its pool, the
    hours before the longest window, holds only the launch's first 14 hours, so its evening
    hours of day were never seen. They expect the series' rate (not 'low volume'), and a
    lasting 15% drop in that cohort is flagged."""
    rng = np.random.default_rng(5)
    ts = pd.date_range("2026-11-19", periods=62 + 36, freq="h", tz="UTC")
    n = rng.poisson(12, len(ts)).astype(float)
    rate = np.where(np.arange(len(ts)) >= 62, 0.88 * 0.85, 0.88)
    k = rng.binomial(n.astype(int), rate).astype(float)
    young = pd.DataFrame({"series_id": "review_step_rate|campaign", "ts": ts, "value": k / n,
                          "numerator": k, "denominator": n})
    # an older store-wide series of the same metric beside it
    ts_all = pd.date_range("2026-11-05", "2026-11-23 01:00", freq="h", tz="UTC")
    n_all = rng.poisson(200, len(ts_all)).astype(float)
    k_all = rng.binomial(n_all.astype(int), 0.86).astype(float)
    store = pd.DataFrame({"series_id": "review_step_rate|all", "ts": ts_all, "value": k_all / n_all,
                          "numerator": k_all, "denominator": n_all})
    frame = pd.concat([young, store], ignore_index=True)
    cut = ts[62]
    det = SequentialTest(n_series=1500).fit(frame[frame["ts"] < cut])
    current = frame[(frame["ts"] >= cut) & (frame["series_id"] == young["series_id"][0])]
    scored = det.score(current)
    first = scored.index[scored["is_anomaly"]][0]  # flagged within a day
    assert current.loc[first, "ts"] - cut <= pd.Timedelta(hours=24)
    # until then every hour had an expectation (after an alarm the windows restart, and a
    # few hours are too few trials to test: 'low volume' is right there)
    assert (scored.loc[:first, "reason"] != "low volume").all()
    assert scored["expected"].between(0.8, 0.95).all()
