"""Where incidents live (schema `incidents` in the warehouse).

`incidents.incidents`   one row per incident, updated in place (stable `incident_id`).
`incidents.members`     which anomaly points (event_hour, metric, cohort) belong to which incident.
`incidents.timeline`    what happened to an incident, in order (opened, updated, escalated,
                        alerted, acknowledged, feedback, resolved, reopened).
`incidents.feedback`    what people said about an incident (true / false_alarm / expected).
"""

from __future__ import annotations

import duckdb

SCHEMA = "incidents"
STATES = ("open", "acknowledged", "resolved")
FEEDBACK_LABELS = ("true", "false_alarm", "expected")

INCIDENT_COLUMNS = {
    "incident_id": "VARCHAR PRIMARY KEY",
    "state": "VARCHAR",  # open | acknowledged | resolved
    "category": "VARCHAR",  # business (data-quality incidents live in quality.incidents)
    "title": "VARCHAR",
    "metric": "VARCHAR",  # the primary (most severe) anomalous metric
    "cohort": "VARCHAR",  # ... and its cohort, as detection named it
    # where the grouping localised the problem (lifecycle.localise_points); NULL when no
    # localisation explained its first points (they were grouped by compatible cohorts)
    "localised_cohort": "VARCHAR",
    "metrics": "VARCHAR[]",
    "cohorts": "VARCHAR[]",
    "direction": "VARCHAR",
    "severity": "DOUBLE",  # 0-100, max over the members, raised by impact
    "started_at": "TIMESTAMPTZ",  # first anomalous hour
    "last_anomaly_at": "TIMESTAMPTZ",  # last anomalous hour seen
    "resolved_at": "TIMESTAMPTZ",
    "acknowledged_at": "TIMESTAMPTZ",
    "updated_at": "TIMESTAMPTZ",
    "anomaly_count": "INTEGER",
    "where_cohort": "VARCHAR",  # root cause: the localised cohort (rank 1)
    "funnel_step": "VARCHAR",  # root cause: the step where the loss starts
    "top_cause": "VARCHAR",  # root cause: the best hypothesis, e.g. 'deploy payment-widget 1.14.0'
    "rca": "JSON",  # funnelwatch.incidents.rca.analyse_incident(...) result
    "lost_orders": "DOUBLE",  # cumulative, expected minus actual purchases
    "revenue_at_risk": "DOUBLE",  # lost_orders x average order value
    "alert_key": "VARCHAR",  # dedup key for the outbox/PagerDuty; fresh on every re-open
    "alert_version": "INTEGER",  # bumped when an update is worth a message (open, escalate, resolve)
    "alerted_version": "INTEGER",  # the last version sent to the outbox
    "report_path": "VARCHAR",
    "feedback": "VARCHAR",  # the latest feedback label, if any
}


def add_timeline(con: duckdb.DuckDBPyConnection, incident_id: str, at, kind: str,
                 detail: str) -> None:
    """One row of an incident's timeline (lifecycle, alerts and feedback all write here)."""
    con.execute(
        f"INSERT INTO {SCHEMA}.timeline (incident_id, event_time, kind, detail) "
        "VALUES ($i, $t, $k, $d)",
        {"i": incident_id, "t": at, "k": kind, "d": detail},
    )


def ensure_incident_schema(con: duckdb.DuckDBPyConnection) -> None:
    con.execute(f"CREATE SCHEMA IF NOT EXISTS {SCHEMA}")
    cols = ", ".join(f"{name} {sql_type}" for name, sql_type in INCIDENT_COLUMNS.items())
    con.execute(f"CREATE TABLE IF NOT EXISTS {SCHEMA}.incidents ({cols})")
    # A warehouse written by an earlier version lacks the newer columns: add them in place.
    for name, sql_type in INCIDENT_COLUMNS.items():
        if "PRIMARY KEY" not in sql_type:
            con.execute(f"ALTER TABLE {SCHEMA}.incidents ADD COLUMN IF NOT EXISTS {name} {sql_type}")
    con.execute(
        f"""CREATE TABLE IF NOT EXISTS {SCHEMA}.members (
              incident_id VARCHAR, event_hour TIMESTAMPTZ, metric VARCHAR, cohort VARCHAR,
              severity DOUBLE, direction VARCHAR)"""
    )
    con.execute(
        f"""CREATE TABLE IF NOT EXISTS {SCHEMA}.timeline (
              incident_id VARCHAR, event_time TIMESTAMPTZ, kind VARCHAR, detail VARCHAR,
              recorded_at TIMESTAMPTZ DEFAULT now())"""
    )
    con.execute(
        f"""CREATE TABLE IF NOT EXISTS {SCHEMA}.feedback (
              feedback_id VARCHAR PRIMARY KEY, incident_id VARCHAR, label VARCHAR,
              metric VARCHAR, cohort VARCHAR, window_start TIMESTAMPTZ, window_end TIMESTAMPTZ,
              author VARCHAR, note VARCHAR, submitted_at TIMESTAMPTZ, applied_at TIMESTAMPTZ)"""
    )
