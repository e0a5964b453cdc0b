"""Detection split by cohort shard and merged gives the single-process run's rows exactly:
every column detection.anomalies keeps (anomalies, severities, scores, bands, reasons) bit for
bit (funnelwatch/detection/shards.py says what the shards share and why)."""

from __future__ import annotations

import duckdb
import numpy as np
import pandas as pd
import pytest

from funnelwatch.detection.run import (
    Shard,
    holidays_frame,
    merge_shards,
    plan_sharded_window,
    score_window,
)
from funnelwatch.detection.store import COLUMNS
from orchestration.settings import DetectionSettings

START = pd.Timestamp("2026-11-01", tz="UTC")
DAYS = 10
# More than 125 monitored series (40 cohorts x 4 metrics): below that the sequential test's
# threshold is capped by the sensitivity and no longer depends on the series count.
COHORTS = ["all", "os=iOS", "os=Android", "device_type=mobile", "device_type=desktop",
           "browser=Safari", "browser=Chrome", "utm_source=ig",
           *(f"country=C{i:02d}" for i in range(32))]


def _metrics_frame() -> pd.DataFrame:
    """Hourly sessions, purchases and two funnel rates per cohort, with a daily cycle, a
    checkout break in one cohort on the last day and a bot spike in another."""
    rng = np.random.default_rng(5)
    hours = pd.date_range(START, periods=DAYS * 24, freq="h")
    rows = []
    for i, cohort in enumerate(COHORTS):
        base = 2000 if cohort == "all" else 40 + 5 * i
        for hour in hours:
            cycle = 1 + 0.5 * np.sin(2 * np.pi * (hour.hour - 6) / 24)
            sessions = rng.poisson(base * cycle)
            if cohort == "utm_source=ig" and hour >= hours[-10] and hour < hours[-6]:
                sessions = sessions * 4  # a bot spike
            checkout = rng.binomial(sessions, 0.3)
            p_buy = 0.5 if not (cohort == "os=iOS" and hour >= hours[-14]) else 0.2
            purchases = rng.binomial(checkout, p_buy)
            dimension = cohort.split("=")[0] if cohort != "all" else ""
            for metric, num, den in (
                ("sessions", sessions, None), ("purchases", purchases, None),
                ("checkout_start_rate", checkout, sessions),
                ("checkout_conversion_rate", purchases, checkout)):
                value = float(num) if den is None else (num / den if den else None)
                rows.append((hour, metric, cohort, dimension, value,
                             None if den is None else float(num),
                             None if den is None else float(den)))
    return pd.DataFrame(rows, columns=["event_hour", "metric", "cohort", "cohort_dimensions",
                                       "value", "numerator", "denominator"])


@pytest.fixture(scope="module")
def warehouse(tmp_path_factory):
    path = tmp_path_factory.mktemp("shards") / "w.duckdb"
    con = duckdb.connect(str(path))
    con.execute("SET TimeZone = 'UTC'")
    con.execute("CREATE SCHEMA marts")
    frame = _metrics_frame()
    con.register("metrics", frame)
    con.execute("CREATE TABLE marts.fct_cohort_metrics_hourly AS SELECT "
                "CAST(event_hour AS TIMESTAMPTZ) AS event_hour, metric, cohort, "
                "cohort_dimensions, value, numerator, denominator FROM metrics")
    # a promotion on the last day: the holiday allowance reads the store cohort
    con.execute("CREATE TABLE marts.dim_holidays AS SELECT DATE '2026-11-10' AS holiday_date, "
                "'promo' AS holiday_name")
    con.close()
    return path


@pytest.mark.slow  # Prophet fits: about a minute on a busy machine
@pytest.mark.parametrize("shards", [3])
def test_sharded_detection_equals_the_single_process_run(warehouse, tmp_path, shards):
    start, end = START + pd.Timedelta(days=DAYS - 2), START + pd.Timedelta(days=DAYS)
    # Prophet on the 4 largest series (10 days of history: past the warm-up), as deployed.
    settings = DetectionSettings(prophet_top_n=4)
    con = duckdb.connect(str(warehouse))
    holidays = holidays_frame(con)

    def make():
        return settings.make_ensemble(holidays)

    single = score_window(con, start, end, make, persist_models=False)
    plan = plan_sharded_window(con, start, end, make)
    parts = [score_window(con, start, end, make, shard=Shard(i, shards, plan))
             for i in range(shards)]
    assert all(len(p.scored) for p in parts), "every shard holds some series"
    merged = merge_shards(con, start, end, parts)
    con.close()

    assert single.scored["is_anomaly"].any()
    assert all(c.multivariate is not None for c in plan.contexts)  # pooled, from the plan
    assert single.prophet_fitted > 0
    assert len(merged.scored) == len(single.scored)
    assert not merged.scored.duplicated(["series_id", "event_hour"]).any()
    # What detection.anomalies keeps (and incidents read): bit for bit.
    stored = [c for c in COLUMNS if c in single.scored.columns]
    pd.testing.assert_frame_equal(merged.scored[stored], single.scored[stored],
                                  check_exact=True)
    # The rest (the detectors' normalised scores, kept in memory for context) to the last
    # bits: pandas' groupby mean of a series (HourOfWeekBaseline.meanabs_) can differ in the
    # last bit with the other series in the frame, so a shard's CUSUM state may too.
    pd.testing.assert_frame_equal(merged.scored, single.scored, check_exact=False, rtol=1e-12,
                                  atol=0)
