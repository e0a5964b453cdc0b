"""The landing folder: where collectors (and our simulator and importers) drop files.

Layout, one folder per UTC event hour, as a collector that buckets by event time writes it:

    <landing>/events/date=2026-11-01/hour=13/<producer>-<part>.parquet   (or .jsonl, .csv)
    <landing>/reference/deploys.csv | campaigns.csv | holidays.csv

Files are written to a temporary name and renamed into place, so ingest never reads a
half-written file. The landing folder holds raw events (real ids before ingest pseudonymises
them): our writers make it readable by the pipeline's account only (docs/security.md).
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import pandas as pd
import pyarrow.parquet as pq

from funnelwatch.contract import REFERENCE_TABLES, to_arrow

EVENT_FILE_SUFFIXES = (".parquet", ".jsonl", ".json", ".csv")
LANDING_DIR_MODE = 0o700
LANDING_FILE_MODE = 0o600


def private_landing_root(landing: Path | str) -> Path:
    """Create the landing folder readable by this account only; a folder another account
    owns (a collector's) is left as it is."""
    root = Path(landing)
    root.mkdir(parents=True, exist_ok=True)
    if root.stat().st_uid == os.geteuid():
        os.chmod(root, LANDING_DIR_MODE)
    return root


def as_utc_hour(hour: datetime | str | pd.Timestamp) -> datetime:
    """The start of the UTC hour `hour` falls in, as a tz-aware datetime."""
    ts = pd.Timestamp(hour)
    ts = ts.tz_localize("UTC") if ts.tzinfo is None else ts.tz_convert("UTC")
    return ts.floor("h").to_pydatetime()


def hour_dir(landing: Path | str, hour: datetime | str | pd.Timestamp) -> Path:
    h = as_utc_hour(hour)
    return Path(landing) / "events" / f"date={h:%Y-%m-%d}" / f"hour={h:%H}"


def event_files(landing: Path | str, hour: datetime | str | pd.Timestamp) -> list[Path]:
    """The landing files of one event hour, sorted by name (ingest order is deterministic)."""
    folder = hour_dir(landing, hour)
    if not folder.is_dir():
        return []
    return sorted(
        p for p in folder.iterdir() if p.is_file() and p.suffix.lower() in EVENT_FILE_SUFFIXES
    )


def landed_hours(landing: Path | str) -> Iterator[datetime]:
    """Every hour that has a folder in the landing area, in order."""
    root = Path(landing) / "events"
    for day in sorted(root.glob("date=*")):
        for hour in sorted(day.glob("hour=*")):
            stamp = f"{day.name.removeprefix('date=')}T{hour.name.removeprefix('hour=')}:00"
            yield datetime.fromisoformat(stamp).replace(tzinfo=UTC)


def _atomic_write_parquet(table, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    pq.write_table(table, tmp, compression="zstd")
    os.chmod(tmp, LANDING_FILE_MODE)
    os.replace(tmp, path)


def write_events(events: pd.DataFrame, landing: Path | str, producer: str) -> list[Path]:
    """Write contract events to the landing folder, one Parquet file per event hour.

    Returns the files written. Rows are converted to the contract schema (UTC microsecond
    times, contract column order); an existing file of the same producer and hour is replaced.
    """
    if events.empty:
        return []
    private_landing_root(landing)
    hours = pd.to_datetime(events["event_time"], utc=True).dt.floor("h")
    written = []
    for hour, part in events.groupby(hours, sort=True):
        path = hour_dir(landing, hour) / f"{producer}.parquet"
        _atomic_write_parquet(to_arrow(part.reset_index(drop=True)), path)
        written.append(path)
    return written


def write_reference(frames: dict[str, pd.DataFrame], landing: Path | str) -> list[Path]:
    """Write reference tables (deploys, campaigns, holidays) as CSV under <landing>/reference."""
    known = {t.name: t for t in REFERENCE_TABLES}
    private_landing_root(landing)
    out = []
    for name, frame in frames.items():
        if name not in known:
            raise ValueError(f"unknown reference table {name!r}; known: {sorted(known)}")
        columns = [c for c, _, _ in known[name].columns]
        missing = [c for c in columns if c not in frame.columns]
        if missing:
            raise ValueError(f"reference table {name!r} is missing columns {missing}")
        path = Path(landing) / "reference" / f"{name}.csv"
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.tmp")
        frame[columns].to_csv(tmp, index=False, date_format="%Y-%m-%dT%H:%M:%S%z")
        os.chmod(tmp, LANDING_FILE_MODE)
        os.replace(tmp, path)
        out.append(path)
    return out
