"""Incidents against ground truth: how many pages the anomaly points became, which incident
answers which labelled incident (for root-cause accuracy), and false incidents per day.

An incident answers a labelled business incident when its span [started_at, last anomaly
+ 1 h) overlaps the label's window and its cohort (or its localised cohort) is compatible
with the label's cohort; the most severe such incident is taken.
"""

from __future__ import annotations

import json

import pandas as pd

from funnelwatch.evaluation.rca_accuracy import cohort_string
from funnelwatch.incidents.lifecycle import compatible


def _span(frame: pd.DataFrame) -> tuple[pd.Series, pd.Series]:
    start = pd.to_datetime(frame["started_at"], utc=True)
    end = pd.to_datetime(frame["last_anomaly_at"], utc=True) + pd.Timedelta(hours=1)
    return start, end


def match_incidents(incidents: pd.DataFrame, labels: list[dict]) -> list[tuple[dict, dict | None]]:
    """(label, incident row as dict or None) for every business label."""
    pairs = []
    if incidents.empty:
        return [(label, None) for label in labels if label.get("kind") == "business"]
    start, end = _span(incidents)
    for label in labels:
        if label.get("kind") != "business":
            continue
        t0, t1 = pd.Timestamp(label["start"]), pd.Timestamp(label["end"])
        truth = cohort_string({k: v for k, v in (label.get("cohort") or {}).items()
                               if k != "payment_provider"})
        overlaps = (start < t1) & (end > t0)
        fits = [compatible(truth, c) or compatible(truth, w or "all")
                for c, w in zip(incidents["cohort"], incidents["where_cohort"], strict=True)]
        ok = overlaps & pd.Series(fits, index=incidents.index)
        found = incidents[ok].sort_values("severity", ascending=False)
        pairs.append((label, found.iloc[0].to_dict() if len(found) else None))
    return pairs


def false_incidents(incidents: pd.DataFrame, labels: list[dict]) -> pd.DataFrame:
    """Incidents that overlap no labelled incident of any kind (data-quality faults
    included: their aftermath is not a business false alarm of the incident layer)."""
    if incidents.empty:
        return incidents
    start, end = _span(incidents)
    hit = pd.Series(False, index=incidents.index)
    for label in labels:
        t0, t1 = pd.Timestamp(label["start"]), pd.Timestamp(label["end"])
        hit |= (start < t1 + pd.Timedelta(hours=2)) & (end > t0)
    return incidents[~hit]


def rca_of(incident: dict | None) -> dict | None:
    if incident is None or incident.get("rca") in (None, ""):
        return None
    rca = incident["rca"]
    return json.loads(rca) if isinstance(rca, str) else rca
