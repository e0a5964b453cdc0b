"""Accuracy of incident root cause (where, cause, step) on the evaluation runs' labelled incidents.

    .venv/bin/python bench/rca_eval.py                      # every run under evaluation_runs/
    .venv/bin/python bench/rca_eval.py --flagged truth      # as if detection flagged the true cohort
    .venv/bin/python bench/rca_eval.py --out /tmp/rca.md    # also write the markdown
    .venv/bin/python bench/rca_eval.py --shift 2            # analysis starts 2 h after the onset
    .venv/bin/python bench/rca_eval.py --pipeline           # the pipeline's own incidents

Each run's warehouse is copied to a temp dir first (never opened in place). Every business
incident is analysed over its labelled window and metric with ``cohort="all"`` by default (the
whole store flagged: where is found from scratch).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import json
import shutil
import tempfile
from datetime import datetime, timedelta

import duckdb

from funnelwatch.evaluation.rca_accuracy import markdown_section, oracle_rca, score_rca
from funnelwatch.incidents.rca import analyse_incident


def quiet_windows(warehouse: Path, metrics=("checkout_conversion_rate", "sessions")) -> str:
    """On a run without incidents: 4-hour windows at 12:00 of days 8-14, cohort all. How often
    is something confidently localised (where[0].root_cause) or blamed (contribution > 0)?"""
    tmp = tempfile.mkdtemp(prefix="rca_quiet_")
    try:
        path = shutil.copy(warehouse, Path(tmp) / "w.duckdb")
        con = duckdb.connect(str(path), read_only=True)
        lo = con.execute("select min(event_hour) from marts.fct_funnel_hourly").fetchone()[0]
        rows, confident, blamed = [], 0, 0
        for metric in metrics:
            for day in range(7, 14):
                start = datetime(lo.year, lo.month, lo.day, 12, tzinfo=lo.tzinfo) + timedelta(
                    days=day
                )
                r = analyse_incident(
                    con, metric=metric, cohort="all", start=start, end=start + timedelta(hours=4)
                )
                w = r["where"][0] if r["where"] else {}
                h = r["hypotheses"][0] if r["hypotheses"] else {}
                confident += bool(w.get("root_cause"))
                blamed += bool(h and (h.get("contribution") or 0) > 0)
                rows.append(
                    f"| {metric} | {start:%Y-%m-%d %H:%M} | `{w.get('cohort')}` (z {w.get('z')}) | "
                    f"{h.get('title', '–')} ({h.get('contribution', '–')}) |"
                )
        con.close()
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    head = [
        "",
        (
            f"Quiet run ({warehouse.parent.parent.name}), {len(rows)} windows of 4 h, cohort "
            f"`all`: where[0] flagged root_cause in {confident}, top hypothesis with "
            f"contribution > 0 in {blamed}."
        ),
        "",
        "| metric | window start | where[0] | top hypothesis (contribution) |",
        "|---|---|---|---|",
    ]
    return "\n".join(head + rows) + "\n"


RUNS = Path(__file__).resolve().parents[1] / "evaluation_runs"


def pipeline_rca(run: Path, analyse=analyse_incident) -> tuple[list[tuple[dict, dict]], int]:
    """(label, answer) for every labelled business incident the pipeline opened an incident for.

    Each label is paired with the most severe pipeline incident whose span [started_at,
    last_anomaly_at + 1 h) overlaps its window in a compatible cohort
    (``incident_eval.match_incidents``); ``analyse`` is re-run with that incident's metric,
    cohort, started_at and last_anomaly_at + 1 h (the window the incident layer gives it).
    Returns the pairs and the number of labels without a matching incident (not scored)."""
    import time

    import pandas as pd

    from funnelwatch.evaluation.incident_eval import match_incidents

    wh, gt = run / "warehouse" / "funnelwatch.duckdb", run / "ground_truth.json"
    labels = json.loads(gt.read_text())
    tmp = tempfile.mkdtemp(prefix="rca_pipe_")
    pairs, missed = [], 0
    try:
        path = shutil.copy(wh, Path(tmp) / "w.duckdb")
        con = duckdb.connect(str(path), read_only=True)
        try:
            incidents = con.execute("select * from incidents.incidents").df()
            for label, inc in match_incidents(incidents, labels):
                if inc is None:
                    missed += 1
                    continue
                start = pd.Timestamp(inc["started_at"]).to_pydatetime()
                end = pd.Timestamp(inc["last_anomaly_at"]).to_pydatetime() + timedelta(hours=1)
                t0 = time.perf_counter()
                result = analyse(
                    con, metric=inc["metric"], cohort=inc["cohort"], start=start, end=end
                )
                result["_seconds"] = time.perf_counter() - t0
                late = (start - datetime.fromisoformat(label["start"])).total_seconds() / 3600
                result["_truth_z"] = late  # shown in the "z of truth" column: hours late
                pairs.append(({**label, "run": run.name}, result))
        finally:
            con.close()
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return pairs, missed


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--runs", default=str(RUNS))
    ap.add_argument("--flagged", choices=("all", "truth"), default="all")
    ap.add_argument("--out")
    ap.add_argument("--shift", type=int, default=0, help="start the analysis N hours late")
    ap.add_argument(
        "--pipeline",
        action="store_true",
        help="re-run RCA on the pipeline's own incidents (incidents.incidents) matched to labels",
    )
    args = ap.parse_args()
    pairs, quiet = [], ""
    if args.pipeline:
        missed = 0
        for run in sorted(Path(args.runs).iterdir()):
            if (
                not (run / "ground_truth.json").exists()
                or not (run / "warehouse" / "funnelwatch.duckdb").exists()
            ):
                continue
            got, miss = pipeline_rca(run)
            print(f"{run.name}: {len(got)} matched, {miss} without incident", file=sys.stderr)
            pairs += got
            missed += miss
        md = markdown_section(score_rca(pairs)).replace("z of truth", "hours late")
        md += f"\nLabels without a matching pipeline incident (not scored): {missed}.\n"
        print(md)
        if args.out:
            Path(args.out).write_text(md)
        return
    for run in sorted(Path(args.runs).iterdir()):
        wh, gt = run / "warehouse" / "funnelwatch.duckdb", run / "ground_truth.json"
        if not (wh.exists() and gt.exists()):
            continue
        got = oracle_rca(wh, gt, flagged=args.flagged, start_shift_hours=args.shift)
        print(f"{run.name}: {len(got)} business incidents", file=sys.stderr)
        pairs += got
        if not any(x.get("kind") == "business" for x in json.loads(gt.read_text())):
            quiet += quiet_windows(wh)
    md = markdown_section(score_rca(pairs)) + quiet
    print(md)
    if args.out:
        Path(args.out).write_text(md)


if __name__ == "__main__":
    main()
