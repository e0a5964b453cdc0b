"""The respond job: incidents, root cause, reports and alerts for scored hours."""

import dagster as dg

from orchestration.partitions import hourly_partitions

respond_to_anomalies = dg.define_asset_job(
    name="respond_to_anomalies",
    selection=dg.AssetSelection.groups("respond"),
    partitions_def=hourly_partitions,
    description=(
        "Group the hour's anomalies into incidents (root cause, impact, report) and send the "
        "alerts. Launched by anomalies_sensor; `funnelwatch run` runs it after a backfill."
    ),
)
