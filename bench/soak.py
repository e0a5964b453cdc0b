"""Soak benchmark: N days of simulated hours processed one after another on the schedule's path.

Simulates `--history-days + --days` days into a fresh work folder, loads the history days as
`funnelwatch run` does (one range run of hourly_pipeline + respond_to_anomalies; detection
needs 48 h of history before it may alert), then processes every following hour as the daemon
would: `hourly_pipeline_schedule` evaluated at five past the hour -> one in-process run of
`hourly_pipeline` for that partition with the schedule's tags -> one tick of
`anomalies_sensor` -> `respond_to_anomalies` for what it requests. One persistent
DagsterInstance (DAGSTER_HOME in the work folder), one warehouse file
(funnelwatch/evaluation/soak.py holds the loop; tests/test_soak.py runs it over a short window).

After every hour: process RSS (VmRSS) and peak (getrusage, self and children: dbt runs as a
child process), warehouse file + .wal bytes, raw row counts, DagsterInstance storage bytes,
wall seconds. A table every 24 hours; at the end ratios against the baseline (day 1): RSS
median of the last day / first day, the RSS slope over days 2..N (MB/day), warehouse bytes per
raw row at the end of the last day / first day, and a re-run check: the last `--rerun-hours`
hours processed again must not grow the warehouse or change row counts.

    .venv/bin/python bench/soak.py                                  # 7 days, 1500 sessions/h
    .venv/bin/python bench/soak.py --days 1 --sessions-per-hour 200 # quick look
"""

from __future__ import annotations

import argparse
import csv
import json
import statistics
import sys
import tempfile
import time
from dataclasses import asdict, fields
from pathlib import Path

import numpy as np
import pandas as pd

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from funnelwatch.evaluation import soak as S

MB = 1024 * 1024


def _table(samples: list[S.Sample], baseline_rss: float | None) -> None:
    print(f"{'hour':>5} {'partition':<17} {'wall s':>6} {'resp':>4} {'RSS MB':>7} {'x base':>6} "
          f"{'peak':>6} {'child pk':>8} {'wh MB':>7} {'wal MB':>6} {'raw rows':>10} "
          f"{'B/row':>6} {'inst MB':>7}")
    for s in samples:
        ratio = f"{s.rss_mb / baseline_rss:6.2f}" if baseline_rss else "     -"
        per_row = s.warehouse_bytes / s.raw_events if s.raw_events else float("nan")
        print(f"{s.index:5d} {s.partition:<17} {s.wall_s:6.1f} {s.respond_runs:4d} {s.rss_mb:7.1f} "
              f"{ratio} {s.peak_rss_mb:6.0f} {s.children_peak_rss_mb:8.0f} "
              f"{s.warehouse_bytes / MB:7.1f} {s.wal_bytes / MB:6.1f} {s.raw_events:10,d} "
              f"{per_row:6.1f} {s.instance_bytes / MB:7.1f}")


def summarize(soaked: list[S.Sample], rerun: list[S.Sample], before_rerun: S.Sample | None,
              counts_before: dict | None, counts_after: dict | None) -> dict:
    frame = S.samples_frame(soaked)
    frame["day"] = frame["index"] // 24 + 1
    days = sorted(frame["day"].unique())
    first, last = days[0], days[-1]
    out: dict = {"hours": len(frame), "days": len(days),
                 "wall_s_median": float(frame["wall_s"].median()),
                 "wall_s_total": float(frame["wall_s"].sum())}
    rss_first = float(frame.loc[frame["day"] == first, "rss_mb"].median())
    rss_last = float(frame.loc[frame["day"] == last, "rss_mb"].median())
    out.update(rss_first_day_median_mb=rss_first, rss_last_day_median_mb=rss_last,
               rss_ratio=rss_last / rss_first, peak_rss_mb=float(frame["peak_rss_mb"].max()),
               children_peak_rss_mb=float(frame["children_peak_rss_mb"].max()))
    tail = frame[frame["day"] > first] if len(days) > 1 else frame
    hours = tail["index"].to_numpy(dtype=float)
    slope = np.polyfit(hours, tail["rss_mb"].to_numpy(dtype=float), 1)[0] * 24 if len(tail) > 1 \
        else float("nan")
    out["rss_slope_mb_per_day_after_day1"] = float(slope)
    end_first = frame[frame["day"] == first].iloc[-1]
    end_last = frame[frame["day"] == last].iloc[-1]
    bpr_first = end_first["warehouse_bytes"] / end_first["raw_events"]
    bpr_last = end_last["warehouse_bytes"] / end_last["raw_events"]
    out.update(bytes_per_row_day1=float(bpr_first), bytes_per_row_last_day=float(bpr_last),
               bytes_per_row_ratio=float(bpr_last / bpr_first),
               warehouse_mb_end_day1=end_first["warehouse_bytes"] / MB,
               warehouse_mb_end=end_last["warehouse_bytes"] / MB,
               raw_rows_end_day1=int(end_first["raw_events"]), raw_rows_end=int(end_last["raw_events"]),
               instance_mb_end_day1=end_first["instance_bytes"] / MB,
               instance_mb_end=end_last["instance_bytes"] / MB,
               duplicate_event_ids=int(end_last["raw_events"] - end_last["raw_events_distinct"]))
    if rerun and before_rerun is not None:
        after = rerun[-1]
        out.update(rerun_hours=len(rerun),
                   rerun_warehouse_growth_bytes=int(after.warehouse_bytes - before_rerun.warehouse_bytes),
                   rerun_max_warehouse_growth_bytes=int(max(s.warehouse_bytes for s in rerun)
                                                        - before_rerun.warehouse_bytes),
                   rerun_raw_rows_change=int(after.raw_events - before_rerun.raw_events),
                   rerun_hour_counts_equal=counts_before == counts_after)
    return out


def _print_summary(summary: dict) -> None:
    print("\n== soak summary (ratios against the baseline = day 1) ==")
    print(f"hours processed       : {summary['hours']} ({summary['days']} days), "
          f"median {summary['wall_s_median']:.1f} s/hour, total {summary['wall_s_total'] / 60:.1f} min")
    print(f"RSS median            : day 1 {summary['rss_first_day_median_mb']:.1f} MB, last day "
          f"{summary['rss_last_day_median_mb']:.1f} MB -> {summary['rss_ratio']:.3f}x "
          f"(aim ~1.0x)")
    print(f"RSS slope days 2..N   : {summary['rss_slope_mb_per_day_after_day1']:+.2f} MB/day "
          f"(peak self {summary['peak_rss_mb']:.0f} MB, children {summary['children_peak_rss_mb']:.0f} MB)")
    print(f"warehouse bytes/row   : day 1 {summary['bytes_per_row_day1']:.1f}, last day "
          f"{summary['bytes_per_row_last_day']:.1f} -> {summary['bytes_per_row_ratio']:.3f}x "
          f"({summary['warehouse_mb_end_day1']:.1f} MB / {summary['raw_rows_end_day1']:,} rows -> "
          f"{summary['warehouse_mb_end']:.1f} MB / {summary['raw_rows_end']:,} rows)")
    print(f"instance storage      : {summary['instance_mb_end_day1']:.1f} MB after day 1 -> "
          f"{summary['instance_mb_end']:.1f} MB")
    print(f"duplicate event ids   : {summary['duplicate_event_ids']}")
    if "rerun_hours" in summary:
        print(f"re-run of last {summary['rerun_hours']} h : warehouse "
              f"{summary['rerun_warehouse_growth_bytes']:+,d} bytes (max during "
              f"{summary['rerun_max_warehouse_growth_bytes']:+,d}), raw rows "
              f"{summary['rerun_raw_rows_change']:+d}, per-hour counts equal: "
              f"{summary['rerun_hour_counts_equal']}")


def _sample(row: dict) -> S.Sample:
    types = {f.name: f.type for f in fields(S.Sample)}
    cast = {"int": int, "float": float, "str": str}
    return S.Sample(**{k: cast[types[k]](v) if types[k] in cast else v for k, v in row.items()})


def _stopped_soak(args) -> tuple[S.SoakPaths, list[S.Sample], list[S.Sample], list[pd.Timestamp]]:
    """A stopped soak's work folder (environment prepared) and its CSV: (paths, every row,
    the soaked rows, their hours)."""
    paths = S.SoakPaths.under(args.workdir)
    S.prepare_environment(paths)
    with args.out.open() as f:
        rows = [_sample(r) for r in csv.DictReader(f)]
    soaked = [r for r in rows if r.phase == "soak"]
    hours = [S.utc(pd.Timestamp(r.partition[:10] + "T" + r.partition[11:])) for r in soaked]
    return paths, rows, soaked, hours


def rerun_only(args) -> None:
    """The re-run check and the summary for a soak stopped before its end (work folder kept)."""
    paths, rows, soaked, hours = _stopped_soak(args)
    import dagster as dg

    state = S.SoakState()
    with dg.DagsterInstance.get() as instance:
        released = S.release_interrupted_runs(instance)
        print(f"released {len(released)} run(s) left STARTED by the stopped soak: {released}")
        # The daemon's sensor cursor is not in the instance: start after the last materialization.
        latest = instance.fetch_materializations(dg.AssetKey("cohort_anomalies"), limit=1).records
        state.sensor_cursor = str(latest[0].storage_id) if latest else None
        window = (hours[0], hours[-1] + pd.Timedelta(hours=1))
        # The hour being processed when the soak stopped may be half done: re-run it first so
        # the check starts from a state the schedule's path left (it is not one of the checked).
        stopped = hours[-1] + pd.Timedelta(hours=1)
        if stopped < S.utc(args.start) + pd.Timedelta(days=args.history_days + args.days):
            S.process_hour(instance, stopped, state)
            print(f"completed the interrupted hour {S.partition_key(stopped)}")
        before = S.measure(paths, len(rows), hours[-1], "rerun-baseline", 0, 0, 0, 0)
        counts_before = S.hour_row_counts(paths.warehouse, *window)
        print(f"re-run of the last {args.rerun_hours} soaked hours", flush=True)
        rerun = S.soak(instance, paths, hours[-args.rerun_hours:], state, phase="rerun",
                       start_index=len(rows))
        counts_after = S.hour_row_counts(paths.warehouse, *window)
    _table(rerun, None)
    with args.out.open("a", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=[x.name for x in fields(S.Sample)])
        for sample in rerun:
            writer.writerow(asdict(sample))
    summary = summarize(soaked, rerun, before, counts_before, counts_after)
    summary.update(sessions_per_hour=args.sessions_per_hour, history_days=args.history_days,
                   csv=str(args.out), stopped_early=True)
    _print_summary(summary)
    print(json.dumps(summary, default=str))


def resume(args) -> None:
    """Continue a soak that stopped (crash or kill) with its work folder and CSV kept: the
    hour it was in is processed again from the start (schedule -> run -> sensor -> respond),
    then the remaining hours, the re-run check and the summary of all soaked hours."""
    paths, _, soaked, done = _stopped_soak(args)
    import dagster as dg

    start = S.utc(args.start)
    end = start + pd.Timedelta(days=args.history_days + args.days)
    remaining = S.hours_between(done[-1] + pd.Timedelta(hours=1), end)
    state = S.SoakState()
    out = args.out.open("a", newline="")
    writer = csv.DictWriter(out, fieldnames=[x.name for x in fields(S.Sample)])

    def on_sample(sample: S.Sample) -> None:
        writer.writerow(asdict(sample))
        out.flush()

    with dg.DagsterInstance.get() as instance:
        released = S.release_interrupted_runs(instance)
        print(f"released {len(released)} run(s) left STARTED: {released}", flush=True)
        # The daemon keeps the sensor's cursor; here it is the last hour that finished: the
        # storage id of its cohort_anomalies materialization, so the stopped hour's scores
        # are seen by the sensor when that hour is processed again.
        records = instance.fetch_materializations(dg.AssetKey("cohort_anomalies"),
                                                  limit=200).records
        last_done = S.partition_key(done[-1])
        ids = [r.storage_id for r in records if r.partition_key == last_done]
        state.sensor_cursor = str(max(ids)) if ids else None
        print(f"resuming at {S.partition_key(remaining[0])}: {len(remaining)} hours left, "
              f"sensor cursor {state.sensor_cursor}", flush=True)
        more = S.soak(instance, paths, remaining, state, on_sample=on_sample,
                      start_index=len(soaked))
        _table(more, statistics.median(r.rss_mb for r in soaked[:24]))
        soaked += more
        hours = done + remaining[: len(more)]
        window = (hours[0], hours[-1] + pd.Timedelta(hours=1))
        counts_before = S.hour_row_counts(paths.warehouse, *window)
        print(f"\nre-run of the last {args.rerun_hours} hours", flush=True)
        rerun = S.soak(instance, paths, hours[-args.rerun_hours:], state, phase="rerun",
                       on_sample=on_sample, start_index=len(soaked))
        counts_after = S.hour_row_counts(paths.warehouse, *window)
    out.close()
    _table(rerun, None)
    summary = summarize(soaked, rerun, soaked[-1], counts_before, counts_after)
    summary.update(sessions_per_hour=args.sessions_per_hour, history_days=args.history_days,
                   csv=str(args.out), resumed_at=S.partition_key(remaining[0]),
                   respond_runs=sum(x.respond_runs for x in soaked),
                   stopped_at_data_quality_gate=state.gate_stopped)
    _print_summary(summary)
    print(json.dumps(summary, default=str))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--days", type=int, default=7, help="days soaked hour by hour")
    parser.add_argument("--history-days", type=int, default=2,
                        help="days pre-loaded by one range run (detection's cold start is 48 h)")
    parser.add_argument("--sessions-per-hour", type=float, default=1500)
    parser.add_argument("--seed", type=int, default=42)
    parser.add_argument("--scenario", default="default",
                        help="simulator incident scenario (default, as `make demo`; or none)")
    parser.add_argument("--start", default="2026-11-01", help="first simulated day (UTC)")
    parser.add_argument("--hours", type=int, default=None,
                        help="soak only this many hours (e.g. 6, to estimate the time per hour)")
    parser.add_argument("--rerun-hours", type=int, default=6)
    parser.add_argument("--out", type=Path, default=REPO / "bench" / "results" / "soak.csv",
                        help="per-hour CSV (bench/results/ is git-ignored)")
    parser.add_argument("--workdir", type=Path, default=None,
                        help="work folder (default: a new temp dir, removed unless --keep)")
    parser.add_argument("--keep", action="store_true")
    parser.add_argument("--max-minutes", type=float, default=None,
                        help="stop soaking at the first hour boundary after this many minutes "
                             "(then the re-run check and the summary of what was processed)")
    parser.add_argument("--rerun-only", action="store_true",
                        help="resume an interrupted soak in --workdir: release runs it left "
                             "STARTED, re-run the last --rerun-hours hours of --out, summarize")
    parser.add_argument("--resume", action="store_true",
                        help="continue a stopped soak in --workdir from the hour it was in "
                             "(same --days/--start/--history-days), then re-run and summarize")
    args = parser.parse_args()
    if args.rerun_only:
        return rerun_only(args)
    if args.resume:
        return resume(args)

    tmp = None
    if args.workdir is None:
        tmp = tempfile.TemporaryDirectory(prefix="funnelwatch-soak-")
        args.workdir = Path(tmp.name)
    paths = S.SoakPaths.under(args.workdir)
    S.prepare_environment(paths)  # before orchestration is imported
    import dagster as dg

    start = S.utc(args.start)
    soak_start = start + pd.Timedelta(days=args.history_days)
    end = soak_start + pd.Timedelta(days=args.days)
    hours = S.hours_between(soak_start, end)[: args.hours]
    print(f"soak: {len(hours)} hours {S.partition_key(hours[0])} .. {S.partition_key(hours[-1])}, "
          f"{args.history_days} days of history, {args.sessions_per_hour:g} sessions/h, "
          f"scenario {args.scenario}, work folder {paths.root}", flush=True)
    t = time.perf_counter()
    simulated = S.simulate_landing(paths.landing, start, end, args.sessions_per_hour,
                                   args.seed, args.scenario)
    print(f"simulated {sum(simulated.values()):,} events in {time.perf_counter() - t:.0f} s",
          flush=True)

    args.out.parent.mkdir(parents=True, exist_ok=True)
    out = args.out.open("w", newline="")
    writer = csv.DictWriter(out, fieldnames=[f.name for f in fields(S.Sample)])
    writer.writeheader()
    baseline: list[float] = []
    pending: list[S.Sample] = []

    def on_sample(sample: S.Sample) -> None:
        writer.writerow(asdict(sample))
        out.flush()
        if sample.phase == "soak" and sample.index < 24:
            baseline.append(sample.rss_mb)
        pending.append(sample)
        if len(pending) == 24 or sample.phase == "rerun":
            _table(pending, statistics.median(baseline) if baseline else None)
            sys.stdout.flush()
            pending.clear()

    with dg.DagsterInstance.get() as instance:
        t = time.perf_counter()
        S.load_history(instance, start, soak_start)
        print(f"history loaded (range run + respond) in {time.perf_counter() - t:.0f} s; "
              f"RSS {S.rss_mb():.0f} MB", flush=True)
        state = S.SoakState()
        deadline = (time.monotonic() + 60 * args.max_minutes) if args.max_minutes else None
        soaked = S.soak(instance, paths, hours, state, on_sample=on_sample, deadline=deadline)
        hours = hours[: len(soaked)]
        if pending:
            _table(pending, statistics.median(baseline) if baseline else None)
            pending.clear()
        rerun_hours = hours[-args.rerun_hours:] if args.rerun_hours else []
        rerun, counts_before, counts_after = [], None, None
        if rerun_hours:
            print(f"\nre-run of the last {len(rerun_hours)} hours", flush=True)
            counts_before = S.hour_row_counts(paths.warehouse, hours[0], hours[-1] + pd.Timedelta(hours=1))
            rerun = S.soak(instance, paths, rerun_hours, state, phase="rerun",
                           on_sample=on_sample, start_index=len(soaked))
            counts_after = S.hour_row_counts(paths.warehouse, hours[0], hours[-1] + pd.Timedelta(hours=1))
    out.close()
    summary = summarize(soaked, rerun, soaked[-1] if rerun else None, counts_before, counts_after)
    summary.update(sessions_per_hour=args.sessions_per_hour, scenario=args.scenario,
                   history_days=args.history_days, csv=str(args.out),
                   stopped_at_data_quality_gate=state.gate_stopped)
    _print_summary(summary)
    print(json.dumps(summary, default=str))
    if tmp is not None and not args.keep:
        tmp.cleanup()


if __name__ == "__main__":
    main()
