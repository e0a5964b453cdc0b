"""Transform: the dbt project (staging -> intermediate -> marts) as two sets of assets.

- `funnelwatch_dbt_hourly` (hourly partitions, one run over a range): the models built per
  hour window, tagged `hourly` in dbt: the events staging view (its tests check the window's
  rows), the session-hour and category intermediates, the facts, and `dim_monitored_cohorts`
  (the cohorts monitored as of the window's end).
- `funnelwatch_dbt_whole` (not partitioned): the views and dimensions rebuilt whole on every
  run (the other staging views, the deploy, campaign and holiday dimensions). They hold no
  hour of their own, so an hourly partition would only add two Dagster events per hour and
  model to a range run (thousands in a backfill) and say nothing.
"""


import contextlib
import io
import os
import sys
from collections.abc import Mapping
from typing import Any

import dagster as dg
from dagster_dbt import DagsterDbtTranslator, DbtCliResource, dbt_assets, get_asset_key_for_model

from funnelwatch.config_files import ConfigError
from funnelwatch.dbt_vars import cohort_vars_json, dbt_vars_json, load_cohort_config
from funnelwatch.reports import funnel_markdown, hourly_funnel
from funnelwatch.verbosity import quiet_terminal
from orchestration.partitions import hourly_partitions, single_run_backfill
from orchestration.resources import WAREHOUSE_POOL, WarehouseResource
from orchestration.transform.project import dbt_project

PREVIEW_MODEL = "fct_funnel_hourly"


class FunnelwatchDbtTranslator(DagsterDbtTranslator):
    def get_group_name(self, dbt_resource_props: Mapping[str, Any]) -> str | None:
        return "transform"

    def get_owners(self, dbt_resource_props: Mapping[str, Any]):
        return ["team:analytics-engineering"]


def _row_count_metadata(con, relation: str, start, end) -> dict:
    """`rows_in_window` of an hourly model (rows of the window's hours), `dagster/row_count`
    of a model built whole."""
    if start is None:
        (count,) = con.execute(f"SELECT count(*) FROM {relation}").fetchone()
        return {"dagster/row_count": dg.MetadataValue.int(count)}
    has_hour = con.execute(
        "SELECT count(*) FROM information_schema.columns "
        "WHERE table_schema = ? AND table_name = ? AND column_name = 'event_hour'",
        relation.split("."),
    ).fetchone()[0]
    if has_hour:
        (count,) = con.execute(
            f"SELECT count(*) FROM {relation} WHERE event_hour >= $s AND event_hour < $e",
            {"s": start, "e": end},
        ).fetchone()
    else:
        (count,) = con.execute(f"SELECT count(*) FROM {relation}").fetchone()
    return {"rows_in_window": dg.MetadataValue.int(count)}


def _run_dbt_build(dbt: DbtCliResource, context, dbt_vars: str) -> list:
    """`dbt build` for the window. dagster-dbt echoes each dbt event to stdout (200+ lines per
    build): in a `funnelwatch` terminal without --verbose they are held back, and shown (the
    last 40) only if the build fails; elsewhere they stay in the run's captured stdout."""
    if not quiet_terminal():
        return list(dbt.cli(["build", "--vars", dbt_vars], context=context).stream())
    held = io.StringIO()
    try:
        with contextlib.redirect_stdout(held):
            return list(dbt.cli(["build", "--vars", dbt_vars], context=context).stream())
    except Exception:
        sys.stderr.write("".join(held.getvalue().splitlines(keepends=True)[-40:]))
        raise


# dbt selector of the models built per hour window (`+tags: ["hourly"]` in dbt_project.yml).
HOURLY_SELECTOR = "tag:hourly"
# What both sets share: the project, the warehouse pool (one DuckDB writer), the names.
_DBT_ASSETS = {
    "manifest": dbt_project.manifest_path,
    "project": dbt_project,
    "pool": WAREHOUSE_POOL,
    "dagster_dbt_translator": FunnelwatchDbtTranslator(),
}


@dbt_assets(**_DBT_ASSETS, select=HOURLY_SELECTOR, partitions_def=hourly_partitions,
            backfill_policy=single_run_backfill)
def funnelwatch_dbt_hourly(
    context: dg.AssetExecutionContext, dbt: DbtCliResource, warehouse: WarehouseResource
):
    window = context.partition_time_window
    yield from _build(context, dbt, warehouse, window.start, window.end)


@dbt_assets(**_DBT_ASSETS, exclude=HOURLY_SELECTOR)
def funnelwatch_dbt_whole(
    context: dg.AssetExecutionContext, dbt: DbtCliResource, warehouse: WarehouseResource
):
    # No window: these models read whole tables (the default window vars cover all hours).
    yield from _build(context, dbt, warehouse, None, None)


def _build(context, dbt: DbtCliResource, warehouse: WarehouseResource, start, end):
    """`dbt build` of the op's models (for the window [start, end) when partitioned), each
    model's output with its row count (in the window) and the funnel preview."""
    # The warehouse resource is the one source of truth for the file (or the lake); dbt's
    # profile reads it from these variables in the dbt subprocess.
    os.environ.update(warehouse.dbt_environment())
    try:
        cohorts = load_cohort_config()
    except ConfigError as exc:  # one line (file, key, expectation) instead of a traceback
        raise dg.Failure(description=str(exc), allow_retries=False) from None
    if start is None:
        dbt_vars = cohort_vars_json(cohorts)
    else:
        dbt_vars = dbt_vars_json(start, end, cohorts)
    context.log.info(f"dbt build --vars {dbt_vars}")
    # Collect every event first: dbt holds the DuckDB file until it exits, and the row counts
    # below need to open it.
    events = _run_dbt_build(dbt, context, dbt_vars)
    with warehouse.get_connection() as con:
        for event in events:
            if isinstance(event, dg.Output):
                key = context.assets_def.keys_by_output_name[event.output_name]
                spec = context.assets_def.specs_by_key[key]
                relation = spec.metadata.get("dagster/relation_identifier")
                metadata = {}
                name = event.output_name.split("__")[-1]
                if relation:
                    relation = str(relation).split(".", 1)[-1]  # drop the database name
                    metadata.update(_row_count_metadata(con, relation, start, end))
                if name == PREVIEW_MODEL:
                    preview = hourly_funnel(con, until=end, hours=24)
                    metadata["funnel_preview"] = dg.MetadataValue.md(funnel_markdown(preview))
                event = event.with_metadata({**event.metadata, **metadata})
            yield event


assets = [funnelwatch_dbt_hourly, funnelwatch_dbt_whole]


def dbt_model_key(model: str) -> dg.AssetKey:
    """The asset key of a dbt model (the same translator names both sets)."""
    return get_asset_key_for_model([funnelwatch_dbt_hourly], model)
