"""Importers: convert public e-commerce datasets into contract events in the landing folder.

    from funnelwatch.importers import import_ga4, import_rees46, ImportReport
    report = import_ga4("../shared/data/ga4", "data/landing")      # a .parquet file or a folder
    report = import_rees46("../shared/data/rees46/2019-Oct_head.csv", "data/landing")

The conversion is done in DuckDB SQL; the result is written with
`funnelwatch.landing.write_events` (one Parquet file per UTC event hour, producer "ga4" or
"rees46"), so the pipeline ingests imported data exactly like a collector's files.
Mapping rules, skip reasons and measured speed: docs/importers.md.
"""

from __future__ import annotations

import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import duckdb
import pandas as pd
import pyarrow.parquet as pq

from funnelwatch.contract import EVENT_COLUMNS
from funnelwatch.landing import hour_dir, write_events


@dataclass
class ImportReport:
    """What an import did. `str(report)` is a short terminal summary."""

    source: str = ""
    producer: str = ""
    source_files: int = 0
    source_rows: int = 0
    events_written: int = 0
    skipped_rows: dict[str, int] = field(default_factory=dict)
    hours: int = 0
    files: list[Path] = field(default_factory=list)
    events_by_type: dict[str, int] = field(default_factory=dict)
    # Source-mapping imports: written event names the mapping does not map (ingest
    # quarantines them as unknown_event_type until the mapping maps them).
    unmapped_events: dict[str, int] = field(default_factory=dict)
    seconds: float = 0.0

    @property
    def skipped_total(self) -> int:
        return sum(self.skipped_rows.values())

    def __str__(self) -> str:
        rate = f", {self.source_rows / self.seconds:,.0f} rows/s" if self.seconds > 0 else ""
        lines = [
            f"{self.producer or 'import'}: {self.source} ({self.source_files} file(s))",
            f"  source rows     {self.source_rows:>12,}",
            f"  events written  {self.events_written:>12,}  in {self.hours:,} hour file(s)",
            f"  rows skipped    {self.skipped_total:>12,}",
        ]
        for reason, n in sorted(self.skipped_rows.items(), key=lambda kv: (-kv[1], kv[0])):
            lines.append(f"    {reason:<26}{n:>10,}")
        if self.events_by_type:
            lines.append("  events by type")
            for kind, n in sorted(self.events_by_type.items(), key=lambda kv: (-kv[1], kv[0])):
                lines.append(f"    {kind:<26}{n:>10,}")
        if self.unmapped_events:
            lines.append("  event names the mapping does not map (ingest quarantines them)")
            for name, n in sorted(self.unmapped_events.items(), key=lambda kv: (-kv[1], kv[0])):
                lines.append(f"    {name:<26}{n:>10,}")
        lines.append(f"  took {self.seconds:.1f} s{rate}")
        return "\n".join(lines)


# --- helpers shared by the importers -------------------------------------------------------


def _connect() -> duckdb.DuckDBPyConnection:
    """An in-memory DuckDB with the session rules the importers rely on (UTC, no downloads)."""
    con = duckdb.connect(config={"autoinstall_known_extensions": False})
    con.execute("SET TimeZone = 'UTC'")
    return con


def _sql_list(values) -> str:
    """A SQL list literal of constant strings (only ever our own constants, never input)."""
    return "(" + ", ".join("'" + str(v).replace("'", "''") + "'" for v in values) + ")"


class _LandingWriter:
    """Writes converted frames to the landing folder for one import run.

    `write_events` replaces a producer's file of an hour. Source files that share a UTC hour
    (e.g. GA4 daily tables cut at midnight of a non-UTC property time zone) would then
    overwrite each other, so rows of an hour already written *in this run* are read back and
    merged before the hour is rewritten.
    """

    def __init__(self, landing: Path | str, producer: str):
        self.landing = Path(landing)
        self.producer = producer
        self.written: dict[Path, int] = {}  # hour file -> rows in it

    def write(self, frame: pd.DataFrame) -> None:
        if frame.empty:
            return
        hours = pd.to_datetime(frame["event_time"], utc=True).dt.floor("h").unique()
        earlier = []
        for hour in hours:
            path = hour_dir(self.landing, hour) / f"{self.producer}.parquet"
            if path in self.written:
                earlier.append(pq.read_table(path).to_pandas())
        if earlier:
            frame = pd.concat([*earlier, frame], ignore_index=True)
        counts = pd.to_datetime(frame["event_time"], utc=True).dt.floor("h").value_counts()
        written = set(write_events(frame, self.landing, self.producer))
        for hour, n in counts.items():
            path = hour_dir(self.landing, hour) / f"{self.producer}.parquet"
            assert path in written, path
            self.written[path] = int(n)

    def fill(self, report: ImportReport) -> None:
        report.files = sorted(self.written)
        report.hours = len(self.written)
        report.events_written = sum(self.written.values())


def _add_counts(target: dict[str, int], rows) -> None:
    counter = Counter(target)
    for key, n in rows:
        counter[str(key)] += int(n)
    target.clear()
    target.update(sorted(counter.items()))


def _check_columns(frame: pd.DataFrame) -> pd.DataFrame:
    unknown = [c for c in frame.columns if c not in EVENT_COLUMNS]
    if unknown:  # a programming error in an importer's SQL, not bad input
        raise AssertionError(f"importer produced non-contract columns {unknown}")
    return frame


class _Timer:
    def __enter__(self):
        self.start = time.perf_counter()
        return self

    def __exit__(self, *exc):
        self.seconds = time.perf_counter() - self.start


from funnelwatch.importers.ga4 import import_ga4
from funnelwatch.importers.rees46 import import_rees46

__all__ = ["ImportReport", "import_ga4", "import_rees46"]
