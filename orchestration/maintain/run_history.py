"""Run-history retention: the fast lane launches a run every 5 minutes (288 a day), and the
Dagster instance keeps every run and its event log forever (Dagster's own `retention:`
setting only prunes schedule and sensor ticks). `prune_run_history_job` deletes finished runs
of the listed jobs older than `RunHistorySettings.days`, daily.

Only the fast lane's runs by default: the hourly jobs' materializations are what the UI's
partition health and `late_data_sensor` (when was an hour loaded) read, so deleting them
would show loaded hours as missing. Add job names to prune more (docs/reliability.md).
"""

from datetime import UTC, datetime, timedelta

import dagster as dg

FINISHED = [dg.DagsterRunStatus.SUCCESS, dg.DagsterRunStatus.FAILURE,
            dg.DagsterRunStatus.CANCELED]
BATCH = 500


class RunHistorySettings(dg.ConfigurableResource):
    """Which jobs' finished runs are deleted, and after how many days."""

    days: int = 7
    jobs: list[str] = ["checkout_fast_lane_job"]  # noqa: RUF012 - pydantic copies it per instance


@dg.op(description="Delete finished runs (and their event logs) of the configured jobs "
                   "older than the retention period.")
def prune_run_history(context: dg.OpExecutionContext, run_history: RunHistorySettings):
    if run_history.days < 0:
        raise ValueError(f"RunHistorySettings.days must be >= 0, got {run_history.days}")
    cutoff = datetime.now(UTC) - timedelta(days=run_history.days)
    deleted: dict[str, int] = {}
    for job in run_history.jobs:
        while True:
            records = context.instance.get_run_records(
                filters=dg.RunsFilter(job_name=job, statuses=FINISHED, created_before=cutoff),
                limit=BATCH)
            if not records:
                break
            for record in records:
                context.instance.delete_run(record.dagster_run.run_id)
            deleted[job] = deleted.get(job, 0) + len(records)
    context.log.info("deleted %d runs older than %s: %s", sum(deleted.values()),
                     f"{cutoff:%Y-%m-%d %H:%M}", deleted or "none")
    context.add_output_metadata({
        "cutoff": dg.MetadataValue.text(f"{cutoff:%Y-%m-%d %H:%M} UTC"),
        "runs_deleted": dg.MetadataValue.int(sum(deleted.values())),
        "runs_deleted_per_job": dg.MetadataValue.json(deleted),
    })
    return sum(deleted.values())


@dg.job(description="Delete old finished runs of high-frequency jobs (the fast lane).")
def prune_run_history_job():
    prune_run_history()


prune_run_history_schedule = dg.ScheduleDefinition(
    job=prune_run_history_job, cron_schedule="45 3 * * *", execution_timezone="UTC",
    default_status=dg.DefaultScheduleStatus.RUNNING,
)
