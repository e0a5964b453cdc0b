"""Detection against the oracle (issue 15 §1): of the labelled business incidents the data
makes visible, how many we found and how long after the data showed them.

The oracle itself lives in `simulator.oracle` (it needs the simulator's probabilities); this
module runs it for an evaluation run and scores detection against it (pure functions on
frames, apart from `run_oracle`).

* **visible**: the oracle's cumulative z of the true cohort's metric against its true
  expectation reaches 4 in the incident's window; **oracle hour**: the first hour it does.
* **efficiency** = detected visible incidents / visible incidents (aim 1.0).
* **delay** = our first alert hour - the oracle hour, in hourly partitions (0 = the alert
  came in the partition where the data first showed it; aim <= 1). Negative when an alert came
  before the oracle's threshold (a detector may flag a cohort whose evidence the oracle's
  cumulative count had not reached yet).
* false alerts per day (over all monitored series) and event precision come from
  `scoring.summary`; they are the cost side of the same detector.
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np
import pandas as pd

from funnelwatch.evaluation import scoring

AIM_EFFICIENCY = 1.0
AIM_DELAY_PARTITIONS = 1.0
AIM_FALSE_PER_DAY = 0.3
HOUR = pd.Timedelta(hours=1)
PER_INCIDENT_COLUMNS = ["run", "id", "type", "cohort", "magnitude", "units", "oracle_z",
                        "visible", "oracle_hour", "first_alert_hour", "detected",
                        "delay_partitions"]


class OracleRun(NamedTuple):
    hours: pd.DataFrame  # simulator.oracle per-hour table
    incidents: pd.DataFrame  # one row per business label, hourly bins
    slots: pd.DataFrame  # the same with the fast lane's 5-minute slots
    planned: pd.DataFrame  # simulator.oracle.planned_traffic


FAST_LANE_SLOT_MINUTES = 5


def run_oracle(spec) -> OracleRun:
    """`simulator.oracle` for one evaluation run (RunSpec), by the hour and by the fast lane's
    5-minute slot, with the run's planned traffic: the same store the run's `funnelwatch
    simulate` wrote, rebuilt in memory up to its sessions (seconds; no events are built)."""
    from simulator import SimulationConfig, load_incidents
    from simulator.generate import prepare
    from simulator.oracle import oracle, planned_traffic

    incidents = [] if spec.scenario == "none" else load_incidents(spec.scenario)
    prepared = prepare(SimulationConfig(start=spec.start, end=spec.end,
                                        sessions_per_hour=spec.sessions_per_hour,
                                        seed=spec.seed, incidents=incidents))
    hours, per_incident = oracle(prepared)
    _, per_slot = oracle(prepared, bin_minutes=FAST_LANE_SLOT_MINUTES)
    return OracleRun(hours, per_incident, per_slot, planned_traffic(prepared))


def oracle_minutes(timing: pd.DataFrame, slots: pd.DataFrame) -> pd.DataFrame:
    """The fast lane's timing (fastlane_eval.time_to_alert: id, start, fast_lane_min) with
    the oracle minute: minutes from the label's start to the end of the first 5-minute slot
    in which the oracle's cumulative z reaches 4 (NaN when it never does), and the fast
    lane's delay against it (aim <= 5 minutes)."""
    if slots is None or slots.empty or timing.empty:
        return timing.assign(oracle_min=float("nan"), fast_vs_oracle_min=float("nan"))
    at = slots.set_index("id")["oracle_hour"]
    first = pd.to_datetime(timing["id"].map(at), utc=True)
    oracle_min = ((first + pd.Timedelta(minutes=FAST_LANE_SLOT_MINUTES)
                   - pd.to_datetime(timing["start"], utc=True)) / pd.Timedelta(minutes=1))
    return timing.assign(oracle_min=oracle_min.astype(float),
                         fast_vs_oracle_min=(timing["fast_lane_min"].astype(float) - oracle_min))


def _cohort_text(cohort) -> str:
    if not isinstance(cohort, dict) or not cohort:
        return "all"
    return "&".join(f"{k}={cohort[k]}" for k in sorted(cohort))


def per_incident(oracle_incidents: pd.DataFrame, scored: pd.DataFrame,
                 run: str = "") -> pd.DataFrame:
    """One row per labelled business incident: the oracle's verdict beside detection's.

    `oracle_incidents`: `simulator.oracle.oracle(...)[1]`; `scored`: the incidents frame of
    `scoring.match` (first_alert_hour, detected)."""
    business = scored[scored["kind"] == "business"]
    if business.empty:
        return pd.DataFrame(columns=PER_INCIDENT_COLUMNS)
    joined = business.merge(oracle_incidents.drop(columns=["metric"], errors="ignore"),
                            on="id", how="left", suffixes=("", "_oracle"))
    oracle_hour = pd.to_datetime(joined["oracle_hour"], utc=True)
    first = pd.to_datetime(joined["first_alert_hour"], utc=True)
    out = pd.DataFrame({
        "run": joined.get("run", run),
        "id": joined["id"],
        "type": joined["type"],
        "cohort": joined["cohort"].map(_cohort_text),
        "magnitude": joined["magnitude"],
        "units": joined["units"].astype(float),
        "oracle_z": joined["oracle_z"].astype(float),
        "visible": joined["visible"].fillna(False).astype(bool),
        "oracle_hour": oracle_hour,
        "first_alert_hour": first,
        "detected": joined["detected"].astype(bool),
        "delay_partitions": ((first - oracle_hour) / HOUR).where(first.notna() & oracle_hour.notna()),
    })
    return out[PER_INCIDENT_COLUMNS]


def headline(rows: pd.DataFrame, events: pd.DataFrame, days: float) -> dict[str, float]:
    """Efficiency, delay vs the oracle hour, false alerts per day and precision."""
    # as bool: a run without business incidents (the quiet one) gives an empty object column,
    # which pandas would read as a list of column names
    visible = rows[rows["visible"].astype(bool)]
    found = visible[visible["detected"].astype(bool)]
    delays = found["delay_partitions"].dropna()
    head = scoring.summary(events, rows.assign(kind="business"), days)
    return {
        "business_incidents": len(rows),
        "visible": len(visible),
        "visible_detected": len(found),
        "efficiency": len(found) / len(visible) if len(visible) else float("nan"),
        "median_delay": float(delays.median()) if len(delays) else float("nan"),
        "max_delay": float(delays.max()) if len(delays) else float("nan"),
        "within_one_partition": float((delays <= AIM_DELAY_PARTITIONS).mean()) if len(delays)
        else float("nan"),
        "invisible_detected": int((~rows["visible"] & rows["detected"]).sum()),
        "false_alerts_per_day": head["false_alerts_per_day"],
        "precision": head["precision"],
        "recall": head["recall"],
    }


def headline_table(head: dict[str, float]) -> pd.DataFrame:
    """The headline as measure / value / aim / met rows (report.py prints it)."""
    def met(ok):
        return "" if ok is None or (isinstance(ok, float) and np.isnan(ok)) else ("yes" if ok else "no")

    eff, delay, fpd = head["efficiency"], head["max_delay"], head["false_alerts_per_day"]
    rows = [
        ("business incidents the data makes visible (oracle cumulative z >= 4)",
         f"{head['visible']} of {head['business_incidents']}", "", None),
        ("efficiency: visible incidents detected", eff, f"{AIM_EFFICIENCY:g}",
         None if np.isnan(eff) else eff >= AIM_EFFICIENCY),
        ("median delay vs the oracle hour (hourly partitions)", head["median_delay"], "", None),
        ("max delay vs the oracle hour (hourly partitions)", delay,
         f"<= {AIM_DELAY_PARTITIONS:g}", None if np.isnan(delay) else delay <= AIM_DELAY_PARTITIONS),
        ("detected visible incidents within one partition of the oracle hour",
         head["within_one_partition"], "", None),
        ("incidents detected that the oracle calls invisible", float(head["invisible_detected"]),
         "", None),
        ("false business alerts per day (all monitored series)", fpd,
         f"<= {AIM_FALSE_PER_DAY:g}", None if np.isnan(fpd) else fpd <= AIM_FALSE_PER_DAY),
        ("event precision (business alerts)", head["precision"], "", None),
        ("recall, all labelled business incidents (context)", head["recall"], "", None),
    ]
    return pd.DataFrame([{"measure": m, "value": v, "aim": a, "met": met(ok)}
                         for m, v, a, ok in rows])
