"""From anomaly points to incidents: grouping, state and timeline, one hour at a time.

Every flagged point of `detection.anomalies` for an hour joins at most one incident:

- **Grouping.** A point joins a live incident when the incident's last anomalous hour is at
  most `merge_gap_hours` earlier and the two cohorts are *compatible*: no dimension has
  different values in them (`all` is compatible with everything; `os=Linux` and
  `utm_source=facebook` are, since one bot campaign can move both; `os=iOS` and
  `os=Android` are not). The metric does not matter: one cause moves several steps of the
  funnel. Points are taken most severe first, so an incident is named after its worst series.
- **State.** `open` -> (`acknowledged`) -> `resolved` once the incident's main series has
  been back inside its expected band, unflagged, for `recovery_hours` consecutive scored
  hours. A compatible anomaly within `reopen_hours` of the resolution re-opens it (same id,
  a fresh alert key, so receivers page again).
- **Idempotent per hour.** Processing an hour again first removes what that hour added
  (members, timeline rows, incidents opened in it), so a re-run after a re-score gives the
  same incidents.

The stable id is `inc-<first hour YYYYMMDDHH>-<6 hex of metric|cohort>`.
"""

from __future__ import annotations

import hashlib
import json
import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, timedelta

import duckdb
import pandas as pd

from funnelwatch.detection.store import ensure_detection_schema
from funnelwatch.fastlane.quality import HELD_BACK
from funnelwatch.fastlane.store import SCORES as FASTLANE_SCORES
from funnelwatch.fastlane.store import ensure_fastlane_schema
from funnelwatch.fastlane.store import flagged_points_sql as fastlane_flagged_points_sql
from funnelwatch.incidents.masking import mask_small_cohorts
from funnelwatch.incidents.store import SCHEMA, add_timeline, ensure_incident_schema
from funnelwatch.landing import as_utc_hour
from rootcause import parse_cohort

log = logging.getLogger(__name__)

# Timeline kinds written by this module (and removed again when an hour is re-processed).
LIFECYCLE_KINDS = ("opened", "updated", "escalated", "resolved", "reopened")
SEVERITY_BANDS = ((90.0, "critical"), (70.0, "major"), (50.0, "minor"))

Analyse = Callable[..., dict]
# 5-minute slots per hour of the fast lane, and the share of them a recovered hour needs.
SLOTS_PER_HOUR = 12
FASTLANE_RECOVERY_COVERAGE = 0.9


@dataclass(frozen=True)
class IncidentPolicy:
    merge_gap_hours: int = 2
    recovery_hours: int = 3
    reopen_hours: int = 6


@dataclass
class HourResult:
    hour: datetime
    points: int = 0
    opened: list[str] = field(default_factory=list)
    updated: list[str] = field(default_factory=list)
    escalated: list[str] = field(default_factory=list)
    resolved: list[str] = field(default_factory=list)
    reopened: list[str] = field(default_factory=list)

    @property
    def touched(self) -> list[str]:
        return sorted(set(self.opened + self.updated + self.escalated + self.reopened))


def severity_band(severity: float) -> str:
    for floor, name in SEVERITY_BANDS:
        if severity >= floor:
            return name
    return "none"


def parse_filters(cohort: str) -> dict[str, str]:
    """`os=iOS&browser=Safari` -> {"os": "iOS", "browser": "Safari"}; `all` -> {}."""
    return parse_cohort(cohort) if cohort else {}


def compatible(a: str, b: str) -> bool:
    """True when no dimension has different values in the two cohorts."""
    fa, fb = parse_filters(a), parse_filters(b)
    return all(fb[k] == v for k, v in fa.items() if k in fb)


def contains(outer: str, inner: str) -> bool:
    """True when cohort `inner` lies inside cohort `outer` (`all` contains every cohort)."""
    fo, fi = parse_filters(outer), parse_filters(inner)
    return all(fi.get(k) == v for k, v in fo.items())


def _absorb_fragments(members: list[tuple], fresh: dict[str, dict]) -> list[tuple]:
    """Merge an incident opened this hour into another one that has, this hour, a point on
    the same metric in a cohort containing the new incident's cohort. Points are grouped
    most severe first, so a store-wide drop whose `all` point is less severe than some of its
    cohorts would otherwise open one incident per cohort incompatible with the first one
    (`os=iOS`, `os=Android`). Members are (incident, hour, metric, cohort, severity, dir)."""
    changed = True
    while changed:
        changed = False
        anchors: dict[str, set[tuple[str, str]]] = {}
        for m in members:
            anchors.setdefault(m[0], set()).add((m[2], m[3]))
        for new_id, inc in list(fresh.items()):
            if new_id not in anchors:
                continue
            host = next((other for other, points in anchors.items()
                         if other != new_id
                         and any(metric == inc["metric"] and contains(cohort, inc["cohort"])
                                 for metric, cohort in points)), None)
            if host is None:
                continue
            members = [(host, *m[1:]) if m[0] == new_id else m for m in members]
            del fresh[new_id]
            changed = True
            break
    return members


def incident_id(first_hour: datetime, metric: str, cohort: str) -> str:
    digest = hashlib.sha1(f"{metric}|{cohort}".encode()).hexdigest()[:6]
    return f"inc-{as_utc_hour(first_hour):%Y%m%d%H}-{digest}"


def _title(metric: str, cohort: str, direction: str | None) -> str:
    verb = {"down": "dropped", "up": "rose"}.get(direction or "", "changed")
    where = "the whole store" if cohort == "all" else cohort
    return f"{metric} {verb} in {where}"


def _undo_hour(con, hour: datetime) -> None:
    """Remove what a previous processing of `hour` added, so processing it again is exact."""
    # Incidents opened in this hour and seen in no later hour go; those with later members
    # stay (late data for an incident's first hour must not lose its later hours, state,
    # root cause or alert history) and take this hour's points again below.
    # Incidents already alerted stay too: the fast lane processes its hour every 5 minutes
    # and the hourly lane again later; the page sent names this id, so it must survive.
    opened_here = [r[0] for r in con.execute(
        f"""SELECT incident_id FROM {SCHEMA}.incidents i WHERE started_at = $h
            AND coalesce(alerted_version, 0) = 0
            AND NOT EXISTS (SELECT 1 FROM {SCHEMA}.members m
                            WHERE m.incident_id = i.incident_id AND m.event_hour > $h)""",
        {"h": hour},
    ).fetchall()]
    con.execute(f"DELETE FROM {SCHEMA}.members WHERE event_hour = $h", {"h": hour})
    con.execute(
        f"DELETE FROM {SCHEMA}.timeline WHERE event_time = $h AND list_contains($k, kind)",
        {"h": hour, "k": list(LIFECYCLE_KINDS)},
    )
    if opened_here:
        con.execute(f"DELETE FROM {SCHEMA}.incidents WHERE list_contains($ids, incident_id)",
                    {"ids": opened_here})
        con.execute(f"DELETE FROM {SCHEMA}.members WHERE list_contains($ids, incident_id)",
                    {"ids": opened_here})
    # An alerted incident of this hour that kept no member counts its points afresh.
    con.execute(
        f"""UPDATE {SCHEMA}.incidents i SET anomaly_count = 0 WHERE started_at = $h
            AND NOT EXISTS (SELECT 1 FROM {SCHEMA}.members m WHERE m.incident_id = i.incident_id)""",
        {"h": hour},
    )
    # Incidents resolved or re-opened at this hour go back to how they were before it.
    con.execute(
        f"""UPDATE {SCHEMA}.incidents SET state = 'open', resolved_at = NULL,
                 alert_version = alert_version - 1
            WHERE resolved_at = $h AND state = 'resolved'""",
        {"h": hour},
    )
    # Aggregates of incidents that had members at this hour are recomputed from the rest.
    con.execute(
        f"""UPDATE {SCHEMA}.incidents AS i SET
                last_anomaly_at = m.last_hour, anomaly_count = m.n, severity = m.max_severity
            FROM (SELECT incident_id, max(event_hour) AS last_hour, count(*) AS n,
                         max(severity) AS max_severity
                  FROM {SCHEMA}.members GROUP BY incident_id) AS m
            WHERE i.incident_id = m.incident_id AND i.last_anomaly_at >= $h""",
        {"h": hour},
    )


def _flagged_points(con, hour: datetime) -> pd.DataFrame:
    """The hour's flagged points of both lanes, one per series (its most severe): the
    hourly detection (`detection.anomalies`) and the 5-minute fast lane (`fastlane.scores`),
    so the fast lane's early point and the hourly lane's later one are the same incident."""
    return con.execute(
        f"""SELECT metric, cohort, max(severity) AS severity,
                   arg_max(direction, severity) AS direction,
                   arg_max(value, severity) AS value, arg_max(expected, severity) AS expected
            FROM (SELECT metric, cohort, severity, direction, value, expected
                  FROM detection.anomalies WHERE event_hour = $h AND is_anomaly
                  UNION ALL {fastlane_flagged_points_sql()})
            GROUP BY metric, cohort
            ORDER BY severity DESC, metric, cohort""",
        {"h": hour},
    ).df()


def _live_incidents(con, hour: datetime, policy: IncidentPolicy) -> pd.DataFrame:
    return con.execute(
        f"""SELECT incident_id, state, metric, cohort, severity, started_at, last_anomaly_at,
                   resolved_at, alert_key
            FROM {SCHEMA}.incidents
            WHERE started_at <= $h
              AND (state IN ('open', 'acknowledged')
                   OR (state = 'resolved' AND resolved_at >= $reopen))
            ORDER BY severity DESC, started_at""",
        {"h": hour, "reopen": hour - timedelta(hours=policy.reopen_hours)},
    ).df()


def _recovered(con, metric: str, cohort: str, last_anomaly: datetime, hour: datetime,
               hours: int) -> bool:
    """The main series was scored, unflagged and inside its band in each of the `hours`
    hours up to and including `hour` (and none of them is before the last anomaly)."""
    if hour - last_anomaly < timedelta(hours=hours):
        return False
    window = {"m": metric, "c": cohort, "from": hour - timedelta(hours=hours), "h": hour}
    good = con.execute(
        """SELECT count(*) FROM detection.anomalies
           WHERE metric = $m AND cohort = $c AND event_hour > $from AND event_hour <= $h
             AND NOT coalesce(is_anomaly, false)
             AND (lower IS NULL OR value >= lower) AND (upper IS NULL OR value <= upper)""",
        window,
    ).fetchone()[0]
    if good >= hours:
        return True
    # A series only the fast lane watches (payment_failure_rate per provider) recovers when
    # its slots of those hours were scored (nearly all) and none was flagged. A slot held
    # back by the data-quality guard proves nothing either way.
    scored, flagged = con.execute(
        f"""SELECT count(*), count(*) FILTER (WHERE is_anomaly) FROM {FASTLANE_SCORES}
            WHERE metric = $m AND cohort = $c AND event_hour > $from AND event_hour <= $h
              AND NOT starts_with(coalesce(reason, ''), $held)""",
        {**window, "held": HELD_BACK},
    ).fetchone()
    return flagged == 0 and scored >= FASTLANE_RECOVERY_COVERAGE * hours * SLOTS_PER_HOUR


def process_hour(
    con: duckdb.DuckDBPyConnection,
    hour: datetime,
    policy: IncidentPolicy | None = None,
    analyse: Analyse | None = None,
) -> HourResult:
    """Group the hour's flagged points into incidents, resolve the recovered ones and
    re-run root cause (`analyse`, see funnelwatch.incidents.rca) for those that changed.
    One transaction per hour for the grouping; root cause is stored after it."""
    policy = policy or IncidentPolicy()
    hour = as_utc_hour(hour)
    ensure_incident_schema(con)
    ensure_detection_schema(con)
    ensure_fastlane_schema(con)
    result = HourResult(hour)
    con.execute("BEGIN TRANSACTION")
    try:
        _undo_hour(con, hour)
        points = _flagged_points(con, hour)
        result.points = len(points)
        live = _live_incidents(con, hour, policy)
        incidents: dict[str, dict] = {row.incident_id: row._asdict() for row in live.itertuples()}
        fresh: dict[str, dict] = {}
        members: list[tuple] = []
        for point in points.itertuples():
            target = None
            for inc in list(incidents.values()) + list(fresh.values()):
                # Fresh and recently resolved incidents are eligible; open ones only while
                # their last anomaly is within the merge gap.
                eligible = (
                    inc["incident_id"] in fresh
                    or inc["state"] == "resolved"
                    or hour - inc["last_anomaly_at"] <= timedelta(hours=policy.merge_gap_hours)
                )
                if eligible and compatible(point.cohort, inc["cohort"]):
                    target = inc
                    break
            if target is None:
                new_id = incident_id(hour, point.metric, point.cohort)
                target = {"incident_id": new_id, "state": "open", "metric": point.metric,
                          "cohort": point.cohort, "severity": float(point.severity),
                          "started_at": hour, "last_anomaly_at": hour, "resolved_at": None,
                          "alert_key": new_id, "direction": point.direction}
                fresh[new_id] = target
            members.append((target["incident_id"], hour, point.metric, point.cohort,
                            float(point.severity), point.direction))

        members = _absorb_fragments(members, fresh)

        touched: dict[str, list[tuple]] = {}
        for m in members:
            touched.setdefault(m[0], []).append(m)
        if members:
            con.executemany(f"INSERT INTO {SCHEMA}.members VALUES (?, ?, ?, ?, ?, ?)", members)

        for inc_id, rows in touched.items():
            worst = max(r[4] for r in rows)
            if inc_id in fresh:
                inc = fresh[inc_id]
                con.execute(
                    f"""INSERT INTO {SCHEMA}.incidents (incident_id, state, category, title,
                          metric, cohort, metrics, cohorts, direction, severity, started_at,
                          last_anomaly_at, updated_at, anomaly_count, alert_key,
                          alert_version, alerted_version)
                        VALUES ($id, 'open', 'business', $title, $m, $c, $ms, $cs, $dir, $sev,
                                $h, $h, now(), $n, $id, 1, 0)""",
                    {"id": inc_id, "title": _title(inc["metric"], inc["cohort"], inc["direction"]),
                     "m": inc["metric"], "c": inc["cohort"],
                     "ms": sorted({r[2] for r in rows}), "cs": sorted({r[3] for r in rows}),
                     "dir": inc["direction"], "sev": worst, "h": hour, "n": len(rows)},
                )
                add_timeline(con, inc_id, hour, "opened",
                          f"{len(rows)} anomalous series, worst {inc['metric']} | "
                          f"{inc['cohort']} (severity {worst:.0f})")
                result.opened.append(inc_id)
                continue
            inc = incidents[inc_id]
            before_band = severity_band(float(inc["severity"]))
            new_severity = max(float(inc["severity"]), worst)
            # A resolved incident re-opens on a new point after its resolution; late data for
            # an hour before the resolution only updates it.
            reopening = inc["state"] == "resolved" and inc["resolved_at"] <= hour
            con.execute(
                f"""UPDATE {SCHEMA}.incidents SET
                      last_anomaly_at = greatest(last_anomaly_at, $h), updated_at = now(),
                      anomaly_count = anomaly_count + $n, severity = $sev,
                      metrics = list_sort(list_distinct(list_concat(metrics, $ms))),
                      cohorts = list_sort(list_distinct(list_concat(cohorts, $cs)))
                    WHERE incident_id = $id""",
                {"h": hour, "n": len(rows), "sev": new_severity, "id": inc_id,
                 "ms": sorted({r[2] for r in rows}), "cs": sorted({r[3] for r in rows})},
            )
            if reopening:
                reopen_count = con.execute(
                    f"SELECT count(*) FROM {SCHEMA}.timeline WHERE incident_id = $id "
                    "AND kind = 'reopened'", {"id": inc_id}).fetchone()[0]
                con.execute(
                    f"""UPDATE {SCHEMA}.incidents SET state = 'open', resolved_at = NULL,
                          alert_key = $key, alert_version = alert_version + 1
                        WHERE incident_id = $id""",
                    {"id": inc_id, "key": f"{inc_id}-r{reopen_count + 1}"},
                )
                add_timeline(con, inc_id, hour, "reopened",
                          f"anomalous again {hour - inc['resolved_at']} after resolving")
                result.reopened.append(inc_id)
            elif severity_band(new_severity) != before_band and new_severity > inc["severity"]:
                add_timeline(con, inc_id, hour, "escalated",
                          f"severity {inc['severity']:.0f} -> {new_severity:.0f} "
                          f"({severity_band(new_severity)})")
                result.escalated.append(inc_id)
            elif inc["started_at"] == hour:
                # its first hour processed again: every fast-lane slot of the hour, the
                # hourly lane after it, or late data. The opening row is rewritten with what
                # the hour holds now (the incident and its alert keep their id).
                add_timeline(con, inc_id, hour, "opened", f"{len(rows)} anomalous series "
                          "(first hour, as of the latest data)")
                result.updated.append(inc_id)
            else:
                add_timeline(con, inc_id, hour, "updated", f"{len(rows)} anomalous series")
                result.updated.append(inc_id)

        for inc in incidents.values():
            if inc["incident_id"] in touched or inc["state"] == "resolved":
                continue
            if _recovered(con, inc["metric"], inc["cohort"], inc["last_anomaly_at"], hour,
                          policy.recovery_hours):
                con.execute(
                    f"""UPDATE {SCHEMA}.incidents SET state = 'resolved', resolved_at = $h,
                          updated_at = now(), alert_version = alert_version + 1
                        WHERE incident_id = $id""",
                    {"h": hour, "id": inc["incident_id"]},
                )
                add_timeline(con, inc["incident_id"], hour, "resolved",
                          f"{inc['metric']} | {inc['cohort']} back in its expected band for "
                          f"{policy.recovery_hours} h")
                result.resolved.append(inc["incident_id"])

        con.execute("COMMIT")
    except BaseException:
        con.execute("ROLLBACK")
        raise
    # Root cause after the commit: a failing analysis query must not abort the grouping's
    # transaction (DuckDB has no savepoints), and the warehouse is held for less time.
    if analyse is not None:
        for inc_id in result.touched:
            update_root_cause(con, inc_id, hour, analyse)
    return result


def update_root_cause(con, inc_id: str, hour: datetime, analyse: Analyse) -> None:
    """Run `analyse` over the incident's span so far and store where, step, cause and impact.
    A failing analysis is recorded in the incident (rca.error) instead of losing it."""
    metric, cohort, started = con.execute(
        f"SELECT metric, cohort, started_at FROM {SCHEMA}.incidents WHERE incident_id = $id",
        {"id": inc_id},
    ).fetchone()
    try:
        end = hour + timedelta(hours=1)
        rca = mask_small_cohorts(con, localise_top_down(con, analyse, metric, cohort, started,
                                                        end), started, end)
    except Exception as exc:  # an analysis bug must not lose the incident
        log.exception("root cause of %s failed", inc_id)
        rca = {"error": f"{type(exc).__name__}: {exc}"}
    where = (rca.get("where") or [{}])[0].get("cohort")
    hypotheses = rca.get("hypotheses") or []
    impact = rca.get("impact") or {}
    con.execute(
        f"""UPDATE {SCHEMA}.incidents SET rca = $rca, where_cohort = $where, funnel_step = $step,
              top_cause = $cause, lost_orders = $lost, revenue_at_risk = $risk
            WHERE incident_id = $id""",
        {"rca": json.dumps(rca, default=str), "where": where, "step": rca.get("funnel_step"),
         "cause": hypotheses[0].get("title") if hypotheses else None,
         "lost": impact.get("lost_orders"), "risk": impact.get("revenue_at_risk"),
         "id": inc_id},
    )


def localise_top_down(con, analyse: Analyse, metric: str, cohort: str, start: datetime,
                      end: datetime) -> dict:
    """Root cause from the whole store first (localisation explains the parent KPI, so the
    cohort detection flagged first, often a narrow one, does not fence the answer in: a bot
    campaign flagged in `os=Linux&browser=Chrome&utm_campaign=fb_retarget` is named
    `utm_campaign=fb_retarget`). When the store-wide analysis has no confident cause that is
    compatible with the flagged cohort, the flagged cohort's own analysis is used (a small
    cohort's drop is invisible in the store's totals). On the evaluation's pipeline incidents
    this raised where-top-1 from 0.36 to 0.71 (docs/evaluation.md)."""
    rca = analyse(con, metric=metric, cohort="all", start=start, end=end)
    if cohort == "all":
        return {**rca, "scope": "store"}
    top = (rca.get("where") or [None])[0]
    if top and top.get("root_cause") and compatible(top.get("cohort") or "all", cohort):
        return {**rca, "scope": "store"}
    return {**analyse(con, metric=metric, cohort=cohort, start=start, end=end),
            "scope": "flagged cohort"}


def process_window(
    con: duckdb.DuckDBPyConnection,
    start: datetime,
    end: datetime,
    policy: IncidentPolicy | None = None,
    analyse: Analyse | None = None,
) -> list[HourResult]:
    """`process_hour` for every hour of [start, end), in order (state depends on order)."""
    hour = as_utc_hour(start)
    results = []
    while hour < end:
        results.append(process_hour(con, hour, policy, analyse))
        hour += timedelta(hours=1)
    return results


def acknowledge(con: duckdb.DuckDBPyConnection, inc_id: str, who: str, at: datetime) -> bool:
    """Mark an open incident as acknowledged (the pager gets an acknowledge). Returns False
    when it is not open. Raises KeyError for an unknown id."""
    ensure_incident_schema(con)
    row = con.execute(f"SELECT state FROM {SCHEMA}.incidents WHERE incident_id = $id",
                      {"id": inc_id}).fetchone()
    if row is None:
        raise KeyError(f"no incident {inc_id!r}")
    if row[0] != "open":
        return False
    con.execute(
        f"""UPDATE {SCHEMA}.incidents SET state = 'acknowledged', acknowledged_at = $t,
              updated_at = now(), alert_version = alert_version + 1
            WHERE incident_id = $id""",
        {"t": at, "id": inc_id},
    )
    add_timeline(con, inc_id, at, "acknowledged", f"by {who}")
    return True
