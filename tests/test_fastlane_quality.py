"""The fast lane's data-quality guard (funnelwatch/fastlane/quality.py) on small frames: which
flags it holds back and what it says. The end-to-end case (a field nulled in the running
hour's part files, through the asset) is in tests/test_fastlane.py."""

from __future__ import annotations

import pandas as pd

from funnelwatch.fastlane.config import NULL_RATE_PREFIX, FastLaneConfig
from funnelwatch.fastlane.quality import HELD_BACK, hold_back, null_rates

H = pd.Timestamp("2026-11-19 10:00", tz="UTC")
CONFIG = FastLaneConfig()


def _scored(rows):
    frame = pd.DataFrame(rows, columns=["slot_start", "cohort", "is_anomaly"])
    frame["slot_start"] = frame["slot_start"].astype("datetime64[us, UTC]")
    frame["event_hour"] = frame["slot_start"].dt.floor("h")
    frame["metric"] = "purchases"
    frame["reason"] = "60 min: 0 vs 11 expected"
    return frame


def _null_metrics(field: str, events_per_slot: float, null_from: pd.Timestamp):
    slots = pd.date_range(H - pd.Timedelta(hours=1), H + pd.Timedelta(hours=1), freq="5min",
                          inclusive="left")
    return pd.DataFrame({"ts": slots, "metric": f"{NULL_RATE_PREFIX}{field}", "cohort": "all",
                         "numerator": [events_per_slot if s >= null_from else 0.0 for s in slots],
                         "denominator": events_per_slot})


def test_a_null_field_holds_back_only_its_own_cohorts_once_it_passes_the_rate():
    metrics = _null_metrics("country", 200.0, H)
    # one nulled slot of twelve in the 60-minute window is 8% (> 5%): held from H on
    rates = null_rates(metrics, CONFIG).set_index("ts")
    assert rates.loc[H, "null_rate"] == 1 / 12
    assert rates.loc[H - pd.Timedelta(minutes=5), "null_rate"] == 0
    scored = _scored([(H - pd.Timedelta(minutes=5), "country=US", True),
                      (H, "country=US", True),
                      (H, "device_type=mobile", True),
                      (H, "all", True),
                      (H + pd.Timedelta(minutes=5), "country=DE", False)])
    assert hold_back(scored, metrics, CONFIG) == 1
    assert scored["is_anomaly"].tolist() == [True, False, True, True, False]
    assert scored.loc[1, "reason"].startswith(f"{HELD_BACK}country null in 8% of 2,400 events")
    assert scored.loc[4, "reason"] == "60 min: 0 vs 11 expected", "unflagged rows untouched"


def test_too_few_events_do_not_trip_the_guard():
    metrics = _null_metrics("country", 5.0, H)  # 60 events in the window < min_guard_events
    scored = _scored([(H + pd.Timedelta(minutes=30), "country=US", True)])
    assert hold_back(scored, metrics, CONFIG) == 0
    assert scored["is_anomaly"].all()


def test_a_data_quality_incident_hour_and_the_hour_after_it_hold_back_every_flag():
    scored = _scored([(H, "all", True),
                      (H + pd.Timedelta(minutes=65), "device_type=mobile", True),
                      (H + pd.Timedelta(hours=2), "all", True)])
    no_null_rows = pd.DataFrame(columns=["ts", "metric", "cohort", "numerator", "denominator"])
    assert hold_back(scored, no_null_rows, CONFIG, failed_hours=[H]) == 2
    assert scored["is_anomaly"].tolist() == [False, False, True]
    assert scored.loc[0, "reason"] == f"{HELD_BACK}data-quality incident at 10:00"
    assert scored.loc[1, "reason"] == (f"{HELD_BACK}data-quality incident at 10:00 "
                                       "(the hour after it)")
