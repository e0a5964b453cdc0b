"""Late data: `late_data_sensor` (a real Dagster test instance, real files in a temp landing
folder with controlled mtimes) and what re-processing a late hour does to incidents and the
alert outbox (real DuckDB files, as tests/test_incidents.py)."""

from __future__ import annotations

import json
import os
import time
from datetime import UTC, datetime, timedelta

import dagster as dg
import duckdb
import pytest

from funnelwatch.alerting import parse_routing
from funnelwatch.detection.store import ensure_detection_schema
from funnelwatch.incidents.alerts import enqueue_incident_alerts
from funnelwatch.incidents.lifecycle import acknowledge, process_hour, process_window
from funnelwatch.landing import hour_dir
from orchestration.ingest.sensors import RAW_EVENTS, late_data_sensor
from orchestration.resources import LandingResource
from tests.test_incidents import ROUTING, hour, incidents, point, write

# --- the sensor ---------------------------------------------------------------------------

NOW = datetime.now(UTC).replace(minute=0, second=0, microsecond=0)
H1 = NOW - timedelta(hours=5)
H2 = NOW - timedelta(hours=4)


def key(h: datetime) -> str:
    return h.strftime("%Y-%m-%d-%H:%M")


def processed(instance, h: datetime) -> float:
    """Record a `raw_events` materialization of the hour; returns its time (epoch s)."""
    instance.report_runless_asset_event(dg.AssetMaterialization(asset_key=RAW_EVENTS,
                                                                partition=key(h)))
    records = instance.fetch_materializations(
        dg.AssetRecordsFilter(asset_key=RAW_EVENTS, asset_partitions=[key(h)]), limit=1
    ).records
    return records[0].timestamp


def land(landing, h: datetime, name: str, mtime: float | None = None):
    path = hour_dir(landing, h) / name
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text('{"event_id": "x"}\n')
    if mtime is not None:
        os.utime(path, (mtime, mtime))
    return path


def tick(instance, landing, cursor=None):
    context = dg.build_sensor_context(
        instance=instance, cursor=cursor,
        resources={"landing": LandingResource(path=str(landing))},
    )
    result = late_data_sensor(context)
    return result, context.cursor


def requests(result) -> list[dg.RunRequest]:
    if isinstance(result, dg.SkipReason):
        return []
    return list(result or [])


def test_a_late_file_requests_its_hour_once(tmp_path):
    landing = tmp_path / "landing"
    with dg.instance_for_test() as instance:
        land(landing, H1, "collector-a.parquet", mtime=time.time() - 600)  # on time
        at = processed(instance, H1)
        late = land(landing, H1, "collector-b.jsonl", mtime=at + 60)
        result, cursor = tick(instance, landing)
        [request] = requests(result)
        assert request.partition_key == key(H1)
        assert request.run_key == f"late-{key(H1)}-{late.stat().st_mtime_ns}"
        assert request.job_name in (None, "hourly_pipeline")
        assert "collector-b.jsonl" in request.tags["funnelwatch/late_files"]
        assert json.loads(cursor)["requested"] == {key(H1): late.stat().st_mtime_ns}
        # The same tick again: nothing new.
        again, cursor2 = tick(instance, landing, cursor)
        assert isinstance(again, dg.SkipReason) and "already requested" in again.skip_message
        # Another file lands for the same hour before the re-run: a new request, new key.
        newer = land(landing, H1, "collector-c.csv", mtime=at + 120)
        [request] = requests(tick(instance, landing, cursor2)[0])
        assert request.run_key == f"late-{key(H1)}-{newer.stat().st_mtime_ns}"


def test_on_time_files_unprocessed_hours_and_temp_files_are_not_late(tmp_path):
    landing = tmp_path / "landing"
    with dg.instance_for_test() as instance:
        land(landing, H1, "on-time.parquet", mtime=time.time() - 600)
        at = processed(instance, H1)
        # Never processed: the schedule loads it, whatever its files' times.
        land(landing, H2, "collector.parquet", mtime=at + 60)
        # A temp file of an atomic write and a file type ingest does not read.
        land(landing, H1, ".collector.parquet.tmp", mtime=at + 60)
        land(landing, H1, "notes.txt", mtime=at + 60)
        result, _ = tick(instance, landing)
        assert isinstance(result, dg.SkipReason), result
        assert "looked at 2 of 2 hour folders" in result.skip_message


def test_two_late_files_in_one_hour_are_one_request(tmp_path):
    landing = tmp_path / "landing"
    with dg.instance_for_test() as instance:
        at = processed(instance, H1)
        land(landing, H1, "a.parquet", mtime=at + 30)
        b = land(landing, H1, "b.parquet", mtime=at + 90)
        [request] = requests(tick(instance, landing)[0])
        assert request.partition_key == key(H1)
        assert request.run_key.endswith(str(b.stat().st_mtime_ns)), "keyed by the newest"
        assert request.tags["funnelwatch/late_files"] == "a.parquet,b.parquet"


def test_unchanged_folders_are_not_listed_again(tmp_path):
    landing = tmp_path / "landing"
    with dg.instance_for_test() as instance:
        for n in range(6):
            land(landing, NOW - timedelta(hours=10 + n), "old.parquet", mtime=time.time() - 900)
        result, cursor = tick(instance, landing)
        assert "looked at 6 of 6" in result.skip_message
        # Only the folder(s) with the newest mtime are looked at again (coarse clocks).
        newest = max(hour_dir(landing, NOW - timedelta(hours=10 + n)).stat().st_mtime_ns
                     for n in range(6))
        assert json.loads(cursor)["folders_ns"] == newest
        result, _ = tick(instance, landing, cursor)
        assert "of 6 hour folders" in result.skip_message
        looked = int(result.skip_message.split("looked at ")[1].split(" ")[0])
        assert looked < 6


def test_a_file_that_landed_while_its_hour_was_processed_is_late(tmp_path):
    # The file's folder does not change after the tick that saw it unprocessed; the new
    # raw_events materialization (storage-id cursor) makes the sensor look at it again.
    landing = tmp_path / "landing"
    with dg.instance_for_test() as instance:
        land(landing, H1, "early.parquet", mtime=time.time() - 600)
        path = land(landing, H1, "during-run.parquet")
        result, cursor = tick(instance, landing)
        assert isinstance(result, dg.SkipReason)  # not processed yet
        # The hour's run starts; the file lands after the run started (ingest had listed
        # the folder already), and the materialization is recorded later.
        os.utime(path, (time.time() + 5, time.time() + 5))  # a file's own time: no folder change
        instance.report_runless_asset_event(dg.AssetMaterialization(asset_key=RAW_EVENTS,
                                                                    partition=key(H1)))
        [request] = requests(tick(instance, landing, cursor)[0])
        assert request.partition_key == key(H1)


def test_processed_as_of_is_the_start_of_the_run_that_loaded_the_hour(tmp_path):
    """A real run: a file landing while ingest is going (after the run started, before the
    materialization is recorded) is late."""
    landing = tmp_path / "landing"
    partitions = dg.HourlyPartitionsDefinition(start_date="2019-10-01-00:00", timezone="UTC")

    @dg.asset(name="raw_events", partitions_def=partitions)
    def fake_ingest(context):
        land(landing, H1, "during-ingest.parquet")  # lands after the files were listed

    with dg.instance_for_test() as instance:
        land(landing, H1, "listed.parquet", mtime=time.time() - 600)
        assert dg.materialize([fake_ingest], instance=instance, partition_key=key(H1)).success
        [request] = requests(tick(instance, landing)[0])
        assert request.partition_key == key(H1)
        assert request.tags["funnelwatch/late_files"] == "during-ingest.parquet"


def test_hours_older_than_the_max_age_are_reported_not_rerun(tmp_path):
    landing = tmp_path / "landing"
    old = NOW - timedelta(days=10)
    with dg.instance_for_test() as instance:
        at = processed(instance, old)
        land(landing, old, "resent.parquet", mtime=at + 60)
        result, cursor = tick(instance, landing)
        assert isinstance(result, dg.SkipReason)
        assert "older than 7 days" in result.skip_message and key(old) in result.skip_message
        assert json.loads(cursor)["requested"] == {}


# --- re-processing a late hour: incidents and the outbox -------------------------------------


@pytest.fixture
def con(tmp_path):
    connection = duckdb.connect(str(tmp_path / "warehouse.duckdb"))
    connection.execute("SET TimeZone = 'UTC'")
    ensure_detection_schema(connection)
    yield connection
    connection.close()


def outbox(con) -> list[tuple]:
    return con.execute("SELECT dedup_key, channel, action FROM alerting.outbox ORDER BY id"
                       ).fetchall()


def test_a_late_hour_updates_an_alerted_incident_without_a_second_trigger(con):
    routing = parse_routing(ROUTING)
    m, c = "checkout_conversion_rate", "all"
    write(con, [point(0, m, c, severity=90)])
    process_hour(con, hour(0))
    assert [a for _, a, _ in enqueue_incident_alerts(con, routing, hour(1)).enqueued] == [
        "trigger"]
    before = incidents(con).iloc[0]
    # Late data for the same hour: detection re-scores it and finds one more anomalous series.
    write(con, [point(0, m, c, severity=90), point(0, "sessions", "all", severity=60)])
    process_hour(con, hour(0))
    after = incidents(con)
    assert len(after) == 1 and after.iloc[0]["incident_id"] == before["incident_id"]
    assert after.iloc[0]["anomaly_count"] == before["anomaly_count"] + 1 == 2
    enqueue_incident_alerts(con, routing, hour(1))
    assert outbox(con) == [(before["alert_key"], "hook", "trigger")], "not sent twice"


def test_a_late_later_hour_updates_the_incident_and_sends_nothing(con):
    routing = parse_routing(ROUTING)
    m, c = "checkout_conversion_rate", "all"
    write(con, [point(0, m, c, severity=90), point(1, m, c, severity=80)])
    process_window(con, hour(0), hour(2))
    enqueue_incident_alerts(con, routing, hour(2))
    # The late symptom is the same step in a cohort inside the incident's: it joins it. (A
    # different step in an unlocalised cohort is a problem of its own: see test_incidents.)
    write(con, [point(1, m, c, severity=80), point(1, m, "os=iOS", severity=55)])
    process_hour(con, hour(1))
    inc = incidents(con).iloc[0]
    assert len(incidents(con)) == 1 and inc["anomaly_count"] == 3
    assert enqueue_incident_alerts(con, routing, hour(2)).enqueued == []
    assert len(outbox(con)) == 1


def test_late_data_in_the_first_hour_of_an_ongoing_incident_keeps_its_later_hours(con):
    routing = parse_routing(ROUTING)
    m, c = "checkout_conversion_rate", "all"
    write(con, [point(0, m, c, severity=90), point(1, m, c, severity=80)])
    process_window(con, hour(0), hour(2))
    enqueue_incident_alerts(con, routing, hour(2))
    acknowledge(con, incidents(con).iloc[0]["incident_id"], "alice", hour(2))
    enqueue_incident_alerts(con, routing, hour(2))
    write(con, [point(0, m, c, severity=90), point(0, "sessions", "all", severity=60)])
    process_hour(con, hour(0))
    assert [a for _, _, a in outbox(con)] == ["trigger", "acknowledge"]  # holds today
    inc = incidents(con).iloc[0]
    assert inc["state"] == "acknowledged"
    assert inc["anomaly_count"] == 3
