"""Load one UTC hour of landing files into the warehouse, in one transaction.

    rows_in = rows_loaded + rows_quarantined + duplicates_dropped

Steps, all inside DuckDB, each a query over the hour's landing files (`landing_rows`): Parquet
is columnar, so each pass reads only the columns it needs; a text file (JSON lines, CSV) is
parsed once into a temporary table that the passes read instead.
1. stage: every landing file of the hour is projected onto the contract columns. Columns
   whose type already matches are taken as they are (the fast path for Parquet); others are
   TRY_CAST and a failed cast is recorded per row.
   A file that cannot be read at all (a CSV named .parquet, a collector's partial write) is
   set aside: recorded in raw.rejected_files with the reason and line, left untouched in the
   landing folder, and the hour is loaded from its other files. A fixed file landed later
   re-processes the hour (the late-data sensor), which then has no rejected file.
2. pseudonymise: each distinct user_id and session_id of the hour gets its HMAC-SHA256 (raw
   ids never reach a table of the warehouse).
3. validate: the first broken contract rule gives the quarantine reason; an event_id already
   loaded in another hour is quarantined as `duplicate_event_id_other_hour`. The rows are
   counted per reason (a narrow pass: no row is written).
4. replace: DELETE the hour from raw.events and the quarantine; INSERT the valid rows straight
   from the files with their ids hashed (the first copy of each event_id, by file name then
   row) and the quarantined rows; a line in raw.ingest_log; COMMIT. A failure anywhere rolls
   the whole hour back.
"""

from __future__ import annotations

import csv
import json
import re
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from pathlib import Path

import duckdb

from funnelwatch.contract import EVENT_FIELDS
from funnelwatch.ingest.pseudonymize import hmac_sql, padded_keys
from funnelwatch.ingest.validation import (
    descriptive_values_sql,
    quarantine_reason_sql,
    unknown_values_sql,
    unmapped_values_sql,
)
from funnelwatch.landing import as_utc_hour, event_files
from funnelwatch.warehouse import (
    EVENTS_TABLE,
    INGEST_LOG_TABLE,
    QUARANTINE_TABLE,
    REJECTED_FILES_TABLE,
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


class LandingChangedError(RuntimeError):
    """A landing file of the hour changed while the hour was loaded. Nothing was loaded."""


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
    # {field: {raw value: rows}}: values the contract does not know, loaded as `other`
    unknown_values: dict[str, dict[str, int]] = field(default_factory=dict)
    rows_with_unknown_values: int = 0
    # files of the hour that could not be read, set aside (not loaded, left in place)
    rejected_files: list[LandingFileError] = field(default_factory=list)
    # where the time went, seconds per step (bench/ingest.py prints it)
    seconds_by_step: dict[str, float] = field(default_factory=dict)

    @contextmanager
    def timed(self, step: str) -> Iterator[None]:
        start = time.perf_counter()
        try:
            yield
        finally:
            self.seconds_by_step[step] = (
                self.seconds_by_step.get(step, 0.0) + time.perf_counter() - start)

# How many distinct unknown values per field the ingest log keeps (the most frequent).
TOP_UNKNOWN_VALUES = 10


def _reader(path: Path, tag: str = "") -> tuple[str, dict]:
    """The DuckDB table function reading one landing file, and its parameters.

    Hive partitioning is off: the folder names (date=/hour=) are our layout, not columns.
    JSON lines and CSV are read as text: type problems become per-row quarantine reasons.
    """
    suffix = path.suffix.lower()
    p, c = f"path{tag}", f"columns{tag}"
    params: dict = {p: str(path)}
    if suffix == ".parquet":
        return f"read_parquet(${p}, file_row_number = true, hive_partitioning = false)", params
    if suffix in (".jsonl", ".json"):
        params[c] = _json_columns()
        return (
            (f"read_json(${p}, format = 'newline_delimited', columns = ${c}, "
            "hive_partitioning = false)"),
            params,
        )
    if suffix == ".csv":
        # The header is read by us and the dialect fixed: DuckDB's sniffer would otherwise
        # "detect" a one-column file when a row is malformed, instead of reporting the line.
        with open(path, newline="", encoding="utf-8", errors="replace") as handle:
            header = next(csv.reader(handle), None)
        if not header:
            raise LandingFileError(path, "empty CSV file (no header row)", 1)
        params[c] = {name: "VARCHAR" for name in header}
        return (
            (f"read_csv(${p}, header = true, auto_detect = false, delim = ',', quote = '\"', "
            f"escape = '\"', columns = ${c}, strict_mode = true, hive_partitioning = false)"),
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
        columns = {name: typ for name, typ, *_ in rows}
        if path.suffix.lower() in (".jsonl", ".json"):
            # read_json with explicit columns drops unknown keys silently: list them, so they
            # are reported as ignored like the extra columns of Parquet and CSV files.
            keys = con.execute(
                "SELECT DISTINCT unnest(json_keys(json)) FROM read_ndjson_objects(?)", [str(path)]
            ).fetchall()
            columns.update({key: "JSON" for (key,) in keys if key not in columns})
    except FILE_ERRORS as exc:
        raise _file_error(path, exc) from exc
    return columns


def _stage_file_sql(
    reader: str, file_columns: dict[str, str], path_param: str = "$path"
) -> tuple[str, list[str], set[str]]:
    """SELECT projecting one file onto the contract, the names of its extra columns, and the
    contract columns it casts (whose cast may fail)."""
    projections, cast_checks, cast_columns = [], [], set()
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
                cast_columns.add(f.name)
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
        f"{path_param} AS _source_file, {row_number} AS _source_row "
        f"FROM {reader}"
    )
    return sql, extra, cast_columns


def _json_columns() -> dict[str, str]:
    return {f.name: "VARCHAR" for f in EVENT_FIELDS}


OTHER_HOUR_DUPLICATE = "duplicate_event_id_other_hour"
# How far from the hour being loaded an earlier copy of an event_id is looked for, both ways (a
# re-run of an old hour sees the hours loaded after it). The late-data sensor re-runs hours up
# to 7 days old (orchestration/ingest/sensors.py MAX_AGE): a copy re-delivered later than that
# is not a retry we can tell from an id a producer reused.
DUPLICATE_ID_WINDOW = timedelta(days=7)
# Temporary tables of one load: the event_ids of the hour that raw.events already has in
# another hour, and the hour's distinct user/session ids with their keyed hashes. The rows
# themselves are never copied into a table of their own: each step reads the files.
_OTHER_HOUR_IDS = "_event_ids_in_other_hours"
_IDS = "_pseudonymised_ids"
_TEMP_TABLES = (_OTHER_HOUR_IDS, _IDS)
# A text landing file parsed once (JSON and CSV readers cannot skip the columns a pass does not
# need): `_landing_text_<n>`, dropped when the load attempt ends.
_TEXT_TABLE = "_landing_text_{}"


@dataclass(frozen=True)
class LandingRows:
    """SQL over one hour's landing files, projected onto the contract.

    `sql`: a parenthesised SELECT with `_reason` (NULL for a valid row, else why it is
    quarantined; it needs `$hour_start` / `$hour_end` among the params), `_unmapped`,
    `_source_file` and `_source_row`. `staged`: the bare union of the files (contract columns,
    no reason), what the duplicate look-up and the id hashing read. `params`: the readers'
    parameters. `ignored_columns`: `file:column` of the columns the contract does not have.
    `sql_all_known`: `sql` for an hour none of whose valid rows has a descriptive value the
    contract does not know: the values as they came and `_unmapped` NULL, with no per-row test.
    `text_tables`: temporary tables holding the text files parsed once (the caller drops them).
    `file_stats`: (size, mtime) of each file read directly, taken before the first read.
    DuckDB reads only the columns a query over `sql` or `staged` uses."""

    sql: str
    staged: str
    params: dict
    ignored_columns: list[str]
    sql_all_known: str = ""
    text_tables: list[str] = field(default_factory=list)
    file_stats: dict[Path, tuple[int, int]] = field(default_factory=dict)


def landing_rows(
    con: duckdb.DuckDBPyConnection, files: list[Path], other_hour_ids: str | None = None,
    parse_text_once: bool = False,
) -> LandingRows:
    """The landing rows of `files` (see LandingRows). `other_hour_ids`: a table of event_ids
    loaded in other hours, quarantined as duplicates. `parse_text_once`: parse each JSON-lines
    or CSV file into a temporary table, for a caller that reads the rows more than once. Also
    used by the fast lane, which reads the files of the running hour directly, once."""
    selects, params, ignored, text_tables = [], {}, [], []
    cast_columns: set[str] = set()
    file_stats: dict[Path, tuple[int, int]] = {}
    try:
        for index, path in enumerate(files):
            if path.suffix.lower() == ".parquet" or not parse_text_once:
                file_stats[path] = _file_stat(path)
            reader, reader_params = _reader(path, tag=str(index))
            columns = _describe(con, reader, reader_params, path)
            if parse_text_once and path.suffix.lower() != ".parquet":
                reader, reader_params = _parse_text_file(con, path, reader, reader_params, index)
                text_tables.append(reader)
                columns["file_row_number"] = "BIGINT"
            select_sql, extra, casts = _stage_file_sql(reader, columns, f"$path{index}")
            params[f"path{index}"] = str(path)
            cast_columns |= casts
            ignored += [f"{path.name}:{c}" for c in extra]
            selects.append(select_sql)
            params.update(reader_params)
    except BaseException:
        _drop_text_tables(con, text_tables)  # they hold raw ids: none outlives a failed read
        raise
    if not selects:  # no files: an empty relation of the same shape
        selects.append(_empty_select())
    # Rules see the raw values (a checkout_step event with no step is unusable); a valid row
    # then carries the kept value (`other` for an unknown one) and the raw value in
    # `_unmapped`, a quarantined row its raw values as they came.
    unknown = unknown_values_sql()
    kept = ", ".join(
        f"CASE WHEN _reason IS NULL THEN {expr} ELSE {c} END AS {c}"
        for c, expr in descriptive_values_sql().items()
    )
    reason = quarantine_reason_sql(cast_columns)
    if other_hour_ids:
        reason = (f"coalesce({reason}, CASE WHEN event_id IN "
                  f"(SELECT event_id FROM {other_hour_ids}) THEN '{OTHER_HOUR_DUPLICATE}' END)")
    union = "(" + " UNION ALL ".join(selects) + ")"
    sql = (
        f"(SELECT * EXCLUDE ({', '.join(unknown)}) REPLACE ({kept}) FROM ("
        f"SELECT *, {reason} AS _reason, {unmapped_values_sql()} AS _unmapped FROM ("
        f"SELECT *, {', '.join(f'{e} AS {c}' for c, e in unknown.items())} FROM {union})))"
    )
    sql_all_known = (f"(SELECT *, {reason} AS _reason, "
                     f"CAST(NULL AS MAP(VARCHAR, VARCHAR)) AS _unmapped FROM {union})")
    return LandingRows(sql, union, params, ignored, sql_all_known, text_tables, file_stats)


def _file_stat(path: Path) -> tuple[int, int]:
    try:
        stat = path.stat()
    except OSError as exc:
        raise LandingFileError(path, f"cannot read the file: {exc.strerror}") from exc
    return stat.st_size, stat.st_mtime_ns


def assert_files_unchanged(rows: LandingRows) -> None:
    """LandingChangedError when a file read directly was replaced or rewritten since
    `landing_rows` (each step of a load reads the files anew: one file replaced between
    them, a re-delivery under the same name, would make their counts, hashes and rows
    disagree)."""
    changed = [str(path) for path, stat in rows.file_stats.items()
               if not path.exists() or _file_stat(path) != stat]
    if changed:
        raise LandingChangedError(
            f"landing file(s) changed while their hour was loaded: {', '.join(changed)}; "
            "nothing was loaded, run the hour again")


def _drop_text_tables(con: duckdb.DuckDBPyConnection, tables: list[str]) -> None:
    for table in tables:
        con.execute(f"DROP TABLE IF EXISTS {table}")


def _parse_text_file(con: duckdb.DuckDBPyConnection, path: Path, reader: str, params: dict,
                     index: int) -> tuple[str, dict]:
    """Parse a text landing file into a temporary table (its rows numbered from 0 in file
    order, as Parquet's file_row_number); returns the table as the file's new reader."""
    table = _TEXT_TABLE.format(index)
    con.execute(f"DROP TABLE IF EXISTS {table}")
    try:
        con.execute(f"CREATE TEMP TABLE {table} AS SELECT *, "
                    f"row_number() OVER () - 1 AS file_row_number FROM {reader}", params)
    except FILE_ERRORS as exc:
        raise _file_error(path, exc) from exc
    return table, {}


def load_hour(
    con: duckdb.DuckDBPyConnection,
    landing: Path | str,
    hour: datetime | str,
    pseudonymization_key: str,
) -> HourIngestResult:
    """Replace one hour of raw.events (and its quarantine) with the hour's landing files.

    A file that cannot be read is set aside (`result.rejected_files`, raw.rejected_files) and
    the hour is loaded from the others: the failed attempt was rolled back, so each retry
    starts from the hour as it was. Only a bad file costs a retry."""
    hour_start = as_utc_hour(hour)
    files = event_files(landing, hour_start)
    ensure_raw_schema(con)
    rejected: list[LandingFileError] = []
    while True:
        readable = [p for p in files if p not in {r.path for r in rejected}]
        try:
            result = _load_files(con, hour_start, readable, rejected, pseudonymization_key)
        except LandingFileError as bad:
            if bad.path not in readable or bad.path in {r.path for r in rejected}:
                raise  # not one of the hour's files: a bug of ours, never loop on it
            rejected.append(bad)
            continue
        result.rejected_files = rejected
        return result


def _load_files(
    con: duckdb.DuckDBPyConnection,
    hour_start: datetime,
    files: list[Path],
    rejected: list[LandingFileError],
    pseudonymization_key: str,
) -> HourIngestResult:
    """One attempt at the hour from `files`, in one transaction (steps in the module doc)."""
    result = HourIngestResult(hour=hour_start, files=[str(p) for p in files])
    for table in _TEMP_TABLES:
        con.execute(f"DROP TABLE IF EXISTS {table}")
    rows = None
    try:
        with result.timed("read file schemas, parse text files"):
            rows = landing_rows(con, files, _OTHER_HOUR_IDS, parse_text_once=True)
        result.ignored_columns += rows.ignored_columns
        _load_rows(con, hour_start, files, rows, rejected, pseudonymization_key, result)
    finally:
        _drop_text_tables(con, rows.text_tables if rows else [])
    return result


def _load_rows(con: duckdb.DuckDBPyConnection, hour_start: datetime, files: list[Path],
               rows: LandingRows, rejected: list[LandingFileError], pseudonymization_key: str,
               result: HourIngestResult) -> None:
    """The transaction of one attempt: each step reads `rows` (the files) for what it needs."""
    hour = {"hour_start": hour_start, "hour_end": hour_start + timedelta(hours=1)}
    con.execute("BEGIN TRANSACTION")
    try:
        with result.timed("look up ids of other hours"):
            _look_up_other_hour_ids(con, hour_start, files, rows)
        with result.timed("pseudonymise ids"):
            _pseudonymise_ids(con, files, rows, pseudonymization_key)
        with result.timed("validate, count"):
            all_known = _count_rows(con, files, rows, hour, result)
        with result.timed("replace the hour"):
            _replace_hour(con, hour_start, files, rows, hour, result, all_known)
        with result.timed("count unknown values, log"):
            result.unknown_values, result.rows_with_unknown_values = _unknown_values(
                con, hour_start)
            _log_hour(con, result, rejected)
        for table in _TEMP_TABLES:
            con.execute(f"DROP TABLE {table}")
        assert_files_unchanged(rows)
        with result.timed("commit"):
            con.execute("COMMIT")
    except BaseException:
        con.execute("ROLLBACK")
        raise


def _look_up_other_hour_ids(con: duckdb.DuckDBPyConnection, hour_start: datetime,
                            files: list[Path], rows: LandingRows) -> None:
    """Fill _OTHER_HOUR_IDS with the hour's event_ids that another hour already loaded: the
    hour's event_id column joined with raw.events' (DuckDB builds the hash table on the small
    side).

    Only the hours within DUPLICATE_ID_WINDOW of this one are looked at: a resent event comes
    from a collector's retry or a re-delivered file, days at most, and an unbounded look-up
    would read every event_id of the warehouse for each hour loaded (it grows with the
    warehouse). raw.events is written an hour at a time, so its row groups are ordered by
    event_hour and DuckDB's min/max zone maps skip those outside the range. Skipped while the
    window holds no other hour (a first load, a one-hour test)."""
    window = {"hour_start": hour_start, "window_start": hour_start - DUPLICATE_ID_WINDOW,
              "window_end": hour_start + DUPLICATE_ID_WINDOW}
    in_window = ("event_hour >= $window_start AND event_hour <= $window_end "
                 "AND event_hour <> $hour_start")
    con.execute(f"CREATE TEMP TABLE {_OTHER_HOUR_IDS} (event_id VARCHAR)")
    others = con.execute(
        f"SELECT count(*) FROM (SELECT 1 FROM {EVENTS_TABLE} WHERE {in_window} LIMIT 1)",
        window).fetchone()[0]
    if others:
        _run(
            con,
            files,
            f"""INSERT INTO {_OTHER_HOUR_IDS}
                SELECT DISTINCT event_id FROM {EVENTS_TABLE}
                WHERE {in_window} AND event_id IN (
                    SELECT event_id FROM {rows.staged} WHERE event_id IS NOT NULL)""",
            {**window, **rows.params},
        )


def _pseudonymise_ids(con: duckdb.DuckDBPyConnection, files: list[Path], rows: LandingRows,
                      pseudonymization_key: str) -> None:
    """Fill _IDS with each distinct user/session id of the hour and its keyed hash.

    Each id is hashed once (an hour has far fewer users and sessions than events) and joined
    back by value where rows are written. Explicit DDL, not `CREATE TABLE AS ... LIMIT 0`:
    in DuckDB 2.0 such a table keeps all-NULL column statistics after a large insert in the
    same transaction, and later queries then read no rows
    (tests/test_ingest.py::test_large_hour_loads_every_row)."""
    ipad, opad = padded_keys(pseudonymization_key)
    con.execute(f"CREATE TEMP TABLE {_IDS} (id_column VARCHAR, raw_id VARCHAR, hashed VARCHAR)")
    distinct_ids = " UNION ALL ".join(
        f"SELECT DISTINCT '{c}' AS id_column, {c} AS raw_id FROM {rows.staged} "
        f"WHERE {c} IS NOT NULL"
        for c in PSEUDONYMISED_COLUMNS
    )
    _run(
        con,
        files,
        f"INSERT INTO {_IDS} SELECT id_column, raw_id, {hmac_sql('raw_id')} FROM ({distinct_ids})",
        {"ipad": ipad, "opad": opad, **rows.params},
    )


def _count_rows(con: duckdb.DuckDBPyConnection, files: list[Path], rows: LandingRows,
                hour: dict, result: HourIngestResult) -> bool:
    """The result's row accounting (rows in, quarantined per reason, duplicates, loaded), from
    a pass over the columns the rules and the descriptive fields read. Returns whether every
    descriptive value of the valid rows is one the contract knows (most hours)."""
    by_reason = _run(
        con, files,
        f"""SELECT _reason, count(*), count(DISTINCT event_id), count(_unmapped)
            FROM {rows.sql} GROUP BY _reason""",
        {**rows.params, **hour},
    ).fetchall()
    valid = [(n, distinct, unknown) for reason, n, distinct, unknown in by_reason
             if reason is None]
    valid_rows, distinct_valid, with_unknown = valid[0] if valid else (0, 0, 0)
    result.rows_in = sum(n for _, n, _, _ in by_reason)
    result.duplicates_dropped = valid_rows - distinct_valid
    result.rows_quarantined = result.rows_in - valid_rows
    result.rows_loaded = valid_rows - result.duplicates_dropped
    result.quarantine_reasons = dict(
        sorted(((r, n) for r, n, _, _ in by_reason if r is not None), key=lambda x: -x[1])
    )
    return with_unknown == 0


def _replace_hour(con: duckdb.DuckDBPyConnection, hour_start: datetime, files: list[Path],
                  rows: LandingRows, hour: dict, result: HourIngestResult,
                  all_known: bool) -> None:
    """The hour's rows of raw.events and the quarantine replaced by the files' (valid rows keep
    the first copy of each event_id), ids replaced by their hashes."""
    con.execute(f"DELETE FROM {EVENTS_TABLE} WHERE event_hour = $h", {"h": hour_start})
    con.execute(f"DELETE FROM {QUARANTINE_TABLE} WHERE event_hour = $h", {"h": hour_start})
    params = {**rows.params, **hour, "h": hour_start}
    dedupe = (
        "QUALIFY row_number() OVER (PARTITION BY event_id "
        "ORDER BY _source_file, _source_row) = 1"
        if result.duplicates_dropped
        else ""
    )
    # A valid row has both ids (required), so the inner join keeps every one whose ids were
    # hashed: a row whose id was not (its file changed after the hashing) is caught below.
    insert_valid = f"""INSERT INTO {EVENTS_TABLE}
        SELECT {', '.join(f.name for f in EVENT_FIELDS)}, $h, _source_file, now(), _unmapped
        FROM {_pseudonymised(rows, 'JOIN', all_known)} WHERE _reason IS NULL {dedupe}"""
    (loaded,) = _run(con, files, insert_valid, params).fetchone()
    quarantined = 0
    if result.rows_quarantined:
        quarantine_columns = [
            f.name if f.name in PSEUDONYMISED_COLUMNS else f"CAST({f.name} AS VARCHAR)"
            for f in EVENT_FIELDS
        ]
        insert_quarantined = f"""INSERT INTO {QUARANTINE_TABLE}
            SELECT {', '.join(quarantine_columns)}, $h, _source_file, _source_row, _reason, now()
            FROM {_pseudonymised(rows, 'LEFT JOIN', all_known)} WHERE _reason IS NOT NULL"""
        (quarantined,) = _run(con, files, insert_quarantined, params).fetchone()
    if (loaded, quarantined) != (result.rows_loaded, result.rows_quarantined):
        # Each step reads the files anew: one replaced between them (a re-delivery under the
        # same name) would make the counts, the hashes and the rows disagree. Nothing is
        # committed; the next run of the hour reads the files as they are then.
        raise LandingChangedError(
            f"the landing files of {hour_start:%Y-%m-%d %H:00} changed while the hour was "
            f"loaded ({result.rows_loaded} valid and {result.rows_quarantined} quarantined rows "
            f"counted, {loaded} and {quarantined} written); nothing was loaded, run the hour "
            "again")


def _pseudonymised(rows: LandingRows, join: str, all_known: bool) -> str:
    """The landing rows with user_id and session_id replaced by their hashes from _IDS.
    `all_known`: no valid row has an unknown descriptive value, so none is tested (a
    quarantined row keeps its raw values either way)."""
    joins = " ".join(
        f"{join} {_IDS} AS _{c} ON _{c}.id_column = '{c}' AND _{c}.raw_id = r.{c}"
        for c in PSEUDONYMISED_COLUMNS
    )
    hashed = ", ".join(f"_{c}.hashed AS {c}" for c in PSEUDONYMISED_COLUMNS)
    source = rows.sql_all_known if all_known else rows.sql
    return f"(SELECT r.* REPLACE ({hashed}) FROM {source} AS r {joins})"


def _log_hour(con: duckdb.DuckDBPyConnection, result: HourIngestResult,
              rejected: list[LandingFileError]) -> None:
    """The hour's line in raw.ingest_log and its set-aside files in raw.rejected_files."""
    con.execute(
        f"INSERT INTO {INGEST_LOG_TABLE} VALUES "
        "($h, $files, $rin, $rl, $rq, $dd, now(), $unknown)",
        {
            "h": result.hour,
            "files": result.files,
            "rin": result.rows_in,
            "rl": result.rows_loaded,
            "rq": result.rows_quarantined,
            "dd": result.duplicates_dropped,
            "unknown": (json.dumps(result.unknown_values)
                        if result.unknown_values else None),
        },
    )
    con.execute(f"DELETE FROM {REJECTED_FILES_TABLE} WHERE event_hour = $h",
                {"h": result.hour})
    for bad in rejected:
        con.execute(
            f"INSERT INTO {REJECTED_FILES_TABLE} VALUES ($h, $file, $line, $reason, now())",
            {"h": result.hour, "file": str(bad.path), "line": bad.line, "reason": bad.detail},
        )


def _unknown_values(con: duckdb.DuckDBPyConnection,
                    hour_start: datetime) -> tuple[dict[str, dict[str, int]], int]:
    """The hour's unknown values per field (the TOP_UNKNOWN_VALUES most frequent) and the rows
    with any, counted on the rows just loaded (duplicates dropped)."""
    loaded = (f"(SELECT unmapped_values FROM {EVENTS_TABLE} "
              "WHERE event_hour = $h AND unmapped_values IS NOT NULL)")
    rows = con.execute(f"SELECT count(*) FROM {loaded}", {"h": hour_start}).fetchone()[0]
    if not rows:
        return {}, 0
    found = con.execute(
        f"""SELECT e.key, e.value, count(*) AS n
            FROM (SELECT unnest(map_entries(unmapped_values)) AS e FROM {loaded})
            GROUP BY e.key, e.value
            QUALIFY row_number() OVER (PARTITION BY e.key ORDER BY n DESC, e.value) <= $top
            ORDER BY e.key, n DESC, e.value""",
        {"h": hour_start, "top": TOP_UNKNOWN_VALUES},
    ).fetchall()
    by_field: dict[str, dict[str, int]] = {}
    for column, value, n in found:
        by_field.setdefault(column, {})[value] = n
    return by_field, rows


def _empty_select() -> str:
    columns = ", ".join(f"CAST(NULL AS {f.duckdb_type}) AS {f.name}" for f in EVENT_FIELDS)
    return (
        f"SELECT {columns}, CAST([] AS VARCHAR[]) AS _cast_errors, "
        "CAST(NULL AS VARCHAR) AS _source_file, CAST(NULL AS BIGINT) AS _source_row WHERE false"
    )


def _run(con: duckdb.DuckDBPyConnection, files: list[Path], sql: str, params: dict):
    """Execute a statement that reads the landing files; a read error names the bad file."""
    try:
        return con.execute(sql, params)
    except FILE_ERRORS as exc:
        raise culprit(con, files, exc) from exc


def culprit(con, files: list[Path], exc: Exception) -> LandingFileError:
    """Find which file broke a statement over several files, by reading each on its own."""
    for path in files:
        if str(path) in str(exc):
            return _file_error(path, exc)
    # A cursor of its own: the failed statement may have aborted the caller's transaction.
    probe = con.cursor()
    try:
        for path in files:
            reader, params = _reader(path)
            try:
                probe.execute(f"SELECT count(*) FROM {reader}", params).fetchone()
            except FILE_ERRORS as single:
                return _file_error(path, single)
    finally:
        probe.close()
    raise exc  # no file fails on its own: the statement itself is wrong (a bug of ours)
