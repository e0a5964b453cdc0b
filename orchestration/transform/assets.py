"""Transform: the dbt project (staging -> intermediate -> marts) as hourly-partitioned assets."""


import contextlib
import io
import os
import sys
from collections.abc import Mapping
from typing import Any

import dagster as dg
from dagster_dbt import DagsterDbtTranslator, DbtCliResource, dbt_assets

from funnelwatch.config_files import ConfigError
from funnelwatch.dbt_vars import dbt_vars_json, load_cohort_config
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


def _window_row_count(con, relation: str, start, end) -> int | None:
    has_hour = con.execute(
        "SELECT count(*) FROM information_schema.columns "
        "WHERE table_schema = ? AND table_name = ? AND column_name = 'event_hour'",
        relation.split("."),
    ).fetchone()[0]
    if has_hour:
        return con.execute(
            f"SELECT count(*) FROM {relation} WHERE event_hour >= $s AND event_hour < $e",
            {"s": start, "e": end},
        ).fetchone()[0]
    return con.execute(f"SELECT count(*) FROM {relation}").fetchone()[0]


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


@dbt_assets(
    manifest=dbt_project.manifest_path,
    project=dbt_project,
    partitions_def=hourly_partitions,
    backfill_policy=single_run_backfill,
    pool=WAREHOUSE_POOL,
    dagster_dbt_translator=FunnelwatchDbtTranslator(),
)
def funnelwatch_dbt_models(
    context: dg.AssetExecutionContext, dbt: DbtCliResource, warehouse: WarehouseResource
):
    window = context.partition_time_window
    # The warehouse resource is the one source of truth for the file (or the lake); dbt's
    # profile reads it from these variables in the dbt subprocess.
    os.environ.update(warehouse.dbt_environment())
    try:
        cohorts = load_cohort_config()
    except ConfigError as exc:  # one line (file, key, expectation) instead of a traceback
        raise dg.Failure(description=str(exc), allow_retries=False) from None
    dbt_vars = dbt_vars_json(window.start, window.end, cohorts)
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
                    count = _window_row_count(con, relation, window.start, window.end)
                    if count is not None:
                        metadata["rows_in_window"] = dg.MetadataValue.int(count)
                if name == PREVIEW_MODEL:
                    preview = hourly_funnel(con, until=window.end, hours=24)
                    metadata["funnel_preview"] = dg.MetadataValue.md(funnel_markdown(preview))
                event = event.with_metadata({**event.metadata, **metadata})
            yield event


assets = [funnelwatch_dbt_models]
