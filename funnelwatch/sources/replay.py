"""Quarantine replay: re-ingest quarantined rows after their source mapping is fixed.

Design (docs/importers.md, "Quarantine replay"). raw.events_quarantine holds pseudonymised ids,
so rows rebuilt from it would either be hashed a second time by ingest or need a "do not
hash" mark that ingest does not have. Instead the ORIGINAL landing rows are read again from
the quarantined rows' source_file/source_row (raw ids, hashed once by ingest as always):

1. per landing file of the hour with quarantined rows, the whole file is read the way ingest
   reads it (same row numbers), the mapping's event and value maps are applied to the
   quarantined rows only, and the result is written as `replayed-<ts>-<file>.parquet` in the
   hour folder (every row, every column: the file's other rows move with it);
2. the original file is moved to the hour's `replaced/` sub-folder (ingest reads only the
   hour folder's own files; nothing is deleted);
3. the hour is re-ingested with `load_hour`. Rows the fix repaired are loaded; rows that still
   break the contract stay quarantined with their (new) reason.

Each source row is in exactly one landing file before and after, so `rows_in` of the hour is
unchanged: nothing is lost and nothing is counted twice. A file whose quarantined rows the
mapping does not change is left as it is.
"""

from __future__ import annotations

import csv
import os
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

import duckdb
import pyarrow.parquet as pq

from funnelwatch.contract import DESCRIPTIVE_VALUE_SETS, EVENT_FIELDS
from funnelwatch.ingest.loader import load_hour
from funnelwatch.landing import as_utc_hour, hour_dir
from funnelwatch.sources.apply import quote_ident
from funnelwatch.sources.mapping import SetValues, SourceMapping
from funnelwatch.warehouse import INGEST_LOG_TABLE, QUARANTINE_TABLE, ensure_raw_schema

REPLACED_DIR = "replaced"
_SET_FIELDS = tuple(SetValues.model_fields)


@dataclass
class HourReplay:
    hour: datetime
    quarantined_before: int = 0
    quarantined_after: int = 0
    loaded_before: int = 0
    loaded_after: int = 0
    rows_in_before: int = 0
    rows_in_after: int = 0
    rows_changed: int = 0  # quarantined rows the mapping changed
    files_replaced: list[str] = field(default_factory=list)  # original -> replaced/
    files_written: list[str] = field(default_factory=list)
    missing_files: list[str] = field(default_factory=list)  # source files no longer landed
    reasons_after: dict[str, int] = field(default_factory=dict)

    def line(self) -> str:
        text = (f"{self.hour:%Y-%m-%d %H:00}: quarantined {self.quarantined_before} -> "
                f"{self.quarantined_after}, loaded {self.loaded_before} -> {self.loaded_after}, "
                f"rows in {self.rows_in_before} -> {self.rows_in_after}, "
                f"{self.rows_changed} row(s) remapped in {len(self.files_written)} file(s)")
        if self.reasons_after:
            text += " (still quarantined: " + ", ".join(
                f"{r} {n}" for r, n in self.reasons_after.items()) + ")"
        if self.missing_files:
            text += f"; source file(s) no longer landed: {', '.join(self.missing_files)}"
        return text


def quarantine_summary(con: duckdb.DuckDBPyConnection) -> list[tuple[datetime, str, int]]:
    """(hour, reason, rows) of raw.events_quarantine, by hour then most rows (read-only)."""
    (exists,) = con.execute(
        "SELECT count(*) FROM information_schema.tables WHERE table_schema = 'raw' "
        "AND table_name = 'events_quarantine'").fetchall()[0]
    if not exists:
        return []
    return con.execute(
        f"SELECT event_hour, reason, count(*) AS n FROM {QUARANTINE_TABLE} "
        "GROUP BY ALL ORDER BY event_hour, n DESC, reason").fetchall()


def quarantined_hours(con: duckdb.DuckDBPyConnection) -> list[datetime]:
    ensure_raw_schema(con)
    return [h for (h,) in con.execute(
        f"SELECT DISTINCT event_hour FROM {QUARANTINE_TABLE} ORDER BY 1").fetchall()]


def _reader(path: Path) -> tuple[str, dict, str]:
    """(table function reading `path` as ingest does, its params, the SQL of ingest's 1-based
    row number for it): the same numbering as raw.events_quarantine.source_row."""
    suffix = path.suffix.lower()
    if suffix == ".parquet":
        return ("read_parquet($path, file_row_number = true, hive_partitioning = false)",
                {"path": str(path)}, "file_row_number + 1")
    if suffix in (".jsonl", ".json"):
        columns = {f.name: "VARCHAR" for f in EVENT_FIELDS}
        return (("read_json($path, format = 'newline_delimited', columns = $columns, "
                 "hive_partitioning = false)"), {"path": str(path), "columns": columns},
                "row_number() OVER ()")
    if suffix == ".csv":
        with open(path, newline="", encoding="utf-8", errors="replace") as handle:
            header = next(csv.reader(handle), None) or []
        return (("read_csv($path, header = true, auto_detect = false, delim = ',', "
                 "quote = '\"', escape = '\"', columns = $columns, strict_mode = true, "
                 "hive_partitioning = false)"),
                {"path": str(path), "columns": {name: "VARCHAR" for name in header}},
                "row_number() OVER ()")
    raise ValueError(f"{path}: not a landing file type ingest reads")


def _fill_maps(con: duckdb.DuckDBPyConnection, mapping: SourceMapping) -> None:
    con.execute("CREATE OR REPLACE TEMP TABLE replay_events (name VARCHAR, event_type VARCHAR, "
                + ", ".join(f"set_{f} VARCHAR" for f in _SET_FIELDS) + ")")
    rows = [[name, t.type, *(getattr(t.set, f) for f in _SET_FIELDS)]
            for name, t in mapping.events.items()]
    if rows:
        con.executemany("INSERT INTO replay_events VALUES ("
                        + ", ".join("?" for _ in range(2 + len(_SET_FIELDS))) + ")", rows)
    con.execute("CREATE OR REPLACE TEMP TABLE replay_values (field VARCHAR, raw VARCHAR, "
                "value VARCHAR)")
    values = [[f, raw.strip().lower(), v] for f, table in mapping.values.items()
              for raw, v in table.items()]
    if values:
        con.executemany("INSERT INTO replay_values VALUES (?, ?, ?)", values)


def _remap_file(con: duckdb.DuckDBPyConnection, path: Path, rows: list[int],
                mapping: SourceMapping, out: Path) -> int:
    """Write `path` with the mapping applied to its rows `rows` to `out`; the number of rows
    it changed (0: nothing written)."""
    reader, params, row_sql = _reader(path)
    columns = [name for name, *_ in con.execute(f"DESCRIBE SELECT * FROM {reader}",
                                                params).fetchall()]
    columns = [c for c in columns if c != "file_row_number"]
    con.execute(f"CREATE OR REPLACE TEMP TABLE replay_src AS SELECT *, {row_sql} AS _row "
                f"FROM {reader}", params)
    params = {"rows": rows}
    hit = "s._row IN (SELECT unnest($rows))"
    outputs, joins = [], ["LEFT JOIN replay_events AS em ON em.name = s.event_type"
                          if "event_type" in columns else ""]
    for name in columns:
        q = f"s.{quote_ident(name)}"
        value = q
        if name == "event_type":
            value = f"coalesce(em.event_type, {q})"
        if name in DESCRIPTIVE_VALUE_SETS and mapping.values.items():
            alias = quote_ident(f"vm_{name}")
            joins.append(f"LEFT JOIN replay_values AS {alias} ON {alias}.field = '{name}' "
                         f"AND {alias}.raw = lower(trim(CAST({q} AS VARCHAR)))")
            value = f"coalesce({alias}.value, {value})"
        if name in _SET_FIELDS and "event_type" in columns:
            value = f"coalesce(em.set_{name}, {value})"
        outputs.append(f"CASE WHEN {hit} THEN {value} ELSE {q} END AS {quote_ident(name)}")
    for name in _SET_FIELDS:  # a constant the event sets, in a file without that column
        if name not in columns and "event_type" in columns:
            outputs.append(f"CASE WHEN {hit} THEN em.set_{name} END AS {quote_ident(name)}")
    select = (f"SELECT {', '.join(outputs)}, s._row FROM replay_src AS s {' '.join(joins)}")
    con.execute(f"CREATE OR REPLACE TEMP TABLE replay_out AS {select}", params)
    compared = [c for c in columns if c in {"event_type", *DESCRIPTIVE_VALUE_SETS, *_SET_FIELDS}]
    if not compared:
        return 0
    differs = " OR ".join(
        f"o.{quote_ident(c)} IS DISTINCT FROM s.{quote_ident(c)}" for c in compared)
    added = [f for f in _SET_FIELDS if f not in columns and "event_type" in columns]
    if added:
        differs += " OR " + " OR ".join(f"o.{quote_ident(f)} IS NOT NULL" for f in added)
    (changed,) = con.execute(
        f"SELECT count(*) FROM replay_out AS o JOIN replay_src AS s USING (_row) "
        f"WHERE {differs}").fetchall()[0]
    if changed:
        table = con.sql("SELECT * EXCLUDE (_row) FROM replay_out ORDER BY _row").to_arrow_table()
        tmp = out.with_name(f".{out.name}.tmp")
        pq.write_table(table, tmp, compression="zstd")
        os.replace(tmp, out)
    return int(changed)


def _ingest_counts(con: duckdb.DuckDBPyConnection, hour: datetime) -> tuple[int, int, int]:
    row = con.execute(
        f"SELECT rows_in, rows_loaded, rows_quarantined FROM {INGEST_LOG_TABLE} "
        "WHERE event_hour = $h ORDER BY ingested_at DESC LIMIT 1", {"h": hour}).fetchone()
    return tuple(row) if row else (0, 0, 0)


def replay_hour(con: duckdb.DuckDBPyConnection, landing: Path | str, hour: datetime | str,
                key: str, mapping: SourceMapping | None = None,
                now: datetime | None = None) -> HourReplay:
    """Apply `mapping` to the hour's quarantined landing rows and re-ingest the hour."""
    ensure_raw_schema(con)
    hour = as_utc_hour(hour)
    result = HourReplay(hour=hour)
    result.rows_in_before, result.loaded_before, result.quarantined_before = _ingest_counts(
        con, hour)
    folder = hour_dir(landing, hour)
    stamp = (now or datetime.now(UTC)).strftime("%Y%m%dT%H%M%S%f")
    quarantined = con.execute(
        f"SELECT source_file, list(source_row ORDER BY source_row) FROM {QUARANTINE_TABLE} "
        "WHERE event_hour = $h GROUP BY 1 ORDER BY 1", {"h": hour}).fetchall()
    if mapping is not None:
        _fill_maps(con, mapping)
        for source_file, rows in quarantined:
            # by name in the hour folder: the landing folder may have moved since ingest
            path = folder / Path(source_file).name
            if not path.is_file():
                result.missing_files.append(Path(source_file).name)
                continue
            out = folder / f"replayed-{stamp}-{path.stem}.parquet"
            try:
                changed = _remap_file(con, path, rows, mapping, out)
            except duckdb.Error as exc:  # ingest read it before; it changed since
                first = str(exc).strip().splitlines()[0]
                raise ValueError(f"{path}: cannot re-read it for replay: {first}") from None
            if not changed:
                continue
            (folder / REPLACED_DIR).mkdir(exist_ok=True)
            os.replace(path, folder / REPLACED_DIR / path.name)
            result.rows_changed += changed
            result.files_written.append(out.name)
            result.files_replaced.append(path.name)
    loaded = load_hour(con, landing, hour, key)
    result.rows_in_after = loaded.rows_in
    result.loaded_after = loaded.rows_loaded
    result.quarantined_after = loaded.rows_quarantined
    result.reasons_after = dict(loaded.quarantine_reasons)
    return result
