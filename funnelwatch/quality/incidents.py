"""Where data-quality outcomes live: `quality.check_results` (every check of every hour) and
`quality.incidents` (one incident per broken hour, kind 'data_quality').

Detection reads `failed_hours` so that no business anomaly is raised from a broken hour.
"""

from __future__ import annotations

import json
from datetime import datetime

import duckdb

from funnelwatch.landing import as_utc_hour
from funnelwatch.quality.suites import CheckOutcome

SCHEMA = "quality"


def ensure_quality_schema(con: duckdb.DuckDBPyConnection) -> None:
    con.execute(f"CREATE SCHEMA IF NOT EXISTS {SCHEMA}")
    con.execute(
        f"""CREATE TABLE IF NOT EXISTS {SCHEMA}.check_results (
              event_hour TIMESTAMPTZ, check_name VARCHAR, passed BOOLEAN, description VARCHAR,
              evidence JSON, checked_at TIMESTAMPTZ)"""
    )
    con.execute(
        f"""CREATE TABLE IF NOT EXISTS {SCHEMA}.incidents (
              incident_id VARCHAR, kind VARCHAR, event_hour TIMESTAMPTZ,
              failed_checks VARCHAR[], summary VARCHAR, status VARCHAR,
              opened_at TIMESTAMPTZ, updated_at TIMESTAMPTZ)"""
    )


def incident_id(hour: datetime) -> str:
    """Stable per hour: re-checking an hour updates its incident instead of adding one."""
    return f"dq-{as_utc_hour(hour):%Y%m%d%H}"


def record_outcomes(
    con: duckdb.DuckDBPyConnection, hour: datetime, outcomes: list[CheckOutcome]
) -> str | None:
    """Replace the hour's results of these checks (other suites' results for the hour stay);
    open, update or resolve its data-quality incident from all of the hour's results.
    Returns the incident id when the hour is broken."""
    hour = as_utc_hour(hour)
    ensure_quality_schema(con)
    key = incident_id(hour)
    con.execute("BEGIN TRANSACTION")
    try:
        con.execute(
            f"DELETE FROM {SCHEMA}.check_results WHERE event_hour = $h "
            "AND list_contains($names, check_name)",
            {"h": hour, "names": [o.name for o in outcomes]},
        )
        for o in outcomes:
            con.execute(
                f"INSERT INTO {SCHEMA}.check_results VALUES ($h, $n, $p, $d, $e, now())",
                {"h": hour, "n": o.name, "p": o.passed, "d": o.description,
                 "e": json.dumps(o.evidence, default=str)},
            )
        failed = [r[0] for r in con.execute(
            f"SELECT check_name FROM {SCHEMA}.check_results WHERE event_hour = $h "
            "AND NOT passed ORDER BY check_name", {"h": hour}).fetchall()]
        existing = con.execute(
            f"SELECT status FROM {SCHEMA}.incidents WHERE incident_id = $k", {"k": key}
        ).fetchone()
        if failed:
            summary = f"data-quality checks failed for {hour:%Y-%m-%d %H:00} UTC: " + ", ".join(
                failed
            )
            # A check whose evidence has a headline (e.g. the unreadable files' names) says it
            # in the incident: the on-call person sees what to fix without opening the run.
            headlines = [r[0] for r in con.execute(
                f"SELECT json_extract_string(evidence, '$.headline') FROM {SCHEMA}.check_results "
                "WHERE event_hour = $h AND NOT passed ORDER BY check_name", {"h": hour}
            ).fetchall() if r[0]]
            if headlines:
                summary += "; " + "; ".join(headlines)
            if existing:
                con.execute(
                    f"UPDATE {SCHEMA}.incidents SET failed_checks = $f, summary = $s, "
                    "status = 'open', updated_at = now() WHERE incident_id = $k",
                    {"f": failed, "s": summary, "k": key},
                )
            else:
                con.execute(
                    f"INSERT INTO {SCHEMA}.incidents VALUES "
                    "($k, 'data_quality', $h, $f, $s, 'open', now(), now())",
                    {"k": key, "h": hour, "f": failed, "s": summary},
                )
        elif existing and existing[0] == "open":
            con.execute(
                f"UPDATE {SCHEMA}.incidents SET status = 'resolved', updated_at = now() "
                "WHERE incident_id = $k",
                {"k": key},
            )
        con.execute("COMMIT")
    except BaseException:
        con.execute("ROLLBACK")
        raise
    return key if failed else None


def failed_hours(con: duckdb.DuckDBPyConnection, start: datetime, end: datetime) -> set[datetime]:
    """Hours in [start, end) with an open data-quality incident."""
    ensure_quality_schema(con)
    rows = con.execute(
        f"SELECT event_hour FROM {SCHEMA}.incidents WHERE status = 'open' "
        "AND event_hour >= $s AND event_hour < $e",
        {"s": start, "e": end},
    ).fetchall()
    return {r[0] for r in rows}
