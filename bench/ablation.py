"""Ablation: what each detector contributes to the verdicts, measured on an evaluation run.

Scores the run's window again (read only: a copy of its warehouse, Prophet models not saved)
with the default ensemble and with one detector switched off at a time, and prints, per
variant, the flagged points, how many of the default's it keeps and adds, and the labelled
business incidents it flags (any point in the label's window in a compatible cohort).

    .venv/bin/python bench/ablation.py evaluation_runs/explain-seed13
    .venv/bin/python bench/ablation.py RUN --days 4      # the last 4 days only (quicker)
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import tempfile
import time
from pathlib import Path

import duckdb
import pandas as pd

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from detectors import Ensemble
from funnelwatch.detection.run import holidays_frame, score_window
from funnelwatch.incidents.lifecycle import compatible
from rootcause import format_cohort

VARIANTS = {
    "default": ({}, True),
    "no Prophet": ({"use_prophet": False}, True),
    "no CUSUM": ({"use_cusum": False}, True),
    "no EWMA": ({"use_ewma": False}, True),
    "no multivariate (PyOD)": ({"use_multivariate": False}, True),
    "no subset scan": ({}, False),
}


def flagged(con, start, end, options: dict, cube_scan: bool) -> tuple[set, float]:
    holidays = holidays_frame(con)
    began = time.perf_counter()
    result = score_window(con, start, end, lambda: Ensemble(holidays=holidays, **options),
                          persist_models=False, cube_scan=cube_scan)
    seconds = time.perf_counter() - began
    out = result.scored
    out = out[out["is_anomaly"].fillna(False).astype(bool)]
    hours = pd.to_datetime(out["event_hour"], utc=True)
    return set(zip(out["metric"], out["cohort"], hours, strict=True)), seconds


def labelled(run: Path) -> list[dict]:
    truth = json.loads((run / "ground_truth.json").read_text())
    return [i for i in truth if i.get("kind") == "business"]


def caught(points: set, label: dict) -> bool:
    t0, t1 = pd.Timestamp(label["start"]), pd.Timestamp(label["end"])
    truth = format_cohort({k: v for k, v in (label.get("cohort") or {}).items()
                           if k != "payment_provider"})
    return any(t0 <= h < t1 and compatible(truth, c) for _m, c, h in points)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("run", type=Path, help="an evaluation run folder (has warehouse/)")
    parser.add_argument("--days", type=int, default=None, help="score only the last N days")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        copy = Path(tmp) / "w.duckdb"
        shutil.copy(args.run / "warehouse" / "funnelwatch.duckdb", copy)
        con = duckdb.connect(str(copy))
        first, last = con.execute(
            "SELECT min(event_hour), max(event_hour) FROM marts.fct_funnel_hourly").fetchone()
        end = pd.Timestamp(last).tz_convert("UTC") + pd.Timedelta(hours=1)
        start = pd.Timestamp(first).tz_convert("UTC") + pd.Timedelta(hours=48)
        if args.days:
            start = max(start, end - pd.Timedelta(days=args.days))
        labels = [x for x in labelled(args.run) if pd.Timestamp(x["end"]) > start]
        rows, base = [], None
        for name, (options, scan) in VARIANTS.items():
            points, seconds = flagged(con, start.to_pydatetime(), end.to_pydatetime(), options,
                                      scan)
            base = points if base is None else base
            rows.append({
                "variant": name, "flagged points": len(points),
                "kept of default": len(points & base), "new": len(points - base),
                "labelled incidents flagged": f"{sum(caught(points, x) for x in labels)} of "
                                              f"{len(labels)}",
                "seconds": round(seconds, 1),
            })
        con.close()
    print(f"{args.run.name}: {start:%Y-%m-%d %H:%M} .. {end:%Y-%m-%d %H:%M} UTC")
    print(pd.DataFrame(rows).to_markdown(index=False))


if __name__ == "__main__":
    main()
