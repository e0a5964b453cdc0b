"""The hourly pipeline job and its schedule."""

from __future__ import annotations

import dagster as dg

from orchestration.partitions import hourly_partitions

hourly_pipeline = dg.define_asset_job(
    name="hourly_pipeline",
    selection=dg.AssetSelection.groups("ingest", "transform", "serve", "detect"),
    partitions_def=hourly_partitions,
    description=(
        "Load an hour of landing files, gate it on data quality, build the dbt marts for it, "
        "publish the analyst snapshot and score every monitored series (detection.anomalies)."
    ),
)

# Five minutes past each hour, run the hour that just ended (the latest complete partition).
hourly_pipeline_schedule = dg.build_schedule_from_partitioned_job(
    hourly_pipeline, minute_of_hour=5
)

# Detection alone, over hours whose marts are already built: re-scoring after a detector
# change (`funnelwatch run --job detect_anomalies`, `funnelwatch evaluate --rescore`).
detect_anomalies = dg.define_asset_job(
    name="detect_anomalies",
    selection=dg.AssetSelection.groups("detect"),
    partitions_def=hourly_partitions,
    description="Score every monitored series for the partition's hours (detection.anomalies).",
)
