"""The GA4 sample export (../shared/data/ga4): add_to_cart vanishes for whole days in November
after it had come back, and days are absent from the copy (funnelwatch issue 16).

In the Parquet files (UTC days and hours, queried with DuckDB): add_to_cart is absent until
2020-11-16 11:00, arrives on 11-16, 11-18 and 11-19 (with zero hours on 11-19), is zero from
11-19 23:00 (2,395 events, none a cart) through every hour of 11-21, 11-22 and 11-23 (11-20 is
absent) and back from 11-26 00:00; page views, product views, checkouts and purchases run as
usual throughout. Absent days: 11-03, 11-17, 11-20, 11-24, 11-25, 11-27, 11-30 .. 12-04.

The export is imported with the GA4 importer into a temp landing folder, every hour is loaded
by ingest, dbt builds the marts and both quality suites record every hour, as the backfill
does. Measured on the 2-core dev machine: the whole export (864 hours) takes ~11 min (quality
checks ~470 s, mostly the Great Expectations suites; loading ~4 min), so it is `slow`; the
default variant, the 11 days around the outage (264 hours), takes ~2-4 min."""

from __future__ import annotations

import time

import pandas as pd
import pytest

from funnelwatch.importers import import_ga4
from funnelwatch.ingest.loader import load_hour
from funnelwatch.quality.incidents import failed_hours, record_outcomes
from funnelwatch.quality.mart_suites import run_mart_suites
from funnelwatch.quality.suites import run_suites
from funnelwatch.warehouse import connect
from tests.conftest import require_shared_data
from tests.test_dbt_models import run_dbt

OUTAGE_FIRST = pd.Timestamp("2020-11-19T23:00:00Z")  # the first full hour without a cart
OUTAGE_LAST = pd.Timestamp("2020-11-23T23:00:00Z")
BACK = pd.Timestamp("2020-11-26T00:00:00Z")


def _pipeline(tmp_path, days: list[str], start: str, end: str):
    """Import `days` (YYYYMMDD) of the export, load and check every hour of [start, end)."""
    shared = require_shared_data() / "ga4"
    src = tmp_path / "ga4"
    src.mkdir()
    for day in days:
        (src / f"events_{day}.parquet").symlink_to(shared / f"events_{day}.parquet")
    landing = tmp_path / "landing"
    import_ga4(src, landing)
    hours = pd.date_range(start, end, freq="h", tz="UTC", inclusive="left")
    warehouse = tmp_path / "w.duckdb"
    with connect(warehouse) as con:
        for hour in hours:
            load_hour(con, landing, hour, "test-key")
    proc, _ = run_dbt("build", warehouse, tmp_path / "dbt")
    assert proc.returncode == 0, proc.stdout[-3000:]
    began = time.monotonic()
    con = connect(warehouse)
    for hour in hours:
        record_outcomes(con, hour, run_suites(con, hour))
        record_outcomes(con, hour, run_mart_suites(con, hour))
    print(f"quality checks: {len(hours)} hours in {time.monotonic() - began:.0f} s")
    return con, hours


def _assert_outage_and_gaps(con, expected_gaps: list[tuple[str, int]]) -> None:
    incidents = con.execute("SELECT * FROM quality.incidents ORDER BY first_hour").df()
    losses = incidents[(incidents["kind"] == "tracking_loss")
                       & (incidents["subject"] == "add_to_cart")]
    covering = losses[(pd.to_datetime(losses["first_hour"], utc=True) <= OUTAGE_FIRST)
                      & (pd.to_datetime(losses["last_hour"], utc=True) >= OUTAGE_LAST)]
    assert len(covering) == 1, losses[["incident_id", "first_hour", "last_hour", "hours"]]
    (outage,) = covering.itertuples()
    assert pd.Timestamp(outage.first_hour) == OUTAGE_FIRST  # flagged in its first full hour
    assert pd.Timestamp(outage.last_hour) == OUTAGE_LAST and outage.status == "resolved"
    assert "add_to_cart" in outage.summary
    assert outage.hours == 1 + 72  # 11-19 23:00 and 11-21 .. 11-23; the absent 11-20 is a gap
    # no second incident for the outage's hours
    outage_hours = con.execute(
        "SELECT count(DISTINCT incident_id) FROM quality.incident_hours h "
        "JOIN quality.incidents i USING (incident_id) WHERE i.kind = 'tracking_loss' "
        "AND h.event_hour BETWEEN $a AND $b", {"a": OUTAGE_FIRST, "b": OUTAGE_LAST}).fetchone()
    assert outage_hours == (1,)
    # the detection skips them: every hour of the outage is a failed hour
    skipped = failed_hours(con, OUTAGE_FIRST.to_pydatetime(), BACK.to_pydatetime())
    covered = {r[0] for r in con.execute(
        "SELECT event_hour FROM quality.incident_hours WHERE incident_id = $i",
        {"i": outage.incident_id}).fetchall()}
    assert len(covered) == 73 and covered <= skipped

    gaps = incidents[incidents["kind"] == "missing_data"]
    found = [(pd.Timestamp(g.first_hour).strftime("%Y-%m-%d %H"), g.hours, g.status)
             for g in gaps.itertuples()]
    assert found == [(f"{day} 00", hours, "resolved") for day, hours in expected_gaps], found


@pytest.mark.slow  # 2-4 min of checks over 11 days: CI runs it, `make test` stays under 10 min
def test_ga4_add_to_cart_outage_around_its_days(tmp_path):
    days = ["20201116", "20201118", "20201119", "20201121", "20201122", "20201123", "20201126"]
    con, _ = _pipeline(tmp_path, days, "2020-11-16", "2020-11-27")
    try:
        _assert_outage_and_gaps(
            con, [("2020-11-17", 24), ("2020-11-20", 24), ("2020-11-24", 48)])
    finally:
        con.close()


@pytest.mark.slow
def test_ga4_whole_export(tmp_path):
    shared = require_shared_data() / "ga4"
    days = sorted(p.stem.removeprefix("events_") for p in shared.glob("events_*.parquet"))
    con, _ = _pipeline(tmp_path, days, "2020-11-01", "2020-12-07")
    try:
        _assert_outage_and_gaps(con, [("2020-11-03", 24), ("2020-11-17", 24), ("2020-11-20", 24),
                                      ("2020-11-24", 48), ("2020-11-27", 24), ("2020-11-30", 120)])
    finally:
        con.close()
