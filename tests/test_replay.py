"""Tests of the replay mode (simulator/replay.py, `funnelwatch replay`): real Parquet files in a
temp landing folder, a fake clock (time advances only when `sleep` is called) for the schedule."""

from __future__ import annotations

import os
import re
from pathlib import Path

import duckdb
import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import typer
from typer.testing import CliRunner

from funnelwatch.landing import hour_dir
from funnelwatch.replay_commands import register
from simulator import IncidentSpec, SimulationConfig, simulate
from simulator.replay import ReplayStats, replay, write_history

START, END = "2026-11-02", "2026-11-03"  # the simulated window, 24 h
LIVE_START = pd.Timestamp("2026-11-02 12:00", tz="UTC")  # history before, replay after
LIVE_END = pd.Timestamp(END, tz="UTC")
LATE = [
    # rows of 02:00, arriving 04:00: entirely history
    IncidentSpec("late_hour", "2026-11-02T02:00", 1, params={"arrives_after_hours": 2},
                 id="in-history"),
    # rows of 10:00 (a history hour), arriving 13:00: during the replay
    IncidentSpec("late_hour", "2026-11-02T10:00", 1, params={"arrives_after_hours": 3},
                 id="into-live"),
    # rows of 18:00, arriving 20:30
    IncidentSpec("late_hour", "2026-11-02T18:00", 1, params={"arrives_after_hours": 2.5},
                 id="in-live"),
    # rows of 23:00, arriving 05:00 the next day: after the replay ends
    IncidentSpec("late_hour", "2026-11-02T23:00", 1, params={"arrives_after_hours": 6},
                 id="overdue"),
]


class FakeClock:
    """A monotonic clock that moves only when `sleep` is called."""

    def __init__(self) -> None:
        self.now = 1000.0
        self.sleeps: list[float] = []

    def __call__(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        assert seconds > 0
        self.sleeps.append(seconds)
        self.now += seconds


def utc(text: str) -> pd.Timestamp:
    return pd.Timestamp(text, tz="UTC")


@pytest.fixture(scope="module")
def result():
    return simulate(SimulationConfig(start=START, end=END, sessions_per_hour=120, seed=7,
                                     incidents=LATE))


def landed(landing: Path) -> pd.DataFrame:
    """Every landed event with the file it is in."""
    with duckdb.connect() as con:
        return con.execute(
            "SELECT event_id, event_time, filename FROM read_parquet(?, filename = true)",
            [str(landing / "events" / "**" / "*.parquet")],
        ).df()


def late_by_id(result) -> dict[str, np.ndarray]:
    return {d.incident_id: d.rows for d in result.late}


def test_fixture_has_the_late_deliveries(result):
    late = late_by_id(result)
    assert set(late) == {"in-history", "into-live", "in-live", "overdue"}
    assert all(len(rows) > 0 for rows in late.values())
    assert result.events["event_id"].is_unique


def test_history_and_replay_land_every_event_exactly_once(result, tmp_path):
    landing = tmp_path / "landing"
    history = write_history(result.events, landing, LIVE_START, result.reference,
                            late=result.late)
    stats = replay(result.events, landing, start=LIVE_START, end=LIVE_END, speed=0,
                   late=result.late)
    frame = landed(landing)
    assert len(frame) == len(result.events) == history.rows + stats.rows
    assert frame["event_id"].is_unique
    assert set(frame["event_id"]) == set(result.events["event_id"])
    # every row sits in the folder of its own event hour
    hours = pd.to_datetime(frame["event_time"], utc=True).dt.floor("h")
    expected = [str(hour_dir(landing, h)) for h in hours]
    assert [str(Path(f).parent) for f in frame["filename"]] == expected
    # contract times: UTC microseconds; same values as the input
    some = next((landing / "events").rglob("part-*.parquet"))
    assert pq.read_schema(some).field("event_time").type == pa.timestamp("us", tz="UTC")
    merged = frame.merge(result.events[["event_id", "event_time"]], on="event_id")
    assert (pd.to_datetime(merged["event_time_x"], utc=True)
            == pd.to_datetime(merged["event_time_y"], utc=True)).all()
    # history: hourly simulator files before the live start (hours 02 and 10 land late, whole)
    # plus one late file
    assert history.late_files == 1 and len(history.reference) == 3
    regular = [p for p in history.files if p.name == "simulator.parquet"]
    assert len(regular) == 10
    assert stats == ReplayStats(slots=144, files=stats.files, rows=stats.rows, late_files=3,
                                wall_seconds=stats.wall_seconds, simulated_seconds=12 * 3600)


def test_part_file_names_and_folders(result, tmp_path):
    landing = tmp_path / "landing"
    replay(result.events, landing, start=LIVE_START, end=LIVE_END, speed=0, late=result.late)
    parts = sorted((landing / "events").rglob("part-*.parquet"))
    # every 5-minute slot of the 12 live hours has events, but hours 18 and 23 land late, whole
    assert len(parts) == 120
    assert not list((landing / "events").rglob("simulator.parquet"))
    late_rows = set(result.events["event_id"].iloc[np.concatenate(
        [d.rows for d in result.late])])
    for path in parts:
        m = re.fullmatch(r"part-(\d\d)(\d\d)\.parquet", path.name)
        assert m and int(m.group(2)) % 5 == 0
        day = path.parent.parent.name.removeprefix("date=")
        assert path.parent.name == f"hour={m.group(1)}"
        slot = utc(f"{day} {m.group(1)}:{m.group(2)}")
        table = pq.read_table(path)
        times = pd.to_datetime(table.column("event_time").to_pandas(), utc=True)
        assert ((times >= slot) & (times < slot + pd.Timedelta(minutes=5))).all()
        assert not late_rows & set(table.column("event_id").to_pylist())
    # nothing before the live start is replayed, except the late rows arriving during it
    assert not (landing / "events" / "date=2026-11-02" / "hour=11").exists()


def test_accelerated_schedule_with_a_fake_clock(result, tmp_path):
    clock = FakeClock()
    seen = []
    stats = replay(
        result.events, tmp_path / "landing", start=LIVE_START, end=LIVE_END, speed=60,
        late=result.late, clock=clock, sleep=clock.sleep,
        on_slot=lambda s, e, paths: seen.append((s, e, clock.now - 1000.0, paths)),
    )
    span = (LIVE_END - LIVE_START).total_seconds()
    assert sum(clock.sleeps) == pytest.approx(span / 60)  # 12 simulated hours in 12 minutes
    assert stats.wall_seconds == pytest.approx(span / 60)
    assert stats.simulated_seconds == span and stats.slots == 144
    # each slot is written when the wall clock reaches its accelerated end (a collector
    # delivers a slot once it is over)
    for slot_start, slot_end, wall, _ in seen[:-1]:
        assert wall == pytest.approx((slot_end - LIVE_START).total_seconds() / 60)
        assert slot_end - slot_start == pd.Timedelta(minutes=5)
    # the overdue late file comes last, at the end of the replay
    assert seen[-1][:2] == (LIVE_END, LIVE_END)
    assert seen[-1][2] == pytest.approx(span / 60)


def test_late_files_are_written_at_arrival_in_their_hour_folder(result, tmp_path):
    landing = tmp_path / "landing"
    history = write_history(result.events, landing, LIVE_START, late=result.late)
    (hist_late,) = [p for p in history.files if p.name.startswith("late-")]
    assert hist_late == hour_dir(landing, utc("2026-11-02 02:00")) / "late-20261102T0400.parquet"
    assert os.stat(hist_late).st_mtime == utc("2026-11-02 04:00").timestamp()

    late_slots = []

    def on_slot(start, end, paths):
        late_slots.extend((end, p) for p in paths if p.name.startswith("late-"))

    replay(result.events, landing, start=LIVE_START, end=LIVE_END, speed=0, late=result.late,
           on_slot=on_slot)
    assert late_slots == [
        (utc("2026-11-02 13:00"),
         hour_dir(landing, utc("2026-11-02 10:00")) / "late-20261102T1300.parquet"),
        (utc("2026-11-02 20:30"),
         hour_dir(landing, utc("2026-11-02 18:00")) / "late-20261102T2030.parquet"),
        (LIVE_END, hour_dir(landing, utc("2026-11-02 23:00")) / "late-20261103T0500.parquet"),
    ]
    late = late_by_id(result)
    for (_, path), incident in zip(late_slots, ["into-live", "in-live", "overdue"], strict=True):
        ids = pq.read_table(path).column("event_id").to_pylist()
        assert sorted(ids) == sorted(result.events["event_id"].iloc[late[incident]])
    # written in that order: their mtimes follow the arrival order
    mtimes = [p.stat().st_mtime_ns for _, p in late_slots]
    assert mtimes == sorted(mtimes)


def test_empty_slots_write_nothing_but_still_wait(result, tmp_path):
    times = pd.to_datetime(result.events["event_time"], utc=True)
    start = utc("2026-11-02 12:00")
    keep = ((times >= start) & (times < start + pd.Timedelta(minutes=5))) | (
        (times >= utc("2026-11-02 12:20")) & (times < utc("2026-11-02 12:25")))
    events = result.events.loc[keep].reset_index(drop=True)
    clock, seen = FakeClock(), []
    stats = replay(events, tmp_path / "landing", start=start, end=start + pd.Timedelta(hours=1),
                   speed=120, clock=clock, sleep=clock.sleep,
                   on_slot=lambda s, e, paths: seen.append((s, [p.name for p in paths])))
    assert stats.slots == 12 and stats.files == 2 and stats.rows == len(events)
    assert sum(clock.sleeps) == pytest.approx(30.0)  # 3600 s / 120
    assert [names for _, names in seen] == [
        ["part-1200.parquet"], [], [], [], ["part-1220.parquet"], *[[]] * 7]
    assert sorted(p.name for p in (tmp_path / "landing").rglob("*.parquet")) == [
        "part-1200.parquet", "part-1220.parquet"]


@pytest.mark.parametrize("speed", [0, float("inf")])
def test_no_waiting_at_speed_zero_or_inf(result, tmp_path, speed):
    clock = FakeClock()
    stats = replay(result.events, tmp_path / "landing", start="2026-11-02 12:00",
                   end="2026-11-02 13:00", speed=speed, clock=clock, sleep=clock.sleep,
                   reference=result.reference)
    assert clock.sleeps == [] and stats.slots == 12 and stats.late_files == 0
    assert sorted(p.name for p in (tmp_path / "landing" / "reference").iterdir()) == [
        "campaigns.csv", "deploys.csv", "holidays.csv"]


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"end": "2026-11-02 12:00"}, "must be after start"),
        ({"end": "2026-11-02 11:00"}, "must be after start"),
        ({"slot_minutes": 7}, "must divide 60"),
        ({"slot_minutes": 0}, "must divide 60"),
        ({"slot_minutes": 2.5}, "must divide 60"),
        ({"speed": -1}, "speed must be >= 0"),
        ({"start": "2026-11-02 12:03"}, "slot boundary"),
    ],
)
def test_invalid_arguments(result, tmp_path, kwargs, message):
    args = {"start": "2026-11-02 12:00", "end": "2026-11-02 13:00", **kwargs}
    with pytest.raises(ValueError, match=message):
        replay(result.events, tmp_path / "landing", **args)
    assert not (tmp_path / "landing").exists()


def test_late_rows_must_belong_to_the_frame(result, tmp_path):
    small = result.events.iloc[:10]
    with pytest.raises(ValueError, match="outside the events frame"):
        replay(small, tmp_path / "landing", start=START, end=END, speed=0, late=result.late)


def test_cli_replay(tmp_path):
    app = typer.Typer()
    register(app)

    @app.command()
    def other():  # a second command, so typer keeps `replay` as a subcommand
        pass

    landing = tmp_path / "landing"
    args = ["replay", "--days", "2", "--live-hours", "2", "--speed", "0", "--sessions-per-hour",
            "100", "--scenario", "none", "--end", "2026-11-04", "--landing", str(landing)]
    out = CliRunner().invoke(app, args)
    assert out.exit_code == 0, out.output
    hour_lines = [
        line for line in out.output.splitlines() if re.match(r"2026-11-03 2\d:00 UTC", line)]
    assert [line[:20] for line in hour_lines] == ["2026-11-03 22:00 UTC", "2026-11-03 23:00 UTC"]
    assert (tmp_path / "ground_truth.json").read_text().strip() == "[]"
    frame = landed(landing)
    assert frame["event_id"].is_unique
    assert len(list((landing / "events").rglob("simulator.parquet"))) == 46
    assert len(list((landing / "events").rglob("part-*.parquet"))) == 24
    simulated = re.search(r"simulated ([\d,]+) events", out.output)[1]
    assert len(frame) == int(simulated.replace(",", ""))
    # a second replay into the same folder would load hours twice: refused
    again = CliRunner().invoke(app, args)
    assert again.exit_code == 2 and "already holds event files" in again.output
