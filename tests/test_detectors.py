"""Detectors on synthetic series with known answers (fast: a few seconds, Prophet on 2 series)."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from detectors import (
    SCORE_COLUMNS,
    CountTest,
    CUSUMDetector,
    Ensemble,
    EWMABaseline,
    HourOfWeekBaseline,
    MultivariateDetector,
    NotFittedError,
    ProphetDetector,
    RateTest,
    betabinomial_pvalue,
    binomial_pvalue,
    score_streaming,
    thresholds,
)

HOURS = 24 * 28


def seasonal(
    n_hours=HOURS + 24, level=100.0, noise=0.03, seed=0, sid="s", start="2024-01-01", amp=0.5
):
    rng = np.random.default_rng(seed)
    ts = pd.date_range(start, periods=n_hours, freq="h", tz="UTC")
    hod, dow = ts.hour.to_numpy(), ts.day_of_week.to_numpy()
    season = (1 + amp * np.sin(2 * np.pi * (hod - 9) / 24)) * (1 + 0.4 * amp * (dow >= 5))
    v = level * season * (1 + noise * rng.standard_normal(n_hours))
    return pd.DataFrame({"series_id": sid, "ts": ts, "value": v})


def funnel(n_cohorts=4, n_hours=HOURS + 24, seed=0, base_sessions=2000.0, rate=0.05):
    """sessions (count) and conversion (rate) per cohort, Poisson / binomial noise."""
    rng = np.random.default_rng(seed)
    ts = pd.date_range("2024-01-01", periods=n_hours, freq="h", tz="UTC")
    hod, dow = ts.hour.to_numpy(), ts.day_of_week.to_numpy()
    season = (1 + 0.6 * np.sin(2 * np.pi * (hod - 9) / 24)) * (1 + 0.2 * (dow >= 5))
    frames = []
    for c in range(n_cohorts):
        sess = rng.poisson(base_sessions / (1 + 3 * c) * season).astype(float)
        conv = rng.binomial(sess.astype(int), rate).astype(float)
        atc = rng.binomial(sess.astype(int), 0.2).astype(float)
        frames.append(
            pd.DataFrame(
                {
                    "series_id": f"sessions|c{c}",
                    "ts": ts,
                    "value": sess,
                    "numerator": sess,
                    "denominator": np.nan,
                }
            )
        )
        for m, k in (("session_conversion_rate", conv), ("add_to_cart_rate", atc)):
            frames.append(
                pd.DataFrame(
                    {
                        "series_id": f"{m}|c{c}",
                        "ts": ts,
                        "value": k / np.where(sess > 0, sess, np.nan),
                        "numerator": k,
                        "denominator": sess,
                    }
                )
            )
    return pd.concat(frames, ignore_index=True)


def split(df, hours=24):
    cut = df["ts"].max() - pd.Timedelta(hours=hours)
    return df[df["ts"] <= cut].copy(), df[df["ts"] > cut].copy()


# ---------------------------------------------------------------- contract / validation
def test_validation_errors():
    d = HourOfWeekBaseline()
    with pytest.raises(ValueError, match="missing required column"):
        d.fit(pd.DataFrame({"series_id": ["a"], "value": [1.0]}))
    dup = pd.DataFrame(
        {"series_id": ["a", "a"], "ts": ["2024-01-01", "2024-01-01"], "value": [1, 2]}
    )
    with pytest.raises(ValueError, match="duplicate"):
        d.fit(dup)
    with pytest.raises(ValueError, match="missing required column"):
        RateTest().fit(seasonal())  # no numerator / denominator
    with pytest.raises(NotFittedError, match="not fitted"):
        EWMABaseline().score(seasonal())
    with pytest.raises(ValueError):
        thresholds(1.5)


def test_naive_and_aware_timestamps_agree():
    hist, cur = split(seasonal())
    a = HourOfWeekBaseline().fit(hist).score(cur)
    hist2, cur2 = hist.copy(), cur.copy()
    hist2["ts"], cur2["ts"] = hist2["ts"].dt.tz_localize(None), cur2["ts"].dt.tz_localize(None)
    b = HourOfWeekBaseline().fit(hist2).score(cur2)
    pd.testing.assert_frame_equal(a, b)
    assert list(a.columns[: len(SCORE_COLUMNS)]) == SCORE_COLUMNS
    assert a.index.equals(cur.index)


# ---------------------------------------------------------------- shape detectors
@pytest.mark.parametrize("cls", [HourOfWeekBaseline, EWMABaseline])
def test_spike_and_drop_flagged_at_right_point_and_direction(cls):
    # EWMA knows no seasonality (and scores a batch against the last state): a flat series
    df = seasonal(noise=0.02, amp=0.5 if cls is HourOfWeekBaseline else 0.0)
    hist, cur = split(df)
    cur = cur.copy()
    i_up, i_down = cur.index[5], cur.index[15]
    cur.loc[i_up, "value"] *= 2.0
    cur.loc[i_down, "value"] *= 0.3
    det = cls(span=24) if cls is EWMABaseline else cls()
    r = det.fit(hist).score(cur)
    assert set(r.index[r["is_anomaly"]]) == {i_up, i_down}
    assert r.loc[i_up, "direction"] == "up" and r.loc[i_down, "direction"] == "down"
    assert r.loc[i_up, "score"] > thresholds("medium").z


def test_clean_seasonal_series_has_almost_no_anomalies():
    frames = [seasonal(seed=s, sid=f"s{s}") for s in range(20)]
    hist, cur = split(pd.concat(frames, ignore_index=True))
    r = HourOfWeekBaseline().fit(hist).score(cur)
    assert r["is_anomaly"].mean() < 0.01


def test_hour_of_day_fallback_when_weeks_missing():
    hist, cur = split(seasonal(n_hours=24 * 5))
    r = HourOfWeekBaseline().fit(hist).score(cur)
    assert r["reason"].str.startswith("hour-of-day").all()
    assert r["is_anomaly"].sum() == 0


def test_cusum_catches_small_persistent_drop_with_run_start():
    df = seasonal(noise=0.02, n_hours=HOURS + 48)
    hist, cur = split(df, hours=48)
    cur = cur.copy()
    start = cur["ts"].iloc[10]
    cur.loc[cur["ts"] >= start, "value"] *= 0.96  # about 1.5-2 sigma per point: inside the band
    base = HourOfWeekBaseline().fit(hist).score(cur)
    r = CUSUMDetector().fit(hist).score(cur)
    flagged = r[r["is_anomaly"]]
    assert len(flagged) >= 2 and base["is_anomaly"].sum() <= 3
    assert (flagged["direction"] == "down").all()
    first = flagged.index[0]
    assert cur.loc[first, "ts"] >= start
    assert abs(r.loc[first, "run_start"] - start.tz_localize(None)) <= pd.Timedelta(hours=2)
    clean = CUSUMDetector().fit(hist).score(split(df, hours=48)[1])
    assert clean["is_anomaly"].sum() == 0


# ---------------------------------------------------------------- rate-aware statistics
def test_pvalues_known_values():
    assert binomial_pvalue(50, 100, 0.5)[()] == pytest.approx(1.0)
    assert binomial_pvalue(0, 100, 0.5)[()] < 1e-25
    # beta-binomial with rho -> 0 is the binomial; overdispersion weakens the evidence
    k, n, p = 30, 100, 0.5
    bb0 = float(np.ravel(betabinomial_pvalue(k, n, p, 1e-9))[0])
    bb5 = float(np.ravel(betabinomial_pvalue(k, n, p, 0.05))[0])
    assert bb0 == pytest.approx(float(binomial_pvalue(k, n, p)), rel=1e-3)
    assert bb5 > 10 * float(binomial_pvalue(k, n, p))


def test_same_relative_drop_is_weaker_evidence_at_low_volume():
    df = funnel(n_cohorts=1, base_sessions=1.0)
    hist, cur = split(df)
    rows = []
    for n in (40, 40_000):
        rows.append(
            {
                "series_id": "session_conversion_rate|c0",
                "ts": cur["ts"].iloc[0],
                "value": 0.5 * 0.05,
                "numerator": 0.5 * 0.05 * n,
                "denominator": float(n),
                "expected": 0.05,
            }
        )
    t = RateTest(family="binomial").fit(hist[hist["denominator"].notna()])
    small = t.score(pd.DataFrame(rows[:1]))
    big = t.score(pd.DataFrame(rows[1:]))
    assert small["p_value"].iloc[0] > 0.1 and not small["is_anomaly"].iloc[0]
    assert big["p_value"].iloc[0] < 1e-10 and big["is_anomaly"].iloc[0]
    assert big["direction"].iloc[0] == "down"
    assert "binomial p=" in big["reason"].iloc[0]


def test_rate_and_count_tests_on_funnel():
    hist, cur = split(funnel())
    cur = cur.copy()
    m = (cur["series_id"] == "session_conversion_rate|c0") & (cur["ts"] == cur["ts"].iloc[12])
    cur.loc[m, "numerator"] = np.round(cur.loc[m, "numerator"] * 0.4)
    cur.loc[m, "value"] = cur.loc[m, "numerator"] / cur.loc[m, "denominator"]
    rates_h, rates_c = hist[hist["denominator"].notna()], cur[cur["denominator"].notna()]
    r = RateTest().fit(rates_h).score(rates_c)
    assert r.loc[m[m].index[0], "is_anomaly"] and r.loc[m[m].index[0], "direction"] == "down"
    assert r["is_anomaly"].sum() <= 2
    counts_h, counts_c = hist[hist["denominator"].isna()], cur[cur["denominator"].isna()]
    c = CountTest().fit(counts_h).score(counts_c)
    assert c["is_anomaly"].sum() <= 1


# ---------------------------------------------------------------- Prophet (2 series, 3 weeks)
def test_prophet_flags_spike_and_caches_models():
    df = pd.concat(
        [seasonal(n_hours=24 * 21 + 24, sid=f"p{i}", seed=i) for i in range(2)], ignore_index=True
    )
    hist, cur = split(df)
    cur = cur.copy()
    i_up = cur.index[(cur["series_id"] == "p0")][6]
    cur.loc[i_up, "value"] *= 1.8
    hol = pd.DataFrame({"holiday_date": ["2024-01-10"], "name": ["promo"]})
    det = ProphetDetector(holidays=hol, refit_every="7D")
    r = det.fit(hist).score(cur)
    assert r.loc[i_up, "is_anomaly"] and r.loc[i_up, "direction"] == "up"
    assert r["is_anomaly"].sum() <= 2
    assert set(det.models_) == {"p0", "p1"} and det.n_fits_ == 2
    fitted_at = det.models_["p0"].fitted_at
    det.fit(pd.concat([hist, cur.iloc[:2]]))  # an hour later: within refit_every -> cached
    assert det.n_fits_ == 2 and det.models_["p0"].fitted_at == fitted_at


# ---------------------------------------------------------------- multivariate
def test_multivariate_catches_joint_small_shifts():
    hist, cur = split(funnel(n_cohorts=4))
    cur = cur.copy()
    ts0 = cur["ts"].iloc[12]
    m = cur["series_id"].str.endswith("|c0") & (cur["ts"] == ts0)
    cur.loc[m & cur["series_id"].str.startswith("sessions"), "value"] *= 0.55
    cur.loc[m & cur["series_id"].str.startswith("add_to_cart"), "value"] *= 0.75
    cur.loc[m & cur["series_id"].str.startswith("session_conv"), "value"] *= 0.6
    det = MultivariateDetector().fit(hist)
    r = det.score(cur)
    top = r.sort_values("score").iloc[-1]
    assert top["cohort"] == "c0" and top["ts"] == ts0.tz_localize(None) and top["is_anomaly"]
    assert r["is_anomaly"].sum() <= 2
    assert top["series_id"] == "__multivariate__|c0"


# ---------------------------------------------------------------- ensemble
def test_ensemble_gating_directions_volume_and_severity():
    hist, cur = split(funnel(n_cohorts=3))
    cur = cur.copy()
    ts0 = cur["ts"].iloc[14]
    conv0 = (cur["series_id"] == "session_conversion_rate|c0") & (cur["ts"] == ts0)
    cur.loc[conv0, "numerator"] = np.round(cur.loc[conv0, "numerator"] * 0.3)
    up0 = (cur["series_id"] == "add_to_cart_rate|c0") & (
        cur["ts"] == ts0
    )  # rise in a 'down' metric
    cur.loc[up0, "numerator"] = np.round(cur.loc[up0, "numerator"] * 1.6)
    for mm in (conv0, up0):
        cur.loc[mm, "value"] = cur.loc[mm, "numerator"] / cur.loc[mm, "denominator"]
    ens = Ensemble(use_prophet=False)
    r = ens.fit(hist).score(cur)
    i0 = conv0[conv0].index[0]
    assert (
        r.loc[i0, "is_anomaly"] and r.loc[i0, "severity"] > 50 and r.loc[i0, "direction"] == "down"
    )
    assert (
        "stats" in r.loc[i0, "detectors_fired"] and "hour_of_week" in r.loc[i0, "detectors_fired"]
    )
    assert not r.loc[up0[up0].index[0], "is_anomaly"]  # add_to_cart_rate alerts on 'down' only
    assert r["is_anomaly"].sum() == 1
    assert r["severity"].between(0, 100).all()
    assert (r.loc[r["is_anomaly"], "severity"] > 50).all() and (
        r.loc[~r["is_anomaly"], "severity"] <= 50
    ).all()


def test_ensemble_low_volume_and_cold_start():
    # a tiny cohort (~0.2 sessions/h): not even 72 hours pool the 30 trials a window needs
    hist, cur = split(funnel(n_cohorts=1, base_sessions=0.2))
    cur = cur.copy()
    m = cur["series_id"] == "session_conversion_rate|c0"
    cur.loc[m, ["numerator", "value"]] = 0.0
    r = Ensemble(use_prophet=False).fit(hist).score(cur)
    assert not r["is_anomaly"].any()
    assert (r.loc[m[m].index, "reason"] == "low volume").all()
    assert (r.loc[m[m].index, "severity"] == 0).all()
    # ~10 sessions/h (< 30 trials in any one hour): a day without a conversion is no alert in
    # its first hours, but the pooled hours reach the volume floor and the evidence
    hist, cur = split(funnel(n_cohorts=1, base_sessions=10.0))
    cur = cur.copy()
    m = (cur["series_id"] == "session_conversion_rate|c0").to_numpy()
    cur.loc[m, ["numerator", "value"]] = 0.0
    r = Ensemble(use_prophet=False).fit(hist).score(cur)
    assert not r.loc[m, "is_anomaly"].iloc[:6].any() and r.loc[m, "is_anomaly"].any()
    assert not r.loc[~m, "is_anomaly"].any()
    hist2, cur2 = split(funnel(n_cohorts=1, n_hours=30), hours=6)
    r2 = Ensemble(use_prophet=False).fit(hist2).score(cur2)
    assert (r2["reason"] == "cold start").all() and not r2["is_anomaly"].any()


def test_a_young_store_still_tests_its_rates():
    # 3 days of history (less than the sequential test's replay): a halved conversion at
    # 2,000 sessions/h is flagged, as the 4-day smoke evaluation needs
    hist, cur = split(funnel(n_cohorts=1, n_hours=72 + 6, seed=2), hours=6)
    cur = cur.copy()
    m = (cur["series_id"] == "session_conversion_rate|c0").to_numpy()
    cur.loc[m, "numerator"] = (cur.loc[m, "numerator"] * 0.5).round()
    cur.loc[m, "value"] = cur.loc[m, "numerator"] / cur.loc[m, "denominator"]
    r = Ensemble(use_prophet=False).fit(hist).score(cur)
    assert r.loc[m, "is_anomaly"].any(), r.loc[m, ["ts", "reason", "why"]].to_string()


def test_a_tiny_cohort_never_alerts_on_traffic_that_piles_up():
    # ~1 session/h that becomes ~5 for a day: the pooled hours reach any floor and the
    # evidence (a 5x rise) is overwhelming, but a count's own hour must reach the volume floor
    hist, cur = split(funnel(n_cohorts=1, base_sessions=1.0, seed=5))
    cur = cur.copy()
    m = (cur["series_id"] == "sessions|c0").to_numpy()
    cur.loc[m, "value"] = cur.loc[m, "value"] * 5 + 4
    r = Ensemble(use_prophet=False).fit(hist).score(cur)
    assert not r.loc[m, "is_anomaly"].any()
    assert (r.loc[m, "reason"] == "low volume").all()


def test_ensemble_sensitivity_knob_is_monotone():
    hist, cur = split(funnel(n_cohorts=2, seed=3))
    counts = [
        Ensemble(sensitivity=s, use_prophet=False, use_multivariate=False)
        .fit(hist)
        .score(cur)["is_anomaly"]
        .sum()
        for s in (0.0, 0.5, 1.0)
    ]
    assert counts[0] <= counts[1] <= counts[2]
    assert counts[1] <= 2


def test_ensemble_univariate_streaming_is_causal():
    df = seasonal(n_hours=24 * 4, noise=0.02)
    df.loc[df.index[-30], "value"] *= 3
    res = score_streaming(
        lambda: Ensemble(mode="univariate", use_prophet=False, cold_start_hours=24), df, step="1h"
    )
    # causality: changing the future does not change earlier scores
    df2 = df.copy()
    df2.loc[df2.index[-10:], "value"] = 1e6
    res2 = score_streaming(
        lambda: Ensemble(mode="univariate", use_prophet=False, cold_start_hours=24), df2, step="1h"
    )
    early = res.index[:-12]
    np.testing.assert_allclose(
        res.loc[early, "severity"].fillna(-1), res2.loc[early, "severity"].fillna(-1)
    )
    assert res.loc[df.index[-30], "is_anomaly"]
    assert res["is_anomaly"].sum() <= 3


def test_ensemble_calendar_allows_holiday_traffic_but_not_a_bot_spike():
    hist, cur = split(funnel(n_cohorts=1))
    cur = cur.copy()
    day = cur["ts"].iloc[14].normalize()
    sessions = cur["series_id"] == "sessions|c0"
    hour14 = sessions & (cur["ts"] == cur["ts"].iloc[14])
    hour18 = sessions & (cur["ts"] == cur["ts"].iloc[18])
    cur.loc[hour14, ["value", "numerator"]] = cur.loc[hour14, "value"].iloc[0] * 2.5  # promotion
    cur.loc[hour18, ["value", "numerator"]] = cur.loc[hour18, "value"].iloc[0] * 6.0  # bots
    plain = Ensemble(use_prophet=False).fit(hist).score(cur)
    assert plain.loc[hour14, "is_anomaly"].all() and plain.loc[hour18, "is_anomaly"].all()
    holidays = pd.DataFrame({"holiday_date": [day.tz_localize(None)], "name": ["Black Friday"]})
    aware = Ensemble(use_prophet=False, holidays=holidays).fit(hist).score(cur)
    assert not aware.loc[hour14, "is_anomaly"].any()
    assert aware.loc[hour14, "why"].iloc[0].startswith("holiday/promotion rise")
    assert aware.loc[hour18, "is_anomaly"].all()  # 6x is beyond any promotion


def test_univariate_post_processing_is_causal_and_series_relative():
    from detectors.univariate import onset_only, series_relative

    rng = np.random.default_rng(0)
    quiet = np.zeros(2000)
    quiet[1500] = 0.7  # a rare alert in a quiet series keeps (almost) its full score
    noisy = rng.uniform(0.6, 0.8, 2000)  # the same level is routine in a noisy series
    noisy[1500] = 0.7
    assert series_relative(quiet)[1500] > 0.65
    assert series_relative(noisy)[1500] < 0.01
    # causal: changing later scores never changes earlier outputs
    later = noisy.copy()
    later[1600:] = 0.0
    for f in (series_relative, onset_only):
        assert np.array_equal(f(noisy)[:1600], f(later)[:1600])
    # a persisting deviation reports its onset only
    shift = np.r_[np.zeros(100), np.full(50, 0.9), np.zeros(100)]
    kept = onset_only(shift, window=288)
    assert kept[100] == 0.9 and np.count_nonzero(kept) == 1


def _rate_series(rate, n, hours=HOURS + 24, seed=0, sid="js_error_session_rate|c"):
    rng = np.random.default_rng(seed)
    ts = pd.date_range("2024-01-01", periods=hours, freq="h", tz="UTC")
    den = np.full(hours, float(n))
    num = rng.binomial(n, rate, hours).astype(float)
    return pd.DataFrame({"series_id": sid, "ts": ts, "value": num / den, "numerator": num,
                         "denominator": den})


@pytest.mark.parametrize(
    "sid, rate, normal_k, broken_k",
    [("js_error_session_rate|c", 0.012, 2, 15),  # rare events: most hours have none
     ("payment_attempt_rate|c", 0.99, 42, 25)],  # a near-certain step: most hours are 44/44
)
def test_rate_test_uses_pooled_rate_at_the_boundaries(sid, rate, normal_k, broken_k):
    hist, cur = split(_rate_series(rate, 44, sid=sid))
    cur = cur.copy()
    assert hist["value"].isin([0.0, 1.0]).mean() > 0.5  # so the hourly medians sit at 0 or 1
    first, second = cur.index[10], cur.index[16]
    cur.loc[first, "numerator"], cur.loc[second, "numerator"] = normal_k, broken_k
    cur["value"] = cur["numerator"] / cur["denominator"]
    r = Ensemble(use_prophet=False).fit(hist).score(cur)
    assert not r.loc[first, "is_anomaly"]  # an ordinary hour for this series
    assert r.loc[second, "is_anomaly"]


def test_small_count_changes_are_not_alerts_large_ones_are():
    hist, cur = split(funnel(n_cohorts=1, base_sessions=5000.0))
    cur = cur.copy()
    sessions = cur.index[cur["series_id"] == "sessions|c0"]
    cur.loc[sessions[10], ["value", "numerator"]] *= 1.3  # significant at 5,000/h, not a problem
    cur.loc[sessions[16], ["value", "numerator"]] *= 1.8
    cur.loc[sessions[20], ["value", "numerator"]] *= 0.6
    r = Ensemble(use_prophet=False).fit(hist).score(cur)
    assert not r.loc[sessions[10], "is_anomaly"]
    assert r.loc[sessions[16], "is_anomaly"] and r.loc[sessions[20], "is_anomaly"]


def test_cold_start_counts_from_the_first_active_hour():
    frame = funnel(n_cohorts=1)
    late = frame["ts"] < frame["ts"].min() + pd.Timedelta(days=20)  # inactive for 20 days
    frame.loc[late, ["value", "numerator"]] = 0.0
    frame.loc[late & frame["denominator"].notna(), "denominator"] = 0.0
    frame.loc[late & frame["denominator"].notna(), "value"] = np.nan
    hist, cur = split(frame, hours=24 * 7 + 24)  # ~1 day of activity in the history
    r = Ensemble(use_prophet=False).fit(hist).score(cur.head(12))
    assert (r["reason"] == "cold start").all()


def test_calendar_allowance_scales_with_the_store_wide_lift():
    frame = funnel(n_cohorts=2)
    frame["series_id"] = frame["series_id"].str.replace("|c0", "|all", regex=False)
    hist, cur = split(frame)
    cur = cur.copy()
    when = cur["ts"].iloc[14]
    holidays = pd.DataFrame({"holiday_date": [when.normalize().tz_localize(None)], "name": ["sale"]})
    store = (cur["series_id"] == "sessions|all") & (cur["ts"] == when)
    small = (cur["series_id"] == "sessions|c1") & (cur["ts"] == when)
    for mask, factor in ((store, 2.0), (small, 6.0)):  # a 2x promotion; 6x = 3x the store's lift
        cur.loc[mask, ["value", "numerator"]] = cur.loc[mask, "value"].iloc[0] * factor
    r = Ensemble(use_prophet=False, holidays=holidays).fit(hist).score(cur)
    assert not r.loc[small, "is_anomaly"].any()  # within 4x of what the store did that hour
    cur.loc[small, ["value", "numerator"]] = cur.loc[small, "value"].iloc[0] * 2.0  # now 12x
    r = Ensemble(use_prophet=False, holidays=holidays).fit(hist).score(cur)
    assert r.loc[small, "is_anomaly"].all()


def test_sustained_moderate_drop_is_caught_by_accumulated_evidence_not_by_any_single_hour():
    rng = np.random.default_rng(12)  # a draw where no single hour of the drop is extreme
    hours = HOURS + 24
    ts = pd.date_range("2024-01-01", periods=hours, freq="h", tz="UTC")
    n = np.full(hours, 47.0)
    rate = np.full(hours, 0.55)
    rate[-20:-14] = 0.38  # six hours of a 30% drop, each hour alone too noisy to call
    k = rng.binomial(47, rate).astype(float)
    frame = pd.DataFrame({"series_id": "checkout_conversion_rate|c", "ts": ts, "value": k / n,
                          "numerator": k, "denominator": n})
    hist, cur = split(frame)
    drop = cur.index[4:10]
    r = Ensemble(use_prophet=False).fit(hist).score(cur)
    assert not any("stats" in f for f in r.loc[drop, "detectors_fired"])  # no hour alone
    assert r.loc[drop, "is_anomaly"].any()
    assert not r.loc[drop[0], "is_anomaly"]  # one hour is not enough evidence
    first = r.loc[drop][r.loc[drop, "is_anomaly"]].iloc[0]
    assert "sequential" in first["detectors_fired"]
    window = r["why"].str.extract(r"sequential (\d+) h")[0].astype(float)
    assert window[first.name] > 1  # a pooled window
    # no alarm before the drop; an alarm after it is the drop's own evidence, still in its
    # window (the window starts within the drop), reported while the evidence completes
    assert not r.loc[cur.index[:4], "is_anomaly"].any()
    after = r.index[r["is_anomaly"] & (cur["ts"] > cur.loc[drop[-1], "ts"])]
    starts = cur.loc[after, "ts"] - pd.to_timedelta(window[after] - 1, unit="h")
    assert (starts <= cur.loc[drop[-1], "ts"]).all()


def test_ensemble_verdicts_do_not_depend_on_the_context_detectors():
    """The sequential test gives the verdict; EWMA, CUSUM, PyOD and Prophet are context. Each
    switched off (as bench/ablation.py does) scores without error and flags the same rows."""
    hist, cur = split(funnel(n_cohorts=3))
    cur = cur.copy()
    hit = (cur["series_id"] == "session_conversion_rate|c0") & (cur["ts"] >= cur["ts"].iloc[14])
    cur.loc[hit, "numerator"] = np.round(cur.loc[hit, "numerator"] * 0.3)
    cur.loc[hit, "value"] = cur.loc[hit, "numerator"] / cur.loc[hit, "denominator"]
    base = Ensemble(use_prophet=False).fit(hist).score(cur)
    assert base["is_anomaly"].any()
    for off in ({"use_cusum": False}, {"use_ewma": False}, {"use_multivariate": False}):
        r = Ensemble(use_prophet=False, **off).fit(hist).score(cur)
        assert r["is_anomaly"].equals(base["is_anomaly"]), off
        assert r["run_start"].isna().all() if "use_cusum" in off else True
