"""Match detections to labelled incidents and compute the numbers we stand behind (pure: frames
in, frames out, no I/O).

Definitions (docs/evaluation.md repeats them):

* **Alert event**: flagged points (``is_anomaly``) of one alert category (checkout, payments,
  traffic, catalog, errors: what the on-call reads) whose hours are at most ``merge_gap``
  apart form one event, since one problem that lasts several hours pages once. Unrelated
  alerts at the same time are separate events: one cannot hide a false alert in a true one.
* A flagged point **shows** a business incident when it lies in the incident's window, [start
  floored to the hour, end + ``grace``), in a cohort that does not contradict the incident's
  (the store as a whole can show an iOS-only break, os=Android cannot), on a metric the
  incident type can move (``TYPE_MOVES``).
* An event is **true** when one of its points shows a business incident. An event that
  overlaps only a data-quality fault's window is a **business alert from a data-quality
  fault** (must be 0: those come as data-quality incidents). Any other event is a **false
  alert**.
* A business incident is **detected** when a flagged point shows it; time to
  detect = end of the first flagged hour - incident start (an hourly partition is scored when
  its hour is complete). **First partition** = flagged in the hour the incident starts in.
* A data-quality fault is detected when the data-quality gate flagged an hour of its window.
* Each alert event is named by the metric of its highest-severity point; its **category**
  (what the on-call reads: checkout, payments, traffic, catalog, errors) gives the per-type
  precision: of the events in a category, the share that were true.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

import numpy as np
import pandas as pd

HOUR = pd.Timedelta(hours=1)

# What an alert on a metric tells the on-call, and which incident types that category names.
METRIC_CATEGORY = {
    "checkout_conversion_rate": "checkout",
    "shipping_step_rate": "checkout",
    "payment_step_rate": "checkout",
    "review_step_rate": "checkout",
    "payment_attempt_rate": "checkout",
    "session_conversion_rate": "checkout",
    "purchases": "checkout",
    "revenue": "checkout",
    "payment_failure_rate": "payments",
    "sessions": "traffic",
    "events": "traffic",
    "product_view_sessions": "catalog",
    "product_view_rate": "catalog",
    "add_to_cart_rate": "catalog",
    "checkout_start_rate": "catalog",
    "js_error_session_rate": "errors",
}
# The alert categories in which each business incident type can show (a bot spike also
# dilutes conversion rates; a payment outage also drops checkout conversion).
TYPE_MOVES = {
    "cohort_checkout_drop": {"checkout"},
    "checkout_conversion_drop": {"checkout"},
    "payment_provider_errors": {"payments", "checkout"},
    "bot_spike": {"traffic", "checkout", "catalog", "errors"},
    "stock_out": {"catalog", "checkout"},
    "campaign_loss": {"checkout"},
}
TYPE_CATEGORY = {
    "cohort_checkout_drop": "checkout",
    "checkout_conversion_drop": "checkout",
    "payment_provider_errors": "payments",
    "bot_spike": "traffic",
    "stock_out": "catalog",
    "campaign_loss": "checkout",
}


MERGE_GAP = pd.Timedelta(hours=2)  # flagged hours at most this far apart are one event
GRACE = pd.Timedelta(hours=2)  # an incident's window runs this long past its end


@dataclass(frozen=True)
class MatchingRules:
    merge_gap: pd.Timedelta = MERGE_GAP
    grace: pd.Timedelta = GRACE


DEFAULT_RULES = MatchingRules()


def _utc(values) -> pd.Series:
    return pd.to_datetime(pd.Series(values), utc=True).astype("datetime64[us, UTC]")


def truth_frame(labels: Iterable[dict]) -> pd.DataFrame:
    """Ground-truth labels (the simulator's JSON) as a frame with window_start/window_end."""
    frame = pd.DataFrame(list(labels))
    if frame.empty:  # a quiet run: typed columns, so it concatenates with the others
        frame = pd.DataFrame(columns=["id", "type", "kind", "start", "end", "metric", "cohort",
                                      "magnitude"])
    frame["start"], frame["end"] = _utc(frame["start"]), _utc(frame["end"])
    frame["window_start"] = frame["start"].dt.floor("h")
    return frame


def assign_events(flagged: pd.DataFrame, rules: MatchingRules = DEFAULT_RULES) -> np.ndarray:
    """The alert event of every flagged point: points of one alert category (checkout,
    payments, traffic, ...) whose hours are at most `merge_gap` apart share an event."""
    if flagged.empty:
        return np.array([], dtype=int)
    hours = _utc(flagged["event_hour"]).astype("int64").to_numpy()
    category = flagged["metric"].map(METRIC_CATEGORY).fillna("other").to_numpy()
    order = np.lexsort((hours, category))
    gap = rules.merge_gap.value // 1000  # microseconds, as the hours above
    new_event = np.r_[True, (category[order][1:] != category[order][:-1])
                      | (np.diff(hours[order]) > gap)]
    event = np.empty(len(flagged), dtype=int)
    event[order] = np.cumsum(new_event) - 1
    return event


def alert_events(flagged: pd.DataFrame, rules: MatchingRules = DEFAULT_RULES) -> pd.DataFrame:
    """Group flagged points into alert events (one row each, numbered as `assign_events`)."""
    columns = ["event", "start", "end", "points", "series", "max_severity", "metric", "cohort",
               "category"]
    if flagged.empty:
        return pd.DataFrame(columns=columns)
    rows = flagged.assign(event_hour=_utc(flagged["event_hour"]).to_numpy(),
                          event=assign_events(flagged, rules))
    top = rows.sort_values(["event", "severity"], ascending=[True, False]).drop_duplicates("event")
    grouped = rows.groupby("event").agg(
        start=("event_hour", "min"),
        last=("event_hour", "max"),
        points=("metric", "size"),
        series=("metric", lambda s: len(set(zip(s, rows.loc[s.index, "cohort"])))),
        max_severity=("severity", "max"),
    )
    events = grouped.join(top.set_index("event")[["metric", "cohort"]]).reset_index()
    events["end"] = events.pop("last") + HOUR
    events["category"] = events["metric"].map(METRIC_CATEGORY).fillna("other")
    return events[columns].sort_values(["start", "event"]).reset_index(drop=True)


def _overlaps(start, end, windows: pd.DataFrame) -> np.ndarray:
    if windows.empty:
        return np.zeros(0, dtype=bool)
    return ((windows["window_start"] < end) & (windows["window_end"] > start)).to_numpy()


def parse_cohort(key: str) -> dict[str, str]:
    """'all' -> {}; 'os=iOS&browser=Safari' -> {'os': 'iOS', 'browser': 'Safari'}."""
    if not key or key == "all":
        return {}
    return dict(part.split("=", 1) for part in key.split("&") if "=" in part)


def cohort_compatible(point_cohort: str, incident_cohort: dict | None) -> bool:
    """A point's cohort can show an incident when no dimension they share disagrees (the
    store as a whole shows everything; os=Android cannot show an iOS-only break)."""
    mine = parse_cohort(point_cohort)
    return all(mine.get(k, v) == str(v) for k, v in (incident_cohort or {}).items())


def point_matches(flagged: pd.DataFrame, truth: pd.DataFrame) -> list[list[str]]:
    """For every flagged point, the ids of the business incidents it shows: inside the
    incident's window, in a compatible cohort, on a metric the incident type can move."""
    business = truth[truth["kind"] == "business"]
    out: list[list[str]] = [[] for _ in range(len(flagged))]
    if flagged.empty:
        return out
    hours = _utc(flagged["event_hour"])
    categories = flagged["metric"].map(METRIC_CATEGORY).fillna("other").to_numpy()
    cohorts = flagged["cohort"].to_numpy()
    for inc in business.itertuples():
        allowed = TYPE_MOVES.get(inc.type, set())
        inside = ((hours >= inc.window_start) & (hours < inc.window_end)).to_numpy()
        for i in np.flatnonzero(inside):
            if categories[i] in allowed and cohort_compatible(cohorts[i], inc.cohort):
                out[i].append(inc.id)
    return out


def match(
    flagged: pd.DataFrame,
    truth: pd.DataFrame,
    dq_hours: Iterable[pd.Timestamp] = (),
    special_days: pd.DataFrame | None = None,
    rules: MatchingRules = DEFAULT_RULES,
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(events, incidents): every alert event with its verdict, every labelled incident with
    detected / first alert / hours to detect.

    `special_days`: holiday and promotion dates (columns day, name) to flag false alerts on them.
    """
    truth = truth.copy()
    truth["window_end"] = truth["end"] + rules.grace
    quality = truth[truth["kind"] != "business"]
    flagged = flagged.reset_index(drop=True)
    matches = point_matches(flagged, truth)
    events = alert_events(flagged, rules)
    point_event = assign_events(flagged, rules)
    verdicts, matched_ids, special = [], [], []
    specials = {}
    if special_days is not None and len(special_days):
        specials = dict(zip(pd.to_datetime(special_days["day"]).dt.date, special_days["name"]))
    for event in events.itertuples():
        ids = sorted({i for k in np.flatnonzero(point_event == event.event) for i in matches[k]})
        if ids:
            verdicts.append("true")
            matched_ids.append(",".join(ids))
        elif len(quality) and _overlaps(event.start, event.end, quality).any():
            verdicts.append("data_quality_fault")
            matched_ids.append(",".join(quality[_overlaps(event.start, event.end, quality)]["id"]))
        else:
            verdicts.append("false")
            matched_ids.append("")
        days = pd.date_range(event.start.floor("D"), event.end - pd.Timedelta(microseconds=1),
                             freq="D").date
        special.append(", ".join(sorted({specials[d] for d in days if d in specials})))
    events["verdict"] = verdicts
    events["incident_ids"] = matched_ids
    events["special_day"] = special

    dq = pd.DatetimeIndex(_utc(list(dq_hours)), tz="UTC")
    incidents = truth.copy()
    first_alert, dq_flagged = [], []
    hours = _utc(flagged["event_hour"]) if len(flagged) else pd.Series([], dtype="datetime64[us, UTC]")
    for inc in incidents.itertuples():
        shown = [hours.iloc[k] for k in range(len(flagged)) if inc.id in matches[k]]
        first_alert.append(min(shown) if shown else pd.NaT)
        dq_flagged.append(bool(((dq >= inc.window_start) & (dq < inc.window_end)).any()))
    incidents["first_alert_hour"] = pd.to_datetime(pd.Series(first_alert, index=incidents.index,
                                                             dtype="object"), utc=True)
    incidents["dq_flagged"] = dq_flagged
    is_business = incidents["kind"] == "business"
    incidents["detected"] = np.where(
        is_business, incidents["first_alert_hour"].notna(), incidents["dq_flagged"]
    )
    incidents["hours_to_detect"] = (
        (incidents["first_alert_hour"] + HOUR - incidents["start"]) / HOUR
    ).where(is_business)
    incidents["first_partition"] = (incidents["first_alert_hour"] == incidents["window_start"]) & is_business
    return events, incidents


def summary(events: pd.DataFrame, incidents: pd.DataFrame, days: float) -> dict[str, float]:
    """Headline numbers over one or more runs (`days` = scored days, after cold start)."""
    business = incidents[incidents["kind"] == "business"]
    n_true = int((events["verdict"] == "true").sum())
    n_false = int((events["verdict"] == "false").sum())
    n_dq = int((events["verdict"] == "data_quality_fault").sum())
    precision = n_true / (n_true + n_false) if n_true + n_false else float("nan")
    recall = float(business["detected"].mean()) if len(business) else float("nan")
    f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
    return {
        "alert_events": len(events),
        "true_alerts": n_true,
        "false_alerts": n_false,
        "alerts_from_dq_faults": n_dq,
        "false_alerts_per_day": n_false / days if days else float("nan"),
        "false_alerts_on_special_days": int(
            ((events["verdict"] == "false") & (events["special_day"] != "")).sum()
        ),
        "precision": precision,
        "recall": recall,
        "f1": f1,
        "days": days,
    }


def per_type(events: pd.DataFrame, incidents: pd.DataFrame) -> pd.DataFrame:
    """Per incident type: incidents, detected, recall, first-partition rate, median hours to
    detect, and precision/F1 of the alert category that names the type."""
    rows = []
    judged = events[events["verdict"] != "data_quality_fault"]
    for incident_type, group in incidents.groupby("type", sort=True):
        kind = group["kind"].iloc[0]
        recall = float(group["detected"].mean())
        category = TYPE_CATEGORY.get(incident_type)
        precision = float("nan")
        if category is not None:
            in_category = judged[judged["category"] == category]
            if len(in_category):
                precision = float((in_category["verdict"] == "true").mean())
        f1 = (2 * precision * recall / (precision + recall)
              if np.isfinite(precision) and precision + recall else float("nan"))
        rows.append({
            "type": incident_type,
            "kind": kind,
            "incidents": len(group),
            "detected": int(group["detected"].sum()),
            "recall": recall,
            "first_partition": float(group["first_partition"].mean()) if kind == "business" else float("nan"),
            "median_hours_to_detect": float(group["hours_to_detect"].median()) if kind == "business" else float("nan"),
            "alert_category": category or ("data-quality gate" if kind != "business" else ""),
            "precision": precision,
            "f1": f1,
        })
    return pd.DataFrame(rows)
