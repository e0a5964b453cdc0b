"""The checkout fast lane: one 5-minute slot per run, launched by `fast_lane_sensor` as the
slot's landing files arrive. Scores the critical checkout metrics (checkout conversion,
payment failure rate, purchases) for the store and its largest cohorts against the same
slot of previous days and weeks, then runs the incident and alert path of the respond
domain for the slot's hour: an incident opened here is the one the hourly lane updates."""

from datetime import UTC, datetime

import dagster as dg
import pandas as pd

from orchestration.partitions import single_run_backfill
from orchestration.resources import WAREHOUSE_POOL, LandingResource, WarehouseResource
from orchestration.respond.assets import send_incident_alerts
from orchestration.respond.resources import AlertingSettings, IncidentSettings
from orchestration.settings import FastLaneSettings

# Starts late on purpose: a partition per 5 minutes since the importers' 2019 data would be
# 700,000 partitions for a lane that only matters for the last minutes.
FIVE_MINUTE_PARTITIONS_START = "2026-01-01-00:00"
five_minute_partitions = dg.TimeWindowPartitionsDefinition(
    cron_schedule="*/5 * * * *", start=FIVE_MINUTE_PARTITIONS_START, fmt="%Y-%m-%d-%H:%M",
    timezone="UTC",
)
FLAGGED_COLUMNS = ["metric", "cohort", "value", "expected", "severity", "window_slots", "reason"]


def _flagged_table(flagged: pd.DataFrame) -> str:
    if flagged.empty:
        return "_none_"
    shown = flagged[FLAGGED_COLUMNS].round(3).head(50)
    shown.insert(0, "slot", flagged["slot_start"].head(50).dt.strftime("%Y-%m-%d %H:%M"))
    return shown.to_markdown(index=False)


@dg.asset(
    group_name="fastlane",
    kinds={"python", "duckdb"},
    owners=["team:checkout"],
    partitions_def=five_minute_partitions,
    backfill_policy=single_run_backfill,
    pool=WAREHOUSE_POOL,
    description=(
        "Checkout conversion, payment failure rate (per provider too) and purchases of one "
        "5-minute slot, for the whole store and its largest device / OS / browser / country "
        "cohorts, read from the running hour's landing files (`fastlane.slot_metrics`). "
        "Scored against the same slot of the previous days and weeks over 5 to 60 minute "
        "windows with beta-binomial / negative-binomial tests (`fastlane.scores`); flagged "
        "series join the hour's incidents (one incident, not one per slot) and alert through "
        "the same routing as the hourly lane. Flags a data fault explains (a session field "
        "null in over 5% of events, an hour with a data-quality incident) are held back."
    ),
)
def checkout_fast_lane(
    context: dg.AssetExecutionContext,
    warehouse: WarehouseResource,
    landing: LandingResource,
    fast_lane: FastLaneSettings,
    incident_settings: IncidentSettings,
    alerting: AlertingSettings,
) -> dg.MaterializeResult:
    from funnelwatch.fastlane.lane import process_slot
    from funnelwatch.incidents.rca import analyse_incident, cohort_closures, explain_points

    window = context.partition_time_window
    config = fast_lane.config()
    # One slot when the sensor launches it; a range run (`funnelwatch run --job
    # checkout_fast_lane_job --start ... --end ...`) takes its slots in order.
    starts = pd.date_range(window.start, window.end, freq=f"{config.slot_minutes}min",
                           inclusive="left")
    results = []
    with warehouse.get_connection() as con:
        for start in starts:
            results.append(process_slot(con, landing.root, start.to_pydatetime(), config,
                                        incident_settings.policy(), analyse=analyse_incident,
                                        localise=explain_points, closures=cohort_closures))
        alerts = send_incident_alerts(context, con, alerting)
    slot = results[-1][0]
    flagged = pd.concat([s.flagged for s, _ in results], ignore_index=True)
    held_back = pd.concat([s.held_back for s, _ in results], ignore_index=True)
    opened = [i for _, h in results for i in h.opened]
    updated = sorted({i for _, h in results for i in h.updated + h.escalated + h.reopened})
    metadata = {
        "slot": dg.MetadataValue.text(f"{window.start:%Y-%m-%d %H:%M} UTC"
                                      + (f" .. {window.end:%H:%M}" if len(starts) > 1 else "")),
        "slots_scored": dg.MetadataValue.int(len(results)),
        "series_scored": dg.MetadataValue.int(len(slot.scored)),
        "series_flagged": dg.MetadataValue.int(len(flagged)),
        "cohorts": dg.MetadataValue.text(", ".join(slot.cohorts)),
        "flagged": dg.MetadataValue.md(_flagged_table(flagged)),
        # flags a data fault explains (a session field gone null, a data-quality incident)
        "series_held_back": dg.MetadataValue.int(len(held_back)),
        "held_back": dg.MetadataValue.md(_flagged_table(held_back)),
        "landing_files_read": dg.MetadataValue.int(sum(s.landing_files for s, _ in results)),
        "landing_files_set_aside": dg.MetadataValue.json(
            sorted({f for s, _ in results for f in s.files_set_aside})),
        "raw_hours_refreshed": dg.MetadataValue.int(
            sum(s.raw_hours_refreshed for s, _ in results)),
        "incidents_opened": dg.MetadataValue.text(", ".join(opened) or "none"),
        "incidents_updated": dg.MetadataValue.text(", ".join(updated) or "none"),
        # wall time from the end of the slot to its alerts being sent: the lane's latency
        # when it runs live (meaningless when slots are processed after the fact)
        "seconds_after_slot_end": dg.MetadataValue.float(
            (datetime.now(UTC) - window.end).total_seconds()),
        **alerts,
    }
    return dg.MaterializeResult(metadata=metadata)


checkout_fast_lane_job = dg.define_asset_job(
    name="checkout_fast_lane_job",
    selection=dg.AssetSelection.assets(checkout_fast_lane),
    partitions_def=five_minute_partitions,
    # One step: a step subprocess costs ~17 s of the lane's minutes (measured live).
    executor_def=dg.in_process_executor,
    description="Score one 5-minute slot of checkout metrics and raise incidents and alerts. "
                "Launched by fast_lane_sensor as landing files arrive.",
)

assets = [checkout_fast_lane]
jobs = [checkout_fast_lane_job]
