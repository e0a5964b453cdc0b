"""The checkout fast lane end to end: a simulated store whose checkout breaks at 12:00, the
history loaded through ingest into a real DuckDB file, the live hours replayed as 5-minute
part files (simulator replay mode), `fast_lane_sensor` on a real Dagster instance, the
`checkout_fast_lane` asset materialized per 5-minute partition, alerts delivered to a local
webhook server, and the hourly lane processing the same hour afterwards."""

from __future__ import annotations

import json
import os
from datetime import UTC, datetime, timedelta

import dagster as dg
import duckdb
import pandas as pd
import pytest
import yaml

from funnelwatch.alerting import parse_routing
from funnelwatch.fastlane.lane import score_slot
from funnelwatch.fastlane.metrics import cohort_frame, slot_metrics
from funnelwatch.incidents.alerts import enqueue_incident_alerts
from funnelwatch.incidents.lifecycle import process_hour
from funnelwatch.ingest.loader import landing_rows, load_hour
from funnelwatch.landing import hour_dir, landed_hours
from orchestration.fastlane.assets import checkout_fast_lane, five_minute_partitions
from orchestration.fastlane.sensors import MAX_SLOTS_PER_TICK, fast_lane_sensor
from orchestration.resources import LandingResource, WarehouseResource
from orchestration.respond.resources import AlertingSettings, IncidentSettings
from orchestration.settings import FastLaneSettings
from simulator import SimulationConfig, simulate
from simulator.replay import replay, write_history
from tests.test_alerting import http_server  # noqa: F401 - a fixture
from tests.test_incidents import ROUTING

END = pd.Timestamp("2026-11-20", tz="UTC")
BREAK = END - pd.Timedelta(hours=12)  # the last day, 12:00
LIVE_START = BREAK - pd.Timedelta(hours=1)
LIVE_END = BREAK + pd.Timedelta(hours=1)
OUTAGE = {"id": "checkout-outage", "type": "checkout_conversion_drop",
          "start": "day -1 12:00", "duration_hours": 2, "magnitude": -1.0,
          "params": {"drop_after": "checkout_start"}}


def key(slot: pd.Timestamp) -> str:
    return five_minute_partitions.get_partition_key_for_timestamp(slot.timestamp())


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    """Four days of a 1,500 sessions/h store; all but the last 13 hours loaded into raw."""
    root = tmp_path_factory.mktemp("fastlane")
    result = simulate(SimulationConfig(start=END - pd.Timedelta(days=4), end=END,
                                       sessions_per_hour=1500, seed=3, incidents=[OUTAGE]))
    landing = root / "landing"
    write_history(result.events, landing, LIVE_START, late=result.late)
    warehouse = root / "warehouse.duckdb"
    with duckdb.connect(str(warehouse)) as con:
        for hour in landed_hours(landing):
            load_hour(con, landing, hour, "test-key")
    stats = replay(result.events, landing, start=LIVE_START, end=LIVE_END, speed=0,
                   late=result.late)
    assert stats.files == 24, "one part file per 5-minute slot"
    return {"root": root, "landing": landing, "warehouse": warehouse,
            "events": result.events}


@pytest.fixture
def copy(store, tmp_path):
    """The store's warehouse copied for one test (tests change it)."""
    target = tmp_path / "warehouse.duckdb"
    target.write_bytes(store["warehouse"].read_bytes())
    return {**store, "warehouse": target, "tmp": tmp_path}


def test_slot_metrics_from_landing_files_count_valid_rows_and_zero_fill(store, tmp_path):
    hour = LIVE_START.to_pydatetime()
    con = duckdb.connect()
    rows = landing_rows(con, sorted(hour_dir(store["landing"], hour).glob("part-*.parquet")))
    params = {**rows.params, "hour_start": hour, "hour_end": hour + timedelta(hours=1)}
    cohorts = cohort_frame([("device_type", "desktop"), ("payment_provider", "adyen"),
                            ("os", "NoSuchOS")])
    frame = slot_metrics(con, rows.sql, params, hour, hour + timedelta(hours=1), cohorts,
                         valid_only=True)
    assert frame["slot_start"].nunique() == 12
    events = store["events"]
    in_hour = events[(events["event_time"] >= LIVE_START)
                     & (events["event_time"] < LIVE_START + pd.Timedelta(hours=1))]
    purchases = frame[(frame["metric"] == "purchases") & (frame["cohort"] == "all")]
    assert purchases["numerator"].sum() == in_hour.loc[
        in_hour["event_type"] == "purchase", "order_id"].nunique()
    silent = frame[frame["cohort"] == "os=NoSuchOS"]
    assert len(silent) and (silent["numerator"] == 0).all(), "zero-filled, not missing"
    # the provider cohort only has the payment failure rate
    assert set(frame.loc[frame["cohort"] == "payment_provider=adyen", "metric"]) == {
        "payment_failure_rate"}
    with pytest.raises(ValueError, match="unknown fast-lane dimension"):
        cohort_frame([("user_id", "x")])


def _materialize(copy, slot: pd.Timestamp, routing_path,
                 fast_lane: FastLaneSettings | None = None) -> dg.MaterializeResult:
    return dg.materialize(
        [checkout_fast_lane],
        partition_key=key(slot),
        resources={
            "warehouse": WarehouseResource(path=str(copy["warehouse"]),
                                           publish_dir=str(copy["tmp"] / "published")),
            "landing": LandingResource(path=str(copy["landing"])),
            "fast_lane": fast_lane or FastLaneSettings(),
            "incident_settings": IncidentSettings(reports_dir=str(copy["tmp"] / "reports"),
                                                  feedback_dir=str(copy["tmp"] / "fb")),
            # the simulated hours are in the past: a horizon that still pages them (the
            # backfill rule itself is tested in tests/test_incidents.py)
            "alerting": AlertingSettings(routing_path=str(routing_path), horizon_hours=10**5,
                                         ops_outbox_path=str(copy["tmp"] / "ops.duckdb")),
        },
    )


def test_the_fast_lane_pages_once_within_minutes_and_the_hourly_lane_keeps_the_incident(
        copy, http_server, monkeypatch):  # noqa: F811 - the imported fixture
    monkeypatch.setenv("FW_TEST_HOOK_URL", f"{http_server.base}/hook")
    routing_path = copy["tmp"] / "routing.yml"
    routing_path.write_text(yaml.safe_dump(ROUTING))
    flagged_at = None
    for slot in pd.date_range(BREAK - pd.Timedelta(minutes=15), LIVE_END, freq="5min",
                              inclusive="left"):
        result = _materialize(copy, slot, routing_path)
        assert result.success
        meta = result.asset_materializations_for_node("checkout_fast_lane")[0].metadata
        if slot < BREAK:
            assert meta["series_flagged"].value == 0, f"a false alert at {slot}"
        elif flagged_at is None and meta["series_flagged"].value:
            flagged_at = slot
            assert meta["incidents_opened"].value.startswith("inc-")
        if flagged_at is not None and slot >= flagged_at + pd.Timedelta(minutes=10):
            break
    # A total checkout break at ~7 checkouts per 5 minutes is certain after 15-30 minutes
    # at the lane's false-alarm budget (docs/fastlane.md).
    assert flagged_at is not None and flagged_at <= BREAK + pd.Timedelta(minutes=30)

    hooks = [r["json"]["notification"] for r in http_server.requests if r["path"] == "/hook"]
    assert [n["action"] for n in hooks] == ["trigger"], "one page, not one per slot"
    with duckdb.connect(str(copy["warehouse"])) as con:
        incidents = con.execute("SELECT incident_id, metric, alert_key FROM incidents.incidents"
                                ).fetchall()
        assert len(incidents) == 1
        inc_id, metric, alert_key = incidents[0]
        assert metric in ("checkout_conversion_rate", "purchases")
        scored_slots = con.execute("SELECT count(DISTINCT slot_start) FROM fastlane.scores"
                                   ).fetchone()[0]
        assert scored_slots >= 4
        # Later the hourly pipeline loads hour 12 and processes it: same incident, no page.
        load_hour(con, copy["landing"], BREAK.to_pydatetime(), "test-key")
        process_hour(con, BREAK.to_pydatetime())
        assert con.execute("SELECT incident_id, alert_key FROM incidents.incidents"
                           ).fetchall() == [(inc_id, alert_key)]
        assert enqueue_incident_alerts(con, parse_routing(ROUTING), datetime.now(UTC),
                                       horizon=timedelta(hours=10**5)).enqueued == []


def test_a_field_gone_null_in_the_running_hour_is_held_back_not_paged(
        copy, http_server, monkeypatch):  # noqa: F811 - the imported fixture
    """The geo-IP lookup fails at LIVE_START + 10 min: country is null on every event of the
    running hour's part files from then on. The country cohorts lose their purchases with no
    business cause; the hourly lane's gate would call the hour a data-quality fault, and the
    fast lane holds those flags back instead of paging. At ~1 US purchase per slot the drop
    is not significant at the lane's alpha within the hour, so the detector runs at alpha
    1e-2 here: it flags the country cohorts, and the guard must hold every such flag."""
    monkeypatch.setenv("FW_TEST_HOOK_URL", f"{http_server.base}/hook")
    routing_path = copy["tmp"] / "routing.yml"
    routing_path.write_text(yaml.safe_dump(ROUTING))
    fault_start = LIVE_START + pd.Timedelta(minutes=10)
    with duckdb.connect() as con:
        for part in sorted(hour_dir(copy["landing"], LIVE_START.to_pydatetime()).glob("part-*")):
            nulled = part.with_suffix(".tmp")
            con.execute(
                f"""COPY (SELECT * REPLACE (CASE WHEN event_time >= $t THEN NULL
                                                 ELSE country END AS country)
                          FROM read_parquet('{part}')) TO '{nulled}' (FORMAT parquet)""",
                {"t": fault_start.to_pydatetime()})
            nulled.replace(part)
    held = 0
    for slot in pd.date_range(fault_start, BREAK, freq="5min", inclusive="left"):
        result = _materialize(copy, slot, routing_path, FastLaneSettings(alpha=1e-2))
        meta = result.asset_materializations_for_node("checkout_fast_lane")[0].metadata
        assert "country=" not in meta["flagged"].value, f"a country flag at {slot}"
        held += meta["series_held_back"].value
    # the detector did see the drop: the guard, not a quiet detector, kept it from paging
    assert held > 0
    with duckdb.connect(str(copy["warehouse"])) as con:
        reasons = con.execute(
            "SELECT DISTINCT cohort, reason FROM fastlane.scores WHERE reason LIKE 'held back%'"
        ).fetchall()
        country_flags = con.execute(
            "SELECT count(*) FROM fastlane.scores WHERE cohort LIKE 'country=%' AND is_anomaly"
        ).fetchall()[0][0]
        incidents = con.execute(
            "SELECT count(*) FROM information_schema.tables WHERE table_name = 'incidents' "
            "AND table_schema = 'incidents'").fetchall()[0][0] and con.execute(
            "SELECT count(*) FROM incidents.incidents WHERE cohort LIKE '%country=%'"
        ).fetchall()[0][0]
    assert country_flags == 0 and not incidents
    assert reasons and all(c.startswith("country=") for c, _ in reasons)
    assert all("country null in" in r for _, r in reasons), reasons
    hooked = [r for r in http_server.requests if "country" in json.dumps(r.get("json"))]
    assert hooked == []


def test_rescoring_a_slot_after_the_hour_is_loaded_reads_raw_and_gives_the_same_counts(copy):
    slot = BREAK + pd.Timedelta(minutes=20)
    with duckdb.connect(str(copy["warehouse"])) as con:
        from_landing = score_slot(con, copy["landing"], slot)
        assert from_landing.landing_files > 0
        for hour in (LIVE_START, BREAK):  # the hours its 60-minute window reaches into
            load_hour(con, copy["landing"], hour.to_pydatetime(), "test-key")
        from_raw = score_slot(con, copy["landing"], slot)
        assert from_raw.landing_files == 0 and from_raw.raw_hours_refreshed == 2
        sources = con.execute(
            "SELECT DISTINCT source FROM fastlane.slot_metrics WHERE slot_start = $s",
            {"s": slot.to_pydatetime()}).fetchall()
    assert sources == [("raw",)]
    columns = ["metric", "cohort", "value", "p_value"]
    pd.testing.assert_frame_equal(from_landing.scored[columns], from_raw.scored[columns])


def test_an_unreadable_part_file_is_left_out_and_the_slot_scores_as_without_it(copy):
    """A collector's half-written part (truncated Parquet) or a CSV named .parquet in the
    running hour: the slot scores from the other files, exactly as if the bad one were not
    there, and says which file it left out."""
    slot = BREAK + pd.Timedelta(minutes=20)
    columns = ["metric", "cohort", "value", "p_value"]
    with duckdb.connect(str(copy["warehouse"])) as con:
        clean = score_slot(con, copy["landing"], slot)
        folder = hour_dir(copy["landing"], BREAK.to_pydatetime())
        good = min(folder.glob("part-*.parquet")).read_bytes()
        (folder / "part-truncated.parquet").write_bytes(good[: len(good) // 2])
        (folder / "part-text.parquet").write_text("event_id,event_time\nx,2026-11-19\n")
        with_bad = score_slot(con, copy["landing"], slot)
    assert len(with_bad.files_set_aside) == 2
    assert all("part-truncated.parquet" in f or "part-text.parquet" in f
               for f in with_bad.files_set_aside)
    assert with_bad.landing_files == clean.landing_files
    pd.testing.assert_frame_equal(clean.scored[columns], with_bad.scored[columns])


# --- the sensor ---------------------------------------------------------------------------

def tick(instance, landing, cursor=None):
    context = dg.build_sensor_context(
        instance=instance, cursor=cursor,
        resources={"landing": LandingResource(path=str(landing))})
    return fast_lane_sensor(context), context.cursor


def part(landing, slot: datetime, suffix="parquet"):
    path = hour_dir(landing, slot) / f"part-{slot:%H%M}.{suffix}"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"")
    return path


def test_the_sensor_launches_each_landed_slot_once(tmp_path):
    landing = tmp_path / "landing"
    h = datetime(2026, 11, 19, 12, tzinfo=UTC)
    with dg.instance_for_test() as instance:
        result, cursor = tick(instance, landing)
        assert isinstance(result, dg.SkipReason) and "no event files" in result.skip_message
        part(landing, h)
        part(landing, h + timedelta(minutes=5))
        result, cursor = tick(instance, landing, cursor)
        # the first tick starts at the newest landed slot: the lane is about now
        assert result.partition_key == "2026-11-19-12:05"
        assert json.loads(cursor)["slot"].startswith("2026-11-19T12:05")
        result, cursor = tick(instance, landing, cursor)
        assert isinstance(result, dg.SkipReason)
        for minutes in (10, 15, 20):
            part(landing, h + timedelta(minutes=minutes))
        result, cursor = tick(instance, landing, cursor)
        # slots that landed together go into one run, in order
        assert result.partition_key_range == dg.PartitionKeyRange(
            "2026-11-19-12:10", "2026-11-19-12:20")
        # the next hour starts: its folder is found too
        part(landing, h + timedelta(hours=1))
        result, cursor = tick(instance, landing, cursor)
        assert result.partition_key_range == dg.PartitionKeyRange(
            "2026-11-19-12:25", "2026-11-19-13:00")


def test_the_sensor_waits_while_a_fast_lane_run_is_queued(tmp_path, monkeypatch):
    from orchestration.definitions import defs

    for name in ("WAREHOUSE", "PUBLISH_DIR", "LANDING"):  # resolved when the run is created
        monkeypatch.setenv(f"FUNNELWATCH_{name}", str(tmp_path / name.lower()))
    landing = tmp_path / "landing"
    h = datetime(2026, 11, 19, 12, tzinfo=UTC)
    part(landing, h)
    with dg.instance_for_test() as instance:
        result, cursor = tick(instance, landing)
        job = defs.resolve_job_def("checkout_fast_lane_job")
        # a run created and not started yet (the daemon holds queued runs the same way)
        run = instance.create_run_for_job(job, tags={"dagster/partition": result.partition_key})
        assert run.status == dg.DagsterRunStatus.NOT_STARTED
        part(landing, h + timedelta(minutes=5))
        waiting, same_cursor = tick(instance, landing, cursor)
        assert isinstance(waiting, dg.SkipReason) and "waiting to start" in waiting.skip_message
        assert same_cursor == cursor
        instance.report_run_canceled(run)
        part(landing, h + timedelta(minutes=10))
        result, cursor = tick(instance, landing, cursor)
        assert result.partition_key_range == dg.PartitionKeyRange(
            "2026-11-19-12:05", "2026-11-19-12:10")


def test_the_sensor_reads_other_files_by_mtime_and_skips_ahead_when_far_behind(tmp_path):
    landing = tmp_path / "landing"
    h = datetime(2026, 11, 19, 12, tzinfo=UTC)
    folder = hour_dir(landing, h)
    folder.mkdir(parents=True)
    collector = folder / "collector-0001.jsonl"
    collector.write_text("{}\n")
    written = (h + timedelta(minutes=23)).timestamp()
    os.utime(collector, (written, written))
    with dg.instance_for_test() as instance:
        result, cursor = tick(instance, landing)
        # written at 12:23: complete up to the slot before 12:20's, i.e. 12:15
        assert result.partition_key == "2026-11-19-12:15"
        later = h + timedelta(hours=3, minutes=7)
        part(landing, later)
        result, cursor = tick(instance, landing, cursor)
        # far behind: the newest MAX_SLOTS_PER_TICK slots, 14:10 .. 15:05
        assert MAX_SLOTS_PER_TICK == 12
        assert result.partition_key_range == dg.PartitionKeyRange(
            "2026-11-19-14:10", "2026-11-19-15:05")


def test_funnelwatch_run_takes_the_fast_lane_over_a_window_in_one_run(copy, monkeypatch):
    from typer.testing import CliRunner

    from funnelwatch.cli import app

    home = copy["tmp"] / "dagster_home"
    home.mkdir()
    monkeypatch.setenv("DAGSTER_HOME", str(home))
    monkeypatch.setenv("FUNNELWATCH_LANDING", str(copy["landing"]))
    monkeypatch.setenv("FUNNELWATCH_WAREHOUSE", str(copy["warehouse"]))
    monkeypatch.setenv("FUNNELWATCH_PUBLISH_DIR", str(copy["tmp"] / "published"))
    monkeypatch.setenv("FUNNELWATCH_FEEDBACK_DIR", str(copy["tmp"] / "feedback"))
    start, end = BREAK, BREAK + pd.Timedelta(minutes=30)
    result = CliRunner().invoke(app, ["run", "--job", "checkout_fast_lane_job",
                                      "--start", start.isoformat(), "--end", end.isoformat()])
    assert result.exit_code == 0, result.output
    assert "running checkout_fast_lane_job over 6 partitions" in result.output
    assert "2026-11-19-12:00 .. 2026-11-19-12:25" in result.output
    with duckdb.connect(str(copy["warehouse"]), read_only=True) as con:
        slots = con.execute("SELECT count(DISTINCT slot_start) FROM fastlane.scores").fetchone()[0]
        opened = con.execute("SELECT count(*) FROM incidents.incidents").fetchone()[0]
    assert slots == 6 and opened == 1
    bad = CliRunner().invoke(app, ["run", "--job", "checkout_fast_lane_job",
                                   "--start", start.isoformat(), "--end", start.isoformat()])
    assert bad.exit_code != 0 and "no whole checkout_fast_lane_job partition" in bad.output
