"""detection.anomalies: a window replaced in one transaction, whatever the frame's dtypes."""

import duckdb
import pandas as pd

from funnelwatch.detection.store import replace_window

START = pd.Timestamp("2026-11-20 10:00", tz="UTC")


def _scored(n):
    hours = [START + pd.Timedelta(hours=i % 2) for i in range(n)]
    return pd.DataFrame({
        "event_hour": hours, "metric": "sessions", "cohort": [f"c{i}" for i in range(n)],
        # cold-start rows come first: no p-value, no reasons, no band (all None in object columns)
        "p_value": [None] * (n - 1) + [0.01], "why": [None] * (n - 1) + ["ANOMALY"],
        "lower": [None] * n, "is_anomaly": [None] * (n - 1) + [True],
        "detectors_fired": [None] * (n - 1) + [["stats", "cusum"]], "value": 1.0,
    })


def test_rows_starting_with_nones_are_stored_and_a_rerun_replaces_them(tmp_path):
    con = duckdb.connect(str(tmp_path / "w.duckdb"))
    end = START + pd.Timedelta(hours=2)
    assert replace_window(con, START, end, _scored(3000)) == 3000
    assert replace_window(con, START, end, _scored(3000)) == 3000
    rows = con.execute("SELECT count(*), count(why), count(p_value) FROM detection.anomalies").fetchone()
    assert rows == (3000, 1, 1)
    fired = con.execute("SELECT detectors_fired FROM detection.anomalies WHERE why = 'ANOMALY'").fetchone()
    assert fired == (["stats", "cusum"],)
