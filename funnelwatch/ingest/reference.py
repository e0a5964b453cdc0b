"""Load the reference CSVs (deploys, campaigns, holidays) into raw tables."""

from __future__ import annotations

from pathlib import Path

import duckdb

from funnelwatch.contract import REFERENCE_TABLES
from funnelwatch.warehouse import RAW_SCHEMA, ensure_raw_schema


def load_reference(con: duckdb.DuckDBPyConnection, landing: Path) -> dict[str, int]:
    """Replace each raw reference table with its CSV, in one transaction. A table whose file
    is absent is left as it is (and reported as -1)."""
    ensure_raw_schema(con)
    counts: dict[str, int] = {}
    con.execute("BEGIN TRANSACTION")
    try:
        for table in REFERENCE_TABLES:
            path = Path(landing) / "reference" / f"{table.name}.csv"
            if not path.exists():
                counts[table.name] = -1
                continue
            columns = {name: "VARCHAR" for name, _, _ in table.columns}
            casts = ", ".join(f"CAST({name} AS {typ})" for name, typ, _ in table.columns)
            con.execute(f"DELETE FROM {RAW_SCHEMA}.{table.name}")
            try:
                con.execute(
                    f"INSERT INTO {RAW_SCHEMA}.{table.name} SELECT {casts} FROM read_csv($path, "
                    "header = true, auto_detect = false, columns = $columns, delim = ',')",
                    {"path": str(path), "columns": columns},
                )
            except (duckdb.ConversionException, duckdb.InvalidInputException) as exc:
                raise ValueError(f"bad reference file {path}: {str(exc).splitlines()[0]}") from exc
            counts[table.name] = con.execute(
                f"SELECT count(*) FROM {RAW_SCHEMA}.{table.name}"
            ).fetchone()[0]
        con.execute("COMMIT")
    except BaseException:
        con.execute("ROLLBACK")
        raise
    return counts
