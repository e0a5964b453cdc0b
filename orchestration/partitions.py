"""The hourly partitioning every lane of the pipeline shares."""

from __future__ import annotations

from datetime import datetime, timedelta

import dagster as dg

# Starts early enough for the public data sets the importers read (REES46: 2019-10,
# GA4 sample: 2020-11); the simulator writes recent hours.
PARTITIONS_START = "2019-10-01-00:00"

hourly_partitions = dg.HourlyPartitionsDefinition(start_date=PARTITIONS_START, timezone="UTC")

# History is loaded as one run over the whole range, not as hundreds of runs.
single_run_backfill = dg.BackfillPolicy.single_run()


def partition_hours(context: dg.AssetExecutionContext) -> list[datetime]:
    """The UTC hours of the run's partition (or partition range, in a single-run backfill)."""
    window = context.partition_time_window
    hours, hour = [], window.start
    while hour < window.end:
        hours.append(hour)
        hour += timedelta(hours=1)
    return hours
