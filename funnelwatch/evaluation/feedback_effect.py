"""What feedback on false alarms does, measured offline on evaluated runs.

Replays a run's flagged points (`detection.anomalies` where is_anomaly) hour by hour with the
pipeline's own feedback code (`funnelwatch.incidents.feedback.rules_from_feedback` and
`apply_feedback`): every alert event (the scoring module's events) that the ground truth calls
false gets `false_alarm` feedback on its (metric, cohort) (the event's top series, as an
incident names its primary series) at its end: once `merge_gap` has passed without a new point,
so the event is known to be over; the feedback then applies from the event's end. Points of
later hours go through `apply_feedback` with the feedback given so far, and the replay goes on
with what is left, so later events and their feedback follow from the cleared points.

Measured, with and without applying the feedback (without: the same replay, feedback recorded
but not applied):

* **repeat false alerts**: false events that hold a point on a series that already had
  false-alarm feedback at that hour (a false alert after its series' first false alarm);
* **true incidents hidden**: business incidents detected without feedback and not with it;
* **true incidents on fed-back series**: incidents shown (without feedback) by a point on a
  series that had false-alarm feedback by then, with whether they are still detected.

`what_if_threshold`: the same replay on the points the ensemble scored at or above a lower
severity (e.g. 40) as if they had alerted: a more sensitive configuration with many more
false alerts, to see the mechanism where the real runs have few repeats.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from pathlib import Path

import duckdb
import numpy as np
import pandas as pd

from funnelwatch.evaluation import scoring
from funnelwatch.incidents import feedback as fb

POINT_COLUMNS = ["event_hour", "metric", "cohort", "severity"]


def _prepare(flagged: pd.DataFrame) -> pd.DataFrame:
    points = flagged[[c for c in flagged.columns if c in POINT_COLUMNS + ["value", "expected",
                                                                           "why"]]].copy()
    points["event_hour"] = pd.to_datetime(points["event_hour"], utc=True).astype(
        "datetime64[us, UTC]")
    points["is_anomaly"] = True
    return points.sort_values(["event_hour", "metric", "cohort"]).reset_index(drop=True)


def _events(points: pd.DataFrame, truth: pd.DataFrame, dq_hours, rules) -> pd.DataFrame:
    events, _ = scoring.match(points, truth, dq_hours, None, rules)
    return events


def replay(flagged: pd.DataFrame, truth: pd.DataFrame, dq_hours: Iterable = (), *,
           apply: bool = True, base: float = fb.BASE_SEVERITY, step: float = fb.STEP,
           cap: float | None = None,
           matching: scoring.MatchingRules = scoring.DEFAULT_RULES) -> dict:
    """One replay (see the module docstring). Returns kept points, events, incidents, the
    feedback given (metric, cohort, window_start, window_end, label) and cleared points."""
    points = _prepare(flagged)
    hours = pd.DatetimeIndex(points["event_hour"].unique()).sort_values()
    given: list[dict] = []
    fed_events: set = set()
    kept_parts: list[pd.DataFrame] = []
    cleared = 0
    closed_after = matching.merge_gap  # an event is over once this passed after its end

    def give_feedback(upto: pd.Timestamp | None) -> None:
        if not kept_parts:
            return
        kept = pd.concat(kept_parts, ignore_index=True)
        events = _events(kept, truth, dq_hours, matching)
        for event in events[events["verdict"] == "false"].itertuples():
            key = (event.category, event.start)
            over = upto is None or event.end + closed_after <= upto
            if key in fed_events or not over:
                continue
            fed_events.add(key)
            given.append({"label": "false_alarm", "metric": event.metric,
                          "cohort": event.cohort, "window_start": event.start,
                          "window_end": event.end})

    for hour in hours:
        give_feedback(hour)
        at_hour = points[points["event_hour"] == hour]
        if apply and given:
            rules = fb.rules_from_feedback(
                pd.DataFrame(given), base=base, step=step,
                cap=cap if cap is not None else base + fb.CAP - fb.BASE_SEVERITY)
            at_hour, n = fb.apply_feedback(at_hour, rules)
            cleared += n
            at_hour = at_hour[at_hour["is_anomaly"].astype(bool)]
        if len(at_hour):
            kept_parts.append(at_hour)
    give_feedback(None)  # the last events get their feedback too (nothing left to clear)
    kept = (pd.concat(kept_parts, ignore_index=True) if kept_parts
            else points.iloc[0:0])
    events, incidents = scoring.match(kept, truth, dq_hours, None, matching)
    feedback = pd.DataFrame(given, columns=["label", "metric", "cohort", "window_start",
                                            "window_end"])
    return {"points": kept, "events": events, "incidents": incidents, "feedback": feedback,
            "cleared": cleared}


def _first_feedback(feedback: pd.DataFrame) -> pd.DataFrame:
    """Per series: when its first false-alarm feedback took effect."""
    if feedback.empty:
        return pd.DataFrame(columns=["metric", "cohort", "fed_from"])
    return (feedback.groupby(["metric", "cohort"])["window_end"].min()
            .rename("fed_from").reset_index())


def _points_on_fed_series(points: pd.DataFrame, feedback: pd.DataFrame) -> np.ndarray:
    """Which points lie on a series with false-alarm feedback in effect at their hour."""
    if points.empty or feedback.empty:
        return np.zeros(len(points), dtype=bool)
    first = _first_feedback(feedback)
    joined = points[["metric", "cohort", "event_hour"]].reset_index(drop=True).merge(
        first, on=["metric", "cohort"], how="left")
    return (joined["fed_from"].notna() & (joined["event_hour"] >= joined["fed_from"])).to_numpy()


def repeat_false_alerts(result: dict, matching=scoring.DEFAULT_RULES) -> int:
    points, events = result["points"].reset_index(drop=True), result["events"]
    if points.empty:
        return 0
    on_fed = _points_on_fed_series(points, result["feedback"])
    point_event = scoring.assign_events(points, matching)
    false_ids = set(events.loc[events["verdict"] == "false", "event"])
    return len({e for e, fed in zip(point_event, on_fed) if fed and e in false_ids})


def evaluate_run(name: str, flagged: pd.DataFrame, truth: pd.DataFrame, dq_hours: Iterable = (),
                 *, base: float = fb.BASE_SEVERITY, step: float = fb.STEP,
                 cap: float | None = None,
                 matching: scoring.MatchingRules = scoring.DEFAULT_RULES) -> dict:
    """The effect of false-alarm feedback on one run (flagged points + ground truth frame).
    `cap` defaults to `base` + (CAP - BASE_SEVERITY)."""
    dq_hours = list(dq_hours)
    without = replay(flagged, truth, dq_hours, apply=False, base=base, matching=matching)
    with_fb = replay(flagged, truth, dq_hours, apply=True, base=base, step=step, cap=cap,
                     matching=matching)
    business = without["incidents"]["kind"] == "business"
    det_before = without["incidents"].loc[business].set_index("id")["detected"].astype(bool)
    det_after = with_fb["incidents"].loc[
        with_fb["incidents"]["kind"] == "business"].set_index("id")["detected"].astype(bool)
    hidden = sorted(i for i in det_before.index if det_before[i] and not det_after.get(i, False))
    # True incidents shown (without feedback) by a point on a series fed back by then.
    pts = without["points"].reset_index(drop=True)
    feedback_all = pd.concat([without["feedback"], with_fb["feedback"]], ignore_index=True)
    on_fed = _points_on_fed_series(pts, feedback_all)
    truth_w = truth.copy()
    truth_w["window_end"] = truth_w["end"] + matching.grace
    matches = scoring.point_matches(pts, truth_w)
    fed_incidents = sorted({i for k in np.flatnonzero(on_fed) for i in matches[k]})
    false_before = int((without["events"]["verdict"] == "false").sum())
    false_after = int((with_fb["events"]["verdict"] == "false").sum())
    return {
        "run": name,
        "false_alerts_before": false_before,
        "false_alerts_after": false_after,
        "repeat_false_before": repeat_false_alerts(without, matching),
        "repeat_false_after": repeat_false_alerts(with_fb, matching),
        "feedback_given": len(with_fb["feedback"]),
        "series_with_feedback": int(_first_feedback(with_fb["feedback"]).shape[0]),
        "points_cleared": int(with_fb["cleared"]),
        "true_detected_before": int(det_before.sum()),
        "true_detected_after": int(det_after.sum()),
        "true_hidden": hidden,
        "true_on_fed_series": [
            {"incident": i, "detected_before": bool(det_before.get(i, False)),
             "detected_after": bool(det_after.get(i, False))} for i in fed_incidents],
    }


def _read_run(folder: Path, min_severity: float | None) -> tuple[pd.DataFrame, pd.DataFrame, list]:
    """Flagged points, ground truth and data-quality hours of an evaluated run folder (holding
    ground_truth.json and the warehouse, or a copy: `funnelwatch.duckdb` beside it), read-only.
    `min_severity`: the what-if, points scored at least that high count as flagged (the ones
    capped at exactly 50 by the practical-significance / holiday rules are not)."""
    folder = Path(folder)
    warehouse = folder / "warehouse" / "funnelwatch.duckdb"
    if not warehouse.is_file():
        warehouse = folder / "funnelwatch.duckdb"
    truth = scoring.truth_frame(json.loads((folder / "ground_truth.json").read_text()))
    where = "is_anomaly" if min_severity is None else (
        f"(is_anomaly OR (severity >= {float(min_severity)} AND severity < 50))")
    with duckdb.connect(str(warehouse), read_only=True) as con:
        flagged = con.execute(
            "SELECT event_hour, metric, cohort, value, expected, severity, why "
            f"FROM detection.anomalies WHERE {where} ORDER BY event_hour, severity DESC").df()
        try:
            dq = [r[0] for r in con.execute(
                "SELECT DISTINCT event_hour FROM quality.incident_hours").fetchall()]
        except duckdb.CatalogException:
            dq = []
    return flagged, truth, dq


def evaluate_folders(folders: dict[str, Path], what_if_threshold: float | None = 40.0) -> dict:
    """The effect over several run folders ({name: folder}); with `what_if_threshold`, also the
    what-if replay at that alert threshold (base of the raised thresholds moved with it)."""
    runs, what_if = [], []
    for name, folder in folders.items():
        flagged, truth, dq = _read_run(folder, None)
        runs.append(evaluate_run(name, flagged, truth, dq))
        if what_if_threshold is not None:
            flagged, truth, dq = _read_run(folder, what_if_threshold)
            what_if.append(evaluate_run(name, flagged, truth, dq, base=what_if_threshold))
    return {"params": params(), "runs": runs, "totals": totals(runs),
            "what_if_threshold": what_if_threshold, "what_if_runs": what_if,
            "what_if_totals": totals(what_if) if what_if else None}


def evaluate_outcomes(outcomes, folders: dict[str, Path] | None = None,
                      what_if_threshold: float | None = 40.0) -> dict:
    """For the evaluation runner: `outcomes` are runner.RunOutcome (flagged points + matched
    incidents). The what-if needs the run folders (it reads the scored, unflagged points)."""
    runs = []
    for outcome in outcomes:
        truth = outcome.incidents.drop(columns=[c for c in (
            "run", "first_alert_hour", "dq_flagged", "detected", "hours_to_detect",
            "first_partition", "window_end") if c in outcome.incidents.columns])
        runs.append(evaluate_run(outcome.spec.key, outcome.flagged, truth, ()))
    what_if = []
    if folders and what_if_threshold is not None:
        for name, folder in folders.items():
            flagged, truth, dq = _read_run(folder, what_if_threshold)
            what_if.append(evaluate_run(name, flagged, truth, dq, base=what_if_threshold))
    return {"params": params(), "runs": runs, "totals": totals(runs),
            "what_if_threshold": what_if_threshold if what_if else None,
            "what_if_runs": what_if, "what_if_totals": totals(what_if) if what_if else None}


def params() -> dict:
    return {"base": fb.BASE_SEVERITY, "step": fb.STEP, "cap": fb.CAP,
            "ttl_days": fb.TTL / pd.Timedelta(days=1)}


def totals(runs: list[dict]) -> dict:
    keys = ["false_alerts_before", "false_alerts_after", "repeat_false_before",
            "repeat_false_after", "feedback_given", "points_cleared", "true_detected_before",
            "true_detected_after"]
    out = {k: int(sum(r[k] for r in runs)) for k in keys}
    out["true_hidden"] = [f"{r['run']}:{i}" for r in runs for i in r["true_hidden"]]
    out["true_on_fed_series"] = [{**x, "incident": f"{r['run']}:{x['incident']}"}
                                 for r in runs for x in r["true_on_fed_series"]]
    return out


def _table(runs: list[dict], total: dict) -> str:
    head = ("| run | false alerts (no feedback -> with) | repeat false alerts (no feedback -> "
            "with) | feedback given | points cleared | true incidents detected (no feedback "
            "-> with) | hidden |")
    lines = [head, "|---|---|---|---|---|---|---|"]
    for r in [*runs, {**total, "run": "**all**"}]:
        hidden = r["true_hidden"]
        lines.append(
            f"| {r['run']} | {r['false_alerts_before']} -> {r['false_alerts_after']} | "
            f"{r['repeat_false_before']} -> {r['repeat_false_after']} | {r['feedback_given']} | "
            f"{r['points_cleared']} | {r['true_detected_before']} -> "
            f"{r['true_detected_after']} | {', '.join(hidden) if hidden else '0'} |")
    return "\n".join(lines) + "\n"


def _fed_list(total: dict) -> str:
    fed = total["true_on_fed_series"]
    if not fed:
        return ("No true incident showed on a series after that series' false-alarm feedback "
                "in these runs.\n")
    rows = [f"* {x['incident']}: detected {x['detected_before']} -> {x['detected_after']}"
            for x in fed]
    return "True incidents on series that had false-alarm feedback by then:\n\n" + \
        "\n".join(rows) + "\n"


def markdown_section(result: dict) -> str:
    p = result["params"]
    parts = [
        "## Feedback on false alarms\n",
        ("Replayed offline with the pipeline's own code (`funnelwatch/evaluation/"
         "feedback_effect.py`, `funnelwatch.incidents.feedback.apply_feedback`): every false "
         "alert event gets `false_alarm` feedback at its end on its top (metric, cohort); later "
         f"points on that series need severity >= {p['base']:g} + {p['step']:g} x false alarms "
         f"(at most {p['cap']:g}; a false alarm counts {p['ttl_days']:g} days). A *repeat* "
         "false alert is a false event with a point on a series that already had false-alarm "
         "feedback. Details: [docs/feedback.md](feedback.md).\n"),
        _table(result["runs"], result["totals"]),
        _fed_list(result["totals"]),
    ]
    if result.get("what_if_runs"):
        t = result["what_if_threshold"]
        parts += [
            (f"What-if, alert threshold {t:g} instead of 50 (every point scored >= {t:g} "
             "counts as an alert, the raised thresholds start from it; many more false alerts, "
             "so the mechanism shows where the real runs have few repeats):\n"),
            _table(result["what_if_runs"], result["what_if_totals"]),
            _fed_list(result["what_if_totals"]),
        ]
    return "\n".join(parts)


def main(argv: list[str] | None = None) -> None:
    """`python -m funnelwatch.evaluation.feedback_effect FOLDER...` (run folders, or copies
    holding ground_truth.json + funnelwatch.duckdb): prints the markdown section."""
    import sys

    args = sys.argv[1:] if argv is None else argv
    folders = {Path(a).name: Path(a) for a in args}
    print(markdown_section(evaluate_folders(folders)))


if __name__ == "__main__":
    main()
