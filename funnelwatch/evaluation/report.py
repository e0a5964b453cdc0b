"""docs/evaluation.md from the evaluated runs."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import pandas as pd
from scipy import stats

from funnelwatch.evaluation import fastlane_eval, oracle_eval, scoring

AIM_FALSE_PER_DAY = 1.0
AIM_RECALL = 0.95


def cohort_key(cohort: dict | None) -> str:
    """The mart's cohort key for a ground-truth cohort ({} -> 'all', else dim=value&... sorted)."""
    if not cohort:
        return "all"
    return "&".join(f"{k}={v}" for k, v in sorted(cohort.items()))


def min_detectable_drop(n: float, rate: float, alpha: float = 1e-4, power: float = 0.95) -> float:
    """Smallest relative drop of a rate k/n that a one-hour test at `alpha` (two-sided) finds
    with probability `power`: a property of the data, not of any detector."""
    if n <= 0 or not 0 < rate < 1:
        return float("nan")
    z = stats.norm.isf(alpha / 2) + stats.norm.isf(1 - power)
    return float(z * np.sqrt((1 - rate) / (n * rate)))


def _fmt(value, digits=2) -> str:
    if value is None or (isinstance(value, float) and not np.isfinite(value)):
        return "–"
    if isinstance(value, float):
        return f"{value:.{digits}f}"
    return str(value)


def _table(frame: pd.DataFrame) -> str:
    if frame.empty:
        return "_none_\n"
    head = "| " + " | ".join(frame.columns) + " |"
    rule = "|" + "|".join("---" for _ in frame.columns) + "|"
    body = ["| " + " | ".join(_fmt(v) for v in row) + " |" for row in frame.itertuples(index=False)]
    return "\n".join([head, rule, *body]) + "\n"


def magnitude_grid(outcomes) -> pd.DataFrame:
    """Checkout-conversion drops by cohort size and magnitude: caught in the first partition,
    caught at all."""
    rows = []
    for outcome in outcomes:
        sizes = dict(zip(outcome.cohort_sessions["cohort"], outcome.cohort_sessions["sessions_per_hour"]))
        inc = outcome.incidents
        inc = inc[inc["type"].isin(["checkout_conversion_drop", "cohort_checkout_drop"])]
        for row in inc.itertuples():
            key = cohort_key(row.cohort if isinstance(row.cohort, dict) else {})
            rows.append({
                "cohort": key,
                "sessions_per_hour": sizes.get(key, float("nan")),
                "drop": -float(row.magnitude),
                "first_partition": bool(row.first_partition),
                "detected": bool(row.detected),
            })
    return pd.DataFrame(rows)


def _headline(outcomes) -> pd.DataFrame:
    events = pd.concat([o.events for o in outcomes], ignore_index=True)
    incidents = pd.concat([o.incidents for o in outcomes], ignore_index=True)
    head = scoring.summary(events, incidents, sum(o.days for o in outcomes))
    business = incidents[incidents["kind"] == "business"]
    rows = [
        ("false business alerts per day (all monitored series)", head["false_alerts_per_day"],
         f"<= {AIM_FALSE_PER_DAY:g}", head["false_alerts_per_day"] <= AIM_FALSE_PER_DAY),
        ("false alerts on holiday / promotion days", float(head["false_alerts_on_special_days"]),
         "0", head["false_alerts_on_special_days"] == 0),
        ("business alerts during data-quality faults", float(head["alerts_from_dq_faults"]), "0",
         head["alerts_from_dq_faults"] == 0),
        ("event precision (business alerts)", head["precision"], "", None),
        ("recall (business incidents, any hour of the incident)", head["recall"], "", None),
        ("business incidents caught in their first hourly partition",
         float(business["first_partition"].mean()) if len(business) else float("nan"), "", None),
        ("scored days (after the 48 h cold start)", head["days"], "", None),
    ]
    return pd.DataFrame(
        [{"measure": m, "value": v, "aim": a, "met": "" if ok is None else ("yes" if ok else "no")}
         for m, v, a, ok in rows]
    )


def write_report(suite: str, outcomes, path: Path, elapsed_s: float | None = None) -> str:
    events = pd.concat([o.events for o in outcomes], ignore_index=True)
    incidents = pd.concat([o.incidents for o in outcomes], ignore_index=True)
    types = scoring.per_type(events, incidents)
    held_out = [o for o in outcomes if not o.spec.calibration]
    lines = [
        "# Evaluation",
        "",
        f"Written by `funnelwatch evaluate --suite {suite}` (`make evaluate`) on "
        f"{datetime.now(UTC):%Y-%m-%d %H:%M} UTC"
        + (f" in {elapsed_s / 60:.1f} min" if elapsed_s else "") + ". "
        "Every run is a simulated store with labelled incidents, loaded through the real "
        "pipeline (`funnelwatch simulate` then `funnelwatch run`: ingest, data-quality gate, dbt, "
        "detection) in its own folder; one detector configuration for every run. Definitions "
        "are in `funnelwatch/evaluation/scoring.py` and at the end of this page.",
        "",
    ]
    calibrated = [o.spec.key for o in outcomes if o.spec.calibration]
    lines += oracle_section(outcomes)
    lines += ["## Headline (recall, context)", ""]
    lines += [f"All {len(outcomes)} runs:", "", _table(_headline(outcomes))]
    if calibrated and held_out:
        lines += [(f"Held-out runs only (the configuration was calibrated on {', '.join(calibrated)}: "
                  "its false alerts were read and rules added for their causes):"), "",
                  _table(_headline(held_out))]
    per_type_text = (
        "Recall: share of the type's incidents with an alert (business) or a data-quality "
        "incident (data-quality faults) inside the incident window. Precision: of the alert "
        "events whose top metric names the type's category, the share that were true."
    )
    lines += ["## Per incident type", "", per_type_text, "", _table(types)]
    business = incidents[incidents["kind"] == "business"].copy()
    lines += ["## Every business incident", "",
              _table(business[["run", "id", "type", "start", "magnitude", "detected", "first_partition",
                               "hours_to_detect"]].assign(start=pd.to_datetime(business["start"], utc=True).dt.strftime("%m-%d %H:%M")))]
    dq = incidents[incidents["kind"] != "business"]
    lines += ["## Every data-quality fault", "",
              _table(dq[["run", "id", "type", "dq_flagged"]])]
    grid = magnitude_grid(outcomes)
    if not grid.empty:
        grid["size"] = grid["sessions_per_hour"].round(-1)
        caught_first = grid.pivot_table(index=["cohort", "size"], columns="drop",
                                        values="first_partition", aggfunc="mean").reset_index()
        caught_any = grid.pivot_table(index=["cohort", "size"], columns="drop",
                                      values="detected", aggfunc="mean").reset_index()
        for frame in (caught_first, caught_any):
            frame.columns = [c if isinstance(c, str) else f"-{c:.0%}" for c in frame.columns]
        smallest = (grid[grid["first_partition"]].groupby("cohort")["drop"].min()
                    .rename("smallest drop caught in its first hour"))
        grid_text = (
            "Share of the checkout-conversion drops caught in the first hourly partition "
            "(1 = caught, 0 = missed; rows: cohort and its mean sessions/hour):"
        )
        lines += ["## Smallest checkout-conversion drop caught, by cohort size", "", grid_text, "",
                  _table(caught_first), "Caught at any hour of the incident:", "", _table(caught_any),
                  _table(smallest.reset_index())]
    lines += _power_section(outcomes)
    lines += incident_sections(outcomes)
    lines += fastlane_eval.report_section(outcomes)
    runs = pd.DataFrame([
        {"run": o.spec.key, "scenario": o.spec.scenario, "sessions/h": o.spec.sessions_per_hour,
         "days scored": o.days, "alert events": len(o.events),
         "false": int((o.events["verdict"] == "false").sum()),
         "false/day": (o.events["verdict"] == "false").sum() / o.days if o.days else float("nan"),
         "flagged points": len(o.flagged)}
        for o in outcomes])
    lines += ["## Runs", "", _table(runs)]
    false = events[events["verdict"] != "true"].sort_values("max_severity", ascending=False)
    lines += ["## False alerts and alerts during data-quality faults", "",
              _table(false[["run", "start", "end", "verdict", "special_day", "points", "max_severity",
                            "metric", "cohort", "incident_ids"]].head(40))]
    lines += ["## Definitions", "", (scoring.__doc__ or "").split("\n\n", 1)[1].strip(), ""]
    text = "\n".join(lines)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return text


def _oracle_headline(outcomes) -> pd.DataFrame:
    rows = pd.concat([o.oracle for o in outcomes], ignore_index=True)
    events = pd.concat([o.events for o in outcomes], ignore_index=True)
    return oracle_eval.headline_table(
        oracle_eval.headline(rows, events, sum(o.days for o in outcomes)))


HOURLY_Z_SHOWN = 6


def oracle_section(outcomes) -> list[str]:
    """Detection against what the data allows (simulator.oracle): headline over all runs and
    over the held-out runs, then every business incident."""
    with_oracle = [o for o in outcomes if len(o.oracle)]
    if not with_oracle:
        return []
    intro = (
        "What the data allows, not what our detector finds: for every labelled business "
        "incident the oracle (`simulator/oracle.py`) compares the true cohort's metric, hour by "
        "hour, with its true expectation (the simulator's own probabilities and traffic means "
        "without the incident, not an estimate from history) and cumulates the count z from the "
        "incident's start. An incident is visible when that z reaches 4 in its window; the "
        "oracle hour is the first hour it does. Efficiency = visible incidents detected; delay = "
        "our first alert hour - the oracle hour, in hourly partitions. Definitions: "
        "`funnelwatch/evaluation/oracle_eval.py`."
    )
    lines = ["## Against the oracle", "", intro, "", f"All {len(outcomes)} runs:", "",
             _table(_oracle_headline(outcomes))]
    held_out = [o for o in outcomes if not o.spec.calibration]
    calibrated = [o.spec.key for o in outcomes if o.spec.calibration]
    if calibrated and held_out:
        lines += [f"Held-out runs only (not {', '.join(calibrated)}):", "",
                  _table(_oracle_headline(held_out))]
    rows = pd.concat([o.oracle for o in with_oracle], ignore_index=True)
    hourly = pd.concat([o.oracle_hours for o in with_oracle if len(o.oracle_hours)],
                       ignore_index=True) if any(len(o.oracle_hours) for o in with_oracle) else None
    first_hours = {}
    if hourly is not None:
        for (run, ident), group in hourly.groupby(["run", "id"], sort=False):
            z = group["z"].head(HOURLY_Z_SHOWN)
            first_hours[(run, ident)] = " ".join(_fmt(float(v), 1) for v in z)
    shown = rows.assign(
        oracle_hour=rows["oracle_hour"].dt.strftime("%m-%d %H:%M").fillna("–"),
        first_alert_hour=rows["first_alert_hour"].dt.strftime("%m-%d %H:%M").fillna("–"),
        hourly_z=[first_hours.get((r, i), "") for r, i in zip(rows["run"], rows["id"], strict=True)],
    )
    caption = ("Every business incident (units: the cohort's sessions at the metric's "
               "denominator stage over the window, or its sessions for counts; oracle z: "
               f"cumulative z at the window's end; hourly z: the first {HOURLY_Z_SHOWN} hours' own z):")
    lines += [caption, "", _table(shown)]
    return lines


AIM_TOP1 = 0.9


def _end_to_end_table(outcomes) -> pd.DataFrame:
    from funnelwatch.evaluation import incident_eval

    rows = pd.concat([incident_eval.end_to_end(o.incident_rows, o.labels, o.spec.key)
                      for o in outcomes], ignore_index=True)
    false = [incident_eval.false_incidents(o.incident_rows, o.labels) for o in outcomes]
    planned = sum(len(incident_eval.from_planned_traffic(f, o.planned))
                  for f, o in zip(false, outcomes, strict=True))
    visible = {(r.run, r.id) for o in outcomes if len(o.oracle)
               for r in o.oracle[o.oracle["visible"]].itertuples()}
    head = incident_eval.end_to_end_summary(rows, sum(len(f) for f in false), planned,
                                            sum(o.days for o in outcomes), visible)

    def met(value, ok):
        return "" if not np.isfinite(value) else ("yes" if ok(value) else "no")

    top1 = [("where top-1 exact", "where_top1"), ("funnel step top-1", "step_top1"),
            ("cause top-1 (\"no known cause\" included)", "cause_top1")]
    measures = [
        ("labelled business problems with an incident",
         f"{head['with_incident']} of {head['problems']}", "", ""),
        ("incidents opened per problem (problems with an incident)",
         head["incidents_per_problem"], "1", met(head["incidents_per_problem"], lambda v: v <= 1.0)),
        ("problems with more than one incident opened in their first hour",
         float(head["problems_with_several_in_first_hour"]), "0",
         met(float(head["problems_with_several_in_first_hour"]), lambda v: v == 0)),
    ]
    measures += [(f"{name}, visible problems ({head['visible_with_incident']} with an incident)",
                  head[key], f">= {AIM_TOP1:g}", met(head[key], lambda v: v >= AIM_TOP1))
                 for name, key in top1]
    measures += [(f"{name}, every problem with an incident", head[f"{key}_all"], "", "")
                 for name, key in top1]
    measures += [
        ("false incidents per day", head["false_incidents_per_day"], "", ""),
        ("false incidents from planned traffic", float(head["false_from_planned_traffic"]), "0",
         met(float(head["false_from_planned_traffic"]), lambda v: v == 0)),
    ]
    return pd.DataFrame([{"measure": m, "value": v, "aim": a, "met": ok}
                         for m, v, a, ok in measures]), rows


def end_to_end_section(outcomes) -> list[str]:
    """One problem, one incident, the right place, step and cause (issue 14 §5), from the
    pipeline's own incidents table (definitions: funnelwatch/evaluation/incident_eval.py)."""
    if not outcomes:
        return []
    intro = (
        "Measured on the pipeline's own incidents (`incidents.incidents`: where_cohort, "
        "funnel_step, the first hypothesis of its rca), per labelled business problem: how many "
        "incidents it opened, and whether the most severe of them names the label's cohort, "
        "step and cause (`expected_where`, `expected_step`, `expected_cause` in the ground "
        "truth). The where/step/cause aims are on the problems the oracle calls visible. A false "
        "incident overlaps no label; one from planned traffic overlaps a newsletter send, a "
        "campaign launch or end, a holiday or a promotion in a compatible cohort. Definitions: "
        "`funnelwatch/evaluation/incident_eval.py`."
    )
    table, rows = _end_to_end_table(outcomes)
    lines = ["## End to end: one problem, one incident, the right answer", "", intro, "",
             f"All {len(outcomes)} runs:", "", _table(table)]
    held_out = [o for o in outcomes if not o.spec.calibration]
    if held_out and len(held_out) < len(outcomes):
        lines += ["Held-out runs only:", "", _table(_end_to_end_table(held_out)[0])]
    lines += ["Every labelled business problem:", "", _table(rows.drop(columns=["incident"]))]
    return lines


def _power_section(outcomes) -> list[str]:
    """What one hour of data can show at all, from the runs' own volumes."""
    if not outcomes:
        return []
    starters_per_session, conversion = outcomes[0].checkout_ratio
    rows = []
    for sessions in (180, 500, 1500, 5000, 20000, 100000, 500000):
        n = sessions * starters_per_session
        rows.append({"sessions/hour": sessions, "checkout starts/hour": round(n, 1),
                     "smallest drop one hour can show (alpha 1e-4, power 0.95)":
                         f"{min_detectable_drop(n, conversion):.1%}"})
    text = (
        "Checkout conversion is k of n checkout starts. Whatever the detector, a one-hour "
        "test at the ensemble's alpha (1e-4) finds a relative drop d with 95% probability "
        "only when d >= (z_alpha/2 + z_0.95) * sqrt((1 - p) / (n p)). With the simulated "
        "store's own ratios:"
    )
    return ["## What one hour of data can show", "", text, "", _table(pd.DataFrame(rows))]


def incident_sections(outcomes) -> list[str]:
    """Incidents (how many pages the points became), root-cause accuracy (on the incidents
    the pipeline opened, and given the labelled window) and the effect of feedback."""
    from funnelwatch.evaluation import feedback_effect, rca_accuracy
    from funnelwatch.evaluation.incident_eval import false_incidents, match_incidents, rca_of

    runs, pipeline_pairs, oracle_pairs = [], [], []
    for o in outcomes:
        if o.folder is None:
            continue
        matched = match_incidents(o.incident_rows, o.labels)
        false = false_incidents(o.incident_rows, o.labels)
        runs.append({
            "run": o.spec.key, "flagged points": len(o.flagged),
            "incidents": len(o.incident_rows),
            "points per incident": (len(o.flagged) / len(o.incident_rows)
                                    if len(o.incident_rows) else float("nan")),
            "false incidents": len(false),
            "false incidents/day": len(false) / o.days if o.days else float("nan"),
            "business incidents with an incident": f"{sum(i is not None for _, i in matched)}"
                                                   f" of {len(matched)}",
        })
        for label, incident in matched:
            rca = rca_of(incident)
            if rca and "error" not in rca:
                pipeline_pairs.append(({**label, "run": o.spec.key}, rca))
        oracle_pairs += rca_accuracy.oracle_rca(o.folder / "warehouse" / "funnelwatch.duckdb",
                                                o.folder / "ground_truth.json")
    if not runs:
        return []
    intro = ("Anomaly points grouped into incidents (`funnelwatch/incidents/lifecycle.py`). A "
             "false incident overlaps no labelled incident of any kind.")
    lines = ["## Incidents", "", intro, "", _table(pd.DataFrame(runs))]
    lines += end_to_end_section([o for o in outcomes if o.folder is not None])
    end_to_end = (
        "**On the incidents the pipeline opened** (detection, grouping and root cause end to "
        "end; each labelled business incident is paired with the most severe incident that "
        "overlaps it in a compatible cohort, see `funnelwatch/evaluation/incident_eval.py`):")
    lines += ["## Root cause", "", end_to_end, ""]
    lines += ([rca_accuracy.markdown_section(rca_accuracy.score_rca(pipeline_pairs))]
              if pipeline_pairs else ["_no labelled incident became an incident_", ""])
    oracle = (
        "**Given the labelled window** (every labelled business incident analysed over its own "
        "window and metric as if the whole store had been flagged: where must be found from "
        "scratch; detection's recall is not in the loop):")
    lines += ["", oracle, ""]
    lines += ([rca_accuracy.markdown_section(rca_accuracy.score_rca(oracle_pairs))]
              if oracle_pairs else ["_no labelled business incidents_", ""])
    folders = {o.spec.key: o.folder for o in outcomes if o.folder is not None}
    effect = feedback_effect.evaluate_outcomes(outcomes, folders)
    lines += ["", feedback_effect.markdown_section(effect)]
    return lines
