"""Apply a source mapping to a feed file in DuckDB and write hourly landing files.

    report = import_source("export.jsonl", "config/sources/segment.yml", "data/landing")

The feed is read with read_ndjson_objects / read_csv / read_parquet (path bound as a
parameter), each contract field is projected from the mapping (identifiers quoted, JSON paths,
regular expressions, the time zone, event and value maps all bound as parameters or joined
from temp tables filled with parameters), and the result is written with the importers'
landing writer: one Parquet file per UTC event hour, producer = the mapping's `name`.

What happens to a row (docs/importers.md, "Source mappings"):
- its event name is in `drop`: skipped, counted under the name;
- no time, or a time that does not parse: skipped (it has no hour to land in), counted;
- a numeric field (price, quantity, revenue, latency_ms) that does not parse: skipped,
  counted as `invalid_<field>` (the landing file is typed, the text cannot be kept);
- otherwise written. An event name the mapping does not know is written as it is, and
  ingest quarantines it as `unknown_event_type`: fix the mapping, then
  `funnelwatch quarantine replay`. Values of descriptive fields not in a value map are
  written as they are; ingest keeps unknown ones as `other`.
The whole feed is converted before anything is written, so a bad mapping or feed writes
nothing.
"""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path

import duckdb

from funnelwatch.config_files import ConfigError, display_path
from funnelwatch.contract import DESCRIPTIVE_VALUE_SETS, EVENT_COLUMNS, EVENT_FIELDS, EVENT_TYPES
from funnelwatch.importers import (
    ImportReport,
    _add_counts,
    _check_columns,
    _connect,
    _LandingWriter,
    _Timer,
)
from funnelwatch.sources.mapping import (
    SetValues,
    SourceMapping,
    load_mapping,
    split_path,
    strip_optional,
)

_ONE_DAY = timedelta(days=1)
_TYPES = {f.name: f.duckdb_type for f in EVENT_FIELDS}
_NUMERIC = tuple(f.name for f in EVENT_FIELDS
                 if f.duckdb_type in ("DOUBLE", "INTEGER") and f.name != "event_time")
_SET_FIELDS = tuple(SetValues.model_fields)
# A time with an explicit zone (Z, UTC, +01:00, +0100, +01) is taken as it is; a naive one is
# in the mapping's time zone. Digits only: seconds, milliseconds or microseconds since epoch.
_ZONED = r"\d{2}:\d{2}(:\d{2}(\.\d+)?)?\s*(Z|z|UTC|[+-]\d{2}(:?\d{2})?)$"


def quote_ident(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


def json_path(keys: list[str]) -> str:
    """['context', 'page url'] -> '$."context"."page url"' (bound as a parameter)."""
    return "$" + "".join('."' + key.replace("\\", "\\\\").replace('"', '\\"') + '"'
                         for key in keys)


class FeedReader:
    """A feed file loaded into the temp table `feed` (one row per source row, `rowid` in file
    order), and how to read a mapping path from it as text."""

    def __init__(self, con: duckdb.DuckDBPyConnection, src: Path, mapping: SourceMapping,
                 limit: int | None = None):
        self.con, self.src, self.mapping = con, src, mapping
        self.params: dict[str, object] = {"src": str(src)}
        self.columns: dict[str, str] = {}
        limit_sql = " LIMIT $limit" if limit is not None else ""
        if limit is not None:
            self.params["limit"] = limit
        try:
            con.execute(f"CREATE OR REPLACE TEMP TABLE feed AS SELECT * FROM {self._reader()}"
                        f"{limit_sql}", self.params)
            if mapping.format == "jsonl":
                (bad,) = con.execute(
                    "SELECT min(rowid) FROM feed WHERE json_type(json) <> 'OBJECT'").fetchone()
                if bad is not None:
                    raise ValueError(f"{src}: line {bad + 1} is not a JSON object "
                                     "(expected JSON lines: one object per line)")
        except duckdb.Error as exc:
            first = str(exc).strip().splitlines()[0]
            raise ValueError(
                f"{src}: cannot read it as {mapping.format} (mapping {mapping.name!r}): {first}"
            ) from None
        finally:
            self.params.clear()  # the reader's; the projections bind their own
        self.columns = {name: typ for name, typ, *_ in
                        con.execute("DESCRIBE SELECT * FROM feed").fetchall()}
        self._n = 0
        self._present: dict[str, bool] = {}  # JSON path -> some row has it

    def _reader(self) -> str:
        fmt = self.mapping.format
        if fmt == "jsonl":
            return "read_ndjson_objects($src)"
        if fmt == "parquet":
            return "read_parquet($src, hive_partitioning = false)"
        self.params["delim"] = "\t" if fmt == "tsv" else ","
        if self.mapping.columns is not None:
            self.params["columns"] = {name: "VARCHAR" for name in self.mapping.columns}
            # Snowplow's enriched TSV has no quoting: a quote is an ordinary character.
            quote = "quote = '', escape = ''," if fmt == "tsv" else ""
            return ("read_csv($src, header = false, auto_detect = false, delim = $delim, "
                    f"{quote} columns = $columns, strict_mode = true, "
                    "hive_partitioning = false)")
        return ("read_csv($src, header = true, all_varchar = true, delim = $delim, "
                "hive_partitioning = false)")

    def bind(self, value: object) -> str:
        self._n += 1
        name = f"p{self._n}"
        self.params[name] = value
        return f"${name}"

    def text_sql(self, path: str) -> str:
        """SQL of the path's value as trimmed text, NULL when absent or empty."""
        keys = split_path(strip_optional(path)[0])
        if self.mapping.format == "jsonl":
            value = f"json_extract_string(json, {self.bind(json_path(keys))})"
        else:
            column = quote_ident(keys[0])
            if len(keys) == 1:
                value = f"CAST({column} AS VARCHAR)"
            elif self.columns.get(keys[0], "").upper() == "VARCHAR":  # JSON text in a column
                value = (f"CASE WHEN json_valid({column}) THEN json_extract_string({column}, "
                         f"{self.bind(json_path(keys[1:]))}) END")
            else:  # a struct column (Parquet)
                value = f"json_extract_string(to_json({column}), {self.bind(json_path(keys[1:]))})"
        return f"nullif(trim({value}), '')"

    def missing(self, path: str) -> bool:
        """Whether the feed lacks a (non-optional) path altogether."""
        bare, optional = strip_optional(path)
        if optional:
            return False
        keys = split_path(bare)
        if self.mapping.format != "jsonl":
            return keys[0] not in self.columns
        if bare not in self._present:
            self.find_present([bare])
        return not self._present[bare]

    def find_present(self, paths: list[str]) -> None:
        """Which JSON paths some row has, for all `paths` in one scan of the feed."""
        todo = sorted({strip_optional(p)[0] for p in paths} - set(self._present))
        if not todo or self.mapping.format != "jsonl":
            return
        params = {f"p{i}": json_path(split_path(p)) for i, p in enumerate(todo)}
        counts = ", ".join(f"count(json_extract(json, $p{i}))" for i in range(len(todo)))
        found = self.con.execute(f"SELECT {counts} FROM feed", params).fetchall()[0]
        self._present.update({p: n > 0 for p, n in zip(todo, found, strict=True)})

    def known_fields(self) -> list[str]:
        if self.mapping.format == "jsonl":
            return sorted(name for (name,) in self.con.execute(
                "SELECT DISTINCT unnest(json_keys(json)) FROM feed").fetchall())
        return list(self.columns)


def check_fields(reader: FeedReader, source: str) -> None:
    """ConfigError naming the mapping key whose feed field(s) the feed lacks. A key with
    alternatives (`[timestamp, originalTimestamp]`) needs one of them; optional paths
    (ending in '?') need none."""
    mapping = reader.mapping
    checks = [("event_name", list(mapping.event_name))]
    checks += [(f"fields.{name}", field.paths) for name, field in mapping.field_sources().items()]
    reader.find_present([p for _, paths in checks for p in paths])
    for key, paths in checks:
        required = [p for p in paths if not strip_optional(p)[1]]
        if required and all(reader.missing(p) for p in required):
            found = reader.known_fields()
            shown = ", ".join(found[:30]) + (", ..." if len(found) > 30 else "")
            names = " or ".join(repr(p) for p in required)
            raise ConfigError(
                source,
                f"feed field {names} is not in {reader.src} (it has: {shown}; end a path "
                "with '?' if the feed only sometimes has it)",
                key,
            )


def _fill_maps(con: duckdb.DuckDBPyConnection, mapping: SourceMapping) -> None:
    set_columns = ", ".join(f"set_{name} VARCHAR" for name in _SET_FIELDS)
    con.execute(f"CREATE OR REPLACE TEMP TABLE event_map (name VARCHAR, event_type VARCHAR, "
                f"{set_columns})")
    rows = [[name, target.type, *(getattr(target.set, f) for f in _SET_FIELDS)]
            for name, target in mapping.events.items()]
    if rows:
        marks = ", ".join("?" for _ in range(2 + len(_SET_FIELDS)))
        con.executemany(f"INSERT INTO event_map VALUES ({marks})", rows)
    con.execute("CREATE OR REPLACE TEMP TABLE value_map (field VARCHAR, raw VARCHAR, "
                "value VARCHAR)")
    values = [[field, raw.strip().lower(), value]
              for field, table in mapping.values.items() for raw, value in table.items()]
    if values:
        con.executemany("INSERT INTO value_map VALUES (?, ?, ?)", values)
    con.execute("CREATE OR REPLACE TEMP TABLE drop_names (name VARCHAR)")
    if mapping.drop:
        con.executemany("INSERT INTO drop_names VALUES (?)", [[n] for n in mapping.drop])


def _time_sql(text: str, reader: FeedReader) -> str:
    tz = reader.bind(reader.mapping.timezone)
    return f"""CASE
      WHEN {text} IS NULL THEN NULL
      WHEN regexp_matches({text}, '{_ZONED}') THEN TRY_CAST({text} AS TIMESTAMPTZ)
      WHEN regexp_matches({text}, '^\\d{{10}}$') THEN to_timestamp(CAST({text} AS BIGINT))
      WHEN regexp_matches({text}, '^\\d{{13}}$') THEN
        CAST(epoch_ms(CAST({text} AS BIGINT)) AS TIMESTAMPTZ)
      WHEN regexp_matches({text}, '^\\d{{16}}$') THEN
        CAST(make_timestamp(CAST({text} AS BIGINT)) AS TIMESTAMPTZ)
      ELSE timezone({tz}, TRY_CAST({text} AS TIMESTAMP))
    END"""


def convert(reader: FeedReader) -> None:
    """Create the temp table `converted`: every feed row, its contract columns (text for the
    descriptive ones, typed for the rest), `_event_name`, `_mapped` (the event map knew the
    name) and `_skip` (NULL, or why the row is not written)."""
    con, mapping = reader.con, reader.mapping
    reader.params.clear()  # this statement's parameters only
    _fill_maps(con, mapping)
    sources = mapping.field_sources()
    texts: dict[str, str] = {}
    for name, source in sources.items():
        text = "coalesce(" + ", ".join(reader.text_sql(p) for p in source.paths) + ")"
        if source.extract is not None:
            text = f"nullif(regexp_extract({text}, {reader.bind(source.extract)}, 1), '')"
        texts[name] = text
    event_name = "coalesce(" + ", ".join(reader.text_sql(p) for p in mapping.event_name) + ")"
    if "event_id" not in texts:
        # No id in the feed: a hash of the whole source row and its occurrence among identical
        # rows, so a re-import gives the same ids and identical rows stay separate events.
        texts["event_id"] = (f"{reader.bind(mapping.name + '-')} || md5(CAST(f AS VARCHAR) || "
                             "'|' || row_number() OVER (PARTITION BY CAST(f AS VARCHAR) "
                             "ORDER BY f.rowid))")
    raw_columns = ", ".join(f"{sql} AS {quote_ident('t_' + name)}" for name, sql in texts.items())
    staged = (f"SELECT f.rowid AS _row, {event_name} AS _event_name, {raw_columns} "
              "FROM feed AS f")

    joins, out = [], []
    for field in EVENT_FIELDS:
        name = field.name
        text = f's."t_{name}"' if name in texts else "CAST(NULL AS VARCHAR)"
        if name == "event_type":
            out.append("coalesce(em.event_type, s._event_name) AS event_type")
        elif name == "event_time":
            out.append(f"{_time_sql(text, reader)} AS event_time")
        elif name in _NUMERIC:
            out.append(f"TRY_CAST({text} AS {field.duckdb_type}) AS {name}")
        else:
            value = text
            if name in dict(mapping.values.items()):
                alias = f"vm_{name}"
                joins.append(f"LEFT JOIN value_map AS {alias} ON {alias}.field = '{name}' "
                             f"AND {alias}.raw = lower(trim({text}))")
                value = f"coalesce({alias}.value, {text})"
            if name in _SET_FIELDS:
                value = f"coalesce(em.set_{name}, {value})"
            out.append(f"{value} AS {name}")
            if name in DESCRIPTIVE_VALUE_SETS:  # the feed's own value, for check-source
                out.append(f"{text} AS _raw_{name}")
    invalid = " ".join(
        f"WHEN s.\"t_{n}\" IS NOT NULL AND TRY_CAST(s.\"t_{n}\" AS {_TYPES[n]}) IS NULL "
        f"THEN 'invalid_{n}'" for n in _NUMERIC if n in texts)
    time_text = 's."t_event_time"'
    sql = f"""CREATE OR REPLACE TEMP TABLE converted AS
    SELECT *, CASE
        WHEN _event_name IN (SELECT name FROM drop_names) THEN _event_name
        WHEN _time_text IS NULL THEN 'missing_event_time'
        WHEN event_time IS NULL THEN 'unparseable_event_time'
        ELSE _invalid END AS _skip
    FROM (
      SELECT s._row, s._event_name, em.name IS NOT NULL AS _mapped, {time_text} AS _time_text,
        CASE {invalid or "WHEN false THEN NULL"} END AS _invalid,
        {", ".join(out)}
      FROM ({staged}) AS s
      LEFT JOIN event_map AS em ON em.name = s._event_name
      {" ".join(joins)}
    )"""
    try:
        con.execute(sql, reader.params)
    except duckdb.Error as exc:
        first = str(exc).strip().splitlines()[0]
        raise ValueError(f"{reader.src}: cannot convert with mapping {mapping.name!r}: "
                         f"{first}") from None


def resolve_mapping(mapping: SourceMapping | Path | str) -> tuple[SourceMapping, str]:
    """(the mapping, how errors name it: its file, or its name when given as a model)."""
    if isinstance(mapping, SourceMapping):
        return mapping, f"mapping {mapping.name!r}"
    return load_mapping(mapping), display_path(Path(mapping))


def open_feed(con: duckdb.DuckDBPyConnection, src: Path, mapping: SourceMapping,
              limit: int | None = None) -> FeedReader:
    if not src.exists():
        raise ValueError(f"{src}: no such file")
    if not src.is_file():
        raise ValueError(f"{src}: expected one {mapping.format} file, found a folder")
    return FeedReader(con, src, mapping, limit)


def write_converted(con: duckdb.DuckDBPyConnection, mapping: SourceMapping,
                    landing: Path | str, report: ImportReport) -> None:
    """Count the temp table `converted` into `report` and write its rows, a day at a time."""
    writer = _LandingWriter(landing, mapping.name)
    report.source_rows = con.execute("SELECT count(*) FROM converted").fetchone()[0]
    _add_counts(report.skipped_rows, con.execute(
        "SELECT _skip, count(*) FROM converted WHERE _skip IS NOT NULL GROUP BY 1"
    ).fetchall())
    _add_counts(report.unmapped_events, con.execute(
        "SELECT coalesce(_event_name, '(none)'), count(*) FROM converted "
        "WHERE _skip IS NULL AND NOT _mapped "
        "AND (_event_name IS NULL OR _event_name NOT IN (SELECT unnest($types))) "
        "GROUP BY 1", {"types": list(EVENT_TYPES)}).fetchall())
    days = [d for (d,) in con.execute(
        "SELECT DISTINCT date_trunc('day', event_time) AS d FROM converted "
        "WHERE _skip IS NULL ORDER BY d").fetchall()]
    columns = ", ".join(EVENT_COLUMNS)
    for day in days:
        frame = con.execute(
            f"SELECT {columns} FROM converted WHERE _skip IS NULL AND event_time >= $a "
            "AND event_time < $b ORDER BY event_time, _row", {"a": day, "b": day + _ONE_DAY}
        ).df()
        writer.write(_check_columns(frame))
        _add_counts(report.events_by_type,
                    frame["event_type"].fillna("(none)").value_counts().items())
    writer.fill(report)


def import_source(src: Path | str, mapping: SourceMapping | Path | str,
                  landing: Path | str) -> ImportReport:
    """Import one feed file with a source mapping into the landing folder.

    A mapping naming a field the feed lacks, or a feed that is not in the mapping's format,
    raises ValueError (one line) before anything is written."""
    src = Path(src)
    mapping, source = resolve_mapping(mapping)
    report = ImportReport(source=str(src), producer=mapping.name, source_files=1)
    with _Timer() as timer, _connect() as con:
        reader = open_feed(con, src, mapping)
        check_fields(reader, source)
        convert(reader)
        write_converted(con, mapping, landing, report)
    report.seconds = timer.seconds
    return report
