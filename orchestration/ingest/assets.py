"""Ingest: landing files -> raw tables in DuckDB: events one hour per partition, the reference
tables (deploys, campaigns, holidays) whole on every run."""


from pathlib import Path

import dagster as dg
import pandas as pd

from funnelwatch.ingest.loader import load_hour
from funnelwatch.ingest.reference import load_reference
from orchestration.partitions import hourly_partitions, partition_hours, single_run_backfill
from orchestration.resources import (
    WAREHOUSE_POOL,
    LandingResource,
    PseudonymizerResource,
    WarehouseResource,
)

OWNERS = ["team:data-platform"]


def _spec(key: str, description: str, deps=()) -> dg.AssetSpec:
    return dg.AssetSpec(
        key, group_name="ingest", kinds={"duckdb"}, owners=OWNERS, description=description,
        deps=list(deps),
    )


@dg.multi_asset(
    name="ingest_events",
    specs=[
        _spec(
            "raw_events",
            "Clickstream events of one UTC hour, loaded from the landing folder into "
            "`raw.events`. Duplicate event_ids are dropped and counted; user and session ids are "
            "pseudonymised with a keyed hash. Re-running a partition replaces the hour in one "
            "transaction.",
        ),
        _spec(
            "raw_events_quarantine",
            "`raw.events_quarantine`: the hour's rows that broke the event contract, as text, "
            "with the reason, the source file and row.",
        ),
        _spec(
            "raw_ingest_log",
            "`raw.ingest_log`: one line per loaded hour: files, rows in, loaded, quarantined, "
            "duplicates dropped.",
        ),
    ],
    partitions_def=hourly_partitions,
    backfill_policy=single_run_backfill,
    pool=WAREHOUSE_POOL,
)
def ingest_events(
    context: dg.AssetExecutionContext,
    warehouse: WarehouseResource,
    landing: LandingResource,
    pseudonymizer: PseudonymizerResource,
):
    key, is_demo_key = pseudonymizer.key()
    if is_demo_key:
        context.log.warning(
            f"{pseudonymizer.key_env_var} is not set: pseudonymising with the DEMO key. "
            "Set a secret key before loading real user data."
        )
    results = []
    with warehouse.get_connection() as con:
        for hour in partition_hours(context):
            result = load_hour(con, landing.root, hour, key)
            results.append(result)
            context.log.info(
                f"{hour:%Y-%m-%d %H:00}: {result.rows_in} in, {result.rows_loaded} loaded, "
                f"{result.rows_quarantined} quarantined, {result.duplicates_dropped} duplicates"
            )
    metadata = ingest_metadata(results, is_demo_key)
    yield dg.MaterializeResult(asset_key="raw_events", metadata=metadata)
    yield dg.MaterializeResult(
        asset_key="raw_events_quarantine",
        metadata={
            "dagster/row_count": metadata["rows_quarantined"],
            "quarantine_reasons": metadata["quarantine_reasons"],
        },
    )
    yield dg.MaterializeResult(
        asset_key="raw_ingest_log", metadata={"hours": metadata["hours"]}
    )


def ingest_metadata(results, is_demo_key: bool) -> dict:
    totals = {
        name: sum(getattr(r, name) for r in results)
        for name in ("rows_in", "rows_loaded", "rows_quarantined", "duplicates_dropped")
    }
    reasons: dict[str, int] = {}
    for r in results:
        for reason, n in r.quarantine_reasons.items():
            reasons[reason] = reasons.get(reason, 0) + n
    per_hour = pd.DataFrame(
        [
            {
                "hour": f"{r.hour:%Y-%m-%d %H:00}",
                "files": len(r.files),
                "rows_in": r.rows_in,
                "loaded": r.rows_loaded,
                "quarantined": r.rows_quarantined,
                "duplicates": r.duplicates_dropped,
                "kept_as_other": r.rows_with_unknown_values,
            }
            for r in results
        ]
    )
    empty_hours = [f"{r.hour:%Y-%m-%d %H:00}" for r in results if not r.files]
    reason_lines = "\n".join(f"| `{k}` | {v} |" for k, v in sorted(reasons.items())) or "| - | 0 |"
    return {
        "rows_in": dg.MetadataValue.int(totals["rows_in"]),
        "rows_loaded": dg.MetadataValue.int(totals["rows_loaded"]),
        "rows_quarantined": dg.MetadataValue.int(totals["rows_quarantined"]),
        "duplicates_dropped": dg.MetadataValue.int(totals["duplicates_dropped"]),
        "dagster/row_count": dg.MetadataValue.int(totals["rows_loaded"]),
        "rows_with_unknown_values": dg.MetadataValue.int(
            sum(r.rows_with_unknown_values for r in results)),
        "hours": dg.MetadataValue.int(len(results)),
        "hours_without_files": dg.MetadataValue.int(len(empty_hours)),
        "quarantine_reasons": dg.MetadataValue.md(
            "| reason | rows |\n|---|---|\n" + reason_lines
        ),
        "per_hour": dg.MetadataValue.md(
            per_hour.tail(48).to_markdown(index=False) if len(per_hour) else "no hours"
        ),
        "ignored_columns": dg.MetadataValue.json(
            sorted({c for r in results for c in r.ignored_columns})
        ),
        "pseudonymization_key": dg.MetadataValue.text("DEMO key" if is_demo_key else "configured"),
    }


@dg.multi_asset(
    name="ingest_reference",
    specs=[
        _spec("raw_deploys", "`raw.deploys`: deploys of the store's services (time, service, "
              "version, description), from `<landing>/reference/deploys.csv`."),
        _spec("raw_campaigns", "`raw.campaigns`: marketing campaigns (name, start, end, "
              "channel), from `<landing>/reference/campaigns.csv`."),
        _spec("raw_holidays", "`raw.holidays`: holidays and promotions (expected surges), "
              "from `<landing>/reference/holidays.csv`."),
    ],
    pool=WAREHOUSE_POOL,
)
def ingest_reference(warehouse: WarehouseResource, landing: LandingResource):
    """Reference data the detection and root-cause layers correlate with. Each run reloads the
    whole (small) files, so it is not partitioned: the hourly job runs it once per run, beside
    the hour's events (an hourly partition would only add two Dagster events per hour and
    table to a range run)."""
    with warehouse.get_connection() as con:
        counts = load_reference(con, Path(landing.root))
    for name, n in counts.items():
        metadata = {"dagster/row_count": dg.MetadataValue.int(max(n, 0))}
        if n < 0:
            metadata["note"] = dg.MetadataValue.text("no file in the landing folder: kept as is")
        yield dg.MaterializeResult(asset_key=f"raw_{name}", metadata=metadata)


assets = [ingest_events, ingest_reference]
