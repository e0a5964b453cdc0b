"""A campaign that ends takes its cohorts to zero by design: no alert for it."""

import duckdb
import pandas as pd

from funnelwatch.detection.planned import campaign_windows, suppress_outside_campaigns


def test_campaign_cohorts_do_not_alert_outside_the_campaign(tmp_path):
    con = duckdb.connect(str(tmp_path / "w.duckdb"))
    con.execute("CREATE SCHEMA marts")
    con.execute("""CREATE TABLE marts.dim_campaigns AS SELECT * FROM (VALUES
        ('ig_sale', TIMESTAMPTZ '2026-11-19 00:00:00+00', TIMESTAMPTZ '2026-11-29 00:00:00+00'))
        t(campaign_name, start_time, end_time)""")
    con.execute("""CREATE TABLE marts.fct_sessions AS SELECT * FROM (VALUES
        ('instagram', 'social', 'ig_sale', TIMESTAMPTZ '2026-11-20 10:00:00+00'),
        ('instagram', 'social', 'ig_sale', TIMESTAMPTZ '2026-11-20 11:00:00+00'),
        ('facebook', 'social', 'fb_retarget', TIMESTAMPTZ '2026-11-20 11:00:00+00'),
        ('google', 'cpc', 'brand_search', TIMESTAMPTZ '2026-11-20 11:00:00+00'))
        t(utm_source, utm_medium, utm_campaign, start_time)""")
    windows = campaign_windows(con, pd.Timestamp("2026-11-28", tz="UTC"),
                               pd.Timestamp("2026-11-30", tz="UTC"))
    assert [w.campaign for w in windows] == ["ig_sale"]
    # instagram is all ig_sale; 'social' is shared with fb_retarget, so it is not the campaign's
    assert set(windows[0].cohort_pairs) == {"utm_campaign=ig_sale", "utm_source=instagram"}

    scored = pd.DataFrame({
        "ts": pd.to_datetime(["2026-11-28 23:00", "2026-11-29 05:00", "2026-11-29 05:00",
                              "2026-11-29 05:00"], utc=True),
        "cohort": ["utm_campaign=ig_sale", "utm_campaign=ig_sale",
                   "os=iOS&browser=Safari&utm_campaign=ig_sale", "utm_campaign=fb_retarget"],
        "is_anomaly": [True, True, True, True],
        "severity": [80.0, 90.0, 70.0, 60.0],
        "detectors_fired": [["stats"]] * 4,
        "why": ["x"] * 4,
    })
    assert suppress_outside_campaigns(scored, windows) == 2
    assert list(scored["is_anomaly"]) == [True, False, False, True]  # during it, other campaign
    assert scored.loc[1, "why"].startswith("planned: campaign ig_sale runs")
    assert scored.loc[1, "severity"] == 0.0 and scored.loc[1, "detectors_fired"] == []


def test_no_marts_yet_means_no_windows(tmp_path):
    con = duckdb.connect(str(tmp_path / "empty.duckdb"))
    assert campaign_windows(con, pd.Timestamp("2026-11-28", tz="UTC"),
                            pd.Timestamp("2026-11-29", tz="UTC")) == []


def test_the_hour_after_a_data_quality_incident_does_not_page():
    from funnelwatch.detection.planned import suppress_after_data_quality

    hours = pd.date_range("2026-11-20 10:00", periods=4, freq="h", tz="UTC")
    scored = pd.DataFrame({"ts": hours, "cohort": "all", "is_anomaly": True, "severity": 80.0,
                           "detectors_fired": [["stats"]] * 4, "why": "x"})
    failed = {pd.Timestamp("2026-11-20 11:00", tz="UTC").to_pydatetime()}
    assert suppress_after_data_quality(scored, failed) == 1
    # 10:00 is before, 11:00 itself is never scored in the pipeline, 13:00 is past the aftermath
    assert list(scored["is_anomaly"]) == [True, True, False, True]
    assert scored.loc[2, "why"] == "held back: the hour after a data-quality incident"
