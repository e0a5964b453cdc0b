"""The Dagster pipeline end to end: real DuckDB files, real dbt build, dagster.materialize."""

from __future__ import annotations

import itertools
from pathlib import Path

import dagster as dg
import duckdb
import pandas as pd
import pytest

DAY = "2026-11-02"
SESSIONS_PER_HOUR = 120


def _simulate(landing: Path, days: int = 1, scenario: str = "none") -> pd.DataFrame:
    from simulator import SimulationConfig, load_incidents, simulate, write_simulation

    start = pd.Timestamp(DAY, tz="UTC")
    config = SimulationConfig(
        start=start, end=start + pd.Timedelta(days=days), sessions_per_hour=SESSIONS_PER_HOUR,
        seed=3, incidents=[] if scenario == "none" else load_incidents(scenario),
    )
    result = simulate(config)
    write_simulation(result, landing, landing.parent / "ground_truth.json")
    return result.events


def _defs():
    from orchestration.definitions import defs

    return defs


def _resources(paths) -> dict:
    from dagster_dbt import DbtCliResource

    from orchestration.resources import LandingResource, PseudonymizerResource, WarehouseResource
    from orchestration.settings import DetectionSettings
    from orchestration.transform.project import dbt_executable, dbt_project

    return {
        "warehouse": WarehouseResource(path=str(paths["warehouse"]),
                                       publish_dir=str(paths["publish"])),
        "landing": LandingResource(path=str(paths["landing"])),
        "pseudonymizer": PseudonymizerResource(),
        "dbt": DbtCliResource(project_dir=dbt_project, dbt_executable=dbt_executable()),
        "detection": DetectionSettings(use_prophet=False),
    }


def _pipeline_assets():
    """The assets and checks of the hourly job up to the analyst snapshot (detection, the
    respond group and maintenance have their own tests)."""
    defs = _defs()
    loading = {"ingest", "transform", "serve"}
    return [a for a in defs.assets if set(a.group_names_by_key.values()) <= loading] + [
        *defs.asset_checks
    ]


def _query(path: Path, sql: str, params=None):
    con = duckdb.connect(str(path), read_only=True)
    try:
        return con.execute(sql, params or []).fetchall()
    finally:
        con.close()


def _materializations(result: dg.ExecuteInProcessResult, asset: str) -> list:
    return [
        e.materialization for e in result.get_asset_materialization_events()
        if e.asset_key == dg.AssetKey(asset)
    ]


def _metadata(result: dg.ExecuteInProcessResult, asset: str) -> dict:
    """Metadata of the asset's materialization (a range run records the same for each hour)."""
    mats = _materializations(result, asset)
    assert mats, f"{asset} was not materialized"
    return {k: v.value for k, v in mats[0].metadata.items()}


@pytest.fixture
def simulated(paths, dbt_manifest):
    events = _simulate(paths["landing"])
    return events


def test_materialize_one_partition(paths, simulated):
    hour = f"{DAY}-13:00"
    result = dg.materialize(
        _pipeline_assets(), partition_key=hour, resources=_resources(paths),
        instance=dg.DagsterInstance.ephemeral(),
    )
    assert result.success
    in_hour = simulated[pd.to_datetime(simulated["event_time"], utc=True).dt.floor("h")
                       == pd.Timestamp(f"{DAY}T13:00Z")]
    meta = _metadata(result, "raw_events")
    assert meta["rows_in"] == len(in_hour)
    assert meta["rows_in"] == meta["rows_loaded"] + meta["rows_quarantined"] + meta["duplicates_dropped"]
    (loaded,) = _query(paths["warehouse"], "SELECT count(*) FROM raw.events")[0]
    assert loaded == meta["rows_loaded"] > 0

    # the funnel mart holds the hour, and its session count matches the raw events
    ((mart_sessions,),) = _query(
        paths["warehouse"],
        "SELECT sum(sessions) FROM marts.fct_funnel_hourly WHERE event_hour = ?",
        [pd.Timestamp(f"{DAY}T13:00Z").to_pydatetime()],
    )
    ((raw_sessions,),) = _query(paths["warehouse"],
                                "SELECT count(DISTINCT session_id) FROM raw.events")
    assert mart_sessions == raw_sessions
    # and the analyst snapshot serves it
    snapshot = paths["publish"] / "analytics.duckdb"
    ((published,),) = _query(snapshot, "SELECT sum(sessions) FROM fct_funnel_hourly")
    assert published == mart_sessions
    preview = _metadata(result, "analyst_snapshot")["funnel_last_24h"]
    assert "sessions" in preview and "checkout_conversion" in preview


def test_rerun_of_a_partition_is_idempotent(paths, simulated):
    hour = f"{DAY}-09:00"

    def snapshot_of_tables():
        return (
            _query(paths["warehouse"], "SELECT count(*), count(DISTINCT event_id) FROM raw.events"),
            _query(paths["warehouse"], "SELECT * FROM marts.fct_funnel_hourly ORDER BY ALL"),
            _query(paths["warehouse"],
                   "SELECT event_hour, metric, cohort, numerator, denominator "
                   "FROM marts.fct_cohort_metrics_hourly ORDER BY ALL"),
        )

    for _ in range(2):
        assert dg.materialize(_pipeline_assets(), partition_key=hour, resources=_resources(paths),
                              instance=dg.DagsterInstance.ephemeral()).success
        if _ == 0:
            first = snapshot_of_tables()
    assert snapshot_of_tables() == first
    assert first[0][0][0] == first[0][0][1]  # no duplicate event ids


def test_history_loads_as_one_run(paths, simulated, monkeypatch):
    from funnelwatch.cli import PLANNED_EVENTS_AS_RANGE, _one_planned_event_per_asset

    monkeypatch.delenv(PLANNED_EVENTS_AS_RANGE, raising=False)
    _one_planned_event_per_asset()  # as `funnelwatch run` does for a range
    instance = dg.DagsterInstance.ephemeral()
    job = _defs().resolve_job_def("hourly_pipeline")
    result = job.execute_in_process(
        instance=instance,
        resources=_resources(paths),
        tags={"dagster/asset_partition_range_start": f"{DAY}-00:00",
              "dagster/asset_partition_range_end": f"{DAY}-05:00"},
    )
    assert result.success
    assert len(instance.get_run_records()) == 1
    hours = _query(paths["warehouse"],
                   "SELECT count(DISTINCT event_hour) FROM marts.fct_funnel_hourly")[0][0]
    assert hours == 6
    assert _metadata(result, "raw_events")["hours"] == 6
    # one run, and every hour of the range is recorded as materialized
    assert len(_materializations(result, "raw_events")) == 6
    # but planned once per asset (the range), not once per asset and hour
    planned = [e for e in instance.all_logs(result.run_id)
               if e.dagster_event and e.dagster_event.event_type_value
               == "ASSET_MATERIALIZATION_PLANNED"]
    planned_keys = [e.dagster_event.event_specific_data.asset_key for e in planned]
    assert len(planned_keys) == len(set(planned_keys)) > 0
    assert dg.AssetKey("raw_events") in planned_keys
    # the reference tables and the dbt models built whole are materialized once per run
    assert len(_materializations(result, "raw_deploys")) == 1
    assert len([e for e in result.get_asset_materialization_events()
                if e.asset_key == dg.AssetKey(["marts", "fct_funnel_hourly"])]) == 6
    assert len([e for e in result.get_asset_materialization_events()
                if e.asset_key == dg.AssetKey(["marts", "dim_deploys"])]) == 1


def test_schedule_runs_the_hour_that_just_ended(dbt_manifest):
    schedule = _defs().resolve_schedule_def("hourly_pipeline_schedule")
    context = dg.build_schedule_context(
        scheduled_execution_time=pd.Timestamp("2026-11-02T14:05:00Z").to_pydatetime()
    )
    (request,) = list(schedule.evaluate_tick(context).run_requests)
    assert request.partition_key == "2026-11-02-13:00"


def multiprocess_job():
    """A job whose two ingest writers have no dependency between them: the multiprocess
    executor would start them together if the pool did not serialise them."""
    from orchestration.definitions import defs

    return defs.resolve_job_def("hourly_pipeline").with_executor_def(dg.multiprocess_executor)


@pytest.mark.slow
def test_multiprocess_executor_never_opens_two_writers(paths, simulated, tmp_path):
    overrides = {"concurrency": {"pools": {"default_limit": 1, "granularity": "op"}}}
    home = tmp_path / "dagster"
    home.mkdir()
    with dg.instance_for_test(overrides=overrides, temp_dir=str(home)) as instance:
        with dg.execute_job(
            dg.reconstructable(multiprocess_job), instance=instance,
            tags={"dagster/partition": f"{DAY}-10:00"},
        ) as result:
            assert result.success, [e.message for e in result.all_events if e.is_failure]
            run_id = result.run_id
        intervals = _writer_intervals(instance, run_id)
    # every step of the job writes the warehouse, so no two may have run at the same time
    assert {"ingest_events", "ingest_reference", "analyst_snapshot"} <= set(intervals)
    ordered = sorted(intervals.values())
    for (_, end), (next_start, _) in itertools.pairwise(ordered):
        assert end <= next_start, f"writer steps overlapped: {intervals}"


def _writer_intervals(instance, run_id):
    starts, ends = {}, {}
    for record in instance.all_logs(run_id):
        event = record.dagster_event
        if event is None:
            continue
        if event.event_type_value == "STEP_START":
            starts[event.step_key] = record.timestamp
        elif event.event_type_value == "STEP_SUCCESS":
            ends[event.step_key] = record.timestamp
    return {k: (starts[k], ends[k]) for k in starts if k in ends}
