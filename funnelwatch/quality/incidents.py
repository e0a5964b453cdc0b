"""Where data-quality outcomes live: `quality.check_results` (every check of every hour),
`quality.incidents` (one row per problem, spanning its hours) and `quality.incident_hours`
(which hours each incident covers, with the checks that failed in each).

An incident is one problem, not one hour: contiguous failing hours of the same kind share it.
Kinds:
- `missing_data`: a gap, hours with no events at all (a day with no file, a feed that
  stopped); every failed check of an empty hour belongs to the gap.
- `tracking_loss`: one event type vanished while its neighbours and the later funnel steps
  held (check `events_tracking_loss`); one incident per event type (`subject`).
- `data_quality`: any other failed check of an hour that has events (nulls, cut-off hour,
  unreadable files, rejected rows, a mart that does not reconcile).

Contiguity: a failing hour joins the nearest incident of its kind and subject when no hour
between them was checked and passed for it. Hours never checked do not break an incident, and
an empty hour (a gap) does not break a tracking loss: it says nothing about the event type.
A gap or a tracking loss is `open` while it lasts and `resolved` once a later hour is checked
and passes (the feed resumed, the event came back). A `data_quality` incident stays open until
its hours are re-checked and pass (the data was fixed), as does any incident whose every hour
was fixed.

Detection reads `failed_hours` (the hours an incident covers, resolved or not: a gap that has
ended still has no data) so that no business anomaly is raised from a broken hour.
"""

from __future__ import annotations

import json
from datetime import datetime, timedelta

import duckdb

from funnelwatch.landing import as_utc_hour
from funnelwatch.quality.outcomes import CheckOutcome
from funnelwatch.quality.tracking import TRACKING_LOSS_CHECK

SCHEMA = "quality"
HOUR = timedelta(hours=1)

MISSING_DATA = "missing_data"
TRACKING_LOSS = "tracking_loss"
DATA_QUALITY = "data_quality"
KINDS = (MISSING_DATA, DATA_QUALITY, TRACKING_LOSS)  # the order record_outcomes answers in
_ID_PREFIX = {MISSING_DATA: "gap", TRACKING_LOSS: "tl", DATA_QUALITY: "dq"}


def ensure_quality_schema(con: duckdb.DuckDBPyConnection) -> None:
    con.execute(f"CREATE SCHEMA IF NOT EXISTS {SCHEMA}")
    con.execute(
        f"""CREATE TABLE IF NOT EXISTS {SCHEMA}.check_results (
              event_hour TIMESTAMPTZ, check_name VARCHAR, passed BOOLEAN, description VARCHAR,
              evidence JSON, checked_at TIMESTAMPTZ)"""
    )
    _migrate_per_hour_incidents(con)
    con.execute(
        f"""CREATE TABLE IF NOT EXISTS {SCHEMA}.incidents (
              incident_id VARCHAR, kind VARCHAR, subject VARCHAR,
              first_hour TIMESTAMPTZ, last_hour TIMESTAMPTZ, hours INTEGER,
              failed_checks VARCHAR[], summary VARCHAR, status VARCHAR,
              opened_at TIMESTAMPTZ, updated_at TIMESTAMPTZ)"""
    )
    con.execute(
        f"""CREATE TABLE IF NOT EXISTS {SCHEMA}.incident_hours (
              incident_id VARCHAR, event_hour TIMESTAMPTZ, failed_checks VARCHAR[])"""
    )


def _migrate_per_hour_incidents(con: duckdb.DuckDBPyConnection) -> None:
    """A warehouse from before incidents spanned hours has one row per hour (`event_hour`):
    each becomes a one-hour incident, so its broken hours stay broken."""
    columns = {r[0] for r in con.execute(
        "SELECT column_name FROM information_schema.columns WHERE table_schema = $s "
        "AND table_name = 'incidents'", {"s": SCHEMA}).fetchall()}
    if "event_hour" not in columns:
        return
    con.execute(f"ALTER TABLE {SCHEMA}.incidents RENAME TO incidents_per_hour")
    con.execute(
        f"""CREATE TABLE {SCHEMA}.incidents AS
            SELECT incident_id, kind, CAST(NULL AS VARCHAR) AS subject,
                   event_hour AS first_hour, event_hour AS last_hour, 1 AS hours,
                   failed_checks, summary, status, opened_at, updated_at
            FROM {SCHEMA}.incidents_per_hour"""
    )
    con.execute(
        f"""CREATE TABLE IF NOT EXISTS {SCHEMA}.incident_hours AS
            SELECT incident_id, event_hour, failed_checks FROM {SCHEMA}.incidents_per_hour
            WHERE status = 'open'"""
    )
    con.execute(f"DROP TABLE {SCHEMA}.incidents_per_hour")


def incident_id(kind: str, first_hour: datetime, subject: str | None = None) -> str:
    """Stable for the incident's first hour: re-checking its hours updates it."""
    parts = [_ID_PREFIX[kind]] + ([subject] if subject else [])
    return "-".join(parts) + f"-{as_utc_hour(first_hour):%Y%m%d%H}"


def record_outcomes(
    con: duckdb.DuckDBPyConnection, hour: datetime, outcomes: list[CheckOutcome]
) -> str | None:
    """Replace the hour's results of these checks (other suites' results for the hour stay)
    and bring the incidents the hour belongs to up to date: join, open, extend, shrink or
    resolve. A tracking loss found now that started earlier (its evidence `run_start`) marks
    the earlier hours of the run too, so the incident starts in its first full hour.
    Returns the id of the hour's incident when the hour is broken (a gap before a data-quality
    problem before a tracking loss: `hour_incidents` lists them all)."""
    hour = as_utc_hour(hour)
    ensure_quality_schema(con)
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
        earlier = _backdate_tracking_loss(con, hour, outcomes)
        for h in [*earlier, hour]:
            _sync_hour(con, h)
        _refresh_status(con)
        con.execute("COMMIT")
    except BaseException:
        con.execute("ROLLBACK")
        raise
    found = hour_incidents(con, hour)
    return found[0] if found else None


def hour_incidents(con: duckdb.DuckDBPyConnection, hour: datetime) -> list[str]:
    """The incidents covering `hour`, a gap first, then data quality, then tracking losses."""
    rows = con.execute(
        f"""SELECT i.incident_id, i.kind FROM {SCHEMA}.incident_hours h
            JOIN {SCHEMA}.incidents i USING (incident_id) WHERE h.event_hour = $h""",
        {"h": as_utc_hour(hour)},
    ).fetchall()
    return [r[0] for r in sorted(rows, key=lambda r: (KINDS.index(r[1]), r[0]))]


def _backdate_tracking_loss(con, hour: datetime, outcomes: list[CheckOutcome]) -> list[datetime]:
    """Hours before `hour` that a tracking loss found now covers: their tracking result is
    turned into a failure naming the event type (it passed then only because one hour was
    too little evidence)."""
    lost = next((o.evidence.get("lost", []) for o in outcomes
                 if o.name == TRACKING_LOSS_CHECK and not o.passed), [])
    touched: set[datetime] = set()
    for entry in lost:
        for h in entry.get("run_hours", []):
            h = as_utc_hour(h)
            if h >= hour:
                continue
            row = con.execute(
                f"SELECT passed, evidence, description FROM {SCHEMA}.check_results "
                "WHERE event_hour = $h AND check_name = $n", {"h": h, "n": TRACKING_LOSS_CHECK}
            ).fetchone()
            evidence = json.loads(row[1]) if row and row[1] else {}
            if row is None or row[0]:
                evidence = {"lost": []}
            if any(e["event_type"] == entry["event_type"] for e in evidence.get("lost", [])):
                continue
            evidence.setdefault("lost", []).append(
                {**{k: v for k, v in entry.items() if k != "run_hours"},
                 "flagged_at": f"{hour:%Y-%m-%d %H:00}"})
            con.execute(
                f"DELETE FROM {SCHEMA}.check_results WHERE event_hour = $h AND check_name = $n",
                {"h": h, "n": TRACKING_LOSS_CHECK})
            con.execute(
                f"INSERT INTO {SCHEMA}.check_results VALUES ($h, $n, false, $d, $e, now())",
                {"h": h, "n": TRACKING_LOSS_CHECK,
                 "d": row[2] if row else outcomes[0].description,
                 "e": json.dumps(evidence, default=str)})
            touched.add(h)
    return sorted(touched)


def _hour_is_empty(con, hour: datetime) -> bool:
    exists = con.execute(
        "SELECT count(*) FROM information_schema.tables WHERE table_schema = 'raw' "
        "AND table_name = 'events'").fetchone()[0]
    if not exists:
        return False  # results recorded without a raw layer say nothing about emptiness
    return con.execute("SELECT count(*) = 0 FROM raw.events WHERE event_hour = $h",
                       {"h": hour}).fetchone()[0]


def _hour_groups(con, hour: datetime) -> dict[tuple[str, str], list[str]]:
    """(kind, subject) -> the hour's failed checks that belong to it."""
    failed = con.execute(
        f"SELECT check_name, evidence FROM {SCHEMA}.check_results WHERE event_hour = $h "
        "AND NOT passed ORDER BY check_name", {"h": hour}).fetchall()
    groups: dict[tuple[str, str], list[str]] = {}
    if not failed:
        return groups
    empty = _hour_is_empty(con, hour)
    for name, evidence in failed:
        if empty:
            groups.setdefault((MISSING_DATA, ""), []).append(name)
        elif name == TRACKING_LOSS_CHECK:
            for entry in json.loads(evidence or "{}").get("lost", []):
                groups.setdefault((TRACKING_LOSS, entry["event_type"]), []).append(name)
        else:
            groups.setdefault((DATA_QUALITY, ""), []).append(name)
    return groups


def _sync_hour(con, hour: datetime) -> None:
    groups = _hour_groups(con, hour)
    members = con.execute(
        f"""SELECT i.incident_id, i.kind, coalesce(i.subject, '') FROM {SCHEMA}.incident_hours h
            JOIN {SCHEMA}.incidents i USING (incident_id) WHERE h.event_hour = $h""",
        {"h": hour}).fetchall()
    for inc, kind, subject in members:
        if (kind, subject) in groups:
            con.execute(
                f"UPDATE {SCHEMA}.incident_hours SET failed_checks = $f "
                "WHERE incident_id = $i AND event_hour = $h",
                {"f": groups.pop((kind, subject)), "i": inc, "h": hour})
        else:  # re-checked and fine now: the incident no longer covers the hour
            con.execute(f"DELETE FROM {SCHEMA}.incident_hours WHERE incident_id = $i "
                        "AND event_hour = $h", {"i": inc, "h": hour})
        _refresh_incident(con, inc)
    for (kind, subject), checks in groups.items():
        inc = _adjacent_incident(con, hour, kind, subject)
        if inc is None:
            inc = incident_id(kind, hour, subject)
            con.execute(f"DELETE FROM {SCHEMA}.incident_hours WHERE incident_id = $i",
                        {"i": inc})
            con.execute(f"DELETE FROM {SCHEMA}.incidents WHERE incident_id = $i", {"i": inc})
            con.execute(
                f"INSERT INTO {SCHEMA}.incidents VALUES ($i, $k, $s, $h, $h, 1, $f, '', "
                "'open', now(), now())",
                {"i": inc, "k": kind, "s": subject or None, "h": hour, "f": checks})
        con.execute(f"INSERT INTO {SCHEMA}.incident_hours VALUES ($i, $h, $f)",
                    {"i": inc, "h": hour, "f": checks})
        _refresh_incident(con, inc)


def _breaking_hours_sql(kind: str) -> str:
    """Checked hours that are not covered by incident $i (and, for a tracking loss, are not
    empty hours of a gap): such an hour between two failing hours splits them."""
    gap_ok = (
        f" AND r.event_hour NOT IN (SELECT h.event_hour FROM {SCHEMA}.incident_hours h "
        f"JOIN {SCHEMA}.incidents g USING (incident_id) WHERE g.kind = '{MISSING_DATA}')"
        if kind == TRACKING_LOSS else "")
    return (f"SELECT DISTINCT r.event_hour FROM {SCHEMA}.check_results r "
            f"WHERE r.event_hour NOT IN (SELECT event_hour FROM {SCHEMA}.incident_hours "
            f"WHERE incident_id = $i){gap_ok}")


def _adjacent_incident(con, hour: datetime, kind: str, subject: str) -> str | None:
    candidates = con.execute(
        f"""SELECT incident_id, first_hour, last_hour FROM {SCHEMA}.incidents
            WHERE kind = $k AND coalesce(subject, '') = $s AND hours > 0
            ORDER BY least(abs(epoch($h) - epoch(last_hour)), abs(epoch(first_hour) - epoch($h)))""",
        {"k": kind, "s": subject, "h": hour}).fetchall()
    for inc, first, last in candidates[:2]:
        low, high = (last, hour) if hour > last else (hour, first)
        if first <= hour <= last:
            return inc
        breaking = con.execute(
            f"SELECT count(*) FROM ({_breaking_hours_sql(kind)}) "
            "WHERE event_hour > $lo AND event_hour < $hi",
            {"i": inc, "lo": low, "hi": high}).fetchone()[0]
        if not breaking:
            return inc
    return None


_KIND_TEXT = {
    MISSING_DATA: "missing data (no events)",
    DATA_QUALITY: "data-quality checks failed",
    TRACKING_LOSS: "tracking loss",
}


def _refresh_incident(con, inc: str) -> None:
    """Span, hour count, checks and summary from the incident's hours."""
    kind, subject, first, last, hours, checks = con.execute(
        f"""SELECT i.kind, i.subject, min(h.event_hour), max(h.event_hour), count(h.event_hour),
                   list_sort(list_distinct(flatten(list(h.failed_checks))))
            FROM {SCHEMA}.incidents i LEFT JOIN {SCHEMA}.incident_hours h USING (incident_id)
            WHERE i.incident_id = $i GROUP BY ALL""", {"i": inc}).fetchone()
    if not hours:  # every hour re-checked and fine: the data was fixed
        con.execute(f"UPDATE {SCHEMA}.incidents SET hours = 0, status = 'resolved', "
                    "updated_at = now() WHERE incident_id = $i", {"i": inc})
        return
    span = (f"{first:%Y-%m-%d %H:00} UTC" if first == last
            else f"{first:%Y-%m-%d %H:00} to {last:%Y-%m-%d %H:00} UTC, {hours} hours")
    if kind == TRACKING_LOSS:
        summary = (f"tracking loss: {subject} events missing from {span} while the other "
                   f"event types and later funnel steps held")
    else:
        summary = f"{_KIND_TEXT[kind]} for {span}: " + ", ".join(checks)
    # A check whose evidence has a headline (e.g. the unreadable files' names) says it in the
    # incident: the on-call person sees what to fix without opening the run.
    headlines: list[str] = []
    for (headline,) in con.execute(
            f"""SELECT json_extract_string(r.evidence, '$.headline')
                FROM {SCHEMA}.check_results r JOIN {SCHEMA}.incident_hours h
                  ON h.event_hour = r.event_hour AND list_contains(h.failed_checks, r.check_name)
                WHERE h.incident_id = $i AND NOT r.passed
                ORDER BY r.event_hour DESC, r.check_name""", {"i": inc}).fetchall():
        if headline and headline not in headlines:
            headlines.append(headline)
    if headlines:  # a tracking loss's latest hour has its whole run's numbers
        summary += "; " + "; ".join(headlines[:1] if kind == TRACKING_LOSS else headlines[:5])
    con.execute(
        f"UPDATE {SCHEMA}.incidents SET first_hour = $f, last_hour = $l, hours = $n, "
        "failed_checks = $c, summary = $s, status = 'open', updated_at = now() "
        "WHERE incident_id = $i",
        {"f": first, "l": last, "n": hours, "c": checks, "s": summary, "i": inc})


def _refresh_status(con) -> None:
    """A gap or a tracking loss ends when an hour after its last one was checked and passed
    for it (the feed resumed, the event came back). A data-quality incident stays open until
    its hours are fixed: its hours hold bad data, which a good next hour does not mend."""
    for inc, kind, last in con.execute(
            f"SELECT incident_id, kind, last_hour FROM {SCHEMA}.incidents "
            "WHERE status = 'open' AND hours > 0 AND kind IN ($gap, $loss)",
            {"gap": MISSING_DATA, "loss": TRACKING_LOSS}).fetchall():
        later = con.execute(
            f"SELECT count(*) FROM ({_breaking_hours_sql(kind)}) WHERE event_hour > $l",
            {"i": inc, "l": last}).fetchone()[0]
        if later:
            con.execute(f"UPDATE {SCHEMA}.incidents SET status = 'resolved', updated_at = now() "
                        "WHERE incident_id = $i", {"i": inc})


def failed_hours(con: duckdb.DuckDBPyConnection, start: datetime, end: datetime) -> set[datetime]:
    """Hours in [start, end) that a data-quality incident covers (open or ended: the hours of
    a gap or a tracking loss stay broken after it ends)."""
    ensure_quality_schema(con)
    rows = con.execute(
        f"SELECT DISTINCT event_hour FROM {SCHEMA}.incident_hours "
        "WHERE event_hour >= $s AND event_hour < $e",
        {"s": start, "e": end},
    ).fetchall()
    return {r[0] for r in rows}
