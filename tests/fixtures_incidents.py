"""The incident the report and page tests share: a week of one scored series with a planted
checkout drop, the open incident over it (its RCA with an HTML-unsafe evidence line), and a
warehouse file seeded with both."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta

import duckdb
import numpy as np
import pandas as pd

from funnelwatch.detection.store import ensure_detection_schema, replace_window
from funnelwatch.incidents.store import INCIDENT_COLUMNS, ensure_incident_schema

METRIC = "checkout_conversion_rate"
COHORT = "os=iOS"
WHERE = "browser=Safari&os=iOS&utm_campaign=ig_sale"
END = datetime(2026, 11, 30, tzinfo=UTC)
START = END - timedelta(days=7)
DROP_START = END - timedelta(hours=10)  # 14:00
DROP_END = END - timedelta(hours=6)  # 18:00 (exclusive)
INCIDENT_ID = "inc-20261129-1400-checkout"


def series_frame() -> pd.DataFrame:
    hours = pd.date_range(START, END, freq="h", inclusive="left", tz="UTC")
    rng = np.random.default_rng(7)
    hour_of_day = hours.hour.to_numpy()
    expected = 0.5 + 0.04 * np.sin(hour_of_day / 24 * 2 * np.pi)
    value = expected + rng.normal(0, 0.01, len(hours))
    drop = (hours >= DROP_START) & (hours < DROP_END)
    value[drop] = expected[drop] * 0.82
    return pd.DataFrame({
        "event_hour": hours, "metric": METRIC, "cohort": COHORT, "cohort_dimensions": "os",
        "value": value, "numerator": value * 400, "denominator": 400.0,
        "expected": expected, "lower": expected - 0.03, "upper": expected + 0.03,
        "score": np.where(drop, 6.0, 0.3), "p_value": np.where(drop, 1e-6, 0.5),
        "severity": np.where(drop, 85.0, 0.0), "direction": np.where(drop, "down", None),
        "is_anomaly": drop, "detectors_fired": [["rate"] if d else [] for d in drop],
        "why": np.where(drop, "rate test", None),
    })


def rca_payload(evidence: str) -> dict:
    per_hour, cumulative = [], 0.0
    for i in range(4):
        lost = 8.0
        cumulative += lost * 90.0
        per_hour.append({
            "event_hour": (DROP_START + timedelta(hours=i)).isoformat(),
            "expected_orders": 44.0, "actual_orders": 36.0, "lost_orders": lost,
            "revenue_at_risk": lost * 90.0, "cumulative_revenue_at_risk": cumulative,
        })
    return {
        "metric": METRIC, "cohort": COHORT,
        "window_start": DROP_START.isoformat(), "window_end": DROP_END.isoformat(),
        "where": [
            {"rank": 1, "cohort": WHERE, "filters": {"browser": "Safari", "os": "iOS",
                                                    "utm_campaign": "ig_sale"},
             "step": "payment_attempt", "score": 9.1, "z": -7.2, "actual": 0.31,
             "expected": 0.52, "deviation": -0.21, "root_cause": True},
            {"rank": 2, "cohort": "browser=Safari&os=iOS", "filters": {}, "step": "payment_attempt",
             "score": 4.0, "z": -3.1, "actual": 0.44, "expected": 0.51, "deviation": -0.07,
             "root_cause": False},
        ],
        "funnel_step": "payment_attempt",
        "funnel": [
            {"step": "checkout_start", "cohort_rate": 0.62, "cohort_expected_rate": 0.63,
             "rest_rate": 0.61, "rest_expected_rate": 0.62, "change": -0.016},
            {"step": "payment_attempt", "cohort_rate": 0.41, "cohort_expected_rate": 0.70,
             "rest_rate": 0.71, "rest_expected_rate": 0.70, "change": -0.41},
            {"step": "purchase", "cohort_rate": 0.88, "cohort_expected_rate": 0.90,
             "rest_rate": 0.90, "rest_expected_rate": 0.90, "change": -0.02},
        ],
        "hypotheses": [
            {"rank": 1, "kind": "deploy", "ref": "1.14.0", "service": "payment-widget",
             "title": "deploy payment-widget 1.14.0", "contribution": 0.8,
             "evidence": evidence, "at": (DROP_START - timedelta(minutes=5)).isoformat()},
            {"rank": 2, "kind": "campaign", "ref": "ig_sale", "service": None,
             "title": "campaign ig_sale", "contribution": 0.15,
             "evidence": "the campaign started two days earlier", "at": None},
        ],
        "impact": {"lost_orders": 32.0, "revenue_at_risk": 2880.0, "average_order_value": 90.0,
                   "per_hour": per_hour},
    }


EVIDENCE = "deployed 5 min before the drop <script>alert('x')</script> & only on iOS"


def incident_row(**overrides) -> dict:
    row = {c: None for c in INCIDENT_COLUMNS}
    row.update({
        "incident_id": INCIDENT_ID, "state": "open", "category": "business",
        "title": f"{METRIC} dropped in {COHORT}", "metric": METRIC, "cohort": COHORT,
        "metrics": [METRIC], "cohorts": [COHORT, WHERE], "direction": "down", "severity": 85.0,
        "started_at": DROP_START, "last_anomaly_at": DROP_END - timedelta(hours=1),
        "updated_at": DROP_END, "anomaly_count": 4, "where_cohort": WHERE,
        "funnel_step": "payment_attempt", "top_cause": "deploy payment-widget 1.14.0",
        "rca": json.dumps(rca_payload(EVIDENCE)), "lost_orders": 32.0, "revenue_at_risk": 2880.0,
        "alert_key": "k1", "alert_version": 1, "alerted_version": 1,
    })
    row.update(overrides)
    return row


def insert_incident(con, row: dict) -> None:
    cols = list(INCIDENT_COLUMNS)
    con.execute(
        f"INSERT INTO incidents.incidents ({', '.join(cols)}) "
        f"VALUES ({', '.join('$' + c for c in cols)})",
        {c: row.get(c) for c in cols},
    )


def seed_incident_warehouse(path, timeline: list[tuple[int, str, str]]) -> None:
    """A warehouse file at `path` with the incident and detection schemas, the week's scored
    series, the open incident INCIDENT_ID and its timeline: (hours after DROP_START, kind,
    detail) per line."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with duckdb.connect(str(path)) as con:
        ensure_incident_schema(con)
        ensure_detection_schema(con)
        replace_window(con, START, END, series_frame())
        insert_incident(con, incident_row())
        for offset, kind, detail in timeline:
            con.execute(
                "INSERT INTO incidents.timeline (incident_id, event_time, kind, detail) "
                "VALUES ($i, $t, $k, $d)",
                {"i": INCIDENT_ID, "t": DROP_START + timedelta(hours=offset), "k": kind,
                 "d": detail},
            )
