"""A backfill of N hourly partitions in the cluster mode on 1 vs 2 Celery workers, side by side:
wall time, events/s and the speed-up (docs/scale-out.md).

    uv run python bench/scale.py --days 3 --sessions-per-hour 300

Each side gets a scratch Postgres database (instance + lake catalog) and a RabbitMQ vhost of its
own, created and dropped here, on the machine's services (127.0.0.1:5432, :5672). Runs
alternate (1, 2, 1, 2 ...) so the machine's other load falls on both sides alike; compare the
ratio, not the absolute times (2 shared cores here).
"""

from __future__ import annotations

import argparse
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pandas as pd

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from tests.cluster_services import scratch_database, scratch_vhost

BIN = Path(sys.executable).parent
DAY = "2026-11-02"


def simulate(landing: Path, days: int, sessions_per_hour: int) -> int:
    from simulator import SimulationConfig, write_simulation
    from simulator import simulate as run_simulation

    start = pd.Timestamp(DAY, tz="UTC")
    result = run_simulation(SimulationConfig(
        start=start, end=start + pd.Timedelta(days=days), sessions_per_hour=sessions_per_hour,
        seed=11, incidents=[]))
    write_simulation(result, landing, landing.parent / "ground_truth.json")
    return len(result.events)


def backfill(base: Path, landing: Path, workers: int, first: str, last: str) -> float:
    """Seconds of one `funnelwatch cluster run` over [first, last] with `workers` workers."""
    with scratch_database("fw_bench") as database, scratch_vhost() as broker:
        home = base / "dagster_home"
        home.mkdir(parents=True)
        shutil.copy(REPO / "deploy" / "cluster" / "dagster.yaml", home / "dagster.yaml")
        (base / "lake").mkdir()
        params = dict(p.split("=", 1) for p in database.split())
        env = {**os.environ, "DAGSTER_HOME": str(home), "FUNNELWATCH_LANDING": str(landing),
               "FUNNELWATCH_WAREHOUSE": str(base / "local" / "funnelwatch.duckdb"),
               "FUNNELWATCH_PUBLISH_DIR": str(base / "published"),
               "FUNNELWATCH_DAGSTER_POSTGRES_URL":
                   f"postgresql+psycopg2://postgres@127.0.0.1:5432/{params['dbname']}",
               "FUNNELWATCH_CELERY_BROKER": broker, "FUNNELWATCH_LAKE_CATALOG": database,
               "FUNNELWATCH_LAKE_DATA_PATH": str(base / "lake"),
               "FUNNELWATCH_LAKE_METADATA_SCHEMA": "funnelwatch_lake",
               "FUNNELWATCH_LAKE_EXTENSIONS": str(base / "extensions")}
        procs = [subprocess.Popen(
            [str(BIN / "celery"), "-A", "orchestration.cluster.worker", "worker", "-Q",
             "dagster", "--pool", "prefork", "--concurrency", "1", "-n", f"w{i}@%h", "--loglevel", "WARNING"],
            cwd=REPO, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
            start_new_session=True) for i in range(workers)]
        try:
            started = time.perf_counter()
            subprocess.run([str(BIN / "funnelwatch"), "cluster", "run", "--start", first,
                            "--end", last], cwd=REPO, env=env, check=True)
            return time.perf_counter() - started
        finally:
            for proc in procs:
                os.killpg(proc.pid, signal.SIGTERM)
                proc.wait(timeout=120)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--days", type=int, default=3)
    parser.add_argument("--sessions-per-hour", type=int, default=300)
    parser.add_argument("--repeats", type=int, default=1)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="fw-scale-") as tmp:
        landing = Path(tmp) / "landing"
        events = simulate(landing, args.days, args.sessions_per_hour)
        first = f"{DAY}-00:00"
        last = (pd.Timestamp(DAY) + pd.Timedelta(days=args.days, hours=-1)).strftime(
            "%Y-%m-%d-%H:00")
        seconds: dict[int, list[float]] = {1: [], 2: []}
        for repeat in range(args.repeats):
            for workers in (1, 2):
                base = Path(tmp) / f"run-{repeat}-{workers}"
                seconds[workers].append(backfill(base, landing, workers, first, last))
    partitions = args.days * 24
    print(f"\nbackfill of {partitions} hourly partitions, {events:,} events "
          f"({args.sessions_per_hour} sessions/h), cluster mode, best of {args.repeats}")
    print(f"{'workers':>8} {'wall s':>8} {'events/s':>10} {'speed-up':>9}")
    base_time = min(seconds[1])
    for workers, times in seconds.items():
        best = min(times)
        print(f"{workers:>8} {best:>8.1f} {events / best:>10,.0f} {base_time / best:>8.2f}x")


if __name__ == "__main__":
    main()
