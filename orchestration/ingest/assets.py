"""Ingest: landing files -> raw tables in DuckDB, one hour per partition."""

from __future__ import annotations

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


@dg.asset(
    group_name="ingest",
    kinds={"duckdb", "python"},
    owners=OWNERS,
    partitions_def=hourly_partitions,
    backfill_policy=single_run_backfill,
    pool=WAREHOUSE_POOL,
    description=(
        "Clickstream events of one UTC hour, loaded from the landing folder into `raw.events`. "
        "Rows that break the event contract go to `raw.events_quarantine` with the reason; "
        "duplicate event_ids are dropped and counted; user and session ids are pseudonymised "
        "with a keyed hash. Re-running a partition replaces the hour in one transaction."
    ),
)
def raw_events(
    context: dg.AssetExecutionContext,
    warehouse: WarehouseResource,
    landing: LandingResource,
    pseudonymizer: PseudonymizerResource,
) -> dg.MaterializeResult:
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
    return dg.MaterializeResult(metadata=ingest_metadata(results, is_demo_key))


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


@dg.asset(
    group_name="ingest",
    kinds={"duckdb", "csv"},
    owners=OWNERS,
    partitions_def=hourly_partitions,
    backfill_policy=single_run_backfill,
    pool=WAREHOUSE_POOL,
    description=(
        "Reference data the detection and root-cause layers correlate with: deploys, campaigns, "
        "holidays and promotions, loaded from `<landing>/reference/*.csv` into `raw.deploys`, "
        "`raw.campaigns` and `raw.holidays`. Each run reloads the whole (small) files, so it is "
        "partitioned only to run beside the hourly events."
    ),
)
def reference_data(warehouse: WarehouseResource, landing: LandingResource) -> dg.MaterializeResult:
    with warehouse.get_connection() as con:
        counts = load_reference(con, Path(landing.root))
    return dg.MaterializeResult(
        metadata={f"{name}_rows": dg.MetadataValue.int(n) for name, n in counts.items()}
    )


assets = [raw_events, reference_data]
