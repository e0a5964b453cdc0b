"""The subset scan over the whole cohort cube (detectors/subset_scan.py): a drop in a cohort of
three dimensions that no monitored series contains is found and named; quiet cubes raise
nothing; monitored cohorts, tiny cohorts and bad input are handled."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from detectors.subset_scan import ALERT_COLUMNS, SubsetScan

DIMS = ["device_type", "os", "browser", "country", "utm_campaign"]
VALUES = {
    "device_type": ["mobile", "desktop"],
    "os": ["iOS", "Android", "Windows"],
    "browser": ["Safari", "Chrome", "Firefox"],
    "country": ["US", "GB", "DE", "FR"],
    "utm_campaign": ["(none)", "ig_sale", "brand_search"],
}
RATES = {"checkout_conversion_rate": ("purchase_sessions", "checkout_start_sessions")}


def leaf_cube(hours: int, seed: int, drop: dict | None = None, drop_from: int = 0,
              drop_hours: int = 0, factor: float = 0.5, checkouts: float = 2000.0) -> pd.DataFrame:
    """Leaf rows: every combination of VALUES, `checkouts` checkout starts an hour over the
    store (diurnal), conversion 55% with per-leaf variation; `drop` multiplies the rate of
    its cohort by `factor` for `drop_hours` from hour `drop_from`."""
    rng = np.random.default_rng(seed)
    grid = pd.MultiIndex.from_product([VALUES[d] for d in DIMS], names=DIMS).to_frame(index=False)
    weight = rng.dirichlet(np.ones(len(grid)) * 2.0)
    base_rate = np.clip(0.55 + rng.normal(0, 0.05, len(grid)), 0.3, 0.8)
    ts = pd.date_range("2026-11-01", periods=hours, freq="h", tz="UTC")
    season = 1 + 0.5 * np.sin(2 * np.pi * (ts.hour.to_numpy() - 9) / 24)
    frames = []
    for i, t in enumerate(ts):
        n = rng.poisson(checkouts * season[i] * weight)
        rate = base_rate.copy()
        if drop is not None and drop_from <= i < drop_from + drop_hours:
            hit = np.ones(len(grid), dtype=bool)
            for k, v in drop.items():
                hit &= (grid[k] == v).to_numpy()
            rate[hit] *= factor
        k = rng.binomial(n, rate)
        frames.append(grid.assign(ts=t, checkout_start_sessions=n.astype(float),
                                  purchase_sessions=k.astype(float)))
    return pd.concat(frames, ignore_index=True)


def split(frame: pd.DataFrame, at_hour: int):
    cut = frame["ts"].min() + pd.Timedelta(hours=at_hour)
    return frame[frame["ts"] < cut], frame[frame["ts"] >= cut]


def test_a_drop_in_a_three_dimension_cohort_is_found_and_named():
    cohort = {"os": "Android", "browser": "Chrome", "country": "DE"}
    frame = leaf_cube(24 * 10, seed=1, drop=cohort, drop_from=24 * 9 + 2, drop_hours=8)
    hist, cur = split(frame, 24 * 9)
    alerts = SubsetScan(RATES, DIMS).fit(hist).score(cur)
    assert list(alerts.columns) == ALERT_COLUMNS
    assert len(alerts), "the drop was not flagged"
    assert set(alerts["cohort"]) == {"browser=Chrome&country=DE&os=Android"}
    first = alerts["ts"].min() - (frame["ts"].min() + pd.Timedelta(hours=24 * 9 + 2))
    assert first <= pd.Timedelta(hours=3)
    assert (alerts["direction"] == "down").all() and (alerts["severity"] > 50).all()
    assert "cube scan" in alerts["why"].iloc[0]


def test_quiet_cubes_raise_nothing():
    for seed in (2, 3, 4):
        frame = leaf_cube(24 * 10, seed=seed)
        hist, cur = split(frame, 24 * 9)
        assert SubsetScan(RATES, DIMS).fit(hist).score(cur).empty


def test_monitored_cohorts_are_left_to_their_series():
    cohort = {"os": "Android", "browser": "Chrome", "country": "DE"}
    frame = leaf_cube(24 * 10, seed=1, drop=cohort, drop_from=24 * 9 + 2, drop_hours=8)
    hist, cur = split(frame, 24 * 9)
    scan = SubsetScan(RATES, DIMS, exclude={"browser=Chrome&country=DE&os=Android"})
    alerts = scan.fit(hist).score(cur)
    assert "browser=Chrome&country=DE&os=Android" not in set(alerts["cohort"])


def test_tiny_cohorts_never_alert():
    # a store of 60 checkouts an hour: three-dimension cohorts have a handful of trials
    cohort = {"os": "iOS", "browser": "Safari", "country": "US"}
    frame = leaf_cube(24 * 10, seed=5, drop=cohort, drop_from=24 * 9, drop_hours=3,
                      factor=0.0, checkouts=60.0)
    hist, cur = split(frame, 24 * 9)
    alerts = SubsetScan(RATES, DIMS, windows=(1,)).fit(hist).score(cur)
    assert alerts.empty  # a few trials an hour: below the volume floor, whatever they show


def test_a_store_wide_drop_is_one_alert_at_all_per_hour_not_its_cohorts():
    frame = leaf_cube(24 * 10, seed=6, drop={}, drop_from=24 * 9 + 2, drop_hours=4, factor=0.5)
    hist, cur = split(frame, 24 * 9)
    alerts = SubsetScan(RATES, DIMS).fit(hist).score(cur)
    # 'all' is the answer: no nested cohorts beside it in the same hour
    per_hour = alerts.groupby("ts")["cohort"].apply(list)
    assert (per_hour.apply(len) == 1).all() and set(alerts["cohort"]) == {"all"}


def test_bad_input_gets_a_clear_error_or_a_defined_answer():
    frame = leaf_cube(48, seed=7)
    hist, cur = split(frame, 24)
    with pytest.raises(ValueError, match="missing column"):
        SubsetScan(RATES, DIMS).fit(hist.drop(columns=["country"]))
    with pytest.raises(ValueError, match="fit the scan"):
        SubsetScan(RATES, DIMS).score(cur)
    with pytest.raises(ValueError, match="rates"):
        SubsetScan({}, DIMS)
    with pytest.raises(ValueError, match="windows"):
        SubsetScan(RATES, DIMS, windows=(0,))
    # no history (a new store), an empty current frame, NaN counts: no alert, no exception
    scan = SubsetScan(RATES, DIMS)
    assert scan.fit(hist.iloc[:0]).score(cur).empty
    assert SubsetScan(RATES, DIMS).fit(hist).score(cur.iloc[:0]).empty
    noisy = cur.copy()
    noisy.loc[noisy.index[:50], "purchase_sessions"] = np.nan
    assert SubsetScan(RATES, DIMS).fit(hist).score(noisy).empty


def test_scan_window_reads_the_leaf_mart_and_leaves_monitored_cohorts_and_failed_hours_out(
        tmp_path):
    """Through the warehouse: the leaf rows are read from marts.fct_funnel_hourly (a real
    DuckDB file; the other count columns zero), unknown dimension values get the root
    cause's labels, monitored cohorts are left to their series, and the hours of a
    data-quality incident are neither history nor scored."""
    import duckdb

    from funnelwatch.detection.cube_scan import SCANNED_RATES, scan_window

    cohort = {"os": "Android", "browser": "Chrome", "country": "DE"}
    frame = leaf_cube(24 * 10, seed=1, drop=cohort, drop_from=24 * 9 + 2, drop_hours=8)
    frame = frame.rename(columns={"ts": "event_hour"})
    for col in {c for pair in SCANNED_RATES.values() for c in pair} - set(frame.columns):
        frame[col] = 0.0
    frame.loc[frame["utm_campaign"] == "(none)", "utm_campaign"] = None
    con = duckdb.connect(str(tmp_path / "w.duckdb"))
    con.execute("CREATE SCHEMA marts")
    con.register("leaf", frame)
    con.execute("CREATE TABLE marts.fct_funnel_hourly AS SELECT * FROM leaf")
    start = (frame["event_hour"].min() + pd.Timedelta(days=9)).to_pydatetime()
    end = (frame["event_hour"].max() + pd.Timedelta(hours=1)).to_pydatetime()
    found = scan_window(con, start, end, monitored={"os=Windows&browser=Firefox"})
    assert set(found["cohort"]) == {"browser=Chrome&country=DE&os=Android"}
    assert found["is_anomaly"].all() and (found["detectors_fired"].str[0] == "subset_scan").all()
    # monitored (in any dimension order): left to its own series
    assert scan_window(con, start, end, monitored={"os=Android&browser=Chrome&country=DE"}
                       ).get("cohort", pd.Series(dtype=str)).ne(
        "browser=Chrome&country=DE&os=Android").all()
    # the drop's hours under a data-quality incident: not scored
    con.execute("CREATE SCHEMA quality")
    con.execute("CREATE TABLE quality.incident_hours AS SELECT DISTINCT event_hour FROM leaf "
                "WHERE event_hour >= $s", {"s": start})
    assert scan_window(con, start, end, monitored=set()).empty
    con.close()
