"""The hourly pipeline job and its schedule."""

from __future__ import annotations

import dagster as dg

from orchestration.partitions import hourly_partitions

hourly_pipeline = dg.define_asset_job(
    name="hourly_pipeline",
    selection=dg.AssetSelection.groups("ingest", "transform", "serve"),
    partitions_def=hourly_partitions,
    description="Load an hour of landing files, build the dbt marts for it, publish the snapshot.",
)

# Five minutes past each hour, run the hour that just ended (the latest complete partition).
hourly_pipeline_schedule = dg.build_schedule_from_partitioned_job(
    hourly_pipeline, minute_of_hour=5
)
