"""Incidents against ground truth: how many pages the anomaly points became, which incident
answers which labelled incident (for root-cause accuracy), and false incidents per day.

An incident answers a labelled business incident when its span [started_at, last anomaly
+ 1 h) overlaps the label's window and the cohort it names (its localised where, else its
worst symptom's cohort) is compatible with the label's cohort. Of those, one whose cohort is
nested with the label's (the same cohort, one around it or inside it) is taken before one
that only intersects it, then the most severe: when two problems run at once (a GB checkout
deploy and an iOS Safari payment deploy in the same hours) and the pipeline opened one
incident for each, the GB incident also intersects the iOS Safari label, and "most severe"
alone scored the iOS Safari problem by the GB incident.

End to end (issue 14 §5, `end_to_end`), per labelled business problem:

* **opened**: incidents answering it that were opened in its window [start floored to the
  hour, end + 2 h); **opened in the first hour**: of those, the ones opened in the hour the
  first of them opened (aim: 1 and never more than 1);
* **where / step / cause top-1**, on the most severe answering incident: `where_cohort`
  equals the label's `expected_where`; `funnel_step` equals `expected_step` (labels without
  one are not scored on step); the first hypothesis of its `rca` has the label's
  `expected_cause` kind (and ref, when the label gives one); no hypothesis, or a first one of
  kind "none", is "no known cause", right when the label expects kind "none";
* **false incidents**: incidents about no labelled incident of any kind (its window plus
  two hours, a compatible cohort); **from planned traffic**: false incidents that overlap a
  planned change the reference data announces (newsletter send day, campaign launch or end,
  holiday, promotion) in a compatible cohort (aim 0).
"""

from __future__ import annotations

import json

import numpy as np
import pandas as pd

from funnelwatch.evaluation.rca_accuracy import cohort_string
from funnelwatch.incidents.lifecycle import compatible, nested
from simulator.incidents import expected_answers


def _span(frame: pd.DataFrame) -> tuple[pd.Series, pd.Series]:
    start = pd.to_datetime(frame["started_at"], utc=True)
    end = pd.to_datetime(frame["last_anomaly_at"], utc=True) + pd.Timedelta(hours=1)
    return start, end


def _cohort_text(value) -> str | None:
    """A cohort read from the incidents table: NULL (NaN through pandas) or empty is `all`;
    a masked one (`(cohort of fewer than 20 sessions)`, no `=`) is unknown: None."""
    if not isinstance(value, str) or not value:
        return "all"
    return value if value == "all" or "=" in value else None


def _fits(truth: str, cohort) -> bool:
    text = _cohort_text(cohort)
    return text is not None and compatible(truth, text)


def answering(incidents: pd.DataFrame, label: dict) -> pd.DataFrame:
    """The incidents that answer one label (overlap its window, compatible cohort): those whose
    cohort is nested with the label's first, then the most severe (see the module docstring)."""
    if incidents.empty:
        return incidents
    found = incidents[_about(incidents, label, pd.Timedelta(0))]
    truth = _truth_cohort(label)
    specific = pd.Series([_nested_with(truth, w if isinstance(w, str) and w else c)
                          for c, w in zip(found["cohort"], found["where_cohort"], strict=True)],
                         index=found.index)
    order = pd.DataFrame({"specific": specific, "severity": found["severity"]})
    order = order.sort_values(["specific", "severity"], ascending=False, kind="stable")
    return found.loc[order.index]


def _truth_cohort(label: dict) -> str:
    return cohort_string({k: v for k, v in (label.get("cohort") or {}).items()
                          if k != "payment_provider"})


def _nested_with(truth: str, cohort) -> bool:
    text = _cohort_text(cohort)
    return text is not None and nested(truth, text)


def _about(incidents: pd.DataFrame, label: dict, grace: pd.Timedelta) -> pd.Series:
    """Whether each incident is about the label: its span overlaps the label's window (its end
    extended by ``grace``) and the cohort it names fits the label's: its localised where when
    it has one (an incident that says "Chrome on mobile" does not answer an iOS Safari drop,
    whichever series flagged it), else the cohort of its worst symptom."""
    start, end = _span(incidents)
    t0, t1 = pd.Timestamp(label["start"]), pd.Timestamp(label["end"]) + grace
    truth = _truth_cohort(label)
    fits = [_fits(truth, w if isinstance(w, str) and w else c)
            for c, w in zip(incidents["cohort"], incidents["where_cohort"], strict=True)]
    return (start < t1) & (end > t0) & pd.Series(fits, index=incidents.index)


def match_incidents(incidents: pd.DataFrame, labels: list[dict]) -> list[tuple[dict, dict | None]]:
    """(label, incident row as dict or None) for every business label."""
    pairs = []
    for label in labels:
        if label.get("kind") != "business":
            continue
        found = answering(incidents, label)
        pairs.append((label, found.iloc[0].to_dict() if len(found) else None))
    return pairs


def false_incidents(incidents: pd.DataFrame, labels: list[dict]) -> pd.DataFrame:
    """Incidents about no labelled incident of any kind (`_about`, with two hours' grace
    after the label's end; data-quality faults included: their aftermath is not a business
    false alarm of the incident layer). An incident during a long labelled problem that names
    another cohort is false."""
    if incidents.empty:
        return incidents
    hit = pd.Series(False, index=incidents.index)
    for label in labels:
        hit |= _about(incidents, label, pd.Timedelta(hours=2))
    return incidents[~hit]


def rca_of(incident: dict | None) -> dict | None:
    if incident is None or incident.get("rca") in (None, ""):
        return None
    rca = incident["rca"]
    return json.loads(rca) if isinstance(rca, str) else rca


NO_CAUSE = "none"
OPEN_GRACE = pd.Timedelta(hours=2)
E2E_COLUMNS = ["run", "id", "type", "incident", "opened", "opened_first_hour", "where_truth",
               "where_answer", "where_ok", "step_truth", "step_answer", "step_ok",
               "cause_truth", "cause_answer", "cause_ok"]


def first_cause(incident: dict | None) -> tuple[str, str | None]:
    """(kind, ref) of the incident's first hypothesis; ("none", None) = no known cause."""
    rca = rca_of(incident) or {}
    hypotheses = rca.get("hypotheses") or []
    if not hypotheses:
        return NO_CAUSE, None
    top = hypotheses[0]
    ref = top.get("ref")
    return str(top.get("kind") or NO_CAUSE), None if ref is None else str(ref)


def cause_ok(expected: dict | None, kind: str, ref: str | None) -> bool:
    """A first cause is right when its kind is the expected one and, if the label names a
    ref (a deploy's version, a campaign, a category), the ref too."""
    expected = expected or {"kind": NO_CAUSE, "ref": None}
    if kind != expected.get("kind"):
        return False
    return expected.get("ref") is None or str(expected["ref"]) == str(ref)


def _cause_text(kind: str, ref) -> str:
    return "no known cause" if kind == NO_CAUSE else f"{kind}:{ref}" if ref is not None else kind


def end_to_end(incidents: pd.DataFrame, labels: list[dict], run: str = "") -> pd.DataFrame:
    """One row per labelled business problem (columns E2E_COLUMNS), see the module doc."""
    rows = []
    opened_at = (pd.to_datetime(incidents["started_at"], utc=True) if len(incidents)
                 else pd.Series([], dtype="datetime64[ns, UTC]"))
    for label in labels:
        if label.get("kind") != "business":
            continue
        found = answering(incidents, label)
        t0 = pd.Timestamp(label["start"]).floor("h")
        t1 = pd.Timestamp(label["end"]) + OPEN_GRACE
        at = opened_at.loc[found.index] if len(found) else opened_at.iloc[:0]
        in_window = at[(at >= t0) & (at < t1)]
        first_hour = int((in_window.dt.floor("h") == in_window.min().floor("h")).sum()) \
            if len(in_window) else 0
        top = found.iloc[0].to_dict() if len(found) else None
        expected = expected_answers(label)  # labels of older runs lack the fields
        expected_cause = expected["expected_cause"] or {"kind": NO_CAUSE, "ref": None}
        step_truth = expected["expected_step"]
        row = {"run": run, "id": label["id"], "type": label.get("type"),
               "incident": top.get("incident_id") if top else None,
               "opened": len(in_window), "opened_first_hour": first_hour,
               "where_truth": expected["expected_where"], "step_truth": step_truth,
               "cause_truth": _cause_text(expected_cause.get("kind", NO_CAUSE),
                                          expected_cause.get("ref")),
               "where_answer": None, "where_ok": None, "step_answer": None, "step_ok": None,
               "cause_answer": None, "cause_ok": None}
        if top is not None:
            kind, ref = first_cause(top)
            row.update({
                "where_answer": top.get("where_cohort"),
                "where_ok": top.get("where_cohort") == row["where_truth"],
                "step_answer": top.get("funnel_step"),
                "step_ok": (top.get("funnel_step") == step_truth) if step_truth else None,
                "cause_answer": _cause_text(kind, ref),
                "cause_ok": cause_ok(expected_cause, kind, ref),
            })
        rows.append(row)
    return pd.DataFrame(rows, columns=E2E_COLUMNS)


def from_planned_traffic(false: pd.DataFrame, planned: pd.DataFrame) -> pd.DataFrame:
    """The false incidents that overlap a planned traffic change (start, end, cohort) in a
    compatible cohort: what the reference data explains and should not have paged."""
    if false.empty or planned is None or planned.empty:
        return false.iloc[:0]
    start, end = _span(false)
    hit = pd.Series(False, index=false.index)
    # a missing where (no root cause yet) reads as NaN from the warehouse: fall back to the
    # incident's cohort, then to the whole store
    cohorts = [(w if isinstance(w, str) and _cohort_text(w) else None)
               or _cohort_text(c) or "all"
               for w, c in zip(false["where_cohort"], false["cohort"], strict=True)]
    for p in planned.itertuples():
        overlaps = (start < p.end) & (end > p.start)
        fits = pd.Series([_fits(c, p.cohort) for c in cohorts], index=false.index)
        hit |= overlaps & fits
    return false[hit]


def _share(values: pd.Series) -> float:
    values = values.dropna()
    return float(values.astype(bool).mean()) if len(values) else float("nan")


def end_to_end_summary(rows: pd.DataFrame, false_count: int, planned_count: int,
                       days: float, visible_ids: set | None = None) -> dict[str, float]:
    """Headline of `end_to_end` rows over one or more runs. `visible_ids`: (run, id) pairs the
    oracle calls visible; the where/step/cause aims are on those."""
    answered = rows[rows["incident"].notna()]
    if visible_ids is not None:
        keys = list(zip(answered["run"], answered["id"], strict=True))
        # a boolean array, not a list: an empty list would select no columns
        on_visible = answered.loc[np.array([k in visible_ids for k in keys], dtype=bool)]
    else:
        on_visible = answered
    return {
        "problems": len(rows),
        "with_incident": len(answered),
        "incidents_per_problem": float(answered["opened"].mean()) if len(answered) else float("nan"),
        "problems_with_several_in_first_hour": int((rows["opened_first_hour"] > 1).sum()),
        "visible_with_incident": len(on_visible),
        "where_top1": _share(on_visible["where_ok"]),
        "step_top1": _share(on_visible["step_ok"]),
        "cause_top1": _share(on_visible["cause_ok"]),
        "where_top1_all": _share(answered["where_ok"]),
        "step_top1_all": _share(answered["step_ok"]),
        "cause_top1_all": _share(answered["cause_ok"]),
        "false_incidents": false_count,
        "false_incidents_per_day": false_count / days if days else float("nan"),
        "false_from_planned_traffic": planned_count,
    }
