"""Ingest benchmark: our ingest of one simulated hour of ~1M events vs a bare DuckDB load.

Prints events/s of each, measured alternately (so a busy machine slows all alike), and the
ratio of ours to a bare `INSERT ... FROM read_parquet` (issue 16's aim: at least 0.8x its
speed), in wall time and in CPU time (the CPU ratio is steadier on a shared machine), and the
seconds of each ingest step (`HourIngestResult.seconds_by_step`).

A third load is the floor of any ingest that pseudonymises: the same bare INSERT with
user_id and session_id replaced by their HMAC-SHA256 (each distinct id hashed once, joined
back), with no validation, quarantine or accounting. The simulated hour is one Parquet row
group, which DuckDB reads on one thread, so all these loads run on one core. Writing the
64-character hashes compresses slower than the raw ids and the distinct ids are hashed first,
so the floor alone is about 0.65x the bare insert's speed: on one core an ingest that
pseudonymises ids cannot reach 0.8x of it (docs/importers.md, "How ingest loads an hour", says
what a second core could change). Measured on the 2 shared cores of the dev box (500k events, load
6-9, `--skip-e2e --repeats 3`, two runs each):

| | speed vs the bare insert (wall) | (CPU) |
|---|---|---|
| floor: bare insert, ids hashed | 0.62-0.72x | 0.63-0.67x |
| ingest at b659b21 (rows staged in a temporary table) | 0.41-0.45x | 0.39-0.40x |
| ingest now (narrow passes, one write) | 0.55-0.58x | 0.52-0.54x |

Then the time of one hourly partition end to end (ingest + dbt build + publish) at that volume
(aim: under 60 s on 2 cores).

    make bench                      # or: uv run python bench/ingest.py --events 1000000
"""

from __future__ import annotations

import argparse
import json
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import duckdb
import pandas as pd

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from funnelwatch.dbt_vars import dbt_vars_json, load_cohort_config
from funnelwatch.ingest.loader import PSEUDONYMISED_COLUMNS, load_hour
from funnelwatch.ingest.pseudonymize import hmac_sql, padded_keys
from funnelwatch.landing import event_files, write_events
from funnelwatch.publish import publish_marts
from funnelwatch.warehouse import connect

HOUR = pd.Timestamp("2026-11-02T13:00:00Z")


def simulate_hour(landing: Path, events: int, seed: int) -> int:
    from simulator import SimulationConfig, simulate

    config = SimulationConfig.single_hour(HOUR, events_target=events, seed=seed)
    result = simulate(config)
    frame = result.events
    frame = frame[pd.to_datetime(frame["event_time"], utc=True).dt.floor("h") == HOUR]
    write_events(frame, landing, "sim")
    return len(frame)


class Clock:
    """Wall and CPU seconds (all threads of this process) of the block."""

    def __enter__(self):
        self._wall, self._cpu = time.perf_counter(), _cpu_seconds()
        return self

    def __exit__(self, *exc):
        self.wall = time.perf_counter() - self._wall
        self.cpu = _cpu_seconds() - self._cpu


def _cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def bare_load(path: Path, db: Path, kind: str) -> Clock:
    """`insert`: INSERT INTO an existing table of the file's schema (the baseline the aim is
    about: ingest also inserts into an existing table); `ctas`: CREATE TABLE AS, for reference;
    `hashed`: the insert with the ids replaced by their keyed hash and nothing else (the floor
    of a pseudonymising ingest; the hashing is inside the timed block)."""
    db.unlink(missing_ok=True)
    con = duckdb.connect(str(db))
    params: dict = {"path": str(path)}
    setup: list[str] = []
    if kind == "insert":
        con.execute("CREATE TABLE events AS SELECT * FROM read_parquet($path) LIMIT 0", params)
        sql = "INSERT INTO events SELECT * FROM read_parquet($path)"
    elif kind == "hashed":
        con.execute("CREATE TABLE events AS SELECT * FROM read_parquet($path) LIMIT 0", params)
        ipad, opad = padded_keys("bench-key")
        params.update(ipad=ipad, opad=opad)
        distinct = " UNION ALL ".join(
            f"SELECT DISTINCT '{c}' AS c, {c} AS v FROM read_parquet($path)"
            for c in PSEUDONYMISED_COLUMNS)
        setup.append(f"CREATE TEMP TABLE ids AS SELECT c, v, {hmac_sql('v')} AS h "
                     f"FROM ({distinct})")
        joins = " ".join(f"LEFT JOIN ids AS _{c} ON _{c}.c = '{c}' AND _{c}.v = r.{c}"
                         for c in PSEUDONYMISED_COLUMNS)
        hashed = ", ".join(f"_{c}.h AS {c}" for c in PSEUDONYMISED_COLUMNS)
        sql = f"INSERT INTO events SELECT r.* REPLACE ({hashed}) FROM read_parquet($path) r {joins}"
    else:
        sql = "CREATE TABLE events AS SELECT * FROM read_parquet($path)"
    with Clock() as clock:
        for statement in setup:
            con.execute(statement, params)
        con.execute(sql, {k: v for k, v in params.items() if f"${k}" in sql})
    con.close()
    return clock


def our_load(landing: Path, db: Path, steps: list[dict]) -> Clock:
    db.unlink(missing_ok=True)
    con = connect(db)
    with Clock() as clock:
        result = load_hour(con, landing, HOUR, "bench-key")
    con.close()
    steps.append(result.seconds_by_step)
    return clock


def end_to_end(landing: Path, db: Path, work: Path) -> dict[str, float]:
    db.unlink(missing_ok=True)
    times = {}
    start = time.perf_counter()
    with connect(db) as con:
        load_hour(con, landing, HOUR, "bench-key")
    times["ingest"] = time.perf_counter() - start
    env = {**__import__("os").environ, "FUNNELWATCH_WAREHOUSE": str(db)}
    dbt_vars = dbt_vars_json(HOUR, HOUR + pd.Timedelta(hours=1), load_cohort_config())
    start = time.perf_counter()
    subprocess.run(
        [str(Path(sys.executable).parent / "dbt"), "build", "--quiet", "--vars", dbt_vars,
         "--project-dir", str(REPO / "dbt_project"), "--profiles-dir", str(REPO / "dbt_project"),
         "--target-path", str(work / "dbt_target")],
        check=True, env=env, cwd=REPO / "dbt_project",
    )
    times["dbt_build"] = time.perf_counter() - start
    start = time.perf_counter()
    publish_marts(db, work / "published", dates=[HOUR.date()])
    times["publish"] = time.perf_counter() - start
    times["total"] = sum(times.values())
    return times


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--events", type=int, default=1_000_000)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--skip-e2e", action="store_true")
    args = parser.parse_args()

    with tempfile.TemporaryDirectory(prefix="funnelwatch-bench-") as tmp:
        work = Path(tmp)
        landing = work / "landing"
        start = time.perf_counter()
        n = simulate_hour(landing, args.events, args.seed)
        print(f"simulated one hour: {n:,} events in {time.perf_counter() - start:.1f} s")
        (path,) = event_files(landing, HOUR)

        loads: dict[str, list[Clock]] = {"insert": [], "hashed": [], "ctas": [], "ours": []}
        steps: list[dict] = []
        for _ in range(args.repeats):  # alternate, so machine noise hits all alike
            for kind in ("insert", "hashed", "ctas"):
                loads[kind].append(bare_load(path, work / f"{kind}.duckdb", kind))
            loads["ours"].append(our_load(landing, work / "ours.duckdb", steps))
        wall = {k: statistics.median(c.wall for c in v) for k, v in loads.items()}
        cpu = {k: statistics.median(c.cpu for c in v) for k, v in loads.items()}
        labels = {
            "insert": "bare INSERT ... read_parquet",
            "hashed": "bare INSERT, ids hashed (floor)",
            "ctas": "bare CREATE TABLE AS (reference)",
            "ours": "funnelwatch ingest",
        }
        for kind, label in labels.items():
            print(f"{label:33}: {n / wall[kind]:10,.0f} events/s  (median {wall[kind]:.2f} s, "
                  f"CPU {cpu[kind]:.2f} s)")
        print("  (ours: validate, quarantine, dedupe, pseudonymise, replace the hour, log)")
        print("  where the time goes (median s per step): " + ", ".join(
            f"{step} {statistics.median(s.get(step, 0.0) for s in steps):.2f}"
            for step in steps[0]))
        ratio = wall["ours"] / wall["insert"]
        print(f"ratio ours/bare insert: {ratio:.2f}x time, {1 / ratio:.2f}x its speed "
              f"(aim >= 0.8x its speed); in CPU time {cpu['insert'] / cpu['ours']:.2f}x")
        print(f"floor (bare insert, ids hashed) vs bare insert: "
              f"{wall['insert'] / wall['hashed']:.2f}x its speed, in CPU time "
              f"{cpu['insert'] / cpu['hashed']:.2f}x; ours vs the floor: "
              f"{wall['hashed'] / wall['ours']:.2f}x its speed")
        print("  runs (wall s): " + " ".join(
            f"{k}={[round(c.wall, 2) for c in v]}" for k, v in loads.items()))
        summary = {"events": n, "bare_insert_s": wall["insert"], "bare_ctas_s": wall["ctas"],
                   "bare_hashed_s": wall["hashed"], "ours_s": wall["ours"], "ratio": ratio,
                   "cpu_s": cpu}
        if not args.skip_e2e:
            times = end_to_end(landing, work / "e2e.duckdb", work)
            print("one hourly partition end to end: " + ", ".join(
                f"{k} {v:.1f} s" for k, v in times.items()) + "  (aim total < 60 s)")
            summary["end_to_end"] = times
        print(json.dumps(summary))


if __name__ == "__main__":
    main()
