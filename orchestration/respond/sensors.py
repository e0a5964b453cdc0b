"""Sensors of the respond domain.

- `anomalies_sensor` watches `cohort_anomalies` materializations (cursor: the last storage
  id seen) and launches `respond_to_anomalies` for each newly scored hour that has anomalies
  or while incidents are open (they must be able to resolve). Hours scored by a range run
  (a backfill) are handled by that run's caller (`funnelwatch run` runs the respond job over
  the same range), not one run per hour.
- `pipeline_failure_to_ops` sends every failed run to the ops channel through a small outbox
  of its own (it must not wait for a run holding the warehouse).
"""

from datetime import UTC, datetime

import dagster as dg

from orchestration.detect.assets import SEVERITY_BANDS, cohort_anomalies
from orchestration.resources import WarehouseResource
from orchestration.respond.assets import incidents
from orchestration.respond.jobs import respond_to_anomalies
from orchestration.respond.resources import AlertingSettings

RANGE_TAG = "dagster/asset_partition_range_start"
MAX_EVENTS_PER_TICK = 200


def _int_metadata(record: dg.EventLogRecord, key: str) -> int:
    value = record.asset_materialization.metadata.get(key)
    return int(value.value) if value is not None else 0


def _open_incidents(instance: dg.DagsterInstance) -> int:
    latest = instance.fetch_materializations(incidents.key, limit=1).records
    return _int_metadata(latest[0], "open_incidents") if latest else 0


@dg.sensor(
    job=respond_to_anomalies,
    minimum_interval_seconds=60,
    default_status=dg.DefaultSensorStatus.RUNNING,
    description=(
        "Launches root cause, incidents and alerts for each newly scored hour with anomalies "
        "(or while incidents are open)."
    ),
)
def anomalies_sensor(context: dg.SensorEvaluationContext):
    cursor = int(context.cursor) if context.cursor else 0
    records = context.instance.fetch_materializations(
        dg.AssetRecordsFilter(asset_key=cohort_anomalies.key, after_storage_id=cursor),
        limit=MAX_EVENTS_PER_TICK, ascending=True,
    ).records
    if not records:
        return dg.SkipReason(f"no new scored hours after storage id {cursor}")
    open_incidents = _open_incidents(context.instance)
    requests, skipped_range, quiet = [], 0, 0
    runs: dict[str, bool] = {}
    for record in records:
        if record.run_id not in runs:
            run = context.instance.get_run_by_id(record.run_id)
            runs[record.run_id] = bool(run and RANGE_TAG in run.tags)
        if runs[record.run_id]:
            skipped_range += 1
            continue
        anomalies = sum(_int_metadata(record, f"anomalies_{name}") for _, name in SEVERITY_BANDS)
        if anomalies == 0 and open_incidents == 0:
            quiet += 1
            continue
        requests.append(dg.RunRequest(
            run_key=f"respond-{record.partition_key}-{record.storage_id}",
            partition_key=record.partition_key,
            tags={"funnelwatch/trigger": f"{anomalies} anomalies, {open_incidents} open"},
        ))
    context.update_cursor(str(records[-1].storage_id))
    if not requests:
        return dg.SkipReason(
            f"{len(records)} new scored hours: {quiet} without anomalies or open incidents, "
            f"{skipped_range} from range runs (their caller runs the respond job)")
    return requests


@dg.run_failure_sensor(
    name="pipeline_failure_to_ops",
    default_status=dg.DefaultSensorStatus.RUNNING,
    description="Sends every failed run of this code location to the ops channel.",
)
def pipeline_failure_to_ops(
    context: dg.RunFailureSensorContext, alerting: AlertingSettings, warehouse: WarehouseResource
):
    import duckdb

    from funnelwatch.alerting import Notification, enqueue, route
    from funnelwatch.alerting.outbox import deliver_due
    from funnelwatch.incidents.alerts import configured_senders

    run = context.dagster_run
    message = (context.failure_event.message or "run failed").strip()
    # The run's message names the failed steps; the steps' errors say what broke.
    for step_failure in context.get_step_failure_events()[:3]:
        error = getattr(step_failure.event_specific_data, "error", None)
        while error is not None and error.cause is not None:  # the user code's own error
            error = error.cause
        if error is not None:
            message += f"\n{step_failure.step_key}: {error.message.strip()[:300]}"
    partition = run.tags.get("dagster/partition") or run.tags.get(RANGE_TAG) or "-"
    notification = Notification(
        incident_id=f"run-{run.run_id[:8]}",
        dedup_key=f"funnelwatch-run-failure-{run.run_id}",
        action="trigger",
        severity=70.0,
        title=f"funnelwatch run failed: {run.job_name}",
        summary=message[:900],
        metric="pipeline_run",
        cohort="all",
        team="ops",
        fields={"run_id": run.run_id, "job": run.job_name, "partition": partition},
    )
    routing = alerting.routing()
    now = datetime.now(UTC)
    path = alerting.ops_outbox(warehouse.path)
    path.parent.mkdir(parents=True, exist_ok=True)
    senders, _ = configured_senders(routing)
    with duckdb.connect(str(path)) as con:
        enqueue(con, notification, route(notification, routing, now), now)
        attempts = deliver_due(con, senders, now)  # also retries earlier failures that are due
    for attempt in attempts:
        context.log.info("ops alert %s via %s: %s", attempt.dedup_key, attempt.channel,
                         attempt.status)
