"""`fast_lane_sensor`: one `checkout_fast_lane_job` run per 5-minute slot, as soon as the
slot's landing files are in.

When is a slot "in"? Collectors deliver a file per few minutes into the hour folder
(funnelwatch.landing). A file named `part-HHMM.*` (the replay mode, and the convention for
collectors: the file holds the slot starting at HH:MM) says that slot is complete. Any
other file says the hour is complete up to the slot before the one it was written in
(its mtime), or completely if it was written after the hour ended. The sensor reads only
folder listings and mtimes of the newest hour folders: it never opens the warehouse.

Cursor: the last slot launched. A slot is launched once; late files for it are the hourly
lane's job (late_data_sensor). While a fast-lane run is still waiting to start, the sensor
waits; the next run then takes every slot landed meanwhile (one run over a range of 5-minute
partitions, in order), so the lane keeps up however fast files arrive. When it falls behind
by more than `MAX_SLOTS_PER_TICK` slots it launches the newest ones: the fast lane is about
now, older slots are covered by the hourly lane.
"""

from __future__ import annotations

import json
import re
from datetime import UTC, datetime, timedelta
from pathlib import Path

import dagster as dg

from orchestration.fastlane.assets import checkout_fast_lane_job, five_minute_partitions
from orchestration.resources import LandingResource

SLOT = timedelta(minutes=5)
RANGE_START_TAG = "dagster/asset_partition_range_start"
RANGE_END_TAG = "dagster/asset_partition_range_end"
WAITING_STATUSES = [dg.DagsterRunStatus.QUEUED, dg.DagsterRunStatus.NOT_STARTED,
                    dg.DagsterRunStatus.STARTING]
MAX_SLOTS_PER_TICK = 12
NEWEST_HOUR_FOLDERS = 3
PART_FILE = re.compile(r"^part-(\d{2})(\d{2})\.(parquet|jsonl|json|csv)$", re.IGNORECASE)


def _newest_hour_folders(landing: Path, count: int) -> list[tuple[datetime, Path]]:
    root = landing / "events"
    folders = []
    for day in sorted(root.glob("date=*"), reverse=True):
        for hour in sorted(day.glob("hour=*"), reverse=True):
            stamp = f"{day.name.removeprefix('date=')}T{hour.name.removeprefix('hour=')}:00"
            try:
                folders.append((datetime.fromisoformat(stamp).replace(tzinfo=UTC), hour))
            except ValueError:
                continue  # not our layout: ingest reports it, the fast lane ignores it
            if len(folders) == count:
                return folders
    return folders


def landed_watermark(landing: Path) -> datetime | None:
    """The start of the newest slot whose events are all in, by the rules above."""
    best = None
    for hour, folder in _newest_hour_folders(landing, NEWEST_HOUR_FOLDERS):
        for path in folder.iterdir():
            if not path.is_file() or path.name.startswith("."):
                continue
            match = PART_FILE.match(path.name)
            if match:
                slot = hour.replace(minute=int(match.group(2)))
                if int(match.group(1)) != hour.hour:
                    continue  # a part file in the wrong hour folder: not evidence
            else:
                written = datetime.fromtimestamp(path.stat().st_mtime, UTC)
                last_slot = hour + timedelta(hours=1) - SLOT
                slot = min(last_slot, written.replace(second=0, microsecond=0)
                           - timedelta(minutes=written.minute % 5) - SLOT)
                if slot < hour:
                    continue
            best = slot if best is None or slot > best else best
    return best


def slots_to_launch(cursor: datetime | None, watermark: datetime) -> list[datetime]:
    first = watermark if cursor is None else cursor + SLOT
    slots = []
    slot = max(first, watermark - (MAX_SLOTS_PER_TICK - 1) * SLOT)
    while slot <= watermark:
        slots.append(slot)
        slot += SLOT
    return slots


@dg.sensor(
    job=checkout_fast_lane_job,
    minimum_interval_seconds=30,
    default_status=dg.DefaultSensorStatus.RUNNING,
    description=(
        "Launches the checkout fast lane for each 5-minute slot whose landing files are in "
        "(a part-HHMM file for the slot or a later one; or a file written after the slot)."
    ),
)
def fast_lane_sensor(context: dg.SensorEvaluationContext, landing: LandingResource):
    state = json.loads(context.cursor) if context.cursor else {}
    cursor = datetime.fromisoformat(state["slot"]) if state.get("slot") else None
    watermark = landed_watermark(landing.root)
    if watermark is None:
        return dg.SkipReason(f"no event files in {landing.root / 'events'}")
    slots = slots_to_launch(cursor, watermark)
    if not slots:
        return dg.SkipReason(f"no new slot: newest landed slot {watermark:%Y-%m-%d %H:%M} "
                             "was launched already")
    waiting = context.instance.get_runs_count(dg.RunsFilter(
        job_name=checkout_fast_lane_job.name, statuses=WAITING_STATUSES))
    if waiting:
        # One run at a time takes the warehouse; launching a run per slot behind a waiting
        # one only grows a queue (measured: +15 s a slot at replay speed 10). The next run
        # takes every slot landed meanwhile.
        return dg.SkipReason(f"{waiting} fast-lane run(s) waiting to start; slots up to "
                             f"{watermark:%Y-%m-%d %H:%M} go into the next run")
    skipped = 0 if cursor is None else int((slots[0] - cursor) / SLOT) - 1
    if skipped > 0:
        context.log.warning("fast lane %d slots behind; launching the newest %d (the hourly "
                            "lane covers the rest)", skipped + len(slots), len(slots))
    context.update_cursor(json.dumps({"slot": slots[-1].isoformat()}))
    first, last = (five_minute_partitions.get_partition_key_for_timestamp(s.timestamp())
                   for s in (slots[0], slots[-1]))
    tags = {"funnelwatch/trigger": f"landed up to {watermark:%H:%M}"}
    if first == last:
        return dg.RunRequest(run_key=f"fastlane-{first}", partition_key=first, tags=tags)
    # Several slots landed since the last run: one run takes them in order.
    return dg.RunRequest(run_key=f"fastlane-{first}-{last}", tags={
        **tags, RANGE_START_TAG: first, RANGE_END_TAG: last})
