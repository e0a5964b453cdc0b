"""Data-quality suites (Great Expectations) and the blocking gate in Dagster."""

from __future__ import annotations

import json

import dagster as dg
import duckdb
import pandas as pd
import pytest

from funnelwatch.ingest.loader import load_hour
from funnelwatch.landing import write_events
from funnelwatch.quality.incidents import failed_hours, record_outcomes
from funnelwatch.quality.suites import run_suites
from funnelwatch.warehouse import connect, ensure_raw_schema

HOUR = pd.Timestamp("2026-11-16T14:00:00Z")
TYPES = {"page_view": 400, "product_view": 300, "add_to_cart": 80, "purchase": 20}


def _hour_events(hour: pd.Timestamp, prefix: str, types=TYPES, minutes: int = 60) -> pd.DataFrame:
    rows = []
    for event_type, n in types.items():
        for i in range(n):
            rows.append({
                "event_id": f"{prefix}-{event_type}-{i}",
                "event_time": hour + pd.Timedelta(seconds=(i * 3607) % (minutes * 60)),
                "event_type": event_type, "user_id": f"u{i % 50}", "session_id": f"s{i % 90}",
                "device_type": "mobile", "os": "iOS", "browser": "Safari", "country": "US",
                "order_id": f"o{i}" if event_type == "purchase" else None,
                "revenue": 10.0 if event_type == "purchase" else None,
            })
    return pd.DataFrame(rows)


@pytest.fixture
def warehouse(tmp_path):
    """Four previous weeks of the same hour, loaded through ingest."""
    landing = tmp_path / "landing"
    con = connect(tmp_path / "w.duckdb")
    for week in range(1, 5):
        past = HOUR - pd.Timedelta(weeks=week)
        write_events(_hour_events(past, f"w{week}"), landing, "sim")
        load_hour(con, landing, past, "k")
    yield con, landing
    con.close()


def _failed(outcomes):
    return {o.name for o in outcomes if not o.passed}


def test_a_clean_hour_passes(warehouse):
    con, landing = warehouse
    write_events(_hour_events(HOUR, "now"), landing, "sim")
    load_hour(con, landing, HOUR, "k")
    outcomes = run_suites(con, HOUR)
    assert _failed(outcomes) == set()
    assert {o.name for o in outcomes} >= {"events_volume_vs_previous_weeks", "events_completeness"}


def test_tracking_outage_fails_the_volume_check(warehouse):
    con, landing = warehouse
    write_events(_hour_events(HOUR, "now", {**TYPES, "add_to_cart": 0}), landing, "sim")
    load_hour(con, landing, HOUR, "k")
    outcomes = {o.name: o for o in run_suites(con, HOUR)}
    assert not outcomes["events_volume_vs_previous_weeks"].passed
    by_type = {r["event_type"]: r for r in outcomes["events_volume_vs_previous_weeks"].evidence["by_event_type"]}
    assert by_type["add_to_cart"]["observed"] == 0 and by_type["add_to_cart"]["baseline"] == 80
    assert by_type["page_view"]["ratio"] == 1.0


def test_null_field_and_cut_off_hour_fail(warehouse):
    con, landing = warehouse
    events = _hour_events(HOUR, "now", minutes=30)  # the collector stopped at :30
    events.loc[events.index[:200], "country"] = None  # 25% nulls
    write_events(events, landing, "sim")
    load_hour(con, landing, HOUR, "k")
    outcomes = {o.name: o for o in run_suites(con, HOUR)}
    assert _failed(outcomes.values()) == {"events_cohort_null_rates", "events_completeness"}
    country = outcomes["events_cohort_null_rates"].evidence["fields"]["country"]
    assert country["unexpected_count"] == 200


def test_duplicates_and_unknown_types_written_around_ingest_fail(tmp_path):
    con = duckdb.connect(str(tmp_path / "w.duckdb"))
    ensure_raw_schema(con)
    con.execute("""INSERT INTO raw.events (event_id, event_time, event_type, user_id, session_id,
                   device_type, os, browser, country, event_hour)
                   VALUES ('a', '2026-11-16 14:01:00+00', 'page_view', 'u', 's', 'mobile', 'iOS', 'Safari', 'US', '2026-11-16 14:00:00+00'),
                          ('a', '2026-11-16 14:02:00+00', 'wishlist_add', 'u', 's', 'mobile', 'iOS', 'Safari', 'US', '2026-11-16 14:00:00+00')""")
    outcomes = {o.name: o for o in run_suites(con, HOUR)}
    assert not outcomes["events_unique_event_id"].passed
    assert not outcomes["events_accepted_event_types"].passed
    assert outcomes["events_accepted_event_types"].evidence["partial_unexpected_list"] == ["wishlist_add"]


def test_incident_is_opened_updated_and_resolved(warehouse):
    con, landing = warehouse
    write_events(_hour_events(HOUR, "now", {**TYPES, "add_to_cart": 0}), landing, "sim")
    load_hour(con, landing, HOUR, "k")
    first = record_outcomes(con, HOUR, run_suites(con, HOUR))
    again = record_outcomes(con, HOUR, run_suites(con, HOUR))
    assert first == again == "dq-2026111614"
    assert con.execute("SELECT count(*) FROM quality.incidents").fetchone()[0] == 1
    assert failed_hours(con, HOUR, HOUR + pd.Timedelta(hours=1)) == {HOUR.to_pydatetime()}

    write_events(_hour_events(HOUR, "now"), landing, "sim")  # the missing events arrive
    load_hour(con, landing, HOUR, "k")
    assert record_outcomes(con, HOUR, run_suites(con, HOUR)) is None
    assert con.execute("SELECT status FROM quality.incidents").fetchone()[0] == "resolved"
    assert failed_hours(con, HOUR, HOUR + pd.Timedelta(hours=1)) == set()


def _live_hour(paths, events: pd.DataFrame):
    """Land `events` and run the pipeline for HOUR as a live one-hour run: (result, check
    evaluations by name)."""
    from tests.test_pipeline import _pipeline_assets, _resources

    write_events(events, paths["landing"], "collector")
    result = dg.materialize(
        _pipeline_assets(), partition_key=HOUR.strftime("%Y-%m-%d-%H:%M"),
        resources=_resources(paths), instance=dg.DagsterInstance.ephemeral(),
        raise_on_error=False,
    )
    return result, {e.check_name: e for e in result.get_asset_check_evaluations()}


def test_a_broken_live_hour_blocks_the_marts(paths, dbt_manifest):
    """One-hour run: a failed blocking check stops dbt and the snapshot for that hour."""
    events = _hour_events(HOUR, "now")
    events["country"] = None
    result, evaluations = _live_hour(paths, events)
    assert not evaluations["events_cohort_null_rates"].passed
    assert evaluations["events_cohort_null_rates"].severity == dg.AssetCheckSeverity.ERROR
    evidence = evaluations["events_cohort_null_rates"].metadata["evidence"].value
    assert evidence["fields"]["country"]["unexpected_percent"] == 100.0
    materialized = {e.asset_key.to_user_string() for e in result.get_asset_materialization_events()}
    assert "raw_events" in materialized
    # the hour's models are blocked; the reference dimensions, built whole from the reference
    # tables and not from the hour, are not
    hourly_marts = {"marts/fct_funnel_hourly", "marts/fct_cohort_metrics_hourly",
                    "marts/fct_sessions", "marts/dim_monitored_cohorts"}
    assert not hourly_marts & materialized, materialized
    assert not any(k.startswith("intermediate/") for k in materialized), materialized
    assert "analyst_snapshot" not in materialized
    con = duckdb.connect(str(paths["warehouse"]), read_only=True)
    (kind, checks) = con.execute("SELECT kind, failed_checks FROM quality.incidents").fetchone()
    con.close()
    assert kind == "data_quality" and "events_cohort_null_rates" in checks
    json.dumps(evidence)  # evidence is plain JSON for the UI


def test_quarantined_and_duplicated_rows_fail_the_ingest_check(warehouse, tmp_path):
    con, landing = warehouse
    events = _hour_events(HOUR, "now")
    events.loc[events.index[:30], "event_type"] = "wishlist_add"  # 3.75% unknown
    events = pd.concat([events, events.iloc[100:120]])  # 20 duplicates
    # written straight into the hour folder, as a collector would
    import pyarrow.parquet as pq

    from funnelwatch.contract import to_arrow
    from funnelwatch.landing import hour_dir

    hour_dir(landing, HOUR).mkdir(parents=True, exist_ok=True)
    pq.write_table(to_arrow(events.reset_index(drop=True)), hour_dir(landing, HOUR) / "c.parquet")
    load_hour(con, landing, HOUR, "k")
    outcomes = {o.name: o for o in run_suites(con, HOUR)}
    assert _failed(outcomes.values()) == {"events_ingest_rejections"}
    evidence = outcomes["events_ingest_rejections"].evidence
    assert (evidence["rows_quarantined"], evidence["duplicates_dropped"]) == (30, 20)


def test_a_surge_is_not_a_data_fault(warehouse):
    con, landing = warehouse
    write_events(_hour_events(HOUR, "now", {k: v * 5 for k, v in TYPES.items()}), landing, "sim")
    load_hour(con, landing, HOUR, "k")
    assert _failed(run_suites(con, HOUR)) == set()


def test_unknown_values_warn_and_load_every_row(paths, dbt_manifest):
    """A live hour of a feed with its own value names: every row reaches raw.events and the
    marts, the unknown values are a WARN check with the top values, and the gate does not
    block or open a data-quality incident for them."""
    events = _hour_events(HOUR, "now")
    events["page_type"] = "pdp"
    result, evaluations = _live_hour(paths, events)
    unknown = evaluations["events_unknown_values"]
    assert not unknown.passed and unknown.severity == dg.AssetCheckSeverity.WARN
    assert unknown.metadata["rows_kept_as_other"].value == {"page_type": len(events)}
    assert "`pdp`" in unknown.metadata["unknown_values"].value
    assert evaluations["events_ingest_rejections"].passed
    materialized = {e.asset_key.to_user_string() for e in result.get_asset_materialization_events()}
    assert any(k.startswith("marts/") for k in materialized), materialized
    con = duckdb.connect(str(paths["warehouse"]), read_only=True)
    try:
        assert con.execute("SELECT count(*), count(unmapped_values) FROM raw.events").fetchone() \
            == (len(events), len(events))
        assert con.execute("SELECT count(*) FROM raw.events_quarantine").fetchone()[0] == 0
        assert con.execute("SELECT count(*) FROM quality.incidents").fetchone()[0] == 0
    finally:
        con.close()
