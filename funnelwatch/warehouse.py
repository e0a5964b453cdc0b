"""The DuckDB warehouse: connection rules and the raw schema that ingest owns.

One process writes the warehouse file at a time (DuckDB's rule); the Dagster assets that
write are in one concurrency pool (see orchestration/resources.py). Analysts never open this
file: they read the published snapshot (funnelwatch/publish.py).
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import duckdb

from funnelwatch.contract import EVENT_FIELDS, REFERENCE_TABLES

RAW_SCHEMA = "raw"
EVENTS_TABLE = f"{RAW_SCHEMA}.events"
QUARANTINE_TABLE = f"{RAW_SCHEMA}.events_quarantine"
INGEST_LOG_TABLE = f"{RAW_SCHEMA}.ingest_log"
REJECTED_FILES_TABLE = f"{RAW_SCHEMA}.rejected_files"

# Columns ingest adds to every loaded event.
LINEAGE_COLUMNS = (
    ("event_hour", "TIMESTAMPTZ", "The UTC hour partition the event was loaded in."),
    ("source_file", "VARCHAR", "Landing file the event came from."),
    ("ingested_at", "TIMESTAMPTZ", "When the partition was loaded."),
    ("unmapped_values", "MAP(VARCHAR, VARCHAR)",
     ("Raw values of descriptive fields that the contract does not know, kept as `other` in "
      "their column (field -> raw value); NULL when every value was known.")),
)


# The warehouse holds raw events with pseudonymised ids: only the pipeline's account may read
# it. Its folder stays traversable (not listable) because the analyst snapshot
# (warehouse/published by default) sits inside it.
WAREHOUSE_FILE_MODE = 0o600
WAREHOUSE_DIR_MODE = 0o711


def _private(path: Path, mode: int) -> None:
    """chmod `path` to `mode` when this account owns it (a shared folder is left alone)."""
    if path.exists() and path.stat().st_uid == os.geteuid():
        os.chmod(path, mode)


def connect(path: Path | str, read_only: bool = False) -> duckdb.DuckDBPyConnection:
    """Open the warehouse with the session settings every caller relies on (UTC). A writer
    makes the file readable by this account only (docs/security.md)."""
    path = Path(path)
    if not read_only and not path.parent.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        _private(path.parent, WAREHOUSE_DIR_MODE)
    con = duckdb.connect(str(path), read_only=read_only)
    if not read_only:
        _private(path, WAREHOUSE_FILE_MODE)
        _private(path.with_name(path.name + ".wal"), WAREHOUSE_FILE_MODE)
    con.execute("SET TimeZone = 'UTC'")
    return con


class WarehouseBusyError(RuntimeError):
    """Another process (the pipeline) holds the warehouse's write lock."""


# The fast lane holds the write lock for a few seconds every 5 minutes, an hourly run for a
# minute or more: a command waits this long for it before it gives up.
LOCK_WAIT_SECONDS = 20.0


def connect_when_free(path: Path | str, read_only: bool = False,
                      wait_seconds: float | None = None) -> duckdb.DuckDBPyConnection:
    """`connect`, retried while another process holds the lock, up to `wait_seconds`
    (default LOCK_WAIT_SECONDS); then WarehouseBusyError saying so. Nothing is changed."""
    import time

    wait = LOCK_WAIT_SECONDS if wait_seconds is None else wait_seconds
    deadline = time.monotonic() + wait
    while True:
        try:
            return connect(path, read_only=read_only)
        except (duckdb.IOException, duckdb.ConnectionException) as exc:
            if time.monotonic() < deadline:
                time.sleep(0.5)
                continue
            first = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
            raise WarehouseBusyError(
                f"the warehouse {path} is busy: another process (the pipeline) holds its write "
                f"lock (waited {wait:.0f} s; {first}). Nothing was changed; try again when the "
                "run has finished."
            ) from exc


@contextmanager
def connection(path: Path | str, read_only: bool = False) -> Iterator[duckdb.DuckDBPyConnection]:
    con = connect(path, read_only=read_only)
    try:
        yield con
    finally:
        con.close()


def events_ddl() -> str:
    cols = [f"{f.name} {f.duckdb_type}" for f in EVENT_FIELDS]
    cols += [f"{name} {typ}" for name, typ, _ in LINEAGE_COLUMNS]
    return f"CREATE TABLE IF NOT EXISTS {EVENTS_TABLE} (\n  " + ",\n  ".join(cols) + "\n)"


def quarantine_ddl() -> str:
    # Quarantined rows keep every contract column as text: a row that broke the contract
    # may not cast, and nothing may be lost. user_id/session_id are pseudonymised here too.
    cols = [f"{f.name} VARCHAR" for f in EVENT_FIELDS]
    cols += [
        "event_hour TIMESTAMPTZ",
        "source_file VARCHAR",
        "source_row BIGINT",
        "reason VARCHAR",
        "quarantined_at TIMESTAMPTZ",
    ]
    return f"CREATE TABLE IF NOT EXISTS {QUARANTINE_TABLE} (\n  " + ",\n  ".join(cols) + "\n)"


def ensure_raw_schema(con: duckdb.DuckDBPyConnection) -> None:
    """Create the raw schema and tables if they do not exist (idempotent)."""
    con.execute(f"CREATE SCHEMA IF NOT EXISTS {RAW_SCHEMA}")
    con.execute(events_ddl())
    con.execute(quarantine_ddl())
    con.execute(
        f"""CREATE TABLE IF NOT EXISTS {INGEST_LOG_TABLE} (
          event_hour TIMESTAMPTZ, files VARCHAR[], rows_in BIGINT, rows_loaded BIGINT,
          rows_quarantined BIGINT, duplicates_dropped BIGINT, ingested_at TIMESTAMPTZ)"""
    )
    # Columns added after the first release: a warehouse made before them gets them here
    # (appended, so positional inserts stay in column order).
    con.execute(f"ALTER TABLE {EVENTS_TABLE} ADD COLUMN IF NOT EXISTS unmapped_values "
                "MAP(VARCHAR, VARCHAR)")
    # {field: {raw value: rows}} of the hour's values kept as `other` (top values per field).
    con.execute(f"ALTER TABLE {INGEST_LOG_TABLE} ADD COLUMN IF NOT EXISTS unknown_values JSON")
    # Landing files set aside by the hour's latest ingest: unreadable, left where they are.
    con.execute(
        f"""CREATE TABLE IF NOT EXISTS {REJECTED_FILES_TABLE} (
          event_hour TIMESTAMPTZ, file VARCHAR, line BIGINT, reason VARCHAR,
          rejected_at TIMESTAMPTZ)"""
    )
    for table in REFERENCE_TABLES:
        cols = ", ".join(f"{n} {t}" for n, t, _ in table.columns)
        con.execute(f"CREATE TABLE IF NOT EXISTS {RAW_SCHEMA}.{table.name} ({cols})")


def sql_string(text: str) -> str:
    """`text` as a SQL string literal. For statements that take no parameters on every DuckDB
    release the project supports (ATTACH takes a `?` path only from DuckDB 2.0 on)."""
    return "'" + str(text).replace("'", "''") + "'"


def attach_read_only(con: duckdb.DuckDBPyConnection, path: Path | str, alias: str) -> None:
    """ATTACH the database file `path` read-only as `alias` (an identifier of ours)."""
    con.execute(f"ATTACH {sql_string(str(path))} AS {alias} (READ_ONLY)")


def has_table(con: duckdb.DuckDBPyConnection, qualified: str) -> bool:
    """Whether `schema.table` exists. Readers ask first instead of catching the error: a
    failed query inside a transaction aborts it (DuckDB has no savepoints), and a reader must
    not create another layer's schema to be able to read it."""
    schema, table = qualified.split(".")
    return bool(con.execute(
        "SELECT count(*) FROM information_schema.tables WHERE table_schema = ? "
        "AND table_name = ?", [schema, table]).fetchone()[0])
