"""Data-quality gate: Great Expectations suites as blocking asset checks on `raw_events` and
on the cohort metrics mart (the detectors' input).

A failed check puts the hour in a data-quality incident (`quality.incidents`: one per gap,
per tracking loss, per run of bad hours; docs/data-quality.md). In a live
one-hour run it fails with ERROR severity, which blocks everything downstream of
`raw_events` in the run: the broken hour does not reach the marts or the detectors. In a
multi-hour backfill the failures are recorded per hour with WARN severity, so one bad hour
in history does not stop the rest from loading; detection skips every hour a data-quality
incident covers either way.
"""

import json

import dagster as dg

from funnelwatch.quality.incidents import record_outcomes
from funnelwatch.quality.mart_suites import (
    MART_CHECK_DESCRIPTIONS,
    MART_CHECK_NAMES,
    run_mart_suites,
)
from funnelwatch.quality.suites import CHECK_DESCRIPTIONS, CHECK_NAMES, run_suites_over
from funnelwatch.quality.unknown_values import unknown_values
from orchestration.partitions import hourly_partitions, partition_hours
from orchestration.resources import WAREHOUSE_POOL, WarehouseResource
from orchestration.transform.assets import dbt_model_key

COHORT_METRICS = dbt_model_key("fct_cohort_metrics_hourly")


@dg.multi_asset_check(
    name="raw_events_quality",
    specs=[
        dg.AssetCheckSpec(
            name, asset="raw_events", blocking=True, description=CHECK_DESCRIPTIONS[name],
            partitions_def=hourly_partitions,
        )
        for name in CHECK_NAMES
    ],
    pool=WAREHOUSE_POOL,
)
def raw_events_quality(context: dg.AssetCheckExecutionContext, warehouse: WarehouseResource):
    yield from _check_hours(context, warehouse, "raw_events", CHECK_NAMES, run_suites_over)


@dg.multi_asset_check(
    name="cohort_metrics_quality",
    specs=[
        dg.AssetCheckSpec(
            name, asset=COHORT_METRICS, blocking=True, description=MART_CHECK_DESCRIPTIONS[name],
            partitions_def=hourly_partitions,
        )
        for name in MART_CHECK_NAMES
    ],
    pool=WAREHOUSE_POOL,
)
def cohort_metrics_quality(context: dg.AssetCheckExecutionContext, warehouse: WarehouseResource):
    yield from _check_hours(context, warehouse, COHORT_METRICS, MART_CHECK_NAMES,
                            _mart_suites_over)


def _mart_suites_over(con, hours):
    for hour in hours:
        yield hour, run_mart_suites(con, hour)


def _check_hours(context, warehouse: WarehouseResource, asset_key, names, suites_over):
    """Run one suite over every hour of the partition range (`suites_over(con, hours)` yields
    each hour's outcomes), record each hour's outcome (and its data-quality incident), and
    yield one check result per check with the evidence."""
    hours = partition_hours(context.op_execution_context)
    severity = dg.AssetCheckSeverity.ERROR if len(hours) == 1 else dg.AssetCheckSeverity.WARN
    failures: dict[str, list[str]] = {name: [] for name in names}
    evidence: dict[str, dict] = {}
    incidents = []
    with warehouse.get_connection() as con:
        for hour, outcomes in suites_over(con, hours):
            incident = record_outcomes(con, hour, outcomes)
            if incident and incident not in incidents:  # one incident spans many hours
                incidents.append(incident)
            for outcome in outcomes:
                if not outcome.passed:
                    failures[outcome.name].append(f"{hour:%Y-%m-%d %H:00}")
                    evidence.setdefault(outcome.name, outcome.evidence)
                elif len(hours) == 1:
                    evidence[outcome.name] = outcome.evidence
    for name in names:
        metadata = {
            "hours_checked": dg.MetadataValue.int(len(hours)),
            "failed_hours": dg.MetadataValue.json(failures[name][:50]),
            "failed_hour_count": dg.MetadataValue.int(len(failures[name])),
        }
        if name in evidence:
            metadata["evidence"] = dg.MetadataValue.json(
                json.loads(json.dumps(evidence[name], default=str))
            )
        if incidents and failures[name]:
            metadata["data_quality_incidents"] = dg.MetadataValue.json(incidents[:50])
        yield dg.AssetCheckResult(
            asset_key=asset_key, check_name=name, passed=not failures[name],
            severity=severity, metadata=metadata,
        )


@dg.asset_check(
    asset="raw_events",
    name="events_unknown_values",
    blocking=False,
    partitions_def=hourly_partitions,
    pool=WAREHOUSE_POOL,
    description=(
        "Values of descriptive fields (page_type, checkout_step, device_type, payment_status) "
        "that the event contract does not know. They are loaded as `other` with the raw value "
        "kept (raw.events.unmapped_values), never quarantined: a warning to extend the "
        "source's mapping, not a data-quality incident."
    ),
)
def events_unknown_values(context: dg.AssetCheckExecutionContext, warehouse: WarehouseResource):
    window = context.op_execution_context.partition_time_window
    with warehouse.get_connection() as con:
        found = unknown_values(con, window.start, window.end)
    hours = len(partition_hours(context.op_execution_context))
    metadata = {
        "hours_checked": dg.MetadataValue.int(hours),
        "hours_with_unknown_values": dg.MetadataValue.int(len(found.hours)),
        "rows_kept_as_other": dg.MetadataValue.json(
            {column: found.rows(column) for column in sorted(found.by_field)}),
    }
    if found.by_field:
        metadata["unknown_values"] = dg.MetadataValue.md(found.table_markdown())
        metadata["first_hours"] = dg.MetadataValue.json(
            [f"{h:%Y-%m-%d %H:00}" for h in found.hours[:50]])
    return dg.AssetCheckResult(
        passed=not found.by_field, severity=dg.AssetCheckSeverity.WARN, metadata=metadata)


checks = [raw_events_quality, cohort_metrics_quality, events_unknown_values]
