"""Replay simulated events into the landing folder on an accelerated clock.

A production collector delivers a file every few minutes; `replay` does the same with the
simulator's events, so sensors, the fast lane and the hourly pipeline see files arrive as
they would in production, only faster:

    history = write_history(result.events, landing, live_start, result.reference, late=result.late)
    stats = replay(result.events, landing, start=live_start, end=live_end, speed=60,
                   late=result.late)

Time mapping: simulated instant `s` is written at wall time `t0 + (s - start) / speed`
(`t0` = `clock()` when the replay starts). The events of slot `[t, t + slot)` are written at
the slot's start `t` as `<hour folder>/part-HHMM.parquet`; late deliveries are written at
the first slot boundary at or after their arrival (`hour + arrives_after_hours`) as
`<folder of the rows' hour>/late-YYYYMMDDTHHMM.parquet` (HHMM = the arrival). Late rows are
never written in their regular slot (as in `write_simulation`). See docs/simulator.md,
"Replay mode".
"""

from __future__ import annotations

import math
import os
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

import numpy as np
import pandas as pd

from funnelwatch.contract import to_arrow
from funnelwatch.landing import _atomic_write_parquet, hour_dir, write_events, write_reference
from simulator.incidents import LateDelivery

_US = 1_000_000
_HOUR_US = 3600 * _US

OnSlot = Callable[[pd.Timestamp, pd.Timestamp, list[Path]], None]


@dataclass
class ReplayStats:
    slots: int = 0  # slots walked (empty ones included)
    files: int = 0  # files written, late files included (reference CSVs not counted)
    rows: int = 0  # event rows written, late rows included
    late_files: int = 0
    wall_seconds: float = 0.0  # by `clock`, from the first slot to the end
    simulated_seconds: float = 0.0  # end - start


@dataclass
class HistoryStats:
    files: list[Path]  # regular hourly files and late files
    rows: int
    late_files: int
    reference: list[Path]


@dataclass
class _LateGroup:
    """Late rows of one delivery and one event hour: one late file."""

    hour_us: int  # the rows' event hour
    arrival_us: int  # when the file lands (never before the hour has ended)
    rows: np.ndarray  # positions in `events`


def _utc(value: datetime | str | pd.Timestamp, name: str) -> pd.Timestamp:
    try:
        ts = pd.Timestamp(value)
    except (TypeError, ValueError) as exc:
        raise ValueError(f"{name} {value!r} is not a time: {exc}") from None
    if ts is pd.NaT:
        raise ValueError(f"{name} is missing")
    ts = ts.tz_localize("UTC") if ts.tzinfo is None else ts.tz_convert("UTC")
    return ts.as_unit("us")


def _event_us(events: pd.DataFrame) -> np.ndarray:
    """event_time as int64 UTC microseconds (naive times are taken as UTC)."""
    if "event_time" not in events.columns:
        raise ValueError("events have no event_time column")
    times = pd.to_datetime(events["event_time"], utc=True)
    if times.isna().any():
        raise ValueError("events have a null event_time")
    return pd.DatetimeIndex(times).as_unit("us").asi8


def _late_groups(
    late: Iterable[LateDelivery], t_us: np.ndarray
) -> tuple[list[_LateGroup], np.ndarray]:
    """Split each delivery by the event hour of its rows (one file per hour folder); return
    the groups (by arrival) and the mask of every late row."""
    mask = np.zeros(len(t_us), dtype=bool)
    groups = []
    for d in late:
        rows = np.asarray(d.rows, dtype=np.int64)
        if len(rows) == 0:
            continue
        if rows.min() < 0 or rows.max() >= len(t_us):
            raise ValueError(
                f"late delivery {d.incident_id}: row positions outside the events frame "
                f"(0..{len(t_us) - 1}); pass the same frame `simulate` returned"
            )
        if mask[rows].any():
            raise ValueError(f"late delivery {d.incident_id}: rows already in another delivery")
        mask[rows] = True
        arrival = _utc(d.arrives_at, "late arrival").value // 1000
        hours = t_us[rows] // _HOUR_US * _HOUR_US
        for hour in np.unique(hours):
            groups.append(
                _LateGroup(int(hour), max(int(arrival), int(hour) + _HOUR_US), rows[hours == hour])
            )
    groups.sort(key=lambda g: (g.arrival_us, g.hour_us))
    return groups, mask


def _ts(us: int) -> pd.Timestamp:
    return pd.Timestamp(us * 1000, tz="UTC").as_unit("us")


def _write_late(events: pd.DataFrame, landing: Path, group: _LateGroup) -> Path:
    arrival = _ts(group.arrival_us)
    path = hour_dir(landing, _ts(group.hour_us)) / f"late-{arrival:%Y%m%dT%H%M}.parquet"
    _atomic_write_parquet(to_arrow(events.iloc[group.rows].reset_index(drop=True)), path)
    return path


def write_history(
    events: pd.DataFrame,
    landing: str | Path,
    end: datetime | str | pd.Timestamp,
    reference: dict[str, pd.DataFrame] | None = None,
    *,
    late: Sequence[LateDelivery] = (),
    producer: str = "simulator",
) -> HistoryStats:
    """Write everything that has arrived before `end` in one go: the events before `end` as
    regular hourly files (`write_events(..., producer="simulator")`), late deliveries that
    arrived before `end` as `late-YYYYMMDDTHHMM.parquet` with the arrival as mtime, and the
    reference tables if given. Late rows arriving at or after `end` are left to `replay`.
    """
    landing = Path(landing)
    end_us = _utc(end, "end").value // 1000
    t_us = _event_us(events)
    groups, late_mask = _late_groups(late, t_us)
    ref_paths = write_reference(reference, landing) if reference is not None else []
    regular = (t_us < end_us) & ~late_mask
    files = write_events(events.loc[regular], landing, producer)
    rows = int(regular.sum())
    late_files = 0
    for group in groups:
        if group.arrival_us >= end_us:
            continue
        path = _write_late(events, landing, group)
        stamp = group.arrival_us / _US
        os.utime(path, (stamp, stamp))
        files.append(path)
        rows += len(group.rows)
        late_files += 1
    return HistoryStats(files, rows, late_files, ref_paths)


def replay(
    events: pd.DataFrame,
    landing: str | Path,
    *,
    start: datetime | str | pd.Timestamp,
    end: datetime | str | pd.Timestamp,
    speed: float = 60.0,
    slot_minutes: int = 5,
    late: Sequence[LateDelivery] = (),
    reference: dict[str, pd.DataFrame] | None = None,
    clock: Callable[[], float] = time.monotonic,
    sleep: Callable[[float], None] = time.sleep,
    on_slot: OnSlot | None = None,
) -> ReplayStats:
    """Write the events of [start, end) slot by slot on an accelerated clock.

    Each slot's events (`event_time` in [t, t + slot_minutes)) go to
    `<hour folder>/part-HHMM.parquet` when the slot is over: at wall time
    `(t + slot - start) / speed` after the replay started. `speed` 0 or inf: no waiting.
    Empty slots write nothing but still wait. `late` (`SimulationResult.late`, row positions in
    `events`): those rows never go into a part file; each delivery is written, per event hour
    of its rows, as `late-YYYYMMDDTHHMM.parquet` in that hour's folder at the end of the
    slot it arrives in. Deliveries arriving before `start` are skipped (history,
    see `write_history`); those arriving at or after `end` are written at `end`, after the
    last slot, with one extra `on_slot(end, end, paths)` call. Events outside [start, end)
    are not written (but late rows of earlier hours arriving in the window are).

    `on_slot(slot_start, slot_end, paths)` is called after each slot's files are written. `reference` is written once, first.
    """
    start_ts, end_ts = _utc(start, "start"), _utc(end, "end")
    if end_ts <= start_ts:
        raise ValueError(f"end {end_ts} must be after start {start_ts}")
    minutes = int(slot_minutes) if float(slot_minutes).is_integer() else 0
    if minutes <= 0 or 60 % minutes:
        raise ValueError(
            f"slot_minutes must divide 60 (1, 2, 3, 4, 5, 6, 10, 12, 15, 20, 30, 60), "
            f"not {slot_minutes}"
        )
    speed = float(speed)
    if math.isnan(speed) or speed < 0:
        raise ValueError(f"speed must be >= 0 (0 or inf: no waiting), not {speed}")
    slot_us = minutes * 60 * _US
    start_us, end_us = start_ts.value // 1000, end_ts.value // 1000
    if start_us % slot_us:
        raise ValueError(
            f"start {start_ts} is not on a {slot_minutes}-minute slot boundary "
            "(slots line up with the hour)"
        )
    landing = Path(landing)
    realtime = 0 < speed < math.inf

    t_us = _event_us(events)
    groups, late_mask = _late_groups(late, t_us)
    groups = [g for g in groups if g.arrival_us >= start_us]
    regular = np.flatnonzero((t_us >= start_us) & (t_us < end_us) & ~late_mask)
    regular = regular[np.argsort(t_us[regular], kind="stable")]
    slot_of = (t_us[regular] - start_us) // slot_us
    n_slots = -(-(end_us - start_us) // slot_us)
    bounds = np.searchsorted(slot_of, np.arange(n_slots + 1), side="left")

    if reference is not None:
        write_reference(reference, landing)
    stats = ReplayStats(simulated_seconds=(end_us - start_us) / _US)
    t0 = clock()
    next_late = 0

    def wait_until(sim_us: int) -> None:
        if realtime:
            remaining = t0 + (sim_us - start_us) / _US / speed - clock()
            if remaining > 0:
                sleep(remaining)

    def write_late_until(limit_us: int | None) -> list[Path]:
        nonlocal next_late
        paths = []
        while next_late < len(groups) and (
            limit_us is None or groups[next_late].arrival_us <= limit_us
        ):
            group = groups[next_late]
            paths.append(_write_late(events, landing, group))
            stats.rows += len(group.rows)
            stats.late_files += 1
            next_late += 1
        return paths

    for k in range(n_slots):
        slot_start = start_us + k * slot_us
        slot_end = min(slot_start + slot_us, end_us)
        # A collector delivers a slot's file once the slot is over.
        wait_until(slot_end)
        paths = []
        rows = regular[bounds[k] : bounds[k + 1]]
        if len(rows):
            path = hour_dir(landing, _ts(slot_start)) / f"part-{_ts(slot_start):%H%M}.parquet"
            _atomic_write_parquet(to_arrow(events.iloc[rows].reset_index(drop=True)), path)
            paths.append(path)
            stats.rows += len(rows)
        paths += write_late_until(slot_end)
        stats.slots += 1
        stats.files += len(paths)
        if on_slot is not None:
            on_slot(_ts(slot_start), _ts(slot_end), paths)
    overdue = write_late_until(None)
    if overdue:
        stats.files += len(overdue)
        if on_slot is not None:
            on_slot(end_ts, end_ts, overdue)
    stats.wall_seconds = clock() - t0
    return stats
