"""The checkout fast lane against ground truth: time from a checkout incident's start to its
first alert, fast lane vs hourly lane, and whether the fast lane adds false pages.

Per evaluation run, in its own file `fastlane_eval.duckdb` beside the run's warehouse (the
run's own incidents stay as the hourly pipeline left them):

1. the columns of `raw.events` the fast lane reads, `raw.ingest_log` and
   `detection.anomalies` are copied from the run's warehouse;
2. incidents are grouped from the hourly lane alone (`process_window`, no root cause) and
   kept as `evaluation.hourly_incidents`;
3. the fast lane scores every 5-minute slot of the scored days (`score_range`: the same
   verdicts as slot by slot), and incidents are grouped again from both lanes.

Time to alert, in simulated time:
- fast lane: the end of the first flagged slot of a series that shows the label's kind of
  break (`ALERT_METRICS`: conversion and purchases for a conversion drop, the failure rate
  too for provider errors) in a cohort compatible with the label's, from the label's start
  to one hour after its end. The run itself adds its latency (docs/fastlane.md);
- hourly lane: the end of the first flagged hour of such a series (the funnel step rates
  count too) in a compatible cohort, plus the schedule's 5 minutes
  (`hourly_pipeline_schedule` runs at :05), its run time not included.
False incidents: incidents overlapping no label (incident_eval.false_incidents); false pages:
those of them the repository's routing (config/alert_routing.yml) sends to a PagerDuty
channel at the time they opened.
"""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path

import duckdb
import pandas as pd

from funnelwatch.alerting import load_routing, route
from funnelwatch.evaluation.incident_eval import false_incidents
from funnelwatch.evaluation.rca_accuracy import cohort_string
from funnelwatch.fastlane.batch import score_range
from funnelwatch.fastlane.config import FastLaneConfig
from funnelwatch.incidents.alerts import notification_for
from funnelwatch.incidents.lifecycle import compatible, process_window
from funnelwatch.warehouse import attach_read_only

CHECKOUT_TYPES = ("checkout_conversion_drop", "cohort_checkout_drop", "payment_provider_errors")
# The series that count as an alert for a label: a conversion drop shows in conversion and
# purchases (a payment failure flag at the same time is something else); provider errors in
# the failure rate too. Both lanes are held to the same sets.
ALERT_METRICS = {
    "checkout_conversion_drop": {"checkout_conversion_rate", "purchases", "shipping_step_rate",
                                 "payment_step_rate", "review_step_rate",
                                 "payment_attempt_rate", "session_conversion_rate"},
}
ALERT_METRICS["cohort_checkout_drop"] = ALERT_METRICS["checkout_conversion_drop"]
ALERT_METRICS["payment_provider_errors"] = ALERT_METRICS["checkout_conversion_drop"] | {
    "payment_failure_rate"}
SCHEDULE_OFFSET = timedelta(minutes=5)
EVAL_FILE = "fastlane_eval.duckdb"
# raw.events columns the fast lane reads (funnelwatch.fastlane.metrics, lane.day_cohorts)
RAW_COLUMNS = ("event_id", "event_time", "event_type", "session_id", "order_id",
               "payment_status", "payment_provider", "device_type", "os", "browser", "country",
               "event_hour")


def build(folder: Path, warehouse: Path, config: FastLaneConfig | None = None,
          rebuild: bool = False) -> Path:
    """The run's fast-lane evaluation file (reused unless `rebuild` or the run's warehouse
    changed since, e.g. after `--rescore`)."""
    target = folder / EVAL_FILE
    if target.exists() and not rebuild and target.stat().st_mtime >= warehouse.stat().st_mtime:
        return target
    target.unlink(missing_ok=True)
    partial = target.with_name(f".{target.name}.tmp")
    partial.unlink(missing_ok=True)
    with duckdb.connect(str(partial)) as con:
        con.execute("SET TimeZone = 'UTC'")
        attach_read_only(con, warehouse, "wh")
        for schema in ("raw", "detection", "quality", "evaluation"):
            con.execute(f"CREATE SCHEMA {schema}")
        con.execute(f"CREATE TABLE raw.events AS SELECT {', '.join(RAW_COLUMNS)} "
                    "FROM wh.raw.events")
        con.execute("CREATE TABLE raw.ingest_log AS SELECT * FROM wh.raw.ingest_log")
        con.execute("CREATE TABLE detection.anomalies AS SELECT * FROM wh.detection.anomalies")
        # the data-quality gate's verdicts: the fast lane holds back flags in those hours
        con.execute("CREATE TABLE quality.incidents AS SELECT * FROM wh.quality.incidents")
        con.execute("CREATE TABLE quality.incident_hours AS "
                    "SELECT * FROM wh.quality.incident_hours")
        con.execute("DETACH wh")
        first, last = con.execute(
            "SELECT min(event_hour), max(event_hour) FROM detection.anomalies").fetchall()[0]
        start, end = first, last + timedelta(hours=1)
        process_window(con, start, end)
        con.execute("CREATE TABLE evaluation.hourly_incidents AS "
                    "SELECT * FROM incidents.incidents")
        con.execute("DROP SCHEMA incidents CASCADE")
        scored = score_range(con, start, end, config)
        process_window(con, start, end)
        days = scored.alerting_days  # past the detector's cold start
        con.execute("CREATE TABLE evaluation.meta AS SELECT $s AS start, $e AS end_, "
                    "$d AS days, $p AS points, $f AS flagged",
                    {"s": start, "e": end, "d": days, "p": scored.points_scored,
                     "f": scored.flagged})
    partial.rename(target)
    return target


def _label_cohort(label: dict, keep_provider: bool) -> str:
    cohort = {k: v for k, v in (label.get("cohort") or {}).items()
              if keep_provider or k != "payment_provider"}
    return cohort_string(cohort)


def _minutes(start: pd.Timestamp, at: pd.Timestamp | None) -> float | None:
    return None if at is None else (at - start) / pd.Timedelta(minutes=1)


def time_to_alert(con, labels: list[dict]) -> pd.DataFrame:
    """One row per checkout label: minutes from its start to the first alert of each lane."""
    rows = []
    for label in labels:
        if label.get("type") not in CHECKOUT_TYPES:
            continue
        t0, t1 = pd.Timestamp(label["start"]), pd.Timestamp(label["end"])
        fast_truth = _label_cohort(label, keep_provider=True)
        hourly_truth = _label_cohort(label, keep_provider=False)
        metrics = sorted(ALERT_METRICS[label["type"]])
        slots = con.execute(
            """SELECT slot_start, cohort FROM fastlane.scores WHERE is_anomaly
               AND slot_start >= $a AND slot_start < $b AND list_contains($m, metric)
               ORDER BY slot_start""",
            {"a": t0.to_pydatetime(), "b": (t1 + pd.Timedelta(hours=1)).to_pydatetime(),
             "m": metrics},
        ).fetchall()
        fast = next((pd.Timestamp(s) + pd.Timedelta(minutes=5) for s, c in slots
                     if compatible(fast_truth, c)), None)
        hours = con.execute(
            """SELECT event_hour, cohort FROM detection.anomalies WHERE is_anomaly
               AND event_hour >= $a AND event_hour < $b AND list_contains($m, metric)
               ORDER BY event_hour""",
            {"a": t0.floor("h").to_pydatetime(),
             "b": (t1 + pd.Timedelta(hours=1)).to_pydatetime(), "m": metrics},
        ).fetchall()
        hourly = next((pd.Timestamp(h) + pd.Timedelta(hours=1) + SCHEDULE_OFFSET
                       for h, c in hours if compatible(hourly_truth, c)), None)

        rows.append({"id": label["id"], "type": label["type"],
                     "magnitude": label.get("magnitude"), "cohort": fast_truth,
                     "start": t0, "fast_lane_min": _minutes(t0, fast),
                     "hourly_lane_min": _minutes(t0, hourly)})
    return pd.DataFrame(rows, columns=["id", "type", "magnitude", "cohort", "start",
                                       "fast_lane_min", "hourly_lane_min"])


def _pages(incidents: pd.DataFrame, routing) -> int:
    paged = 0
    pagerduty = {name for name, ch in routing.channels.items() if ch.get("type") == "pagerduty"}
    for incident in incidents.to_dict("records"):
        incident = {k: (None if isinstance(v, float) and pd.isna(v) else v)
                    for k, v in incident.items()}
        routed = route(notification_for(incident, "trigger"), routing,
                       pd.Timestamp(incident["started_at"]).to_pydatetime())
        paged += bool(set(routed.channels) & pagerduty)
    return paged


def evaluate_run(folder: Path, warehouse: Path, labels: list[dict],
                 routing_path: Path | None = None, rebuild: bool = False) -> dict:
    """Build (or reuse) the run's evaluation file and measure it."""
    path = build(folder, warehouse, rebuild=rebuild)
    routing = load_routing(routing_path) if routing_path else load_routing()
    with duckdb.connect(str(path), read_only=True) as con:
        con.execute("SET TimeZone = 'UTC'")
        timing = time_to_alert(con, labels)
        both = con.execute("SELECT * FROM incidents.incidents").df()
        hourly = con.execute("SELECT * FROM evaluation.hourly_incidents").df()
        meta = con.execute("SELECT * FROM evaluation.meta").df().iloc[0].to_dict()
    days = float(meta["days"]) or float("nan")
    false_both, false_hourly = false_incidents(both, labels), false_incidents(hourly, labels)
    return {
        "timing": timing,
        "days": days,
        "points": int(meta["points"]),
        "flagged_points": int(meta["flagged"]),
        "incidents_hourly": len(hourly),
        "incidents_both": len(both),
        "false_incidents_hourly": len(false_hourly),
        "false_incidents_both": len(false_both),
        "false_pages_hourly": _pages(false_hourly, routing),
        "false_pages_both": _pages(false_both, routing),
    }


def report_section(outcomes) -> list[str]:
    """The "Checkout fast lane" section of docs/evaluation.md (one evaluation file per run)."""
    from funnelwatch.evaluation.oracle_eval import oracle_minutes

    results, timings = {}, []
    for outcome in outcomes:
        if outcome.folder is None:
            continue
        warehouse = outcome.folder / "warehouse" / "funnelwatch.duckdb"
        results[outcome.spec.key] = evaluate_run(outcome.folder, warehouse, outcome.labels)
        timings.append(oracle_minutes(results[outcome.spec.key]["timing"],
                                      getattr(outcome, "oracle_slots", None))
                       .assign(run=outcome.spec.key))
    if not results:
        return []
    timing = pd.concat(timings, ignore_index=True)
    runs = pd.DataFrame([
        {"run": k, "days": r["days"], "slots x series scored": r["points"],
         "flagged points": r["flagged_points"],
         "false incidents/day, hourly lane": r["false_incidents_hourly"] / r["days"],
         "false incidents/day, both lanes": r["false_incidents_both"] / r["days"],
         "false pages/day, hourly lane": r["false_pages_hourly"] / r["days"],
         "false pages/day, both lanes": r["false_pages_both"] / r["days"]}
        for k, r in results.items()])
    big = timing[timing["magnitude"].fillna(-1.0) <= -0.05]
    within_5 = int((big["fast_lane_min"] <= 5).sum())
    fast_found = timing["fast_lane_min"].notna()
    both_found = fast_found & timing["hourly_lane_min"].notna()
    earlier = int((timing.loc[both_found, "fast_lane_min"]
                   < timing.loc[both_found, "hourly_lane_min"]).sum())
    visible = timing["oracle_min"].notna()
    on_time = int((visible & (timing["fast_vs_oracle_min"] <= 5)).sum())
    shown = timing.assign(start=pd.to_datetime(timing["start"], utc=True).dt.strftime(
        "%m-%d %H:%M"))[
        ["run", "id", "type", "magnitude", "cohort", "start", "oracle_min", "fast_lane_min",
         "fast_vs_oracle_min", "hourly_lane_min"]].sort_values(["type", "magnitude", "run"])
    return [
        "## Checkout fast lane (5-minute slots)",
        "",
        (__doc__ or "").split("\n\n", 1)[1].strip(),
        "",
        (f"Checkout incidents: {len(timing)}; alerted by the fast lane: {int(fast_found.sum())}; "
        f"earlier than the hourly lane where both alerted: {earlier} of "
        f"{int(both_found.sum())}. Aim (alert within 5 minutes for a drop of 5% or more): "
        f"{within_5} of {len(big)}. A rate drop of 5% is not measurable in minutes at "
        "these volumes (about 7 checkouts per 5 minutes store-wide); what is, and how fast, "
        "is in docs/fastlane.md (bench/fast_lane.py)."),
        "",
        (f"Against the oracle minute (the end of the first 5-minute slot in which the oracle's "
         f"cumulative z of the true cohort reaches 4, `funnelwatch/evaluation/oracle_eval.py`): "
         f"{int(visible.sum())} checkout incidents visible by the slot; the fast lane alerted "
         f"within 5 minutes of the oracle minute on {on_time} of them (aim: all)."),
        "",
        ("Minutes from each checkout incident's start to the oracle minute and to each lane's "
         "first alert (empty: none):"),
        "",
        shown.round(1).to_markdown(index=False),
        "",
        ("False incidents and false pages per scored day, hourly lane alone and with the fast "
        "lane:"),
        "",
        runs.round(2).to_markdown(index=False),
        "",
    ]
