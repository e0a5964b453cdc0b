"""The funnelwatch code location: one small entry point assembling the per-domain modules."""

from __future__ import annotations

import dagster as dg

from orchestration import jobs
from orchestration.detect import assets as detect
from orchestration.fastlane import assets as fastlane
from orchestration.fastlane import sensors as fastlane_sensors
from orchestration.ingest import assets as ingest
from orchestration.ingest import sensors as ingest_sensors
from orchestration.maintain import assets as maintain
from orchestration.quality import checks as quality
from orchestration.resources import default_resources
from orchestration.respond import assets as respond
from orchestration.respond import jobs as respond_jobs
from orchestration.respond import sensors as respond_sensors
from orchestration.serve import assets as serve
from orchestration.stage_progress import stage_progress_logger
from orchestration.transform import assets as transform

defs = dg.Definitions(
    assets=[*ingest.assets, *transform.assets, *serve.assets, *detect.assets, *respond.assets,
            *fastlane.assets, *maintain.assets],
    asset_checks=[*quality.checks],
    jobs=[jobs.hourly_pipeline, jobs.detect_anomalies, respond_jobs.respond_to_anomalies,
          *fastlane.jobs, *maintain.jobs],
    schedules=[jobs.hourly_pipeline_schedule, *maintain.schedules],
    sensors=[ingest_sensors.late_data_sensor, respond_sensors.anomalies_sensor,
             respond_sensors.pipeline_failure_to_ops, fastlane_sensors.fast_lane_sensor],
    resources=default_resources(),
    # Runs that configure no logger (the UI, sensors, schedules) get Dagster's console logger
    # only; `funnelwatch run` configures both (the console at WARNING unless --verbose).
    loggers={"console": dg.colored_console_logger, "stage_progress": stage_progress_logger},
)
