"""Detection split across workers (cluster mode): the `cohort_anomalies` asset as a graph that
plans the window once, scores each cohort shard in its own step (on any worker) and merges the
shards into `detection.anomalies` (funnelwatch/detection/shards.py: what the shards share so the
merge equals the single-process run).

The shards read the lake and write nothing shared: their results travel as step outputs
through Dagster's IO manager (on one machine the instance's storage folder; across machines
configure an IO manager on shared storage, docs/scale-out.md), and only the merge writes, in
the warehouse pool.
"""


import dagster as dg

from funnelwatch.detection.run import (
    Shard,
    WindowResult,
    holidays_frame,
    merge_shards,
    plan_sharded_window,
    score_window,
)
from funnelwatch.detection.store import replace_window
from orchestration.detect.assets import detection_metadata
from orchestration.partitions import hourly_partitions, single_run_backfill
from orchestration.resources import WAREHOUSE_POOL, WarehouseResource
from orchestration.settings import DetectionSettings
from orchestration.transform.assets import dbt_model_key


class ShardingSettings(dg.ConfigurableResource):
    """How many cohort shards one window's detection is split into (one step each)."""

    shards: int = 2


@dg.op(ins={"metrics": dg.In(dg.Nothing), "holidays": dg.In(dg.Nothing)},
       out=dg.DynamicOut(Shard))
def plan_detection_shards(context: dg.OpExecutionContext, warehouse: WarehouseResource,
                          detection: DetectionSettings, sharding: ShardingSettings):
    """What every shard of the window shares (series count, Prophet's series, the pooled
    multivariate verdicts), then one output per shard."""
    window = context.partition_time_window
    with warehouse.get_connection() as con:
        holidays = holidays_frame(con)
        plan = plan_sharded_window(con, window.start, window.end,
                                   lambda: detection.make_ensemble(holidays),
                                   history_days=detection.history_days)
    for index in range(sharding.shards):
        yield dg.DynamicOutput(Shard(index, sharding.shards, plan), mapping_key=f"shard_{index}")


@dg.op
def score_detection_shard(context: dg.OpExecutionContext, shard: Shard,
                          warehouse: WarehouseResource,
                          detection: DetectionSettings) -> WindowResult:
    window = context.partition_time_window
    with warehouse.get_connection() as con:
        holidays = holidays_frame(con)
        result = score_window(con, window.start, window.end,
                              lambda: detection.make_ensemble(holidays),
                              history_days=detection.history_days, shard=shard)
    context.log.info(f"shard {shard.index + 1}/{shard.count}: {result.series} series, "
                     f"{len(result.scored)} points")
    return result


@dg.op(pool=WAREHOUSE_POOL, out=dg.Out(dg.Nothing))  # the asset is the table, not a value
def merge_detection_shards(context: dg.OpExecutionContext, shards: list[WindowResult],
                           warehouse: WarehouseResource, detection: DetectionSettings):
    window = context.partition_time_window
    with warehouse.get_connection() as con:
        result = merge_shards(
            con, window.start, window.end, shards, cube_scan=detection.cube_scan,
            cube_scan_false_alarms_per_day=detection.cube_scan_false_alarms_per_day)
        written = replace_window(con, window.start, window.end, result.scored)
    return dg.Output(None, metadata={**detection_metadata(result, written),
                                     "shards": dg.MetadataValue.int(len(shards))})


@dg.graph_asset(
    name="cohort_anomalies",
    group_name="detect",
    kinds={"python", "duckdb"},
    owners=["team:sre-oncall"],
    partitions_def=hourly_partitions,
    backfill_policy=single_run_backfill,
    ins={
        "metrics": dg.AssetIn(
            key=dbt_model_key("fct_cohort_metrics_hourly"),
            dagster_type=dg.Nothing),
        "holidays": dg.AssetIn(
            key=dbt_model_key("dim_holidays"),
            dagster_type=dg.Nothing),
    },
    description=(
        "Every monitored (metric, cohort) series scored for the partition's hours, split into "
        "cohort shards scored on separate workers and merged into `detection.anomalies` "
        "exactly as the single-process asset writes it."
    ),
)
def cohort_anomalies(metrics, holidays):
    shards = plan_detection_shards(metrics=metrics, holidays=holidays)
    return merge_detection_shards(shards.map(score_detection_shard).collect())


assets = [cohort_anomalies]
