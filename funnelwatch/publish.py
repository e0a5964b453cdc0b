"""Publishing the marts for analysts: query while the pipeline writes, never a stale copy.

DuckDB lets one process write a database file, and a reader cannot open it while a writer
holds it. So analysts never open the warehouse. After each partition run the pipeline
publishes the marts it touched:

    <publish_dir>/parts/<mart>/date=YYYY-MM-DD/part-<version>.parquet   immutable files
    <publish_dir>/manifest.json                                       current file per (mart, date)
    <publish_dir>/analytics.duckdb                                    views over the current files

Only the dates of the run's partition window are rewritten (a new immutable file each), the
manifest is updated, and a fresh `analytics.duckdb` is built under a temporary name and
renamed over the old one. Renaming is atomic: a new connection sees the new snapshot, an open
connection keeps reading the old one (its files are kept for a grace period before garbage
collection). The published marts hold aggregates only: no user or session ids.
"""

from __future__ import annotations

import json
import os
import time
import uuid
from dataclasses import dataclass, field
from datetime import UTC, date, datetime
from pathlib import Path

import duckdb

from funnelwatch.warehouse import connect

# The marts analysts get; fct_sessions stays in the warehouse (it carries session ids).
PUBLISHED_MARTS = (
    "fct_funnel_hourly",
    "fct_cohort_metrics_hourly",
    "dim_monitored_cohorts",
    "dim_deploys",
    "dim_campaigns",
    "dim_holidays",
)
MARTS_SCHEMA = "marts"
TIME_COLUMN = "event_hour"
WHOLE_TABLE = "all"  # partition name of marts without an event_hour column
DEFAULT_GRACE_SECONDS = 900


@dataclass
class PublishResult:
    snapshot_path: Path
    rows_by_mart: dict[str, int] = field(default_factory=dict)
    files_written: int = 0
    files_removed: int = 0
    published_at: datetime | None = None


def _manifest_path(publish_dir: Path) -> Path:
    return publish_dir / "manifest.json"


def load_manifest(publish_dir: Path) -> dict[str, dict[str, str]]:
    path = _manifest_path(publish_dir)
    if not path.exists():
        return {}
    return json.loads(path.read_text())


def _write_json_atomic(path: Path, payload: dict) -> None:
    tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex}.tmp")
    tmp.write_text(json.dumps(payload, indent=1, sort_keys=True))
    os.replace(tmp, path)


def _table_columns(con: duckdb.DuckDBPyConnection, mart: str) -> list[tuple[str, str]]:
    return con.execute(
        "SELECT column_name, data_type FROM information_schema.columns "
        "WHERE table_schema = ? AND table_name = ? ORDER BY ordinal_position",
        [MARTS_SCHEMA, mart],
    ).fetchall()


def _quote(identifier: str) -> str:
    return '"' + identifier.replace('"', '""') + '"'


def publish_marts(
    warehouse: Path | str,
    publish_dir: Path | str,
    dates: list[date] | None = None,
    marts: tuple[str, ...] = PUBLISHED_MARTS,
    grace_seconds: float = DEFAULT_GRACE_SECONDS,
) -> PublishResult:
    """Publish `dates` (all dates when None) of the marts and swap in a new snapshot.

    Opens the warehouse read-write only to read (the caller holds the writer slot)."""
    publish_dir = Path(publish_dir)
    publish_dir.mkdir(parents=True, exist_ok=True)
    manifest = load_manifest(publish_dir)
    schemas: dict[str, list[tuple[str, str]]] = {}
    result = PublishResult(snapshot_path=publish_dir / "analytics.duckdb")
    version = f"{datetime.now(UTC):%Y%m%dT%H%M%S}-{uuid.uuid4().hex[:8]}"

    with connect(warehouse) as con:
        for mart in marts:
            columns = _table_columns(con, mart)
            if not columns:
                continue  # not built yet
            schemas[mart] = columns
            entries = manifest.setdefault(mart, {})
            table = f"{MARTS_SCHEMA}.{_quote(mart)}"
            if any(name == TIME_COLUMN for name, _ in columns):
                if dates is None:
                    wanted = [
                        r[0]
                        for r in con.execute(
                            f"SELECT DISTINCT CAST({TIME_COLUMN} AS DATE) FROM {table}"
                        ).fetchall()
                    ]
                    entries.clear()
                else:
                    wanted = sorted(set(dates))
                for day in wanted:
                    where = f"CAST({TIME_COLUMN} AS DATE) = $day"
                    rows = con.execute(
                        f"SELECT count(*) FROM {table} WHERE {where}", {"day": day}
                    ).fetchone()[0]
                    key = f"date={day:%Y-%m-%d}"
                    if rows == 0:
                        entries.pop(key, None)
                        continue
                    target = publish_dir / "parts" / mart / key / f"part-{version}.parquet"
                    target.parent.mkdir(parents=True, exist_ok=True)
                    con.execute(
                        f"COPY (SELECT * FROM {table} WHERE {where} ORDER BY ALL) "
                        f"TO $target (FORMAT parquet, COMPRESSION zstd)",
                        {"day": day, "target": str(target)},
                    )
                    entries[key] = str(target)
                    result.files_written += 1
            else:
                target = publish_dir / "parts" / mart / WHOLE_TABLE / f"part-{version}.parquet"
                target.parent.mkdir(parents=True, exist_ok=True)
                con.execute(
                    f"COPY (SELECT * FROM {table}) TO $target (FORMAT parquet)",
                    {"target": str(target)},
                )
                entries.clear()
                entries[WHOLE_TABLE] = str(target)
                result.files_written += 1

    result.published_at = datetime.now(UTC)
    _build_snapshot(publish_dir, manifest, schemas, result)
    _write_json_atomic(_manifest_path(publish_dir), manifest)
    result.files_removed = collect_garbage(publish_dir, manifest, grace_seconds)
    return result


def _build_snapshot(publish_dir: Path, manifest: dict, schemas: dict, result: PublishResult):
    tmp = publish_dir / f".analytics-{uuid.uuid4().hex}.duckdb"
    con = duckdb.connect(str(tmp))
    try:
        con.execute("SET TimeZone = 'UTC'")
        for mart, columns in schemas.items():
            files = sorted(manifest.get(mart, {}).values())
            if files:
                # The file list is data we wrote ourselves; DuckDB needs it literal in a view.
                listed = ", ".join("'" + f.replace("'", "''") + "'" for f in files)
                con.execute(f"CREATE VIEW {_quote(mart)} AS SELECT * FROM read_parquet([{listed}])")
                result.rows_by_mart[mart] = con.execute(
                    f"SELECT count(*) FROM {_quote(mart)}"
                ).fetchone()[0]
            else:
                cols = ", ".join(f"{_quote(n)} {t}" for n, t in columns)
                con.execute(f"CREATE TABLE {_quote(mart)} ({cols})")
                result.rows_by_mart[mart] = 0
        con.execute(
            "CREATE TABLE snapshot_info AS SELECT $at::TIMESTAMPTZ AS published_at, "
            "$marts::VARCHAR[] AS marts",
            {"at": result.published_at, "marts": sorted(schemas)},
        )
    finally:
        con.close()
    os.replace(tmp, result.snapshot_path)


def collect_garbage(publish_dir: Path, manifest: dict, grace_seconds: float) -> int:
    """Remove part files no longer in the manifest once they are older than the grace period
    (an analyst's connection opened before the swap may still read them)."""
    live = {v for entries in manifest.values() for v in entries.values()}
    cutoff = time.time() - grace_seconds
    removed = 0
    for path in (publish_dir / "parts").rglob("part-*.parquet"):
        if str(path) not in live and path.stat().st_mtime < cutoff:
            path.unlink(missing_ok=True)
            removed += 1
    for stale in publish_dir.glob(".analytics-*.duckdb"):
        if stale.stat().st_mtime < cutoff:  # left by a crashed publish
            stale.unlink(missing_ok=True)
    return removed


def open_snapshot(publish_dir: Path | str) -> duckdb.DuckDBPyConnection:
    """A read-only connection to the current analyst snapshot.

    `duckdb.connect(path)` would reuse a database instance already open in this process for
    the same path, i.e. the file as it was before the last swap, forever. Attaching the path
    to a new in-memory database resolves the current file every time.
    """
    path = Path(publish_dir) / "analytics.duckdb"
    if not path.exists():
        raise FileNotFoundError(
            f"no analyst snapshot at {path}: run the pipeline (make demo) to publish one"
        )
    con = duckdb.connect()
    con.execute("SET TimeZone = 'UTC'")
    con.execute("ATTACH ? AS snapshot (READ_ONLY)", [str(path)])
    con.execute("USE snapshot")
    return con
