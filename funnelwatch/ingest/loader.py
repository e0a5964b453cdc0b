"""Load one UTC hour of landing files into the warehouse, in one transaction.

    rows_in = rows_loaded + rows_quarantined + duplicates_dropped

Steps, all inside DuckDB:
1. stage: every landing file of the hour is read (Parquet, JSON lines or CSV) and projected
   onto the contract columns. Columns whose type already matches are taken as they are (the
   fast path for Parquet); others are TRY_CAST and a failed cast is recorded per row.
   A file that cannot be read at all raises LandingFileError naming the file (and line).
2. validate: the first broken contract rule gives the quarantine reason.
3. dedupe: valid rows keep the first copy of each event_id (by file name, then row).
4. pseudonymise user_id and session_id with HMAC-SHA256 (raw ids never reach a table).
5. replace: DELETE the hour from raw.events and the quarantine, INSERT the new rows and a
   line in raw.ingest_log; COMMIT. A failure anywhere rolls the whole hour back.
"""

from __future__ import annotations

import csv
import json
import re
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from pathlib import Path

import duckdb

from funnelwatch.contract import EVENT_FIELDS
from funnelwatch.ingest.pseudonymize import hmac_sql, padded_keys
from funnelwatch.ingest.validation import quarantine_reason_sql
from funnelwatch.landing import as_utc_hour, event_files
from funnelwatch.warehouse import (
    EVENTS_TABLE,
    INGEST_LOG_TABLE,
    QUARANTINE_TABLE,
    ensure_raw_schema,
)

PSEUDONYMISED_COLUMNS = ("user_id", "session_id")
# Errors that mean "this file is bad"; any other DuckDB error is a bug of ours and propagates.
FILE_ERRORS = (duckdb.IOException, duckdb.InvalidInputException, duckdb.ConversionException)


class LandingFileError(ValueError):
    """A landing file could not be read. Nothing of its hour was loaded."""

    def __init__(self, path: Path, detail: str, line: int | None = None):
        self.path = Path(path)
        self.line = line
        self.detail = detail
        where = f"{self.path}" + (f", line {line}" if line is not None else "")
        super().__init__(f"malformed landing file {where}: {detail}")


@dataclass
class HourIngestResult:
    hour: datetime
    files: list[str]
    rows_in: int = 0
    rows_loaded: int = 0
    rows_quarantined: int = 0
    duplicates_dropped: int = 0
    quarantine_reasons: dict[str, int] = field(default_factory=dict)
    ignored_columns: list[str] = field(default_factory=list)

    @property
    def balanced(self) -> bool:
        return self.rows_in == self.rows_loaded + self.rows_quarantined + self.duplicates_dropped


def _reader(path: Path) -> tuple[str, dict]:
    """The DuckDB table function reading one landing file, and its parameters.

    Hive partitioning is off: the folder names (date=/hour=) are our layout, not columns.
    JSON lines and CSV are read as text: type problems become per-row quarantine reasons.
    """
    suffix = path.suffix.lower()
    params: dict = {"path": str(path)}
    if suffix == ".parquet":
        return "read_parquet($path, file_row_number = true, hive_partitioning = false)", params
    if suffix in (".jsonl", ".json"):
        params["columns"] = _json_columns()
        return (
            "read_json($path, format = 'newline_delimited', columns = $columns, "
            "hive_partitioning = false)",
            params,
        )
    if suffix == ".csv":
        # The header is read by us and the dialect fixed: DuckDB's sniffer would otherwise
        # "detect" a one-column file when a row is malformed, instead of reporting the line.
        with open(path, newline="", encoding="utf-8", errors="replace") as handle:
            header = next(csv.reader(handle), None)
        if not header:
            raise LandingFileError(path, "empty CSV file (no header row)", 1)
        params["columns"] = {name: "VARCHAR" for name in header}
        return (
            "read_csv($path, header = true, auto_detect = false, delim = ',', quote = '\"', "
            "escape = '\"', columns = $columns, strict_mode = true, hive_partitioning = false)",
            params,
        )
    raise LandingFileError(path, f"unsupported file type {suffix!r}")


def _bad_json_line(path: Path) -> int | None:
    """The first line of a JSON-lines file that is not a JSON object (1-based)."""
    with open(path, encoding="utf-8", errors="replace") as handle:
        for number, line in enumerate(handle, start=1):
            if not line.strip():
                continue
            try:
                if not isinstance(json.loads(line), dict):
                    return number
            except json.JSONDecodeError:
                return number
    return None


def _file_error(path: Path, exc: Exception) -> LandingFileError:
    message = str(exc)
    if path.suffix.lower() in (".jsonl", ".json"):
        line = _bad_json_line(path)
        if line is not None:  # DuckDB's own line count is off by one for JSON lines
            return LandingFileError(path, "not a valid JSON object", line)
    return LandingFileError(path, _first_line(message), _line_of(message))


_LINE_PATTERNS = (re.compile(r"[Ll]ine[: ]+(\d+)"), re.compile(r"line_number[: =]+(\d+)"))


def _line_of(message: str) -> int | None:
    for pattern in _LINE_PATTERNS:
        match = pattern.search(message)
        if match:
            return int(match.group(1))
    return None


def _first_line(message: str) -> str:
    return message.strip().splitlines()[0] if message.strip() else message


def _describe(con: duckdb.DuckDBPyConnection, reader: str, params: dict, path: Path) -> dict:
    try:
        rows = con.execute(f"DESCRIBE SELECT * FROM {reader}", params).fetchall()
    except FILE_ERRORS as exc:
        raise _file_error(path, exc) from exc
    return {name: typ for name, typ, *_ in rows}


def _stage_file_sql(reader: str, file_columns: dict[str, str]) -> tuple[str, list[str]]:
    """SELECT projecting one file onto the contract, plus the names of extra columns."""
    projections, cast_checks = [], []
    for f in EVENT_FIELDS:
        if f.name not in file_columns:
            projections.append(f"CAST(NULL AS {f.duckdb_type}) AS {f.name}")
            continue
        source_type = file_columns[f.name].upper()
        target = f.duckdb_type.upper()
        same = source_type == target or (
            target == "TIMESTAMPTZ" and source_type == "TIMESTAMP WITH TIME ZONE"
        )
        quoted = '"' + f.name + '"'
        if same:
            projections.append(f"{quoted} AS {f.name}")
        else:
            cast = f"TRY_CAST({quoted} AS {f.duckdb_type})"
            if target == "TIMESTAMPTZ" and source_type.startswith("TIMESTAMP"):
                # naive or nanosecond timestamps are UTC by contract; normalise to us UTC
                cast = f"CAST(CAST({quoted} AS TIMESTAMP) AS TIMESTAMPTZ)"
            projections.append(f"{cast} AS {f.name}")
            if f.duckdb_type != "VARCHAR":
                cast_checks.append(
                    f"CASE WHEN {quoted} IS NOT NULL AND {cast} IS NULL THEN '{f.name}' END"
                )
    cast_errors = (
        f"list_filter([{', '.join(cast_checks)}], lambda x: x IS NOT NULL)"
        if cast_checks
        else "CAST([] AS VARCHAR[])"
    )
    row_number = (
        "file_row_number + 1"
        if "file_row_number" in file_columns
        else "row_number() OVER ()"
    )
    extra = sorted(
        c for c in file_columns if c not in {f.name for f in EVENT_FIELDS} | {"file_row_number"}
    )
    sql = (
        f"SELECT {', '.join(projections)}, {cast_errors} AS _cast_errors, "
        f"$path AS _source_file, {row_number} AS _source_row "
        f"FROM {reader}"
    )
    return sql, extra


def _json_columns() -> dict[str, str]:
    return {f.name: "VARCHAR" for f in EVENT_FIELDS}


def load_hour(
    con: duckdb.DuckDBPyConnection,
    landing: Path | str,
    hour: datetime | str,
    pseudonymization_key: str,
) -> HourIngestResult:
    """Replace one hour of raw.events (and its quarantine) with the hour's landing files."""
    hour_start = as_utc_hour(hour)
    hour_end = hour_start + timedelta(hours=1)
    files = event_files(landing, hour_start)
    result = HourIngestResult(hour=hour_start, files=[str(p) for p in files])
    ensure_raw_schema(con)
    ipad, opad = padded_keys(pseudonymization_key)

    con.execute("DROP TABLE IF EXISTS _staged")
    staged_parts = []
    for path in files:
        reader, params = _reader(path)
        columns = _describe(con, reader, params, path)
        select_sql, extra = _stage_file_sql(reader, columns)
        result.ignored_columns += [f"{path.name}:{c}" for c in extra]
        staged_parts.append((select_sql, params, path))

    con.execute("BEGIN TRANSACTION")
    try:
        # The staging table lives in the transaction: a failure leaves nothing behind.
        con.execute(
            "CREATE TEMP TABLE _staged AS SELECT "
            + ", ".join(f"CAST(NULL AS {f.duckdb_type}) AS {f.name}" for f in EVENT_FIELDS)
            + ", CAST([] AS VARCHAR[]) AS _cast_errors, '' AS _source_file, "
            "CAST(0 AS BIGINT) AS _source_row LIMIT 0"
        )
        for select_sql, params, path in staged_parts:
            try:
                con.execute(f"INSERT INTO _staged {select_sql}", params)
            except FILE_ERRORS as exc:
                raise _file_error(path, exc) from exc

        hour_params = {"hour_start": hour_start, "hour_end": hour_end}
        con.execute(
            f"""CREATE TEMP TABLE _checked AS
                SELECT *, {quarantine_reason_sql()} AS _reason
                FROM (SELECT *, $hour_start::TIMESTAMPTZ AS _hour_start,
                             $hour_end::TIMESTAMPTZ AS _hour_end FROM _staged)""",
            hour_params,
        )
        con.execute("DROP TABLE _staged")

        counts = con.execute(
            """SELECT count(*), count(*) FILTER (_reason IS NULL),
                      count(DISTINCT event_id) FILTER (_reason IS NULL)
               FROM _checked"""
        ).fetchone()
        result.rows_in, valid_rows, distinct_valid = counts
        result.duplicates_dropped = valid_rows - distinct_valid
        result.rows_quarantined = result.rows_in - valid_rows
        result.quarantine_reasons = dict(
            con.execute(
                "SELECT _reason, count(*) FROM _checked WHERE _reason IS NOT NULL "
                "GROUP BY _reason ORDER BY 2 DESC"
            ).fetchall()
        )

        con.execute(f"DELETE FROM {EVENTS_TABLE} WHERE event_hour = $h", {"h": hour_start})
        con.execute(f"DELETE FROM {QUARANTINE_TABLE} WHERE event_hour = $h", {"h": hour_start})

        hashed = {c: hmac_sql(c) for c in PSEUDONYMISED_COLUMNS}
        event_columns = [hashed.get(f.name, f.name) for f in EVENT_FIELDS]
        dedupe = (
            "QUALIFY row_number() OVER (PARTITION BY event_id "
            "ORDER BY _source_file, _source_row) = 1"
            if result.duplicates_dropped
            else ""
        )
        con.execute(
            f"""INSERT INTO {EVENTS_TABLE}
                SELECT {', '.join(event_columns)}, $h, _source_file, now()
                FROM _checked WHERE _reason IS NULL {dedupe}""",
            {"h": hour_start, "ipad": ipad, "opad": opad},
        )
        quarantine_columns = [
            hmac_sql(f"CAST({f.name} AS VARCHAR)")
            if f.name in PSEUDONYMISED_COLUMNS
            else f"CAST({f.name} AS VARCHAR)"
            for f in EVENT_FIELDS
        ]
        con.execute(
            f"""INSERT INTO {QUARANTINE_TABLE}
                SELECT {', '.join(quarantine_columns)}, $h, _source_file, _source_row,
                       _reason, now()
                FROM _checked WHERE _reason IS NOT NULL""",
            {"h": hour_start, "ipad": ipad, "opad": opad},
        )
        result.rows_loaded = valid_rows - result.duplicates_dropped
        con.execute(
            f"INSERT INTO {INGEST_LOG_TABLE} VALUES ($h, $files, $rin, $rl, $rq, $dd, now())",
            {
                "h": hour_start,
                "files": result.files,
                "rin": result.rows_in,
                "rl": result.rows_loaded,
                "rq": result.rows_quarantined,
                "dd": result.duplicates_dropped,
            },
        )
        con.execute("DROP TABLE _checked")
        con.execute("COMMIT")
    except BaseException:
        con.execute("ROLLBACK")
        raise
    return result
