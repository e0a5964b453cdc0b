"""Tracking loss: one event type vanishes while the rest of the store carries on.

The volume check compares an hour with the same hour of earlier weeks, so an event that was
also missing then (or a store that just started sending it) passes, and the funnel marts hide
it: a session that reached checkout counts as one that added to cart. This check asks two
questions per tracked step, for the hour and the run of low hours that ends in it:

1. Volume against its neighbours: the step's count against its usual share of the hour's
   other events, the share pooled over the recent days (`tracking_reference_days`, every
   loaded hour: the last hours and the same hours of the last days), leaving out hours
   already in a tracking loss of the step. Traffic that falls as a whole moves the
   expectation with it.
2. Funnel consistency: the share of sessions that reach the next step without the step's
   event (checkout without add_to_cart, purchase without checkout) against its usual level.
   A real drop takes the later steps down with it; a lost event leaves them orphaned.

A run of low hours becomes a loss once it carries enough evidence (`tracking_min_expected`
events expected, at most `tracking_low_ratio` of them seen); the loss is dated from the run's
first hour (`run_hours`), which `quality.incidents.record_outcomes` marks as well, so the
incident starts in the first full hour the event was missing.
"""

from __future__ import annotations

from datetime import datetime, timedelta

import duckdb
import pandas as pd

from funnelwatch.quality.outcomes import CheckOutcome, QualitySettings
from funnelwatch.warehouse import EVENTS_TABLE

TRACKING_LOSS_CHECK = "events_tracking_loss"
TRACKING_LOSS_DESCRIPTION = (
    "No event type vanished while its neighbours held: per type, its count against its share "
    "of the other events over the recent 7 days, and the sessions reaching the next funnel "
    "step without its event against their usual share (funnelwatch/quality/tracking.py).")

# step -> the next funnel step whose sessions must have passed through it
TRACKED_STEPS: dict[str, str] = {
    "product_view": "add_to_cart",
    "add_to_cart": "checkout_start",
    "checkout_start": "purchase",
}


def _hourly_counts(con, start: datetime, hour: datetime) -> pd.DataFrame:
    counts = con.execute(
        f"""SELECT event_hour, event_type, count(*) AS n FROM {EVENTS_TABLE}
            WHERE event_hour >= $s AND event_hour <= $h GROUP BY ALL""",
        {"s": start, "h": hour},
    ).df()
    if counts.empty:
        return pd.DataFrame()
    table = counts.pivot_table(index="event_hour", columns="event_type", values="n",
                               aggfunc="sum", fill_value=0)
    table.index = pd.to_datetime(table.index, utc=True)
    return table.sort_index()


def _lost_hours(con, start: datetime, hour: datetime, event_type: str) -> set[pd.Timestamp]:
    """Hours already in a tracking loss of `event_type`: not part of its usual level."""
    try:
        rows = con.execute(
            """SELECT h.event_hour FROM quality.incident_hours h
               JOIN quality.incidents i USING (incident_id)
               WHERE i.kind = 'tracking_loss' AND i.subject = $t
                 AND h.event_hour >= $s AND h.event_hour <= $h""",
            {"t": event_type, "s": start, "h": hour},
        ).fetchall()
    except duckdb.CatalogException:  # no quality schema yet: nothing recorded
        return set()
    return {pd.Timestamp(r[0]).tz_convert("UTC") for r in rows}


def _orphans(con, step: str, downstream: str, start: datetime, hour: datetime) -> pd.DataFrame:
    """Per hour: sessions with a `downstream` event, and those with no `step` event before it
    (looked up a day further back, so a cart added yesterday still counts)."""
    frame = con.execute(
        f"""WITH later AS (
                SELECT session_id, event_hour, min(event_time) AS reached_at FROM {EVENTS_TABLE}
                WHERE event_type = $d AND event_hour >= $s AND event_hour <= $h GROUP BY ALL),
            step AS (
                SELECT session_id, min(event_time) AS first_at FROM {EVENTS_TABLE}
                WHERE event_type = $t AND event_hour >= $s - INTERVAL 1 DAY AND event_hour <= $h
                GROUP BY ALL)
            SELECT later.event_hour, count(*) AS sessions,
                   count(*) FILTER (WHERE step.first_at IS NULL
                                    OR step.first_at > later.reached_at) AS orphans
            FROM later LEFT JOIN step USING (session_id) GROUP BY ALL""",
        {"t": step, "d": downstream, "s": start, "h": hour},
    ).df()
    frame["event_hour"] = pd.to_datetime(frame["event_hour"], utc=True)
    return frame.set_index("event_hour")


DEFAULT_SETTINGS = QualitySettings()


def tracking_loss_outcome(
    con: duckdb.DuckDBPyConnection, hour: datetime, settings: QualitySettings = DEFAULT_SETTINGS
) -> CheckOutcome:
    """The `events_tracking_loss` verdict for one loaded hour. Reads only."""
    hour_ts = pd.Timestamp(hour).tz_convert("UTC")
    start = hour - timedelta(days=settings.tracking_reference_days)
    counts = _hourly_counts(con, start, hour)
    description = TRACKING_LOSS_DESCRIPTION
    if counts.empty or hour_ts not in counts.index:
        return CheckOutcome(TRACKING_LOSS_CHECK, True, description,
                            {"note": "no events in the hour: a gap, not a tracking loss"})
    total = counts.sum(axis=1)
    lost, checked = [], {}
    unjudged: set[str] = set()  # types it could not judge: the volume check still does
    for step, downstream in TRACKED_STEPS.items():
        observed = counts[step] if step in counts else pd.Series(0, index=counts.index)
        neighbours = total - observed
        excluded = _lost_hours(con, start, hour, step)
        reference = (counts.index < hour_ts) & ~counts.index.isin(list(excluded))
        if observed[reference].sum() < settings.tracking_min_reference:
            checked[step] = "not checked: too few events in the recent days"
            unjudged.add(step)
            continue
        share = observed[reference].sum() / neighbours[reference].sum()
        expected = share * neighbours
        low = observed <= settings.tracking_low_ratio * expected
        if not low[hour_ts]:
            checked[step] = (f"held: {int(observed[hour_ts])} seen, "
                             f"{expected[hour_ts]:.1f} expected")
            continue
        run = []  # the low hours that end in this one, newest first
        for ts in reversed(counts.index):
            if not low[ts]:
                break
            run.append(ts)
        run_expected, run_observed = float(expected[run].sum()), int(observed[run].sum())
        if (run_expected < settings.tracking_min_expected
                or run_observed > settings.tracking_low_ratio * run_expected):
            checked[step] = (f"low, not yet enough evidence: {run_observed} seen, "
                             f"{run_expected:.1f} expected over {len(run)} hours")
            continue
        orphans = _orphans(con, step, downstream, start, hour)
        in_run = orphans.index.isin(run)
        usual_rows = orphans[~in_run & orphans.index.isin(counts.index[reference])]
        run_sessions = int(orphans.loc[in_run, "sessions"].sum())
        run_orphans = int(orphans.loc[in_run, "orphans"].sum())
        usual = (usual_rows["orphans"].sum() / usual_rows["sessions"].sum()
                 if usual_rows["sessions"].sum() else 0.0)
        run_share = run_orphans / run_sessions if run_sessions else None
        # Halfway from the usual share to every session orphaned: later steps carry on
        # without the event. A real drop of the step leaves its later steps' share as usual.
        telling = run_sessions >= settings.tracking_min_downstream_sessions
        orphaned = telling and run_share >= usual + 0.5 * (1 - usual)
        detail = {
            "event_type": step, "next_step": downstream,
            "run_start": f"{min(run):%Y-%m-%d %H:00}", "hours": len(run),
            "observed": run_observed, "expected": round(run_expected, 1),
            "next_step_sessions": run_sessions,
            "share_without_event": None if run_share is None else round(run_share, 3),
            "usual_share_without_event": round(float(usual), 3),
        }
        if orphaned:
            lost.append({**detail, "run_hours": [f"{ts:%Y-%m-%d %H:00}+00:00" for ts in run]})
        elif telling:
            checked[step] = {"verdict": "low, but the next step fell with it (not a loss)",
                             **detail}
        else:
            checked[step] = {"verdict": "low, with too few next-step sessions to tell a lost "
                                        "event from a real drop", **detail}
            unjudged.add(step)
    # The types this check judged: all but those with too few events in the recent days and
    # those low with too few next-step sessions to tell a lost event from a real drop. The
    # volume check leaves the judged ones to it, so one outage is one tracking-loss incident
    # (funnelwatch.quality.suites).
    judged = sorted(set(TRACKED_STEPS) - unjudged)
    evidence: dict = {"lost": lost, "checked": checked, "judged": judged}
    if lost:
        evidence["headline"] = "; ".join(
            f"{e['event_type']} missing since {e['run_start']} UTC ({e['observed']} seen, "
            f"{e['expected']} expected; {e['share_without_event']:.0%} of "
            f"{e['next_step']} sessions without it, usually "
            f"{e['usual_share_without_event']:.0%})" for e in lost)
    return CheckOutcome(TRACKING_LOSS_CHECK, not lost, description, evidence)
