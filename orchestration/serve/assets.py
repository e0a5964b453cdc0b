"""Serve: publish the marts as a read-only snapshot analysts query while the pipeline runs."""


from datetime import timedelta

import dagster as dg

from funnelwatch.publish import PUBLISHED_MARTS, open_snapshot, publish_marts
from funnelwatch.reports import funnel_markdown, hourly_funnel
from orchestration.partitions import hourly_partitions, single_run_backfill
from orchestration.resources import WAREHOUSE_POOL, WarehouseResource
from orchestration.transform.assets import dbt_model_key

EXAMPLE_QUERY = (
    "funnelwatch sql \"SELECT event_hour, sum(purchase_sessions) / sum(checkout_start_sessions) "
    "AS checkout_conversion FROM fct_funnel_hourly GROUP BY 1 ORDER BY 1 DESC LIMIT 24\""
)


@dg.asset(
    group_name="serve",
    kinds={"duckdb", "parquet"},
    owners=["team:data-platform"],
    partitions_def=hourly_partitions,
    backfill_policy=single_run_backfill,
    pool=WAREHOUSE_POOL,
    deps=[dbt_model_key(m) for m in PUBLISHED_MARTS],
    description=(
        "The analyst snapshot: the marts of the partition's days written as immutable Parquet "
        "parts, and `analytics.duckdb` (views over them) swapped in atomically. Analysts open "
        "it read-only (`funnelwatch sql`) while the pipeline writes the warehouse."
    ),
)
def analyst_snapshot(
    context: dg.AssetExecutionContext, warehouse: WarehouseResource
) -> dg.MaterializeResult:
    window = context.partition_time_window
    days, day = [], window.start.date()
    while day <= (window.end - timedelta(microseconds=1)).date():
        days.append(day)
        day += timedelta(days=1)
    result = publish_marts(warehouse.get_connection, warehouse.publish_dir, dates=days)
    con = open_snapshot(warehouse.publish_dir)
    try:
        preview = hourly_funnel(con, until=window.end, hours=24, table="fct_funnel_hourly")
    finally:
        con.close()
    metadata = {
        "snapshot": dg.MetadataValue.path(str(result.snapshot_path)),
        "files_written": dg.MetadataValue.int(result.files_written),
        "files_garbage_collected": dg.MetadataValue.int(result.files_removed),
        "funnel_last_24h": dg.MetadataValue.md(funnel_markdown(preview)),
        "example_query": dg.MetadataValue.text(EXAMPLE_QUERY),
    }
    metadata.update(
        {f"rows/{mart}": dg.MetadataValue.int(n) for mart, n in result.rows_by_mart.items()}
    )
    return dg.MaterializeResult(metadata=metadata)


assets = [analyst_snapshot]
