"""The checkout fast lane "as in production": replayed landing files, the Dagster daemon's
`fast_lane_sensor`, one `checkout_fast_lane_job` run per 5-minute slot.

    python bench/fast_lane_live.py run     --root /work/live_run   # everything (~20 min)
    python bench/fast_lane_live.py analyse --root /work/live_run   # only read the results

`run`: simulate DAYS days ending at END (default tomorrow 00:00 UTC) with one checkout outage
(scenario.yaml in ROOT, start OUTAGE on the window's last day), write the history before
LIVE_START at once, load it through the real pipeline (`funnelwatch run --end LIVE_START`),
start `dagster-daemon run` (sensors only, no webserver), replay [LIVE_START, LIVE_START +
LIVE_HOURS) at SPEED (one part file per 5 minutes), wait for the fast-lane runs to finish,
stop the daemon and analyse.

`analyse`: per fast-lane run (Dagster instance in ROOT/dagster_home): partition, part file
mtime, queued/started/ended times; mtime -> success latency (median, p90, max); queue and
start overheads; incidents, fast-lane flags and alert outbox from the warehouse.

Everything (landing, warehouse, dagster_home, logs) lives under ROOT; the live window is
placed in the past (before the wall clock) so the 5-minute partitions exist when the sensor
asks for them (a TimeWindowPartitionsDefinition ends at the current time).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from datetime import UTC, datetime
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
VENV_BIN = REPO / ".venv" / "bin"
JOB = "checkout_fast_lane_job"


def _env(root: Path) -> dict[str, str]:
    env = {
        "FUNNELWATCH_LANDING": str(root / "landing"),
        "FUNNELWATCH_WAREHOUSE": str(root / "warehouse" / "funnelwatch.duckdb"),
        "FUNNELWATCH_PUBLISH_DIR": str(root / "warehouse" / "published"),
        "FUNNELWATCH_FEEDBACK_DIR": str(root / "feedback"),
        "DAGSTER_HOME": str(root / "dagster_home"),
    }
    os.environ.update(env)
    return env


def _log(msg: str) -> None:
    print(f"[{datetime.now(UTC):%H:%M:%S}] {msg}", flush=True)


def _scenario(root: Path, outage: str, hours: float) -> Path:
    path = root / "scenario.yaml"
    path.write_text(
        "name: fast-lane-live\n"
        "description: One full checkout outage (everyone stops after checkout_start).\n"
        "incidents:\n"
        "  - id: checkout-outage\n"
        "    type: checkout_conversion_drop\n"
        f'    start: "{outage}"\n'
        f"    duration_hours: {hours:g}\n"
        "    magnitude: -1.0\n"
        "    params: {drop_after: checkout_start}\n"
    )
    return path


def cmd_run(args) -> None:
    root = Path(args.root).resolve()
    if (root / "landing" / "events").exists():
        sys.exit(f"{root}/landing/events exists: use a fresh --root (or delete it)")
    env = _env(root)
    for sub in ("landing", "warehouse", "feedback", "dagster_home", "logs"):
        (root / sub).mkdir(parents=True, exist_ok=True)
    shutil.copy(REPO / "dagster_home" / "dagster.yaml", root / "dagster_home" / "dagster.yaml")

    import pandas as pd

    from simulator import SimulationConfig, load_incidents, simulate
    from simulator.replay import replay, write_history

    end = pd.Timestamp(args.end, tz="UTC") if args.end else (
        pd.Timestamp.now(tz="UTC").floor("D") + pd.Timedelta(days=1))
    day = end - pd.Timedelta(days=1)
    outage_hhmm = args.outage
    outage_start = day + pd.Timedelta(hours=int(outage_hhmm[:2]), minutes=int(outage_hhmm[3:]))
    live_start = outage_start - pd.Timedelta(hours=args.lead_hours)
    live_end = live_start + pd.Timedelta(hours=args.live_hours)
    now = pd.Timestamp.now(tz="UTC")
    replay_wall = args.live_hours * 3600 / args.speed
    if live_end > now:
        sys.exit(f"live window ends {live_end}, after the wall clock {now}: its 5-minute "
                 "partitions would not exist yet; choose an earlier --outage")
    scenario = _scenario(root, f"day -1 {outage_hhmm}", args.outage_hours)
    meta = {
        "end": str(end), "outage_start": str(outage_start), "outage_hours": args.outage_hours,
        "live_start": str(live_start), "live_end": str(live_end), "speed": args.speed,
        "days": args.days, "sessions_per_hour": args.sessions_per_hour, "seed": args.seed,
        "scenario": str(scenario),
    }
    (root / "meta.json").write_text(json.dumps(meta, indent=2) + "\n")
    _log(f"plan: {json.dumps(meta)}")

    t = time.monotonic()
    config = SimulationConfig(start=end - pd.Timedelta(days=args.days), end=end,
                              sessions_per_hour=args.sessions_per_hour, seed=args.seed,
                              incidents=load_incidents(str(scenario)))
    result = simulate(config)
    (root / "ground_truth.json").write_text(json.dumps(result.incidents, indent=2,
                                                       default=str) + "\n")
    history = write_history(result.events, root / "landing", live_start, result.reference,
                            late=result.late)
    _log(f"simulated {len(result.events):,} events; history {history.rows:,} rows in "
         f"{len(history.files)} files ({history.late_files} late) before {live_start}; "
         f"{len(result.late)} late deliveries in all; {time.monotonic() - t:.1f} s")

    t = time.monotonic()
    with open(root / "logs" / "funnelwatch_run.log", "w") as log:
        subprocess.run([str(VENV_BIN / "funnelwatch"), "run", "--end",
                        live_start.strftime("%Y-%m-%dT%H:%M")],
                       cwd=REPO, env={**os.environ, **env}, stdout=log,
                       stderr=subprocess.STDOUT, check=True)
    _log(f"history loaded (funnelwatch run) in {time.monotonic() - t:.1f} s")

    daemon_log = open(root / "logs" / "dagster_daemon.log", "w")  # noqa: SIM115
    daemon = subprocess.Popen(
        [str(VENV_BIN / "dagster-daemon"), "run", "-w", "workspace.yaml"], cwd=REPO,
        env={**os.environ, **env}, stdout=daemon_log, stderr=subprocess.STDOUT,
        start_new_session=True)
    (root / "daemon.pid").write_text(f"{daemon.pid}\n")
    _log(f"dagster-daemon started, pid {daemon.pid} (process group {daemon.pid})")
    try:
        # Let the daemon start its code server and the sensor take its first tick (it launches
        # one warm-up run for the newest history slot), so the replay measures the steady state.
        _wait_for_runs(min_runs=1, timeout=args.warmup_timeout)
        _wait_idle(timeout=300)
        slots_log = root / "slots.jsonl"
        _log(f"replaying {live_start} .. {live_end} at x{args.speed:g} "
             f"(~{replay_wall:.0f} s wall)")

        def on_slot(slot_start, slot_end, paths):
            with open(slots_log, "a") as f:
                f.writelines(json.dumps({"slot_start": str(slot_start), "path": str(p),
                                        "mtime": p.stat().st_mtime,
                                        "written": time.time()}) + "\n" for p in paths)

        stats = replay(result.events, root / "landing", start=live_start, end=live_end,
                       speed=args.speed, late=result.late, on_slot=on_slot)
        _log(f"replayed {stats.rows:,} rows in {stats.files} files, {stats.slots} slots, "
             f"{stats.wall_seconds:.1f} s")
        # the last slot's run: the sensor needs up to one interval to see it
        time.sleep(45)
        _wait_idle(timeout=args.drain_timeout)
    finally:
        _log(f"stopping dagster-daemon (SIGTERM to process group {daemon.pid})")
        try:
            os.killpg(daemon.pid, signal.SIGTERM)
            daemon.wait(timeout=60)
        except subprocess.TimeoutExpired:
            os.killpg(daemon.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        daemon_log.close()
    analyse(root)


def _instance():
    import dagster as dg

    return dg.DagsterInstance.get()


def _active_runs() -> int:
    import dagster as dg

    with _instance() as instance:
        return instance.get_runs_count(dg.RunsFilter(statuses=[
            dg.DagsterRunStatus.QUEUED, dg.DagsterRunStatus.NOT_STARTED,
            dg.DagsterRunStatus.STARTING, dg.DagsterRunStatus.STARTED]))


def _wait_for_runs(min_runs: int, timeout: float) -> None:
    import dagster as dg

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with _instance() as instance:
            n = instance.get_runs_count(dg.RunsFilter(job_name=JOB))
        if n >= min_runs:
            _log(f"{n} fast-lane run(s) launched")
            return
        time.sleep(5)
    _log(f"no fast-lane run after {timeout:.0f} s (see logs/dagster_daemon.log)")


def _wait_idle(timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        active = _active_runs()
        if active == 0:
            return
        time.sleep(5)
    _log(f"still {_active_runs()} active run(s) after {timeout:.0f} s")


def _pct(values, q):
    import numpy as np

    return float(np.percentile(values, q)) if len(values) else float("nan")


def analyse(root: Path) -> dict:
    root = Path(root).resolve()
    _env(root)
    import warnings

    import dagster as dg
    import duckdb
    import numpy as np
    import pandas as pd

    warnings.filterwarnings("ignore", message=".*inplace keyword.*")  # duckdb .df() noise
    meta = json.loads((root / "meta.json").read_text())
    live_start = pd.Timestamp(meta["live_start"])
    outage = pd.Timestamp(meta["outage_start"])

    rows = []
    with _instance() as instance:
        for rec in instance.get_run_records(filters=dg.RunsFilter(job_name=JOB)):
            run = rec.dagster_run
            # a run over several slots (the sensor batches slots that landed while a run
            # waited) counts for each of its slots
            first = run.tags.get("dagster/asset_partition_range_start")
            last = run.tags.get("dagster/asset_partition_range_end")
            if first and last:
                partitions = [f"{t:%Y-%m-%d-%H:%M}" for t in pd.date_range(
                    pd.to_datetime(first, format="%Y-%m-%d-%H:%M"),
                    pd.to_datetime(last, format="%Y-%m-%d-%H:%M"), freq="5min")]
            else:
                partitions = [run.tags.get("dagster/partition")]
            for partition in partitions:
                rows.append({
                    "partition": partition,
                    "status": run.status.value,
                    "created": rec.create_timestamp.timestamp(),
                    "started": rec.start_time, "ended": rec.end_time,
                    "trigger": run.tags.get("funnelwatch/trigger"),
                    "slots_in_run": len(partitions),
                })
        other = [(r.dagster_run.job_name, r.dagster_run.status.value,
                  r.dagster_run.tags.get("dagster/partition"),
                  r.dagster_run.tags.get("dagster/sensor_name")
                  or r.dagster_run.tags.get("dagster/schedule_name"),
                  r.create_timestamp.isoformat(),
                  r.start_time, r.end_time)
                 for r in instance.get_run_records(filters=dg.RunsFilter())
                 if r.dagster_run.job_name != JOB]
    runs = pd.DataFrame(rows)
    if runs.empty:
        print("no fast-lane runs in the instance")
        return {}
    runs["slot"] = pd.to_datetime(runs["partition"], format="%Y-%m-%d-%H:%M", utc=True)
    runs = runs.sort_values("slot").reset_index(drop=True)

    # part files written by the replay: slot -> mtime
    mtimes = {}
    for p in (root / "landing" / "events").glob("date=*/hour=*/part-*.parquet"):
        day = p.parent.parent.name.removeprefix("date=")
        hhmm = p.stem.removeprefix("part-")
        slot = pd.Timestamp(f"{day}T{hhmm[:2]}:{hhmm[2:]}", tz="UTC")
        mtimes[slot] = p.stat().st_mtime
    runs["mtime"] = runs["slot"].map(mtimes)
    runs["file_to_success"] = runs["ended"] - runs["mtime"]
    runs["queued_to_start"] = runs["started"] - runs["created"]
    runs["start_to_end"] = runs["ended"] - runs["started"]
    runs["file_to_queued"] = runs["created"] - runs["mtime"]

    def clock(x):
        return "" if pd.isna(x) else datetime.fromtimestamp(x, UTC).strftime("%H:%M:%S")

    print(f"fast-lane runs: {len(runs)} ({runs['status'].value_counts().to_dict()})")
    print(f"{'slot':16} {'status':8} {'file mtime':>10} {'queued':>9} {'started':>9} "
          f"{'ended':>9} {'file>queue':>10} {'queue>start':>11} {'start>end':>9} "
          f"{'file>success':>12}")
    for r in runs.itertuples():
        def s(v):
            return "" if pd.isna(v) else f"{v:.1f}"
        print(f"{r.slot:%m-%d %H:%M}      {r.status[:8]:8} {clock(r.mtime):>10} "
              f"{clock(r.created):>9} {clock(r.started):>9} {clock(r.ended):>9} "
              f"{s(r.file_to_queued):>10} {s(r.queued_to_start):>11} {s(r.start_to_end):>9} "
              f"{s(r.file_to_success):>12}")

    live = runs[(runs["slot"] >= live_start) & runs["mtime"].notna()
                & (runs["status"] == "SUCCESS")]
    summary = {"fast_lane_runs": len(runs), "live_slots_with_part_file": len(mtimes),
               "live_successful_runs": len(live),
               "missing_slots": sorted(str(s) for s in set(mtimes) - set(runs["slot"]))}
    for col in ("file_to_success", "file_to_queued", "queued_to_start", "start_to_end"):
        v = live[col].dropna().to_numpy()
        summary[col] = {"median": round(float(np.median(v)), 1) if len(v) else None,
                        "p90": round(_pct(v, 90), 1) if len(v) else None,
                        "max": round(float(v.max()), 1) if len(v) else None}
    print("\nlive slots (successful runs with a part file):", len(live), "of",
          len(mtimes), "part files")
    for col, label in (("file_to_success", "part file mtime -> run success"),
                       ("file_to_queued", "part file mtime -> run queued (sensor)"),
                       ("queued_to_start", "queued -> started"),
                       ("start_to_end", "started -> success")):
        m = summary[col]
        print(f"  {label:40} median {m['median']} s, p90 {m['p90']} s, max {m['max']} s")
    if summary["missing_slots"]:
        print("  part files with no run:", ", ".join(summary["missing_slots"]))

    print(f"\nother runs in the instance ({len(other)}):")
    for o in other:
        print("  ", o)
    summary["other_runs"] = len(other)

    con = duckdb.connect(str(root / "warehouse" / "funnelwatch.duckdb"), read_only=True)
    try:
        inc = con.execute("SELECT * FROM incidents.incidents ORDER BY started_at").df()
        cols = [c for c in ("incident_id", "state", "title", "started_at", "first_seen_at",
                            "last_anomaly_at", "resolved_at", "severity", "alert_version",
                            "alerted_version", "source") if c in inc.columns]
        print(f"\nincidents.incidents ({len(inc)}):")
        print(inc[cols].to_string(index=False) if len(inc) else "  none")
        flags = con.execute(
            """SELECT slot_start, metric, cohort, value, expected, p_value, window_slots
               FROM fastlane.scores WHERE is_anomaly ORDER BY slot_start, metric, cohort"""
        ).df()
        print(f"\nfastlane.scores flagged ({len(flags)}):")
        print(flags.head(40).to_string(index=False) if len(flags) else "  none")
        outbox = con.execute("SELECT * FROM alerting.outbox").df()
        ocols = [c for c in ("created_at", "incident_id", "action", "channel", "route",
                             "status", "alert_key", "sent_at") if c in outbox.columns]
        print(f"\nalerting.outbox ({len(outbox)}):")
        print(outbox[ocols].to_string(index=False) if len(outbox) else "  none")
        timeline = con.execute(
            "SELECT * FROM incidents.timeline ORDER BY 1, 2").df() if con.execute(
            "SELECT count(*) FROM information_schema.tables WHERE table_schema='incidents' "
            "AND table_name='timeline'").fetchone()[0] else pd.DataFrame()
        if len(timeline):
            print(f"\nincidents.timeline ({len(timeline)}):")
            print(timeline.head(40).to_string(index=False))
    finally:
        con.close()

    flagged_after = flags[pd.to_datetime(flags["slot_start"], utc=True) >= outage]
    flagged_before = flags[pd.to_datetime(flags["slot_start"], utc=True) < outage]
    summary["incidents"] = len(inc)
    summary["flags_before_outage"] = len(flagged_before)
    if len(flagged_after):
        first = pd.to_datetime(flagged_after["slot_start"], utc=True).min()
        summary["first_flag_slot"] = str(first)
        summary["first_flag_minutes_after_outage_start_slot_start"] = (
            first - outage).total_seconds() / 60
        summary["first_flag_minutes_after_outage_start_slot_end"] = (
            first + pd.Timedelta(minutes=5) - outage).total_seconds() / 60
        r = runs[runs["slot"] == first]
        if len(r) and pd.notna(r["ended"].iloc[0]):
            summary["first_flag_run_ended"] = clock(r["ended"].iloc[0])
            summary["first_flag_file_to_success_s"] = round(
                float(r["file_to_success"].iloc[0]), 1)
    summary["outbox_messages"] = len(outbox)
    print("\nsummary:", json.dumps(summary, indent=1, default=str))
    (root / "summary.json").write_text(json.dumps(summary, indent=2, default=str) + "\n")
    runs.to_csv(root / "runs.csv", index=False)
    return summary


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = ap.add_subparsers(dest="cmd", required=True)
    r = sub.add_parser("run", help="simulate, load history, start the daemon, replay, analyse")
    r.add_argument("--root", default="/work/live_run")
    r.add_argument("--end", default=None, help="window end (UTC day), default tomorrow 00:00")
    r.add_argument("--days", type=int, default=4)
    r.add_argument("--outage", default="12:00", help="outage start HH:MM on the last day")
    r.add_argument("--outage-hours", type=float, default=2)
    r.add_argument("--lead-hours", type=int, default=1, help="live hours before the outage")
    r.add_argument("--live-hours", type=int, default=2)
    r.add_argument("--speed", type=float, default=10.0)
    r.add_argument("--sessions-per-hour", type=int, default=1500)
    r.add_argument("--seed", type=int, default=42)
    r.add_argument("--warmup-timeout", type=float, default=240)
    r.add_argument("--drain-timeout", type=float, default=900)
    a = sub.add_parser("analyse", help="only read the results of a run")
    a.add_argument("--root", default="/work/live_run")
    args = ap.parse_args()
    if args.cmd == "run":
        cmd_run(args)
    else:
        analyse(Path(args.root))


if __name__ == "__main__":
    main()
