"""Sensors of the ingest domain.

`late_data_sensor` notices event files that arrived for an hour already processed and
re-runs `hourly_pipeline` for that hour (ingest replaces the hour in one transaction, dbt
rebuilds its marts, detection re-scores it). The `anomalies_sensor` then launches the respond
job for the re-scored hour, so incidents are updated through the normal path (stable ids,
idempotent outbox: an incident already alerted is updated, not sent twice).

Definitions (no warehouse access: a run may hold the DuckDB file, one writer per file; the
sensor reads only the landing folder and the Dagster instance):

- An hour is **processed** when `raw_events` has a materialization for its partition. It was
  processed **as of** the start of the run that produced the latest one (runless events: the
  event's own time). The run start, not the materialization time, because ingest lists the
  hour's files early in the run: a file that lands while the run is still going may have
  been missed, so it counts as late (at worst one extra, idempotent re-run).
- A file is **late** when it is an event file ingest would read (`funnelwatch.landing.
  event_files`: `.parquet|.jsonl|.json|.csv`; temp files `.x.tmp` are ignored) and its
  mtime is after that time. Hours never processed are not late (the schedule gets them).
- Hours that started more than `MAX_AGE` ago are reported (tick message and log), not
  re-run: see docs/reliability.md "Late data".

Each tick looks only at hour folders that may hold something new (cursor, JSON):

- `folders_ns`: the newest hour-folder mtime seen. Adding or renaming a file into a folder
  changes the folder's mtime, so a folder whose mtime is older than this has nothing new.
  Folders with an mtime equal to it are looked at again (filesystems with coarse times).
- `storage_id`: the last `raw_events` materialization seen. Hours materialized since the
  last tick are looked at again: a file that landed while their run was going is late.
- `requested`: partition -> newest late mtime (ns) already requested, for hours within
  `MAX_AGE`, so looking at a folder again does not request the same hour twice.

Run keys are `late-<partition>-<newest late mtime ns>`: the daemon never launches the same
key twice, so a file with an mtime in the future cannot make the sensor loop.
"""

from __future__ import annotations

import json
import os
import re
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path

import dagster as dg

from funnelwatch.landing import event_files
from orchestration.jobs import hourly_pipeline
from orchestration.resources import LandingResource

RAW_EVENTS = dg.AssetKey("raw_events")
MAX_AGE = timedelta(days=7)
MINIMUM_INTERVAL_SECONDS = 120
MAX_MATERIALIZATIONS_PER_TICK = 1000
PARTITION_FORMAT = "%Y-%m-%d-%H:%M"

_DAY = re.compile(r"date=(\d{4}-\d{2}-\d{2})")
_HOUR = re.compile(r"hour=(\d{2})")


@dataclass
class LateHour:
    partition: str
    hour: datetime
    files: list[str]  # names of the late files
    newest_ns: int  # the newest late file's mtime
    processed_as_of: float  # epoch seconds


@dataclass
class Scan:
    late: list[LateHour] = field(default_factory=list)  # to re-run
    too_old: list[LateHour] = field(default_factory=list)  # reported only
    already_requested: int = 0
    folders: int = 0  # hour folders in the landing area
    looked_at: int = 0  # hour folders listed this tick
    cursor: dict = field(default_factory=dict)


def _load_cursor(text: str | None) -> dict:
    cursor = json.loads(text) if text else {}
    return {
        "folders_ns": int(cursor.get("folders_ns", 0)),
        "storage_id": int(cursor.get("storage_id", 0)),
        "requested": {k: int(v) for k, v in (cursor.get("requested") or {}).items()},
    }


def hour_folders(landing: Path) -> list[tuple[datetime, Path, int]]:
    """(hour, folder, folder mtime ns) of every `date=YYYY-MM-DD/hour=HH` folder: one
    listing of `events/`, one per day folder and one stat per hour folder."""
    out = []
    root = Path(landing) / "events"
    if not root.is_dir():
        return out
    with os.scandir(root) as days:
        for day in days:
            day_match = _DAY.fullmatch(day.name)
            if not day_match or not day.is_dir():
                continue
            try:
                with os.scandir(day.path) as hours:
                    for entry in hours:
                        hour_match = _HOUR.fullmatch(entry.name)
                        if not hour_match or not entry.is_dir():
                            continue
                        try:
                            hour = datetime.fromisoformat(
                                f"{day_match.group(1)}T{hour_match.group(1)}:00"
                            ).replace(tzinfo=UTC)
                            out.append((hour, Path(entry.path), entry.stat().st_mtime_ns))
                        except (ValueError, FileNotFoundError):  # bad name, or just deleted
                            continue
            except FileNotFoundError:  # the day was deleted (retention) since the listing
                continue
    return sorted(out)


def _processed_as_of(instance: dg.DagsterInstance, partition: str,
                     runs: dict[str, float | None]) -> float | None:
    """When the hour was last processed (run start of its latest `raw_events`
    materialization), or None when it never was."""
    records = instance.fetch_materializations(
        dg.AssetRecordsFilter(asset_key=RAW_EVENTS, asset_partitions=[partition]), limit=1
    ).records
    if not records:
        return None
    record = records[0]
    if record.run_id and record.run_id not in runs:
        run = instance.get_run_record_by_id(record.run_id)
        runs[record.run_id] = run.start_time if run is not None else None
    started = runs.get(record.run_id) if record.run_id else None
    return started if started is not None else record.timestamp


def scan_landing(instance: dg.DagsterInstance, landing: Path, cursor_text: str | None,
                 now: datetime, max_age: timedelta = MAX_AGE) -> Scan:
    """What one tick of `late_data_sensor` finds (and its next cursor)."""
    cursor = _load_cursor(cursor_text)
    scan = Scan()
    oldest_allowed = now - max_age

    # Hours materialized since the last tick: look at their folders again.
    fresh = instance.fetch_materializations(
        dg.AssetRecordsFilter(asset_key=RAW_EVENTS, after_storage_id=cursor["storage_id"]),
        limit=MAX_MATERIALIZATIONS_PER_TICK, ascending=True,
    ).records
    rematerialized = {r.partition_key for r in fresh if r.partition_key}
    storage_id = fresh[-1].storage_id if fresh else cursor["storage_id"]

    folders = hour_folders(landing)
    scan.folders = len(folders)
    newest_folder_ns = cursor["folders_ns"]
    runs: dict[str, float | None] = {}
    for hour, folder, folder_ns in folders:
        newest_folder_ns = max(newest_folder_ns, folder_ns)
        partition = hour.strftime(PARTITION_FORMAT)
        if folder_ns < cursor["folders_ns"] and partition not in rematerialized:
            continue
        scan.looked_at += 1
        files = []
        for path in event_files(landing, hour):
            try:
                files.append((path.name, path.stat().st_mtime_ns))
            except FileNotFoundError:  # removed since the listing
                continue
        if not files:
            continue
        as_of = _processed_as_of(instance, partition, runs)
        if as_of is None:
            continue  # never processed: the schedule (or a backfill) loads it
        as_of_ns = int(as_of * 1e9)
        late = sorted((ns, name) for name, ns in files if ns > as_of_ns)
        if not late:
            continue
        found = LateHour(partition, hour, [name for _, name in late], late[-1][0], as_of)
        if hour < oldest_allowed:
            scan.too_old.append(found)
        elif cursor["requested"].get(partition, -1) >= found.newest_ns:
            scan.already_requested += 1
        else:
            scan.late.append(found)

    requested = {
        partition: ns for partition, ns in cursor["requested"].items()
        if datetime.strptime(partition, PARTITION_FORMAT).replace(tzinfo=UTC) >= oldest_allowed
    }
    requested.update({h.partition: h.newest_ns for h in scan.late})
    scan.cursor = {"folders_ns": newest_folder_ns, "storage_id": storage_id,
                   "requested": dict(sorted(requested.items()))}
    return scan


def _when(epoch: float) -> str:
    return datetime.fromtimestamp(epoch, UTC).strftime("%Y-%m-%d %H:%M:%S UTC")


@dg.sensor(
    job=hourly_pipeline,
    minimum_interval_seconds=MINIMUM_INTERVAL_SECONDS,
    default_status=dg.DefaultSensorStatus.RUNNING,
    description=(
        "Re-runs hourly_pipeline for an hour already processed when event files arrive for it "
        f"later (files newer than the run that loaded it; hours up to {MAX_AGE.days} days "
        "old). Its detections are re-scored and anomalies_sensor updates the incidents."
    ),
)
def late_data_sensor(context: dg.SensorEvaluationContext, landing: LandingResource):
    scan = scan_landing(context.instance, landing.root, context.cursor, datetime.now(UTC))
    for old in scan.too_old:
        end = old.hour + timedelta(hours=1)
        context.log.warning(
            f"{old.partition}: {len(old.files)} file(s) arrived after the hour was processed "
            f"({_when(old.processed_as_of)}), but the hour is older than {MAX_AGE.days} days: "
            f"not re-run automatically. To reload it and the hours after it in order: "
            f"funnelwatch run --start {old.hour:%Y-%m-%dT%H:00} --end {end:%Y-%m-%dT%H:00} "
            f"(or later). Files: {', '.join(old.files[:5])}"
        )
    requests = []
    for late in scan.late:
        context.log.info(
            f"{late.partition}: {len(late.files)} late file(s) after {_when(late.processed_as_of)}"
            f": {', '.join(late.files[:5])}"
        )
        requests.append(dg.RunRequest(
            run_key=f"late-{late.partition}-{late.newest_ns}",
            partition_key=late.partition,
            tags={"funnelwatch/trigger": f"late data: {len(late.files)} file(s)",
                  "funnelwatch/late_files": ",".join(late.files)[:200]},
        ))
    context.update_cursor(json.dumps(scan.cursor))
    if requests:
        return requests
    message = (f"no late files: looked at {scan.looked_at} of {scan.folders} hour folders"
               + (f"; {scan.already_requested} late hour(s) already requested"
                  if scan.already_requested else ""))
    if scan.too_old:
        hours = ", ".join(h.partition for h in scan.too_old[:10])
        message += (f"; late files in {len(scan.too_old)} hour(s) older than {MAX_AGE.days} "
                    f"days, not re-run (see the log): {hours}")
    return dg.SkipReason(message)


sensors = [late_data_sensor]
