"""`funnelwatch check-source`: profile a sample of a feed before it is connected.

The first N rows (default 10,000) are read with the given mapping, or with a mapping proposed
from the feed's own names (fields with the contract's names or common aliases, event names of
the Segment e-commerce spec and of the shipped mappings). The sample is then run through the
real path: converted by the mapping, written to a scratch landing folder and loaded with
ingest's `load_hour` into a scratch in-memory DuckDB. So what the report says would be kept,
`other`ed or quarantined is what ingest does, not an estimate.
"""

from __future__ import annotations

import json
import re
import tempfile
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import duckdb
import yaml

from funnelwatch.config_files import ConfigError, validate_model
from funnelwatch.contract import DESCRIPTIVE_VALUE_SETS, EVENT_FIELDS, EVENT_TYPES
from funnelwatch.importers import ImportReport, _connect
from funnelwatch.ingest.loader import load_hour
from funnelwatch.landing import landed_hours
from funnelwatch.sources.apply import (
    FeedReader,
    check_fields,
    convert,
    open_feed,
    resolve_mapping,
    write_converted,
)
from funnelwatch.sources.mapping import SOURCES_DIR, SourceMapping, load_mapping, strip_optional

DEFAULT_SAMPLE_ROWS = 10_000
# A scratch key: the sample's ids are hashed in a throwaway in-memory database only.
_SCRATCH_KEY = "funnelwatch-check-source-scratch-key"
_SUFFIX_FORMATS = {".jsonl": "jsonl", ".ndjson": "jsonl", ".json": "jsonl", ".csv": "csv",
                   ".tsv": "tsv", ".parquet": "parquet"}

# Feed names a contract field is commonly found under, best first. Compared lower-cased with a
# whole path or its last segment.
FIELD_ALIASES: dict[str, tuple[str, ...]] = {
    "event_id": ("event_id", "messageid", "message_id", "eventid", "id"),
    "event_time": ("event_time", "timestamp", "derived_tstamp", "collector_tstamp",
                   "originaltimestamp", "event_timestamp", "time", "ts", "created_at"),
    "user_id": ("user_id", "anonymousid", "domain_userid", "userid", "user_pseudo_id",
                "visitor_id", "customer_id", "uid"),
    "session_id": ("session_id", "sessionid", "domain_sessionid", "user_session", "session"),
    "page_type": ("page_type", "pagetype"),
    "checkout_step": ("checkout_step", "step"),
    "sku": ("sku", "product_id", "item_id", "productid"),
    "category": ("category", "category_code", "item_category"),
    "price": ("price", "unit_price", "unitprice"),
    "quantity": ("quantity", "qty"),
    "order_id": ("order_id", "orderid", "transaction_id", "tr_orderid"),
    "revenue": ("revenue", "total", "tr_total"),
    "currency": ("currency", "tr_currency"),
    "device_type": ("device_type", "device.type", "device.category", "dvce_type"),
    "os": ("os", "os.name", "os_family", "operating_system"),
    "os_version": ("os_version", "os.version", "operating_system_version"),
    "browser": ("browser", "br_family", "browser_name"),
    "browser_version": ("browser_version", "br_version"),
    "app_version": ("app_version", "app.version"),
    "country": ("country", "geo_country", "geo.country", "country_code"),
    "region": ("region", "geo_region", "geo.region"),
    "utm_source": ("utm_source", "campaign.source", "mkt_source"),
    "utm_medium": ("utm_medium", "campaign.medium", "mkt_medium"),
    "utm_campaign": ("utm_campaign", "campaign.name", "mkt_campaign"),
    "payment_provider": ("payment_provider",),
    "payment_status": ("payment_status",),
    "latency_ms": ("latency_ms",),
    "error_code": ("error_code",),
}
EVENT_NAME_ALIASES = ("event_type", "event", "event_name", "se_action", "action", "type")
# Common event names of flat exports (REES46 and the like) beyond the shipped mappings'.
EXTRA_EVENT_NAMES = {"view": "product_view", "cart": "add_to_cart", "purchase": "purchase",
                     "remove_from_cart": "remove_from_cart"}


@dataclass
class SourceProfile:
    src: Path
    mapping: SourceMapping
    mapping_source: str  # the mapping file, or "proposed"
    sample_rows: int = 0
    proposal_yaml: str | None = None
    # (contract field, feed path(s), rows with a value, or None when the feed lacks it)
    fields: list[tuple[str, str, int | None]] = field(default_factory=list)
    unmapped_fields: list[str] = field(default_factory=list)
    events: list[tuple[str, int, str]] = field(default_factory=list)  # name, rows, becomes
    values: list[tuple[str, str, int, str]] = field(default_factory=list)
    outcome: list[tuple[str, int, str]] = field(default_factory=list)  # outcome, rows, why
    problem: str | None = None  # why the sample could not be imported with the mapping

    def table(self) -> str:
        title = (f"check-source: {self.src} ({self.mapping.format}, first "
                 f"{self.sample_rows:,} rows), mapping: {self.mapping_source}")
        lines = [title, "", "Fields", "",
                 "| contract field | feed field | rows with a value |", "|---|---|---|"]
        for name, paths, rows in self.fields:
            lines.append(f"| {name} | {paths} | {'MISSING' if rows is None else f'{rows:,}'} |")
        if self.unmapped_fields:
            lines += ["", "Not mapped (null in every event): " + ", ".join(self.unmapped_fields)]
        lines += ["", "Event names", "", "| feed event name | rows | becomes |", "|---|---|---|"]
        lines += [f"| {n} | {r:,} | {b} |" for n, r, b in self.events]
        if self.values:
            lines += ["", "Values of descriptive fields", "",
                      "| field | feed value | rows | becomes |", "|---|---|---|---|"]
            lines += [f"| {f} | {v} | {r:,} | {b} |" for f, v, r, b in self.values]
        lines += ["", "What ingest would do with the sample", ""]
        if self.problem:
            lines.append(f"not importable with this mapping: {self.problem}")
        else:
            lines += ["| outcome | rows | why |", "|---|---|---|"]
            lines += [f"| {o} | {r:,} | {w} |" for o, r, w in self.outcome]
        return "\n".join(lines)


def guess_format(src: Path) -> str:
    try:
        return _SUFFIX_FORMATS[src.suffix.lower()]
    except KeyError:
        raise ValueError(f"{src}: cannot tell the format from the suffix {src.suffix!r} "
                         f"(expected one of {sorted(_SUFFIX_FORMATS)}; or pass --mapping)") from None


def _feed_paths(con: duckdb.DuckDBPyConnection, src: Path, fmt: str, limit: int) -> list[str]:
    """The field paths of the sample: dotted paths of nested JSON objects, else the columns."""
    if fmt == "jsonl":
        paths: set[str] = set()

        def walk(prefix: str, value) -> None:
            if isinstance(value, dict):
                for key, inner in value.items():
                    walk(f"{prefix}.{key}" if prefix else key, inner)
            elif prefix:
                paths.add(prefix)

        with open(src, encoding="utf-8", errors="replace") as handle:
            for number, line in enumerate(handle):
                if number >= limit:
                    break
                if line.strip():
                    try:
                        walk("", json.loads(line))
                    except json.JSONDecodeError:
                        raise ValueError(f"{src}: line {number + 1} is not JSON") from None
        return sorted(paths)
    reader = ("read_parquet($src)" if fmt == "parquet" else
              "read_csv($src, header = true, all_varchar = true, delim = $delim)")
    params = {"src": str(src)} | ({} if fmt == "parquet" else
                                   {"delim": "\t" if fmt == "tsv" else ","})
    try:
        return [name for name, *_ in con.execute(f"DESCRIBE SELECT * FROM {reader}",
                                                 params).fetchall()]
    except duckdb.Error as exc:
        raise ValueError(f"{src}: cannot read it as {fmt}: "
                         f"{str(exc).strip().splitlines()[0]}") from None


def _match(paths: list[str], aliases: tuple[str, ...]) -> str | None:
    lowered = {p.lower(): p for p in paths}
    for alias in aliases:
        if alias in lowered:
            return lowered[alias]
        for low, path in lowered.items():
            if low.endswith("." + alias):
                return path
    return None


def _known_event_names() -> tuple[dict[str, str], set[str]]:
    """(feed name -> contract type, names to drop) from the shipped mappings."""
    events: dict[str, str] = {}
    drops: set[str] = set()
    for path in sorted(SOURCES_DIR.glob("*.yml")):
        try:
            shipped = load_mapping(path)
        except ConfigError:
            continue
        events.update({n: t.type for n, t in shipped.events.items()})
        drops.update(shipped.drop)
    events.update(EXTRA_EVENT_NAMES)
    events.update({t: t for t in EVENT_TYPES})
    return events, drops


def propose_mapping(src: Path, limit: int = DEFAULT_SAMPLE_ROWS) -> tuple[SourceMapping, str]:
    """A mapping from the feed's own names, and its YAML."""
    fmt = guess_format(src)
    with _connect() as con:
        paths = _feed_paths(con, src, fmt, limit)
        fields: dict[str, str] = {}
        for name, aliases in FIELD_ALIASES.items():
            found = _match([p for p in paths if p not in fields.values()], aliases)
            if found:
                fields[name] = found
        event_field = _match(paths, EVENT_NAME_ALIASES)
        if event_field is None:
            raise ValueError(f"{src}: no field that names the event (looked for "
                             f"{', '.join(EVENT_NAME_ALIASES)}; found {', '.join(paths[:30])})")
        if "event_time" not in fields:
            raise ValueError(f"{src}: no field that holds the event time (looked for "
                             f"{', '.join(FIELD_ALIASES['event_time'])})")
        draft = {"name": re.sub(r"[^a-z0-9_-]+", "-", src.stem.lower()).strip("-") or "feed",
                 "format": fmt, "timezone": "UTC", "event_name": event_field,
                 "fields": fields}
        mapping = validate_model(draft, SourceMapping, "proposed mapping")
        reader = FeedReader(con, src, mapping, limit)
        reader.params.clear()
        names = con.execute(
            f"SELECT {reader.text_sql(event_field)} AS n, count(*) FROM feed GROUP BY 1 "
            "ORDER BY 2 DESC, 1", reader.params).fetchall()
    known, drops = _known_event_names()
    draft["events"] = {n: known[n] for n, _ in names if n in known and known[n] != n}
    draft["drop"] = sorted(n for n, _ in names if n in drops)
    mapping = validate_model(draft, SourceMapping, "proposed mapping")
    unknown = [f"{n} ({c:,} rows)" for n, c in names if n is not None and n not in known
               and n not in drops]
    text = ("# Proposed by `funnelwatch check-source` from the feed's names: check every line.\n"
            + yaml.safe_dump(draft, sort_keys=False, allow_unicode=True, width=100))
    if unknown:
        text += ("# Event names not mapped (ingest quarantines them; map them under events or "
                 "list them under drop):\n" + "".join(f"#   {u}\n" for u in unknown))
    return mapping, text


def check_source(src: Path | str, mapping: SourceMapping | Path | str | None = None,
                 limit: int = DEFAULT_SAMPLE_ROWS) -> SourceProfile:
    src = Path(src)
    if not src.is_file():
        raise ValueError(f"{src}: no such file" if not src.exists() else
                         f"{src}: expected one feed file, found a folder")
    if limit < 1:
        raise ValueError(f"the sample must have at least one row, got {limit}")
    proposal = None
    if mapping is None:
        mapping, proposal = propose_mapping(src, limit)
        source = "proposed (below)"
    else:
        mapping, source = resolve_mapping(mapping)
    profile = SourceProfile(src=src, mapping=mapping, mapping_source=source,
                            proposal_yaml=proposal)
    with _connect() as con:
        reader = open_feed(con, src, mapping, limit)
        profile.sample_rows = con.execute("SELECT count(*) FROM feed").fetchone()[0]
        _profile_fields(reader, profile)
        try:
            check_fields(reader, source)
        except ConfigError as exc:
            profile.problem = str(exc)
            return profile
        convert(reader)
        _profile_events(con, mapping, profile)
        _profile_values(con, mapping, profile)
        _profile_outcome(con, mapping, profile)
    return profile


def _profile_fields(reader: FeedReader, profile: SourceProfile) -> None:
    con, mapping = reader.con, reader.mapping
    sources = {"(event name)": list(mapping.event_name),
               **{n: s.paths for n, s in mapping.field_sources().items()}}
    for name, paths in sources.items():
        if all(reader.missing(p) for p in paths if not strip_optional(p)[1]) and any(
                not strip_optional(p)[1] for p in paths):
            profile.fields.append((name, ", ".join(paths), None))
            continue
        present = [p for p in paths if not reader.missing(strip_optional(p)[0])]
        if not present:
            profile.fields.append((name, ", ".join(paths), 0))
            continue
        reader.params.clear()
        text = "coalesce(" + ", ".join(reader.text_sql(p) for p in present) + ")"
        (rows,) = con.execute(f"SELECT count({text}) FROM feed", reader.params).fetchone()
        profile.fields.append((name, ", ".join(paths), int(rows)))
    mapped = set(mapping.field_sources()) | {"event_type"}
    profile.unmapped_fields = [f.name for f in EVENT_FIELDS if f.name not in mapped]


def _profile_events(con, mapping: SourceMapping, profile: SourceProfile) -> None:
    rows = con.execute("SELECT _event_name, count(*) FROM converted GROUP BY 1 "
                       "ORDER BY 2 DESC, 1").fetchall()
    for name, n in rows:
        if name is None:
            becomes = "no event name: quarantined as missing_event_type"
        elif name in mapping.drop:
            becomes = "dropped (drop)"
        elif name in mapping.events:
            becomes = mapping.events[name].type
        elif name in EVENT_TYPES:
            becomes = f"{name} (a contract type)"
        else:
            becomes = "not mapped: quarantined as unknown_event_type"
        profile.events.append(("(none)" if name is None else name, int(n), becomes))


def _profile_values(con, mapping: SourceMapping, profile: SourceProfile) -> None:
    maps = dict(mapping.values.items())
    for column, allowed in DESCRIPTIVE_VALUE_SETS.items():
        rows = con.execute(
            f"SELECT _raw_{column}, {column}, count(*) FROM converted WHERE _skip IS NULL "
            f"AND _raw_{column} IS NOT NULL GROUP BY 1, 2 ORDER BY 3 DESC, 1").fetchall()
        for raw, kept, n in rows:
            key = raw.strip().lower()
            if key in {k.strip().lower() for k in maps.get(column, {})}:
                becomes = f"{kept} (value map)"
            elif (kept or "").strip().lower() in allowed:
                becomes = f"{kept.strip().lower()}" + (" (event sets it)" if kept != raw else "")
            else:
                becomes = "other (not a contract value; raw value kept in unmapped_values)"
            profile.values.append((column, raw, int(n), becomes))


def _profile_outcome(con, mapping: SourceMapping, profile: SourceProfile) -> None:
    report = ImportReport(source=str(profile.src), producer=mapping.name)
    (value_mapped,) = con.execute(
        "SELECT count(*) FROM converted WHERE _skip IS NULL AND ("
        + " OR ".join(f"_raw_{c} IS DISTINCT FROM {c}" for c in DESCRIPTIVE_VALUE_SETS)
        + ")").fetchone()
    with tempfile.TemporaryDirectory(prefix="funnelwatch-check-source-") as scratch:
        landing = Path(scratch) / "landing"
        write_converted(con, mapping, landing, report)
        loaded = quarantined = duplicates = with_other = 0
        reasons: Counter[str] = Counter()
        other_fields: Counter[str] = Counter()
        with duckdb.connect() as warehouse:
            warehouse.execute("SET TimeZone = 'UTC'")
            for hour in landed_hours(landing):
                result = load_hour(warehouse, landing, hour, _SCRATCH_KEY)
                loaded += result.rows_loaded
                quarantined += result.rows_quarantined
                duplicates += result.duplicates_dropped
                with_other += result.rows_with_unknown_values
                reasons.update(result.quarantine_reasons)
                for column, values in result.unknown_values.items():
                    other_fields[column] += sum(values.values())
    profile.outcome.append(("loaded", loaded, "valid events"))
    profile.outcome.append(("  loaded with `other`", with_other, ", ".join(
        f"{c} {n}" for c, n in other_fields.most_common()) or ""))
    for reason, n in reasons.most_common():
        profile.outcome.append(("quarantined", n, reason))
    profile.outcome.append(("(written rows value-mapped)", int(value_mapped),
                            "a descriptive value changed by a value map or an event's set"))
    if duplicates:
        profile.outcome.append(("duplicates dropped", duplicates, "event_id seen before"))
    for reason, n in sorted(report.skipped_rows.items(), key=lambda kv: -kv[1]):
        why = ("dropped event name" if reason in mapping.drop else reason)
        profile.outcome.append(("skipped at import", n, f"{why}" +
                                (f" ({reason})" if why != reason else "")))
