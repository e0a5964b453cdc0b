"""Maintain: retention of per-person data (docs/privacy.md).

`raw_events_retention` is NOT partitioned. It does not produce an hour's or a day's data: it
moves one global boundary (delete everything older than the cutoff), and the cutoff is derived
from the warehouse itself (the newest loaded hour, or now). A daily partition would claim a
per-day state that deletion does not have (re-running "day X" would mean nothing different
from running today), and a missed day is caught up by the next run anyway because every run
deletes everything before the cutoff. Run it daily (`raw_events_retention_schedule`).
"""


from datetime import UTC, datetime

import dagster as dg
import pandas as pd

from funnelwatch.privacy.retention import apply_retention
from orchestration.maintain.run_history import prune_run_history_job, prune_run_history_schedule
from orchestration.resources import WAREHOUSE_POOL, LandingResource, WarehouseResource
from orchestration.settings import RetentionSettings


def _as_of(value: str | None) -> datetime | None:
    if not value:
        return None
    parsed = datetime.fromisoformat(value)
    return parsed.replace(tzinfo=UTC) if parsed.tzinfo is None else parsed


@dg.asset(
    group_name="maintain",
    kinds={"duckdb"},
    owners=["team:data-platform"],
    pool=WAREHOUSE_POOL,
    deps=["raw_events", "raw_events_quarantine"],
    description=(
        "Retention of personal data: deletes raw.events, raw.events_quarantine, "
        "intermediate.int_session_hours and marts.fct_sessions rows (and, by default, the "
        "landing folders) of hours older than `RetentionSettings.days` (default 30) before the "
        "newest loaded hour, in one transaction. The marts fct_funnel_hourly and "
        "fct_cohort_metrics_hourly (aggregates, no ids) are kept. Idempotent. See docs/privacy.md."
    ),
)
def raw_events_retention(
    context: dg.AssetExecutionContext,
    warehouse: WarehouseResource,
    landing: LandingResource,
    retention: RetentionSettings,
) -> dg.MaterializeResult:
    with warehouse.get_connection() as con:
        result = apply_retention(
            con,
            days=retention.days,
            landing_root=landing.root,
            landing=retention.delete_landing,
            relative_to=retention.relative_to,
            now=_as_of(retention.as_of),
        )
    context.log.info(result.summary())
    table = pd.DataFrame(
        [{"table": t, "rows_deleted": n} for t, n in result.rows_deleted.items()]
    )

    def hour(value) -> str:
        return f"{value:%Y-%m-%d %H:00}" if value is not None else "none"

    metadata = {
        "retention_days": dg.MetadataValue.int(result.days),
        "relative_to": dg.MetadataValue.text(result.relative_to),
        "cutoff": dg.MetadataValue.text(hour(result.cutoff)),
        "hours_deleted": dg.MetadataValue.int(len(result.hours_deleted)),
        "rows_deleted": dg.MetadataValue.int(result.total_rows),
        "rows_deleted_per_table": dg.MetadataValue.md(
            table.to_markdown(index=False) if len(table) else "nothing loaded yet"
        ),
        "landing_hours_deleted": dg.MetadataValue.int(len(result.landing_hours_deleted)),
        "oldest_kept_hour": dg.MetadataValue.text(hour(result.oldest_kept_hour)),
    }
    metadata.update(
        {f"rows_deleted/{t}": dg.MetadataValue.int(n) for t, n in result.rows_deleted.items()}
    )
    return dg.MaterializeResult(metadata=metadata)


raw_events_retention_job = dg.define_asset_job(
    "raw_events_retention_job", selection=[raw_events_retention],
    description="Delete per-person data older than the retention period.",
)
raw_events_retention_schedule = dg.ScheduleDefinition(
    job=raw_events_retention_job, cron_schedule="30 3 * * *", execution_timezone="UTC",
    default_status=dg.DefaultScheduleStatus.RUNNING,
)

assets = [raw_events_retention]
jobs = [raw_events_retention_job, prune_run_history_job]
schedules = [raw_events_retention_schedule, prune_run_history_schedule]
