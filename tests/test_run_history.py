"""prune_run_history_job on a real Dagster instance: old finished runs of the listed jobs go
(with their event logs); other jobs' runs and recent runs stay."""

from __future__ import annotations

import dagster as dg

from orchestration.maintain.run_history import RunHistorySettings, prune_run_history_job


@dg.op
def noop():
    return 1


@dg.job
def frequent_job():
    noop()


@dg.job
def hourly_like_job():
    noop()


def runs(instance, job: str) -> list[str]:
    return [r.dagster_run.run_id for r in instance.get_run_records(
        filters=dg.RunsFilter(job_name=job))]


def test_old_runs_of_the_listed_jobs_are_deleted_and_others_kept():
    with dg.instance_for_test() as instance:
        for _ in range(3):
            assert frequent_job.execute_in_process(instance=instance).success
        kept = hourly_like_job.execute_in_process(instance=instance)
        # days=7: nothing is that old yet
        result = prune_run_history_job.execute_in_process(
            instance=instance,
            resources={"run_history": RunHistorySettings(days=7, jobs=["frequent_job"])})
        assert result.output_for_node("prune_run_history") == 0
        assert len(runs(instance, "frequent_job")) == 3
        # days=0: every finished run of the listed job is older than the cutoff
        result = prune_run_history_job.execute_in_process(
            instance=instance,
            resources={"run_history": RunHistorySettings(days=0, jobs=["frequent_job"])})
        assert result.output_for_node("prune_run_history") == 3
        assert runs(instance, "frequent_job") == []
        assert runs(instance, "hourly_like_job") == [kept.run_id]
        assert instance.all_logs(kept.run_id), "the kept run's event log is intact"
        # the pruning job's own runs are not in the list: they stay
        assert len(runs(instance, "prune_run_history_job")) == 2


def test_a_negative_retention_is_a_clear_error():
    with dg.instance_for_test() as instance:
        result = prune_run_history_job.execute_in_process(
            instance=instance, resources={"run_history": RunHistorySettings(days=-1)},
            raise_on_error=False)
    assert not result.success
    error = result.get_step_failure_events()[0].event_specific_data.error.cause
    assert "days must be >= 0" in error.message
