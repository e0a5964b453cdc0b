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

Analysts open the snapshot with `open_analyst_connection`: DuckDB may then read only the
snapshot's parts folder, its settings are locked, and statements that write files, open other
databases or load extensions are refused (docs/security.md). The published files are
readable by everyone and writable by the pipeline's account only.
"""

from __future__ import annotations

import json
import os
import time
import uuid
from collections.abc import Callable
from contextlib import AbstractContextManager
from dataclasses import dataclass, field
from datetime import UTC, date, datetime
from pathlib import Path
from typing import Self

import duckdb

from funnelwatch.warehouse import attach_read_only, connect

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
# Non-mart tables analysts (and the incident page, which must not open the warehouse) get, as
# (schema, table): the incident store and the scored series its band charts are drawn from.
# Aggregates and people's feedback notes only: no user or session ids. They keep their schema
# in the snapshot (`incidents.timeline`), so code written against the warehouse reads them
# unchanged; the marts stay in the snapshot's main schema.
PUBLISHED_TABLES = (
    ("incidents", "incidents"),
    ("incidents", "members"),
    ("incidents", "timeline"),
    ("incidents", "feedback"),
    ("detection", "anomalies"),
)
INCIDENT_TABLE_KEYS = tuple(f"{schema}.{table}" for schema, table in PUBLISHED_TABLES)
TIME_COLUMN = "event_hour"
WHOLE_TABLE = "all"  # partition name of marts without an event_hour column
DEFAULT_GRACE_SECONDS = 900

# Published files are for an analyst account: readable by all, writable by the pipeline only.
PUBLISHED_DIR_MODE = 0o755
PUBLISHED_FILE_MODE = 0o644


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
    os.chmod(tmp, PUBLISHED_FILE_MODE)
    os.replace(tmp, path)


def _published_dir(folder: Path, top: Path | None = None) -> None:
    """Create `folder` (and its parents) readable by all, whatever the pipeline's umask (a
    deployment runs it with umask 077 so the warehouse stays private). Modes are set on
    `folder` and its parents up to `top` (only `folder` when `top` is None)."""
    folder.mkdir(parents=True, exist_ok=True)
    top = folder if top is None else top
    if not folder.is_relative_to(top):
        raise ValueError(f"{folder} is not inside {top}")
    path = folder
    while True:
        os.chmod(path, PUBLISHED_DIR_MODE)
        if path == top:
            break
        path = path.parent


def _table_columns(con: duckdb.DuckDBPyConnection, mart: str,
                   schema: str = MARTS_SCHEMA) -> list[tuple[str, str]]:
    return con.execute(
        "SELECT column_name, data_type FROM information_schema.columns "
        "WHERE table_schema = ? AND table_name = ? ORDER BY ordinal_position",
        [schema, mart],
    ).fetchall()


def _published_objects(marts: tuple[str, ...], tables: tuple[tuple[str, str], ...]
                       ) -> list[tuple[str, str, str]]:
    """(manifest key, schema, table): a mart's key is its bare name (as before), another
    table's key is `schema.table`."""
    return [(m, MARTS_SCHEMA, m) for m in marts] + [(f"{s}.{t}", s, t) for s, t in tables]


def _quote(identifier: str) -> str:
    return '"' + identifier.replace('"', '""') + '"'


def publish_marts(
    warehouse: Path | str | Callable[[], AbstractContextManager[duckdb.DuckDBPyConnection]],
    publish_dir: Path | str,
    dates: list[date] | None = None,
    marts: tuple[str, ...] = PUBLISHED_MARTS,
    grace_seconds: float = DEFAULT_GRACE_SECONDS,
    tables: tuple[tuple[str, str], ...] = PUBLISHED_TABLES,
    only: tuple[str, ...] | None = None,
) -> PublishResult:
    """Publish `dates` (all dates when None) of the marts and `tables` and swap in a new
    snapshot. `only` (manifest keys, e.g. INCIDENT_TABLE_KEYS) limits which of them get new
    files; the snapshot still has views over the current files of all of them.

    `warehouse` is the DuckDB file or a function opening a connection to the warehouse (the
    cluster mode's lake). Opens it read-write only to read (the caller holds the writer slot)."""
    # Absolute: the views name their files, and the analyst connection allows that folder only.
    publish_dir = Path(publish_dir).resolve()
    _published_dir(publish_dir)
    manifest = load_manifest(publish_dir)
    schemas: dict[str, list[tuple[str, str]]] = {}
    result = PublishResult(snapshot_path=publish_dir / "analytics.duckdb")
    version = f"{datetime.now(UTC):%Y%m%dT%H%M%S}-{uuid.uuid4().hex[:8]}"

    open_warehouse = warehouse if callable(warehouse) else (lambda: connect(warehouse))
    with open_warehouse() as con:
        for mart, schema, name in _published_objects(marts, tables):
            columns = _table_columns(con, name, schema)
            if not columns:
                continue  # not built yet
            schemas[mart] = columns
            if only is not None and mart not in only:
                continue  # its current files stay in the manifest and the snapshot
            entries = manifest.setdefault(mart, {})
            table = f"{_quote(schema)}.{_quote(name)}"
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
                    _published_dir(target.parent, top=publish_dir)
                    con.execute(
                        f"COPY (SELECT * FROM {table} WHERE {where} ORDER BY ALL) "
                        f"TO $target (FORMAT parquet, COMPRESSION zstd)",
                        {"day": day, "target": str(target)},
                    )
                    os.chmod(target, PUBLISHED_FILE_MODE)
                    entries[key] = str(target)
                    result.files_written += 1
            else:
                target = publish_dir / "parts" / mart / WHOLE_TABLE / f"part-{version}.parquet"
                _published_dir(target.parent, top=publish_dir)
                con.execute(
                    f"COPY (SELECT * FROM {table}) TO $target (FORMAT parquet)",
                    {"target": str(target)},
                )
                os.chmod(target, PUBLISHED_FILE_MODE)
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
            schema, _, name = mart.rpartition(".")
            if schema:
                con.execute(f"CREATE SCHEMA IF NOT EXISTS {_quote(schema)}")
            view = f"{_quote(schema)}.{_quote(name)}" if schema else _quote(name)
            files = sorted(manifest.get(mart, {}).values())
            if files:
                # The file list is data we wrote ourselves; DuckDB needs it literal in a view.
                listed = ", ".join("'" + f.replace("'", "''") + "'" for f in files)
                con.execute(f"CREATE VIEW {view} AS SELECT * FROM read_parquet([{listed}])")
                result.rows_by_mart[mart] = con.execute(
                    f"SELECT count(*) FROM {view}"
                ).fetchone()[0]
            else:
                cols = ", ".join(f"{_quote(n)} {t}" for n, t in columns)
                con.execute(f"CREATE TABLE {view} ({cols})")
                result.rows_by_mart[mart] = 0
        con.execute(
            "CREATE TABLE snapshot_info AS SELECT $at::TIMESTAMPTZ AS published_at, "
            "$marts::VARCHAR[] AS marts",
            {"at": result.published_at, "marts": sorted(schemas)},
        )
    finally:
        con.close()
    os.chmod(tmp, PUBLISHED_FILE_MODE)
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


class QueryRefused(Exception):
    """A statement the analyst boundary does not allow; the message is one line saying what
    and why."""


# What an analyst's connection may run, by DuckDB's own statement type: queries, session
# state (settings are locked by DuckDB), and objects in the connection's own in-memory
# catalog (the snapshot is attached read-only). Everything else is refused with its reason.
ANALYST_STATEMENT_TYPES = frozenset({
    "SELECT", "EXPLAIN", "PRAGMA", "CALL", "SET", "VARIABLE_SET", "TRANSACTION", "CREATE",
    "CREATE_FUNC", "INSERT", "UPDATE", "DELETE", "MERGE_INTO", "DROP", "ALTER", "MULTI",
    "ANALYZE", "VACUUM",
})
_REFUSED_BECAUSE = {
    "COPY": "cannot read or write files with COPY (its views are the way in)",
    "EXPORT": "cannot write files (EXPORT DATABASE)",
    "COPY_DATABASE": "cannot copy databases",
    "ATTACH": "cannot open other databases (ATTACH)",
    "DETACH": "cannot detach databases",
    "LOAD": "cannot install or load extensions",
    "EXTENSION": "cannot install or load extensions",
    "PREPARE": "does not run prepared statements (their text would escape this check)",
    "EXECUTE": "does not run prepared statements (their text would escape this check)",
}
# Settings an analyst may still change on a locked connection: they tune a query, not access.
ANALYST_ALLOWED_SETTINGS = ("threads", "memory_limit")


def _statement_type(statement: duckdb.Statement) -> str:
    try:
        return statement.type.name
    except ValueError:  # a type this Python package does not name yet (e.g. UPDATE EXTENSIONS)
        return "UNKNOWN"


def _explained(text: str) -> str | None:
    """The statement an EXPLAIN [ANALYZE] (with an option list or not) runs, found with
    DuckDB's tokenizer; None when there is none. EXPLAIN ANALYZE executes it."""
    tokens = duckdb.tokenize(text)
    i = 1  # tokens[0] is EXPLAIN
    if i < len(tokens) and text[tokens[i][0]] == "(":
        depth = 0
        while i < len(tokens):
            char = text[tokens[i][0]]
            depth += char == "("
            depth -= char == ")"
            i += 1
            if depth == 0:
                break
    if i < len(tokens) and tokens[i][1] == duckdb.token_type.keyword:
        word = text[tokens[i][0]:tokens[i + 1][0] if i + 1 < len(tokens) else None]
        if word.strip().upper() in ("ANALYZE", "ANALYSE"):
            i += 1
    return text[tokens[i][0]:] if i < len(tokens) else None


def check_analyst_query(query: str) -> None:
    """Raise QueryRefused unless every statement in `query` is one an analyst may run.

    Uses DuckDB's parser (the statement types DuckDB will execute), not text patterns. This
    is the second line: DuckDB's own settings already refuse files outside the snapshot, but
    a COPY or EXPORT into the parts folder itself would pass them."""
    for statement in duckdb.extract_statements(query):
        kind = _statement_type(statement)
        if kind == "EXPLAIN":
            inner = _explained(statement.query)
            if inner is not None:
                check_analyst_query(inner)
            continue
        if kind in ANALYST_STATEMENT_TYPES:
            continue
        because = _REFUSED_BECAUSE.get(
            kind, f"runs queries only ({kind.lower()} statements are not allowed)")
        raise QueryRefused(f"refused: the analyst snapshot {because}")


def _refusal(exc: duckdb.Error) -> QueryRefused | None:
    """DuckDB's refusals on an analyst connection as one line saying why; None for other
    errors (a typo stays DuckDB's own message)."""
    first = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
    if isinstance(exc, duckdb.PermissionException):
        return QueryRefused(
            "refused: the analyst snapshot cannot read or write files outside its own "
            f"published parts ({first})"
        )
    if isinstance(exc, duckdb.InvalidInputException) and "configuration has been locked" in first:
        return QueryRefused(
            "refused: the analyst snapshot's settings are locked, only "
            f"{' and '.join(ANALYST_ALLOWED_SETTINGS)} may change ({first})"
        )
    return None


class AnalystConnection:
    """A connection to the analyst snapshot that checks every statement before DuckDB runs
    it. `execute` returns this object; read the result with the fetch methods."""

    def __init__(self, con: duckdb.DuckDBPyConnection):
        self._con = con

    def execute(self, query: str, parameters=None) -> Self:
        check_analyst_query(query)
        try:
            self._con.execute(query, parameters)
        except duckdb.Error as exc:
            refused = _refusal(exc)
            if refused is not None:
                raise refused from exc
            raise
        return self

    def fetchone(self):
        return self._con.fetchone()

    def fetchall(self):
        return self._con.fetchall()

    def fetchmany(self, size: int = 1):
        return self._con.fetchmany(size)

    def df(self):
        return self._con.df()

    fetchdf = df

    def arrow(self):
        return self._con.arrow()

    @property
    def description(self):
        return self._con.description

    def close(self) -> None:
        self._con.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def open_analyst_connection(publish_dir: Path | str) -> AnalystConnection:
    """A connection to the current analyst snapshot inside DuckDB's own access controls.

    The snapshot file is attached read-only first; then DuckDB may touch only the parts
    folder (the views read Parquet there), external access is off (other files, ATTACH of
    files, COPY elsewhere, INSTALL/LOAD) and the configuration is locked, so SET cannot undo
    it. That order matters: DuckDB refuses the same combination as connect-time config.
    No temp directory: a spill folder would be one more place it may read and write.

    `duckdb.connect(path)` would reuse a database instance already open in this process for
    the same path, i.e. the file as it was before the last swap, forever. Attaching the path
    to a new in-memory database resolves the current file every time.
    """
    publish_dir = Path(publish_dir).resolve()
    path = publish_dir / "analytics.duckdb"
    if not path.exists():
        raise FileNotFoundError(
            f"no analyst snapshot at {path}: run the pipeline (make demo) to publish one"
        )
    con = duckdb.connect()
    try:
        con.execute("SET TimeZone = 'UTC'")
        attach_read_only(con, path, "snapshot")
        con.execute("USE snapshot")
        # A trailing separator: a prefix of "parts" must not also allow "parts-other".
        con.execute("SET allowed_directories = ?", [[str(publish_dir / "parts") + os.sep]])
        con.execute("SET temp_directory = ''")
        con.execute("SET autoinstall_known_extensions = false")
        con.execute("SET allowed_configs = ?", [list(ANALYST_ALLOWED_SETTINGS)])
        con.execute("SET enable_external_access = false")
        con.execute("SET lock_configuration = true")
    except BaseException:
        con.close()
        raise
    return AnalystConnection(con)


def open_snapshot(publish_dir: Path | str) -> AnalystConnection:
    """The analyst snapshot, read-only, inside the analyst boundary (open_analyst_connection)."""
    return open_analyst_connection(publish_dir)
