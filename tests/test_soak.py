"""Soak on the schedule's path, short window (bench/soak.py runs the same loop for days).

Real everything: simulator files in a temp landing folder, a persistent DagsterInstance in a
temp DAGSTER_HOME, one DuckDB warehouse file, real dbt builds; `hourly_pipeline_schedule` and
`anomalies_sensor` are evaluated to get the run requests, the jobs run in process
(funnelwatch/evaluation/soak.py). Nothing is mocked.

Each hourly run costs ~20 s on 2 cores whatever the volume (a `dbt build` of the models and
their ~100 tests plus the Dagster run), so to stay under the slow tests' budget of 4 minutes
this is a short window: 2 hours of history as one range run, 4 hours one by one, then the last
2 hours again (estimated ~3.5 min on 2 idle cores; 7.7-10 min measured on busy ones). Detection is in cold start here (it needs 48 h of
history), so the sensor requests no respond run; bench/soak.py covers that over days.
"""

from __future__ import annotations

import itertools

import dagster as dg
import pandas as pd
import pytest

from funnelwatch.evaluation import soak as S

START = pd.Timestamp("2026-11-02T00:00:00Z")
HISTORY_HOURS, SOAK_HOURS, RERUN_HOURS = 2, 4, 2
SESSIONS_PER_HOUR = 60

# Per-hour DuckDB file growth we allow a re-run. A re-run deletes the hour's rows and writes
# them again in one transaction; the freed blocks only become reusable after the checkpoint
# that follows, so the file may need up to one hour's worth of new blocks before it gets them
# back. The tolerance is therefore the largest growth a *new* hour caused in the same run (one
# checkpoint's worth of blocks), never less than 4 of DuckDB's 256 KiB blocks.
MIN_SLACK = 4 * 256 * 1024

# Not a timing assert: RSS is memory, and it does not depend on how busy the machine is. A
# leak of anything per run (an un-closed DuckDB connection holds its buffer pool, a dbt
# manifest kept per run is tens of MB) shows up as tens of MB per hour; a flat process moves by
# a few MB. 150 MB over the second half leaves room for allocator noise and lazy imports.
RSS_GROWTH_BOUND_MB = 150


@pytest.mark.slow
def test_hours_on_the_schedule_path_load_exactly_once_and_reruns_do_not_grow(
    tmp_path, monkeypatch, dbt_manifest
):
    paths = S.SoakPaths.under(tmp_path)
    S.prepare_environment(paths, setenv=monkeypatch.setenv)
    history_end = START + pd.Timedelta(hours=HISTORY_HOURS)
    end = history_end + pd.Timedelta(hours=SOAK_HOURS)
    simulated = S.simulate_landing(paths.landing, START, end, SESSIONS_PER_HOUR, seed=11,
                                   scenario="none")
    hours = S.hours_between(history_end, end)
    keys = [S.partition_key(h) for h in hours]

    with dg.DagsterInstance.get() as instance:
        S.load_history(instance, START, history_end)
        state = S.SoakState()
        soaked = S.soak(instance, paths, hours, state)

        # One scheduled run per hour, in order, each materializing its own partition once.
        assert [p for p, _ in state.pipeline_runs] == keys
        per_run = S.materialization_counts(instance, "raw_events",
                                           [r for _, r in state.pipeline_runs])
        for key, run_id in state.pipeline_runs:
            assert per_run[run_id] == {key: 1}, (key, per_run[run_id])
            run = instance.get_run_by_id(run_id)
            assert run.tags["dagster/partition"] == key
            assert S.RANGE_START not in run.tags  # a scheduled run, not a backfill
            assert instance.get_run_by_id(run_id).status == dg.DagsterRunStatus.SUCCESS
        for run_id in [r for _, r in state.pipeline_runs]:  # every asset of the job: once
            records = instance.get_records_for_run(
                run_id, of_type=dg.DagsterEventType.ASSET_MATERIALIZATION).records
            assets = [r.event_log_entry.dagster_event.asset_key for r in records]
            assert len(assets) == len(set(assets)) > 1
        # The sensor saw the scored hours (cursor moved); detection is cold, nothing to respond.
        assert state.sensor_cursor is not None
        assert state.respond_runs == []

        # Raw rows are exactly the simulated events of the loaded hours: none lost, no duplicate.
        loaded = S.hour_row_counts(paths.warehouse, START, end)
        assert len(simulated) == HISTORY_HOURS + SOAK_HOURS
        assert loaded == simulated
        last = soaked[-1]
        assert last.raw_events == sum(simulated.values()) == last.raw_events_distinct
        assert last.raw_quarantine == 0

        # Re-running the last hours replaces them: same rows, warehouse does not grow.
        growth = [b.warehouse_bytes - a.warehouse_bytes for a, b in itertools.pairwise(soaked)]
        slack = max([MIN_SLACK, *growth])
        rerun = S.soak(instance, paths, hours[-RERUN_HOURS:], state, phase="rerun",
                       start_index=len(soaked))
        assert S.hour_row_counts(paths.warehouse, START, end) == loaded
        assert rerun[-1].raw_events == last.raw_events == rerun[-1].raw_events_distinct
        assert rerun[-1].warehouse_bytes <= last.warehouse_bytes + slack, (
            last.warehouse_bytes, [s.warehouse_bytes for s in rerun], slack)
        # ... and each re-run is its own scheduled run of that one partition.
        assert [p for p, _ in state.pipeline_runs[-RERUN_HOURS:]] == keys[-RERUN_HOURS:]

    # Memory: flat over the second half of the hours processed (see RSS_GROWTH_BOUND_MB).
    series = [s.rss_mb for s in soaked + rerun]
    half = series[len(series) // 2 - 1:]
    assert max(half) - half[0] < RSS_GROWTH_BOUND_MB, series


def test_the_soak_sensor_tick_turns_a_scored_hour_with_anomalies_into_a_partitioned_request():
    """The soak's sensor tick must resolve a partitioned RunRequest as the daemon does (with
    the definitions). The first 7-day soak died at its first anomaly: the 49-hour soak and the
    test above never reach one. Here the hour's scores are a reported materialization."""
    from orchestration.detect.assets import SEVERITY_BANDS

    with dg.instance_for_test() as instance:
        key = S.partition_key(START)
        instance.report_runless_asset_event(dg.AssetMaterialization(
            asset_key="cohort_anomalies", partition=key,
            metadata={f"anomalies_{SEVERITY_BANDS[0][1]}": 2}))
        state = S.SoakState()
        requests = S.sensor_requests(instance, state)
        assert [r.partition_key for r in requests] == [key]
        assert state.sensor_cursor is not None
        assert S.sensor_requests(instance, state) == [], "the cursor moved past the hour"


def test_a_run_stopped_by_the_data_quality_gate_is_told_apart_from_a_broken_run():
    """A live hour whose blocking data-quality check fails stops at the gate by design (the
    7-day soak met one: a 50% checkout break halved checkout_step events below the volume
    check's 0.4x); the soak records it and goes on, as the daemon does. Any other failure
    still stops the soak."""

    def job_failing_at(step: str) -> dg.JobDefinition:
        @dg.op(name=step)
        def failing():
            raise dg.Failure("check failed")

        @dg.job(name=f"fails_at_{step}")
        def job():
            failing()

        return job

    gate = job_failing_at("raw_events_quality").execute_in_process(raise_on_error=False)
    other = job_failing_at("ingest_events").execute_in_process(raise_on_error=False)
    assert not gate.success and S.stopped_at_gate(gate)
    assert not other.success and not S.stopped_at_gate(other)
