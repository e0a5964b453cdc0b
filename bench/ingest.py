"""Ingest benchmark: our ingest of one simulated hour of ~1M events vs a bare DuckDB load.

Prints events/s of both, measured alternately (so a busy machine slows both alike) and their
ratio (aim: at least 0.8x the speed of a bare `INSERT ... FROM read_parquet`) and the seconds
of each ingest step (`HourIngestResult.seconds_by_step`), then the
time of one hourly partition end to end (ingest + dbt build + publish) at that volume
(aim: under 60 s on 2 cores).

    make bench                      # or: uv run python bench/ingest.py --events 1000000
"""

from __future__ import annotations

import argparse
import json
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
from funnelwatch.ingest.loader import load_hour
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


def bare_load(path: Path, db: Path, kind: str) -> float:
    """`insert`: INSERT INTO an existing table of the file's schema (the baseline the aim is
    about: ingest also inserts into an existing table); `ctas`: CREATE TABLE AS, for reference."""
    db.unlink(missing_ok=True)
    con = duckdb.connect(str(db))
    if kind == "insert":
        con.execute("CREATE TABLE events AS SELECT * FROM read_parquet(?) LIMIT 0", [str(path)])
        sql = "INSERT INTO events SELECT * FROM read_parquet(?)"
    else:
        sql = "CREATE TABLE events AS SELECT * FROM read_parquet(?)"
    start = time.perf_counter()
    con.execute(sql, [str(path)])
    elapsed = time.perf_counter() - start
    con.close()
    return elapsed


def our_load(landing: Path, db: Path, steps: list[dict]) -> float:
    db.unlink(missing_ok=True)
    con = connect(db)
    start = time.perf_counter()
    result = load_hour(con, landing, HOUR, "bench-key")
    elapsed = time.perf_counter() - start
    con.close()
    steps.append(result.seconds_by_step)
    return elapsed


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

        bare, ctas, ours, steps = [], [], [], []
        for _ in range(args.repeats):  # alternate, so machine noise hits all alike
            bare.append(bare_load(path, work / "bare.duckdb", "insert"))
            ctas.append(bare_load(path, work / "ctas.duckdb", "ctas"))
            ours.append(our_load(landing, work / "ours.duckdb", steps))
        bare_s, ctas_s = statistics.median(bare), statistics.median(ctas)
        ours_s = statistics.median(ours)
        ratio = ours_s / bare_s
        print(f"bare INSERT ... read_parquet   : {n / bare_s:12,.0f} events/s  (median {bare_s:.2f} s)")
        print(f"bare CREATE TABLE AS (reference): {n / ctas_s:11,.0f} events/s  (median {ctas_s:.2f} s)")
        print(f"funnelwatch ingest (validate,  : {n / ours_s:12,.0f} events/s  (median {ours_s:.2f} s)")
        print("  quarantine, dedupe, pseudonymise, replace the hour, log)")
        print("  where the time goes (median s per step): " + ", ".join(
            f"{step} {statistics.median(s.get(step, 0.0) for s in steps):.2f}"
            for step in steps[0]))
        print(f"ratio ours/bare insert: {ratio:.2f}x time, {1 / ratio:.2f}x its speed "
              f"(aim >= 0.8x its speed); ours/CTAS: {ours_s / ctas_s:.2f}x")
        print(f"  runs: insert={[round(b, 2) for b in bare]} ctas={[round(c, 2) for c in ctas]} "
              f"ours={[round(o, 2) for o in ours]}")
        summary = {"events": n, "bare_insert_s": bare_s, "bare_ctas_s": ctas_s, "ours_s": ours_s,
                   "ratio": ratio}
        if not args.skip_e2e:
            times = end_to_end(landing, work / "e2e.duckdb", work)
            print("one hourly partition end to end: " + ", ".join(
                f"{k} {v:.1f} s" for k, v in times.items()) + "  (aim total < 60 s)")
            summary["end_to_end"] = times
        print(json.dumps(summary))


if __name__ == "__main__":
    main()
