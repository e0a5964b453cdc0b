"""Accuracy of incident root-cause analysis against the simulator's labelled incidents.

``oracle_rca(warehouse, ground_truth)`` runs ``funnelwatch.incidents.rca.analyse_incident`` on
every business incident of an evaluation run over its labelled window and metric (the
"oracle" incident: detection's own grouping is not in the loop), ``score_rca(pairs)`` matches
the answers with the labels and ``markdown_section(scores)`` writes the table.

Matching:

* **where**: an answer matches when its ``filters`` equal the label's cohort exactly (label
  ``{}`` = ``all``); values compared as strings. ``where_rank`` is the rank of the first match.
* **cause**: a hypothesis matches when its ``kind`` and ``ref`` equal the label's cause, with
  the label types mapped: deploy -> deploy (ref = version), stock -> stock_out (ref =
  category), payment_provider -> payment_provider (ref = provider), bot -> bot_traffic (ref =
  campaign), tracking -> tracking (ref = event type).
* **step** (when the label says ``drop_after``): the step after that stage
  (``checkout_start`` -> ``shipping_step``, ``payment`` -> ``review_step``).
"""

from __future__ import annotations

import json
import shutil
import tempfile
import time
from datetime import datetime, timedelta
from pathlib import Path

import duckdb

from funnelwatch.incidents.rca import STAGES

CAUSE_KIND = {
    "deploy": "deploy",
    "stock": "stock_out",
    "payment_provider": "payment_provider",
    "bot": "bot_traffic",
    "tracking": "tracking",
    "campaign": "campaign",
    "js_error": "js_error",
}
MAGNITUDE_BANDS = (
    (0.0, 0.03, "<= 2 %"),
    (0.03, 0.07, "5 %"),
    (0.07, 0.15, "10 %"),
    (0.15, 0.3, "20 %"),
    (0.3, 10.0, ">= 50 %"),
)


def _ts(value: str) -> datetime:
    return datetime.fromisoformat(value)


def cohort_string(filters: dict | None) -> str:
    if not filters:
        return "all"
    return "&".join(f"{k}={filters[k]}" for k in sorted(filters))


def expected_step(drop_after: str | None) -> str | None:
    """The funnel step (numerator stage of a conversion) a ``drop_after`` label points at."""
    if not drop_after:
        return None
    stage = drop_after if drop_after in STAGES else f"{drop_after}_step"
    if stage not in STAGES or stage == STAGES[-1]:
        return None
    return STAGES[STAGES.index(stage) + 1]


def _band(magnitude) -> str:
    if magnitude is None:
        return "n/a"
    m = abs(float(magnitude))
    for lo, hi, name in MAGNITUDE_BANDS:
        if lo <= m < hi:
            return name
    return ">= 50 %"


def score_rca(pairs: list[tuple[dict, dict]]) -> dict:
    """Top-1 / top-3 accuracy of where and of the cause, per incident rows with the answers."""
    rows = []
    for truth, result in pairs:
        want = {str(k): str(v) for k, v in (truth.get("cohort") or {}).items()}
        where = result.get("where") or []
        where_rank = next(
            (
                i
                for i, w in enumerate(where, start=1)
                if {str(k): str(v) for k, v in w["filters"].items()} == want
            ),
            None,
        )
        cause = truth.get("cause") or {}
        kind = CAUSE_KIND.get(cause.get("type"), cause.get("type"))
        ref = str(cause.get("ref"))
        hyps = result.get("hypotheses") or []
        cause_rank = next(
            (i for i, h in enumerate(hyps, start=1) if h["kind"] == kind and str(h["ref"]) == ref),
            None,
        )
        step_want = expected_step(truth.get("drop_after"))
        rows.append(
            {
                "run": truth.get("run"),
                "id": truth["id"],
                "type": truth.get("type"),
                "magnitude": truth.get("magnitude"),
                "band": _band(truth.get("magnitude"))
                if "checkout" in str(truth.get("type")) and "drop" in str(truth.get("type"))
                else "n/a",
                "where_truth": cohort_string(want),
                "where_answers": [w["cohort"] for w in where],
                "where_rank": where_rank,
                "cause_truth": f"{kind}:{ref}",
                "cause_answers": [f"{h['kind']}:{h['ref']}" for h in hyps[:3]],
                "cause_rank": cause_rank,
                "step_truth": step_want,
                "step_answer": result.get("funnel_step"),
                "seconds": result.get("_seconds"),
                "truth_z": result.get("_truth_z"),
            }
        )

    def summary(sel: list[dict]) -> dict:
        n = len(sel)
        if not n:
            return {"n": 0}
        steps = [r for r in sel if r["step_truth"]]
        return {
            "n": n,
            "where_top1": sum(r["where_rank"] == 1 for r in sel) / n,
            "where_top3": sum(r["where_rank"] is not None and r["where_rank"] <= 3 for r in sel)
            / n,
            "cause_top1": sum(r["cause_rank"] == 1 for r in sel) / n,
            "cause_top3": sum(r["cause_rank"] is not None and r["cause_rank"] <= 3 for r in sel)
            / n,
            "both_top1": sum(r["where_rank"] == 1 and r["cause_rank"] == 1 for r in sel) / n,
            "step_accuracy": (sum(r["step_answer"] == r["step_truth"] for r in steps) / len(steps))
            if steps
            else None,
        }

    by_type = {
        t: summary([r for r in rows if r["type"] == t]) for t in sorted({r["type"] for r in rows})
    }
    bands = [name for _, _, name in MAGNITUDE_BANDS]
    by_band = {
        b: summary([r for r in rows if r["band"] == b])
        for b in bands
        if any(r["band"] == b for r in rows)
    }
    by_run = {
        u: summary([r for r in rows if r["run"] == u])
        for u in sorted({r["run"] or "" for r in rows})
    }
    seconds = [r["seconds"] for r in rows if r["seconds"] is not None]
    return {
        "overall": summary(rows),
        "overall_without_2pct": summary([r for r in rows if r["band"] != "<= 2 %"]),
        "by_type": by_type,
        "by_run": by_run,
        "by_band": by_band,
        "rows": rows,
        "seconds": {"median": sorted(seconds)[len(seconds) // 2], "max": max(seconds)}
        if seconds
        else None,
    }


def _z(x) -> str:
    return "–" if x is None else f"{x:+.1f}"


def _pct(x) -> str:
    return "–" if x is None else f"{x:.2f}"


def markdown_section(scores: dict) -> str:
    """A markdown section with the summary tables and the per-incident answers."""
    out = ["### Measured accuracy of incident root cause", ""]
    head = (
        "| slice | n | where top-1 | where top-3 | cause top-1 | cause top-3 | both top-1 | step |"
    )
    rule = "|---|---|---|---|---|---|---|---|"

    def line(name, s):
        if not s.get("n"):
            return f"| {name} | 0 | | | | | | |"
        return (
            f"| {name} | {s['n']} | {_pct(s['where_top1'])} | {_pct(s['where_top3'])} | "
            f"{_pct(s['cause_top1'])} | {_pct(s['cause_top3'])} | {_pct(s['both_top1'])} | {_pct(s['step_accuracy'])} |"
        )

    out += [
        head,
        rule,
        line("all business incidents", scores["overall"]),
        line("without the 2 % drops", scores["overall_without_2pct"]),
    ]
    out += [line(f"run {u}", s) for u, s in scores.get("by_run", {}).items()]
    out += [line(f"type {t}", s) for t, s in scores["by_type"].items()]
    out += [line(f"checkout drop {b}", s) for b, s in scores["by_band"].items()]
    if scores.get("seconds"):
        out += [
            "",
            (
                f"Time per `analyse_incident`: median {scores['seconds']['median']:.2f} s, "
                f"max {scores['seconds']['max']:.2f} s."
            ),
        ]
    out += [
        "",
        (
            "z of truth = the labelled cohort's own metric over the window vs its expectation "
            "(how visible the incident was at all; |z| < 3 is within noise)."
        ),
        "",
        (
            "| run | incident | z of truth | truth where | answers (ranked) | rank | truth cause "
            "| answers | rank | step truth / answer |"
        ),
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in scores["rows"]:
        out.append(
            f"| {r['run'] or ''} | {r['id']} | {_z(r['truth_z'])} | `{r['where_truth']}` | {'; '.join(f'`{w}`' for w in r['where_answers'])} | "
            f"{r['where_rank'] or '–'} | {r['cause_truth']} | {'; '.join(r['cause_answers'])} | {r['cause_rank'] or '–'} | "
            f"{r['step_truth'] or '–'} / {r['step_answer'] or '–'} |"
        )
    return "\n".join(out) + "\n"


def oracle_rca(
    warehouse_path,
    ground_truth_path,
    *,
    flagged: str = "all",
    copy: bool = True,
    start_shift_hours: int = 0,
) -> list[tuple[dict, dict]]:
    """(label, analyse_incident result) for every business incident of one evaluation run.

    ``flagged="all"``: the incident is analysed as if detection had flagged the whole store on
    the label's metric (where must then be found from scratch, the hard case); ``"truth"``: as
    if it had flagged the label's own cohort. The warehouse is copied to a temp dir first
    (``copy=True``) so a running pipeline's file is never opened; else opened read-only.
    ``start_shift_hours``: analyse from that many hours after the labelled start (detection
    flags the first anomalous hour late; the cause must still be found).
    """
    from funnelwatch.incidents.rca import analyse_incident, cohort_deviation

    labels = json.loads(Path(ground_truth_path).read_text())
    business = [x for x in labels if x.get("kind") == "business"]
    if not business:
        return []
    run = Path(ground_truth_path).parent.name
    tmp = None
    path = Path(warehouse_path)
    if copy:
        tmp = tempfile.mkdtemp(prefix="rca_oracle_")
        path = Path(shutil.copy(warehouse_path, Path(tmp) / "warehouse.duckdb"))
    pairs = []
    try:
        con = duckdb.connect(str(path), read_only=True)
        try:
            for inc in business:
                cohort = "all" if flagged == "all" else cohort_string(inc.get("cohort"))
                t0 = time.perf_counter()
                start = _ts(inc["start"]) + timedelta(hours=start_shift_hours)
                result = analyse_incident(
                    con,
                    metric=inc["metric"],
                    cohort=cohort,
                    start=start,
                    end=max(_ts(inc["end"]), start + timedelta(hours=1)),
                )
                result["_seconds"] = time.perf_counter() - t0
                # how visible the labelled incident was: its own cohort's metric z
                dev = cohort_deviation(
                    con,
                    metric=inc["metric"],
                    cohort=cohort_string(inc.get("cohort")),
                    start=_ts(inc["start"]),
                    end=_ts(inc["end"]),
                )
                result["_truth_z"] = dev["z"] if dev else None
                pairs.append(({**inc, "run": run}, result))
        finally:
            con.close()
    finally:
        if tmp:
            shutil.rmtree(tmp, ignore_errors=True)
    return pairs
