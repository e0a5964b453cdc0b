"""Fault injection: killed runs, bad landing files, analysts' long queries during a run.

Real processes, real files, real DuckDB; nothing is mocked. What each test shows is written
up in docs/reliability.md.
"""

from __future__ import annotations

import glob
import hashlib
import json
import os
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import dagster as dg
import numpy as np
import pandas as pd
import pyarrow.parquet as pq
import pytest

from funnelwatch.contract import to_arrow
from funnelwatch.ingest.loader import load_hour
from funnelwatch.landing import hour_dir, write_events
from funnelwatch.publish import open_snapshot
from funnelwatch.warehouse import connect
from tests.conftest import REPO_ROOT
from tests.test_pipeline import DAY, _simulate

HOUR = "2026-11-02T13:00:00+00:00"
NEXT_HOUR = "2026-11-02T14:00:00+00:00"
KEY = "fault-test-key"


# --------------------------------------------------------------------------------------------
# helpers
# --------------------------------------------------------------------------------------------


def _events(n: int, hour: str = HOUR, prefix: str = "e") -> pd.DataFrame:
    start = pd.Timestamp(hour)
    return pd.DataFrame(
        {
            "event_id": [f"{prefix}{i}" for i in range(n)],
            "event_time": [start + pd.Timedelta(seconds=3 * i) for i in range(n)],
            "event_type": ["page_view"] * n,
            "user_id": [f"user-{i % 7}" for i in range(n)],
            "session_id": [f"sess-{i % 11}" for i in range(n)],
            "device_type": ["mobile"] * n,
            "price": [2.5] * n,
        }
    )


def _count(con, sql: str, params=None) -> int:
    return con.execute(sql, params or []).fetchone()[0]


def _digest(folder: Path) -> dict[str, str]:
    """sha256 of every file under a folder: ingest must never modify or remove landing files."""
    return {
        str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(folder.rglob("*")) if p.is_file()
    }


def _hour_rows(con, hour: str = HOUR) -> tuple[int, int, int]:
    """(events, distinct event ids, quarantined rows) of one hour in the warehouse."""
    h = pd.Timestamp(hour).to_pydatetime()
    events, distinct = con.execute(
        "SELECT count(*), count(DISTINCT event_id) FROM raw.events WHERE event_hour = ?", [h]
    ).fetchone()
    quarantined = _count(con, "SELECT count(*) FROM raw.events_quarantine WHERE event_hour = ?", [h])
    return events, distinct, quarantined


def _assert_accounted(con, result, file_rows: int, hour: str = HOUR) -> None:
    """Nothing lost: every row of the files is loaded, quarantined or a counted duplicate, and
    the warehouse and raw.ingest_log agree with the result."""
    assert result.rows_in == file_rows
    assert result.rows_in == (
        result.rows_loaded + result.rows_quarantined + result.duplicates_dropped
    )
    events, distinct, quarantined = _hour_rows(con, hour)
    assert (events, distinct, quarantined) == (
        result.rows_loaded, result.rows_loaded, result.rows_quarantined
    )
    last_log = con.execute(
        "SELECT rows_in, rows_loaded, rows_quarantined, duplicates_dropped FROM raw.ingest_log "
        "WHERE event_hour = ? ORDER BY ingested_at DESC LIMIT 1",
        [pd.Timestamp(hour).to_pydatetime()],
    ).fetchone()
    assert last_log == (
        result.rows_in, result.rows_loaded, result.rows_quarantined, result.duplicates_dropped
    )


@pytest.fixture
def loaded(tmp_path):
    """A landing folder and warehouse whose 13:00 hour is already loaded from one good file:
    the state a bad re-delivery must not damage."""
    landing = tmp_path / "landing"
    write_events(_events(20), landing, "good")
    con = connect(tmp_path / "w.duckdb")
    load_hour(con, landing, HOUR, KEY)
    assert _hour_rows(con) == (20, 20, 0)
    yield landing, con
    con.close()


# --------------------------------------------------------------------------------------------
# bad input, through the real loader (load_hour: the body of the `raw_events` asset)
# --------------------------------------------------------------------------------------------


def _truncated_parquet(path: Path) -> int | None:
    pq.write_table(to_arrow(_events(500, prefix="t")), path)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])  # the writer died half-way: no footer
    return None


def _random_parquet(path: Path) -> int | None:
    path.write_bytes(np.random.default_rng(7).bytes(4096))
    return None


def _corrupt_pages_parquet(path: Path) -> int | None:
    """Valid header and footer, garbage in the data pages (bit rot, a bad disk)."""
    pq.write_table(to_arrow(_events(2000, prefix="c")), path, compression="zstd")
    data = bytearray(path.read_bytes())
    noise = np.random.default_rng(11).bytes(len(data) // 2)
    start = 64
    data[start: start + len(noise)] = noise
    path.write_bytes(bytes(data[: len(data)]))
    return None


def _truncated_csv(path: Path) -> int | None:
    header = "event_id,event_time,event_type,user_id,session_id,device_type"
    rows = [f"c{i},2026-11-02T13:{i:02d}:00Z,page_view,u{i},s{i},mobile" for i in range(5)]
    path.write_text("\n".join([header, *rows, "c5,2026-11-02T13:05:00Z,page_vi"]) + "\n")
    return 7  # the header is line 1


def _malformed_jsonl(path: Path) -> int | None:
    good = {"event_id": "j0", "event_time": "2026-11-02T13:00:00Z", "event_type": "page_view",
            "user_id": "u", "session_id": "s"}
    path.write_text(json.dumps(good) + "\n" + '{"event_id": "j1", "event_time": ' + "\n")
    return 2


def _truncated_jsonl(path: Path) -> int | None:
    lines = [json.dumps({"event_id": f"j{i}", "event_time": f"2026-11-02T13:{i:02d}:00Z",
                         "event_type": "page_view", "user_id": "u", "session_id": "s"})
             for i in range(4)]
    text = "\n".join(lines)
    path.write_text(text[: len(text) - 15])  # the last line is cut in the middle
    return 4


def _headerless_csv(path: Path) -> int | None:
    path.write_bytes(b"")
    return 1


@pytest.mark.parametrize(
    "name, make",
    [
        ("truncated.parquet", _truncated_parquet),
        ("random.parquet", _random_parquet),
        ("corrupt_pages.parquet", _corrupt_pages_parquet),
        ("truncated.csv", _truncated_csv),
        ("zero_bytes.csv", _headerless_csv),
        ("malformed.jsonl", _malformed_jsonl),
        ("truncated.jsonl", _truncated_jsonl),
    ],
)
def test_unreadable_file_is_set_aside_and_the_hour_loads(loaded, name, make):
    """A file that cannot be read is set aside, named with its line for text files, and left
    untouched in the landing folder; the hour loads from its good file, accounted."""
    landing, con = loaded
    bad = hour_dir(landing, HOUR) / name
    line = make(bad)
    before = _digest(landing)

    result = load_hour(con, landing, HOUR, KEY)

    (rejected,) = result.rejected_files
    message = str(rejected)
    assert str(bad) in message and rejected.path == bad
    if line is not None:
        assert rejected.line == line and f"line {line}" in message
    _assert_accounted(con, result, 20)
    assert _hour_rows(con) == (20, 20, 0)
    assert _count(con, "SELECT count(*) FROM raw.rejected_files WHERE file = ?", [str(bad)]) == 1
    assert _digest(landing) == before
    bad.unlink()
    result = load_hour(con, landing, HOUR, KEY)
    _assert_accounted(con, result, 20)
    assert _count(con, "SELECT count(*) FROM raw.rejected_files") == 0


def test_empty_hour_folder_loads_zero_rows(tmp_path):
    landing = tmp_path / "landing"
    hour_dir(landing, HOUR).mkdir(parents=True)
    con = connect(tmp_path / "w.duckdb")
    result = load_hour(con, landing, HOUR, KEY)
    assert (result.rows_in, result.files) == (0, [])
    _assert_accounted(con, result, 0)


@pytest.mark.parametrize("kind", ["parquet", "csv_header_only", "jsonl_zero_bytes"])
def test_file_with_zero_rows_loads_the_other_files(loaded, kind):
    landing, con = loaded
    folder = hour_dir(landing, HOUR)
    if kind == "parquet":
        pq.write_table(to_arrow(_events(0)), folder / "empty.parquet")
    elif kind == "csv_header_only":
        (folder / "empty.csv").write_text("event_id,event_time,event_type,user_id,session_id\n")
    else:
        (folder / "empty.jsonl").write_bytes(b"")
    before = _digest(landing)
    result = load_hour(con, landing, HOUR, KEY)
    assert len(result.files) == 2
    _assert_accounted(con, result, 20)
    assert _digest(landing) == before


def test_file_of_another_hour_is_quarantined_not_loaded_elsewhere(loaded):
    """A collector dropped 14:00's events in the 13:00 folder: they are quarantined with
    event_time_outside_hour (kept, with source file and row), and the 14:00 partition is not
    touched by the 13:00 run."""
    landing, con = loaded
    misplaced = hour_dir(landing, HOUR) / "misplaced.parquet"
    pq.write_table(to_arrow(_events(30, hour=NEXT_HOUR, prefix="n")), misplaced)
    result = load_hour(con, landing, HOUR, KEY)
    _assert_accounted(con, result, 50)
    assert result.quarantine_reasons == {"event_time_outside_hour": 30}
    rows = con.execute(
        "SELECT DISTINCT reason, source_file FROM raw.events_quarantine").fetchall()
    assert rows == [("event_time_outside_hour", str(misplaced))]
    assert _hour_rows(con, NEXT_HOUR) == (0, 0, 0)


@pytest.mark.parametrize("fmt", [
    "parquet",
    "csv",
    "jsonl",  # read_json dropped unknown keys silently before (fixed in loader._describe)
])
def test_extra_column_is_ignored_and_reported(loaded, fmt):
    landing, con = loaded
    folder = hour_dir(landing, HOUR)
    extra = _events(10, prefix="x")
    extra["experiment_bucket"] = "B"
    if fmt != "parquet":
        extra["event_time"] = extra["event_time"].dt.strftime("%Y-%m-%dT%H:%M:%SZ")
    path = folder / f"extra.{fmt}"
    if fmt == "parquet":
        extra.to_parquet(path)
    elif fmt == "csv":
        extra.to_csv(path, index=False)
    else:
        extra.to_json(path, orient="records", lines=True)
    result = load_hour(con, landing, HOUR, KEY)
    _assert_accounted(con, result, 30)
    assert result.rows_loaded == 30
    assert f"{path.name}:experiment_bucket" in result.ignored_columns


@pytest.mark.parametrize("column", ["session_id", "event_time", "event_type"])
def test_missing_required_column_quarantines_every_row_with_the_reason(loaded, column):
    landing, con = loaded
    frame = _events(12, prefix="m").drop(columns=[column])
    path = hour_dir(landing, HOUR) / "missing.parquet"
    frame.to_parquet(path)
    result = load_hour(con, landing, HOUR, KEY)
    _assert_accounted(con, result, 32)
    assert result.quarantine_reasons == {f"missing_{column}": 12}
    assert _count(con, "SELECT count(*) FROM raw.events_quarantine WHERE source_file = ?",
                  [str(path)]) == 12


def test_column_of_the_wrong_type_quarantines_the_rows_that_do_not_cast(loaded):
    """A producer sends price and event_time as text in Parquet: values that cast load, the
    others are quarantined with invalid_<column>."""
    landing, con = loaded
    frame = _events(6, prefix="w")
    frame["event_time"] = frame["event_time"].dt.strftime("%Y-%m-%dT%H:%M:%SZ")
    frame["price"] = ["1.5", "abc", "2", None, "-", "3e2"]
    frame.loc[5, "event_time"] = "13 o'clock"
    frame.to_parquet(hour_dir(landing, HOUR) / "text_types.parquet")
    result = load_hour(con, landing, HOUR, KEY)
    _assert_accounted(con, result, 26)
    assert result.quarantine_reasons["invalid_price"] == 2
    assert sum(result.quarantine_reasons.values()) == 3  # nothing lost either way
    assert _count(con, "SELECT sum(price) FROM raw.events WHERE event_id LIKE 'w%'") == 3.5


def test_unparsable_event_time_is_quarantined_as_invalid_not_missing(loaded):
    landing, con = loaded
    folder = hour_dir(landing, HOUR)
    row = {"event_id": "t1", "event_time": "13 o'clock", "event_type": "page_view",
           "user_id": "u", "session_id": "s"}
    (folder / "bad_time.jsonl").write_text(json.dumps(row) + "\n")
    result = load_hour(con, landing, HOUR, KEY)
    _assert_accounted(con, result, 21)
    assert result.quarantine_reasons == {"invalid_event_time": 1}


def test_half_written_temp_file_of_a_killed_writer_is_ignored(loaded):
    """landing.write_events writes `.<name>.tmp` and renames it: a writer killed before the
    rename leaves a temp file that ingest must not read (the producer re-sends it)."""
    landing, con = loaded
    folder = hour_dir(landing, HOUR)
    pq.write_table(to_arrow(_events(50, prefix="h")), folder / ".late.parquet.tmp")
    data = (folder / ".late.parquet.tmp").read_bytes()
    (folder / ".late.parquet.tmp").write_bytes(data[:100])
    result = load_hour(con, landing, HOUR, KEY)
    assert [Path(f).name for f in result.files] == ["good.parquet"]
    _assert_accounted(con, result, 20)


def test_missing_optional_column_loads_with_nulls(loaded):
    landing, con = loaded
    frame = _events(8, prefix="o").drop(columns=["device_type", "price"])
    frame.to_parquet(hour_dir(landing, HOUR) / "narrow.parquet")
    result = load_hour(con, landing, HOUR, KEY)
    _assert_accounted(con, result, 28)
    assert _count(con, "SELECT count(*) FROM raw.events WHERE device_type IS NULL") == 8


def test_events_from_the_future_are_quarantined(loaded):
    """Device clocks run ahead: events stamped tomorrow or in 2031 inside the 13:00 folder
    (a collector that buckets by arrival time) are quarantined, not loaded into this hour."""
    landing, con = loaded
    future = _events(6, prefix="f")
    future.loc[:2, "event_time"] = pd.Timestamp("2031-01-01T00:00:00Z")
    future.loc[3:, "event_time"] = pd.Timestamp(HOUR) + pd.Timedelta(days=1, minutes=5)
    pq.write_table(to_arrow(future), hour_dir(landing, HOUR) / "future.parquet")
    result = load_hour(con, landing, HOUR, KEY)
    _assert_accounted(con, result, 26)
    assert result.quarantine_reasons == {"event_time_outside_hour": 6}
    max_loaded = _count(con, "SELECT max(event_time) FROM raw.events")
    assert pd.Timestamp(max_loaded) < pd.Timestamp(NEXT_HOUR)


def test_events_days_late_in_their_own_hour_folder_load_into_that_partition(loaded):
    """Events of 13:00 delivered three days later, into the 13:00 folder (collector buckets by
    event time): re-running the 13:00 partition adds them to that hour, exactly once, and a
    second re-run changes nothing."""
    landing, con = loaded
    late = _events(15, prefix="late")
    late["event_time"] += pd.Timedelta(seconds=1)
    pq.write_table(to_arrow(late), hour_dir(landing, HOUR) / "late-delivery.parquet")
    for _ in range(2):
        result = load_hour(con, landing, HOUR, KEY)
        _assert_accounted(con, result, 35)
        assert result.rows_loaded == 35
    assert _count(con, "SELECT count(*) FROM raw.ingest_log WHERE event_hour = ?",
                  [pd.Timestamp(HOUR).to_pydatetime()]) == 3  # one line per load


def test_events_days_late_in_the_arrival_hour_folder_are_quarantined(tmp_path):
    """A collector that buckets by ARRIVAL time puts 3-day-old events in the current hour's
    folder: they are quarantined (event_time_outside_hour) with their source file and row,
    so nothing is lost and nothing lands in the wrong hour."""
    landing = tmp_path / "landing"
    arrival = "2026-11-05T13:00:00+00:00"
    now = _events(10, hour=arrival, prefix="a")
    old = _events(4, hour=HOUR, prefix="old")
    hour_dir(landing, arrival).mkdir(parents=True)
    pq.write_table(to_arrow(pd.concat([now, old])), hour_dir(landing, arrival) / "mixed.parquet")
    con = connect(tmp_path / "w.duckdb")
    result = load_hour(con, landing, arrival, KEY)
    _assert_accounted(con, result, 14, hour=arrival)
    assert result.quarantine_reasons == {"event_time_outside_hour": 4}
    rows = sorted(r[0] for r in con.execute(
        "SELECT source_row FROM raw.events_quarantine").fetchall())
    assert rows == [11, 12, 13, 14]


def test_duplicates_across_redelivered_files_are_counted_not_lost(loaded):
    landing, con = loaded
    again = _events(20)  # the same 20 events re-delivered by a retrying producer
    pq.write_table(to_arrow(again), hour_dir(landing, HOUR) / "retry.parquet")
    result = load_hour(con, landing, HOUR, KEY)
    _assert_accounted(con, result, 40)
    assert (result.rows_loaded, result.duplicates_dropped) == (20, 20)


# --------------------------------------------------------------------------------------------
# SIGKILL during a run, then a re-run
# --------------------------------------------------------------------------------------------

INGEST_SCRIPT = """
import sys
import dagster as dg
from orchestration.ingest.assets import ingest_events
from orchestration.resources import default_resources
result = dg.materialize([ingest_events], partition_key=sys.argv[1],
                        instance=dg.DagsterInstance.get(), resources=default_resources())
sys.exit(0 if result.success else 1)
"""


def _env(paths, home: Path) -> dict:
    home.mkdir(exist_ok=True)
    (home / "dagster.yaml").write_text((REPO_ROOT / "dagster_home" / "dagster.yaml").read_text())
    return {
        **os.environ,
        "DAGSTER_HOME": str(home),
        "FUNNELWATCH_LANDING": str(paths["landing"]),
        "FUNNELWATCH_WAREHOUSE": str(paths["warehouse"]),
        "FUNNELWATCH_PUBLISH_DIR": str(paths["publish"]),
        "FUNNELWATCH_PSEUDONYMIZATION_KEY": KEY,
    }


def _step_events(home: Path, step: str) -> set[str]:
    """Event types recorded so far for a step, read from the instance's SQLite event logs."""
    seen = set()
    for db in glob.glob(str(home / "history" / "runs" / "*.db")):
        if db.endswith("index.db"):
            continue
        try:
            con = sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=5)
            try:
                seen |= {r[0] for r in con.execute(
                    "SELECT DISTINCT dagster_event_type FROM event_logs WHERE step_key = ?",
                    [step]).fetchall()}
            finally:
                con.close()
        except sqlite3.Error:
            continue  # the run is creating its tables
    return seen


def _processes() -> dict[int, tuple[int, str]]:
    procs = {}
    for d in Path("/proc").iterdir():
        if not d.name.isdigit():
            continue
        try:
            ppid = int((d / "stat").read_text().rsplit(")", 1)[1].split()[1])
            cmdline = (d / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except (OSError, ValueError, IndexError):
            continue
        procs[int(d.name)] = (ppid, cmdline)
    return procs


def _descendants(pid: int) -> list[tuple[int, str]]:
    procs, found, frontier = _processes(), [], {pid}
    while frontier:
        frontier = {p for p, (ppid, _) in procs.items() if ppid in frontier}
        found += [(p, procs[p][1]) for p in frontier]
    return found


def _wait_for(condition, process: subprocess.Popen, timeout: float, what: str, log: Path):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            pytest.fail(f"the run ended (rc {process.returncode}) before {what}:\n"
                        + log.read_text()[-3000:])
        if condition():
            return
        time.sleep(0.05)
    os.killpg(process.pid, signal.SIGKILL)
    pytest.fail(f"timed out waiting for {what}:\n" + log.read_text()[-3000:])


def _kill_group(process: subprocess.Popen) -> None:
    os.killpg(process.pid, signal.SIGKILL)  # the run and every child (dbt) at once
    process.wait(timeout=30)
    assert process.returncode == -signal.SIGKILL


def _stale_slots(home: Path) -> list[tuple[str, str]]:
    """Warehouse pool slots claimed by runs whose process is gone: (run_id, step)."""
    instance = dg.DagsterInstance.from_config(str(home))
    try:
        info = instance.event_log_storage.get_concurrency_info("duckdb_warehouse")
        return [(s.run_id, s.step_key) for s in info.claimed_slots]
    finally:
        instance.dispose()


def _release_dead_runs(home: Path) -> list[str]:
    """What an operator (or a run monitor) does after a crash: mark the runs the dead process
    left as STARTED failed and free their pool slots. Returns the run ids released."""
    instance = dg.DagsterInstance.from_config(str(home))
    released = []
    try:
        for record in instance.get_run_records(
            filters=dg.RunsFilter(statuses=[dg.DagsterRunStatus.STARTED])
        ):
            run = record.dagster_run
            instance.report_run_failed(run, "the process running it was killed (SIGKILL)")
            instance.event_log_storage.free_concurrency_slots_for_run(run.run_id)
            released.append(run.run_id)
    finally:
        instance.dispose()
    return released


def _big_hour(landing: Path) -> tuple[int, int, int]:
    """1.5 M events in 13:00 (a few seconds to load), with quarantined rows and duplicates.
    Returns (rows in the files, valid distinct rows, quarantined rows)."""
    n = 1_500_000
    start = pd.Timestamp(HOUR)
    idx = np.arange(n)
    frame = pd.DataFrame(
        {
            "event_id": pd.Series(idx).astype(str).radd("e"),
            "event_time": start + pd.to_timedelta(idx % 3_600_000, unit="ms"),
            "event_type": np.where(idx % 1000 == 999, "wishlist_add", "page_view"),
            "user_id": pd.Series(idx % 50_000).astype(str).radd("u"),
            "session_id": pd.Series(idx % 80_000).astype(str).radd("s"),
            "device_type": "mobile",
            "price": 1.5,
        }
    )
    write_events(frame, landing, "big")
    # a retrying producer re-sent 5,000 events in a second file
    write_events(frame.iloc[:5000], landing, "retry")
    quarantined = int((idx % 1000 == 999).sum())
    quarantined_dupes = int((idx[:5000] % 1000 == 999).sum())
    rows_in = n + 5000
    return rows_in, n - quarantined, quarantined + quarantined_dupes


@pytest.mark.slow
def test_sigkill_during_load_then_rerun_loads_the_hour_exactly(paths, tmp_path):
    landing, warehouse = paths["landing"], paths["warehouse"]
    # The hour was loaded once from a first, small delivery; then the big re-delivery lands.
    write_events(_events(100, prefix="first"), landing, "big")
    con = connect(warehouse)
    load_hour(con, landing, HOUR, KEY)
    load_hour(con, landing, NEXT_HOUR, KEY)  # an empty neighbour hour, loaded and logged
    con.close()
    rows_in, valid, quarantined = _big_hour(landing)
    landing_before = _digest(landing)

    home = tmp_path / "dagster_home"
    env = _env(paths, home)
    log = tmp_path / "ingest.log"
    cmd = [sys.executable, "-c", INGEST_SCRIPT, "2026-11-02-13:00"]
    with open(log, "w") as out:
        process = subprocess.Popen(cmd, env=env, cwd=REPO_ROOT, stdout=out,
                                   stderr=subprocess.STDOUT, start_new_session=True)
        _wait_for(lambda: "STEP_START" in _step_events(home, "ingest_events"), process, 120,
                  "the ingest step to start", log)
        time.sleep(2.0)  # inside load_hour: staging, hashing or inserting 1.5 M rows
        assert "STEP_SUCCESS" not in _step_events(home, "ingest_events"), "kill came too late"
        _kill_group(process)

    # Killed mid-transaction: the hour is exactly the first delivery, nothing half-loaded.
    with connect(warehouse) as con:
        assert _hour_rows(con) == (100, 100, 0)
        assert _count(con, "SELECT count(*) FROM raw.ingest_log WHERE event_hour = ?",
                      [pd.Timestamp(HOUR).to_pydatetime()]) == 1
    assert _digest(landing) == landing_before

    # A bare dg.materialize process carries no funnelwatch/pid tag, so release its run by
    # hand; `funnelwatch run` releases its own dead runs (test_sigkill_during_dbt_build_...).
    _release_dead_runs(home)
    rerun = subprocess.run(cmd, check=False, env=env, cwd=REPO_ROOT, capture_output=True, text=True,
                           timeout=300)
    assert rerun.returncode == 0, rerun.stderr[-3000:]
    with connect(warehouse, read_only=True) as con:
        assert _hour_rows(con) == (valid, valid, quarantined)
        log_line = con.execute(
            "SELECT rows_in, rows_loaded, rows_quarantined, duplicates_dropped FROM "
            "raw.ingest_log WHERE event_hour = ? ORDER BY ingested_at DESC LIMIT 1",
            [pd.Timestamp(HOUR).to_pydatetime()]).fetchone()
        assert log_line == (rows_in, valid, quarantined, rows_in - valid - quarantined)
        assert sum(log_line[1:]) == rows_in
        # the other hour was not touched
        assert _count(con, "SELECT count(*) FROM raw.ingest_log WHERE event_hour = ?",
                      [pd.Timestamp(NEXT_HOUR).to_pydatetime()]) == 1


def _run_cmd(hour: int, verbose: bool = False) -> list[str]:
    # --verbose: dbt's line per model, which the kill test waits for, is held back otherwise
    return [sys.executable, "-m", "funnelwatch.cli", *(["--verbose"] if verbose else []), "run",
            "--start", f"{DAY}T{hour:02d}:00", "--end", f"{DAY}T{hour + 1:02d}:00",
            "--no-respond"]


def _rounded(rows: list[tuple]) -> list[tuple]:
    """Floats to 6 decimals: DuckDB sums revenue in parallel, in no fixed order, so the same
    rows can add up to 275.9 or 275.90000000000003 (CI saw both)."""
    return [tuple(round(v, 6) if isinstance(v, float) else v for v in row) for row in rows]


def _marts(warehouse: Path) -> dict:
    with connect(warehouse, read_only=True) as con:
        return {
            "raw": con.execute("SELECT count(*), count(DISTINCT event_id) FROM raw.events")
            .fetchall(),
            "funnel": _rounded(con.execute(
                "SELECT * FROM marts.fct_funnel_hourly ORDER BY ALL").fetchall()),
            "cohorts": _rounded(con.execute(
                "SELECT event_hour, metric, cohort, numerator, denominator "
                "FROM marts.fct_cohort_metrics_hourly ORDER BY ALL").fetchall()),
        }


def _published_sessions(publish: Path) -> tuple:
    con = open_snapshot(publish)
    try:
        return con.execute("SELECT count(*), sum(sessions) FROM fct_funnel_hourly").fetchone()
    finally:
        con.close()


LONG_QUERY = """
SELECT count(*), sum(f.sessions)
FROM fct_funnel_hourly AS f, range($n) AS r
WHERE (r.range + f.sessions) % 7 = 3
"""
SNAPSHOT_STATE = (
    "SELECT (SELECT published_at FROM snapshot_info), count(*), sum(sessions) "
    "FROM fct_funnel_hourly"
)


def _long_query_size(publish: Path, seconds: float = 2.0) -> int:
    """Rows of range() that make LONG_QUERY take about `seconds` on this machine."""
    con = open_snapshot(publish)
    con.execute("SET threads = 1")
    try:
        n, took = 250_000, 0.0
        while took < seconds and n < 10**10:
            n *= 2
            t0 = time.monotonic()
            con.execute(LONG_QUERY, {"n": n}).fetchone()
            took = time.monotonic() - t0
        return n
    finally:
        con.close()


def _query_while_running(publish: Path, writer: subprocess.Popen, n: int) -> list[dict]:
    """An analyst running LONG_QUERY back to back, each on a fresh connection, until the
    writer process ends."""
    queries = []
    while writer.poll() is None:
        con = open_snapshot(publish)
        con.execute("SET threads = 1")
        try:
            before = con.execute(SNAPSHOT_STATE).fetchone()
            t0 = time.monotonic()
            answer = con.execute(LONG_QUERY, {"n": n}).fetchone()
            took = time.monotonic() - t0
            after = con.execute(SNAPSHOT_STATE).fetchone()
        finally:
            con.close()
        newest = open_snapshot(publish)
        try:
            current = newest.execute("SELECT published_at FROM snapshot_info").fetchone()[0]
        finally:
            newest.close()
        queries.append({"before": before, "after": after, "answer": answer, "seconds": took,
                        "published_when_done": current})
    return queries


# dbt's line for an incremental model it built: only the hourly models are incremental.
HOURLY_MODEL_BUILT = " OK created sql incremental model "


@pytest.fixture(scope="module")
def killed_dbt_scenario(tmp_path_factory, dbt_manifest):
    """One hour through the real pipeline (`funnelwatch run`, one process): a clean run; the
    same hour again, SIGKILLed (with its `dbt build` child) after dbt committed some models;
    then a re-run of the hour while an analyst runs long queries on the published snapshot.
    Shared by the two tests below (three pipeline runs are the expensive part)."""
    root = tmp_path_factory.mktemp("killed_dbt")
    paths = {"landing": root / "landing", "warehouse": root / "warehouse" / "funnelwatch.duckdb",
             "publish": root / "warehouse" / "published"}
    _simulate(paths["landing"])
    home = root / "dagster_home"
    env = {**_env(paths, home), "PYTHONUNBUFFERED": "1"}
    out: dict = {"paths": paths}

    clean = subprocess.run(_run_cmd(13), check=False, env=env, cwd=REPO_ROOT, capture_output=True, text=True,
                           timeout=400)
    assert clean.returncode == 0, clean.stderr[-3000:]
    out["reference"] = _marts(paths["warehouse"])
    out["published"] = _published_sessions(paths["publish"])

    log = root / "killed.log"
    with open(log, "w") as sink:
        process = subprocess.Popen(_run_cmd(13, verbose=True), env=env, cwd=REPO_ROOT,
                                   stdout=sink, stderr=subprocess.STDOUT, start_new_session=True)
        _wait_for(lambda: any("dbt" in c and " build " in c
                              for _, c in _descendants(process.pid)),
                  process, 300, "a `dbt build` child process", log)
        # wait until the hourly `dbt build` (the second: the views and dimensions built whole
        # come first) has committed some of the hour's models and not others, then kill the
        # whole group
        _wait_for(lambda: log.read_text().count(HOURLY_MODEL_BUILT) >= 2, process, 300,
                  "dbt to build its first hourly models", log)
        out["killed_log"] = log.read_text()
        _kill_group(process)
    out["children_left"] = [c for _, c in _descendants(process.pid)]
    out["published_after_kill"] = _published_sessions(paths["publish"])
    out["stale_after_kill"] = _stale_slots(home)  # the dead run still holds the pool slot

    n = _long_query_size(paths["publish"])
    rerun_log = root / "rerun.log"
    with open(rerun_log, "w") as sink:
        writer = subprocess.Popen(_run_cmd(13), env=env, cwd=REPO_ROOT, stdout=sink,
                                  stderr=subprocess.STDOUT, start_new_session=True)
        try:
            out["queries"] = _query_while_running(paths["publish"], writer, n)
        finally:
            writer.wait(timeout=600)
    out["rerun_rc"], out["rerun_log"] = writer.returncode, rerun_log.read_text()
    out["after_rerun"] = _marts(paths["warehouse"])
    out["published_after_rerun"] = _published_sessions(paths["publish"])
    return out


@pytest.mark.slow
def test_sigkill_during_dbt_build_then_rerun_gives_the_clean_marts(killed_dbt_scenario):
    s = killed_dbt_scenario
    assert s["reference"]["funnel"] and s["published"][1] > 0
    # the build of the models built whole may have finished; the hourly one had not
    assert s["killed_log"].count("Completed successfully") <= 1, "the kill came after dbt finished"
    assert s["killed_log"].count(HOURLY_MODEL_BUILT) >= 2  # killed in the middle of the build
    assert s["children_left"] == []  # no orphaned dbt process holding the warehouse
    # the killed run never published: analysts still get the clean run's snapshot
    assert s["published_after_kill"] == s["published"]
    assert len(s["stale_after_kill"]) == 1
    # ... and the next `funnelwatch run` releases it instead of waiting for it forever
    assert s["rerun_log"].count("released run ") == 1, s["rerun_log"][-3000:]
    assert s["rerun_rc"] == 0, s["rerun_log"][-3000:]
    # the re-run gives exactly the clean run's raw rows and marts
    assert s["after_rerun"] == s["reference"]
    assert s["reference"]["raw"][0][0] == s["reference"]["raw"][0][1]  # no duplicate event ids
    assert s["published_after_rerun"] == s["published"]


@pytest.mark.slow
def test_analyst_long_query_during_a_partition_run(killed_dbt_scenario):
    """Queries of seconds on the published snapshot while a partition run builds and
    publishes: neither blocks the other, every query answers from one consistent snapshot,
    and a new snapshot is swapped in while a query is running."""
    s = killed_dbt_scenario
    assert s["rerun_rc"] == 0, s["rerun_log"][-3000:]  # the writer was not blocked
    queries = s["queries"]
    assert len(queries) >= 3, queries
    for q in queries:
        assert q["after"] == q["before"]  # one connection = one snapshot, swaps or not
        assert q["answer"][0] > 0 and q["seconds"] > 0.5
    # the pipeline published while an analyst's query was running on the older snapshot
    assert any(q["before"][0] != q["published_when_done"] for q in queries), queries
    assert s["published_after_rerun"] == s["published"]


def test_one_bad_file_does_not_blind_a_two_hour_run(paths, tmp_path, dbt_manifest):
    """`funnelwatch run` over two hours, the first holding a CSV named .parquet beside a good
    file: the run goes on, both hours' good files load, the CLI prints one line naming the
    file, a data-quality incident of the first hour names it, and landing a fixed file
    re-processes the hour exactly."""
    landing = paths["landing"]

    def events(n, prefix, hour=HOUR):
        frame = _events(n, hour=hour, prefix=prefix)
        # full cohort fields: only the bad file may fail a check
        return frame.assign(device_type="mobile", os="iOS", browser="Safari", country="US")

    write_events(events(40, "a"), landing, "good")
    write_events(events(30, "b", NEXT_HOUR), landing, "good")
    bad = hour_dir(landing, HOUR) / "collector.parquet"
    bad.write_text("event_id,event_time\nx,2026-11-02T13:00:00Z\n")
    env = _env(paths, tmp_path / "dagster_home")
    cmd = [sys.executable, "-m", "funnelwatch.cli", "run", "--start", "2026-11-02T13:00",
           "--end", "2026-11-02T15:00", "--no-respond"]

    run = subprocess.run(cmd, check=False, env=env, cwd=REPO_ROOT, capture_output=True, text=True,
                         timeout=600)

    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    problems = [line for line in run.stderr.splitlines() if "set aside" in line]
    assert len(problems) == 1 and str(bad) in problems[0], run.stderr[-3000:]
    assert "Traceback" not in run.stderr
    with connect(paths["warehouse"]) as con:
        assert _hour_rows(con, HOUR) == (40, 40, 0)
        assert _hour_rows(con, NEXT_HOUR) == (30, 30, 0)
        incidents = con.execute(
            "SELECT first_hour, summary, status FROM quality.incidents").fetchall()
    assert len(incidents) == 1
    (hour, summary, status) = incidents[0]
    assert hour == pd.Timestamp(HOUR) and status == "open"
    assert "events_unreadable_files" in summary and str(bad) in summary

    bad.unlink()  # the collector re-delivers the file, readable this time
    write_events(events(5, "fixed"), landing, "collector")
    again = subprocess.run(cmd[:6] + ["--end", "2026-11-02T14:00", "--no-respond"],
                           check=False, env=env, cwd=REPO_ROOT, capture_output=True, text=True,
                           timeout=600)
    assert again.returncode == 0, again.stdout[-3000:] + again.stderr[-3000:]
    assert "set aside" not in again.stderr
    with connect(paths["warehouse"]) as con:
        assert _hour_rows(con, HOUR) == (45, 45, 0)
        assert con.execute("SELECT status FROM quality.incidents").fetchall() == [("resolved",)]
