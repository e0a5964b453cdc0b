"""From anomaly points to incidents: localise, then group; state and timeline, hour by hour.

One problem is one incident, however many series and cohorts it moves:

- **Localise first.** The hour's flagged points of both lanes (hourly detection and the
  5-minute fast lane, through their stores' public readers) are explained together: for each
  flagged metric, the root-cause localiser (`funnelwatch.incidents.rca.localise_change`) says
  where the store's metric changed this hour. A point whose cohort is the same as, inside, or
  around one of those cohorts takes it as its *localised cohort* (a bot campaign flagged as
  `add_to_cart_rate` at `all`, `sessions` in `os=Linux&utm_campaign=fb_retarget` and
  `js_error_session_rate` in `utm_campaign=fb_retarget` all localise to
  `utm_campaign=fb_retarget`); a point the store-wide scan does not explain (a small cohort's
  drop, invisible in the store's totals) keeps its own cohort.
- **Group by where.** Points whose localised cohorts are the same or nested (judged on the
  dimensions all their sessions share over the week, `rca.cohort_closures`) join one
  incident; the other series are its symptoms (`incidents.members`), not incidents of their
  own. Points without a localisation (no analysis configured, no marts yet, a change the
  store-wide scan does not see) group by the same rule on their own cohorts. An ongoing incident
  (last anomaly at most `merge_gap_hours` earlier, or resolved less than `reopen_hours` ago)
  absorbs new symptoms of its localised cohort and updates instead of opening a new one. The
  metric does not matter: one cause moves several steps of the funnel. For an incident that
  root cause put on a deploy, another deploy that could move its step, made after it began, is
  a new candidate cause: points up to `CAUSE_WINDOW` after it open a provisional incident of
  their own and root cause decides (`_merge_by_cause` merges it back when it names the same
  cause; back-to-back checkout releases, each breaking the shipping step, stay two problems).
- **State.** `open` -> (`acknowledged`) -> `resolved` once the localised cohort has
  recovered: the incident's main series back inside its expected band, unflagged, for
  `recovery_hours` consecutive scored hours, and none of its symptom series flagged in either
  lane over those hours (one recovered symptom is not a recovered problem). A new point of
  its localised cohort within `reopen_hours` of the resolution re-opens it (same id, a fresh
  alert key, so receivers page again).
- **Idempotent per hour.** Processing an hour again first removes what that hour added
  (members, timeline rows, incidents opened in it), so a re-run after a re-score gives the
  same incidents.

The stable id is `inc-<first hour YYYYMMDDHH>-<6 hex of metric|localised cohort>`.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, timedelta

import duckdb
import pandas as pd

from detectors.sequential import WINDOW_GRID
from funnelwatch.detection import store as detection_store
from funnelwatch.fastlane import store as fastlane_store
from funnelwatch.incidents.masking import mask_small_cohorts
from funnelwatch.incidents.rca import explained_by_planned
from funnelwatch.incidents.rca.constants import BOT_METRICS, CAUSE_WINDOW, SERVICE_STEPS
from funnelwatch.incidents.rca.context import deploys_between
from funnelwatch.incidents.store import SCHEMA, add_timeline, ensure_incident_schema
from funnelwatch.landing import as_utc_hour
from rootcause import format_cohort, parse_cohort

log = logging.getLogger(__name__)

# The category of a change explained by planned traffic: kept for the record, never paged.
CONTEXT = "context"
# Timeline kinds written by this module (and removed again when an hour is re-processed).
LIFECYCLE_KINDS = ("opened", "updated", "escalated", "resolved", "reopened")
SEVERITY_BANDS = ((90.0, "critical"), (70.0, "major"), (50.0, "minor"))

Analyse = Callable[..., dict]
# localise(con, metric=..., start=..., end=..., cohorts=[...]) -> (the causes the localiser
# accepts, {flagged cohort: the cause's cohort that explains it, or None}): rca.explain_points
Localise = Callable[..., tuple[list[dict], dict[str, str | None]]]
# closures(con, cohorts, start, end) -> {cohort: its filters and every dimension its sessions
# share}: rca.cohort_closures (two names of the same sessions compare as nested)
Closures = Callable[..., dict[str, dict[str, str]]]
# Causes that are one change wherever they show: two incidents whose analyses name the same
# deploy are one problem even when their wheres are not nested (its where widens to theirs).
ONE_CHANGE_CAUSES = frozenset({"deploy"})
# Longest evidence window (hours) a localisation or root cause looks back over: the sequential
# test's longest window, so a slow drop flagged on three days of pooled hours (the seeded iOS
# Safari x ig_sale case) is analysed from its onset and its deploy is in reach.
MAX_EVIDENCE_HOURS = max(WINDOW_GRID)
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


def contains(outer: str, inner: str, closures: dict[str, dict[str, str]] | None = None) -> bool:
    """True when cohort `inner` lies inside cohort `outer` (`all` contains every cohort);
    with `closures`, judged on `inner`'s closure (the dimensions all its sessions share)."""
    fo = parse_filters(outer)
    fi = (closures or {}).get(inner) or parse_filters(inner)
    return all(fi.get(k) == v for k, v in fo.items())


def _absorb_fragments(members: list[tuple], fresh: dict[str, dict],
                      localised: set[str], closures: dict | None = None) -> list[tuple]:
    """Merge an unlocalised incident opened this hour into another unlocalised one that has,
    this hour, a point on the same metric in a cohort containing the new incident's cohort.
    Without a localisation, points are grouped most severe first, so a store-wide drop whose
    `all` point is less severe than some of its cohorts would otherwise open one incident per
    cohort incompatible with the first one (`os=iOS`, `os=Android`). Incidents in `localised`
    (ids) take no part: the localiser already said where their points belong, and a
    store-wide point it explained as a cohort's symptom does not make every other cohort's
    problem part of it. Members are (incident, hour, metric, cohort, severity, dir)."""
    changed = True
    while changed:
        changed = False
        anchors: dict[str, set[tuple[str, str]]] = {}
        for m in members:
            anchors.setdefault(m[0], set()).add((m[2], m[3]))
        for new_id, inc in list(fresh.items()):
            if new_id not in anchors or new_id in localised:
                continue
            host = next((other for other, points in anchors.items()
                         if other != new_id and other not in localised
                         and any(metric == inc["metric"] and contains(cohort, inc["cohort"], closures)
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


def anomalies_of_hour(con, hour: datetime) -> pd.DataFrame:
    """The hour's flagged points of both lanes, one per series (its most severe): the hourly
    detection and the 5-minute fast lane, read through their stores' public functions, so the
    fast lane's early point and the hourly lane's later one are the same incident."""
    frames = [frame for frame in (detection_store.flagged_points(con, hour),
                                  fastlane_store.flagged_points(con, hour)) if len(frame)]
    if not frames:
        return pd.DataFrame(columns=detection_store.POINT_COLUMNS)
    both = pd.concat(frames, ignore_index=True)
    both = both.sort_values(["severity", "metric", "cohort"], ascending=[False, True, True],
                            kind="stable")
    return both.drop_duplicates(["metric", "cohort"], keep="first").reset_index(drop=True)


def _text(value) -> str | None:
    """A VARCHAR read through pandas: None for NULL (which may arrive as NaN)."""
    return None if value is None or (isinstance(value, float) and math.isnan(value)) else value


def nested(a: str, b: str, closures: dict[str, dict[str, str]] | None = None) -> bool:
    """True when one cohort lies inside the other (or they are the same)."""
    return contains(a, b, closures) or contains(b, a, closures)


def localise_points(con, points: pd.DataFrame, hour: datetime,
                    localise: Localise | None, cache: dict | None = None) -> pd.DataFrame:
    """Each point's localised cohort (`where`, `localised`): the cause the store-wide
    localisation of its metric (over the hours of evidence behind its flags, `window_hours`,
    at most `MAX_EVIDENCE_HOURS`) accepts and that explains the point (its deviation is
    noise once the cause's effect is taken out: see rca.explain_points); the point's own
    cohort (localised False) when no cause explains it, when no localiser is given, or when
    the metric cannot be localised (an unknown metric, a window without marts). One
    localisation per flagged metric and hour."""
    out = points.copy()
    out["where"] = out["cohort"]
    out["localised"] = False
    if localise is None or out.empty:
        return out
    windows = (pd.to_numeric(out["window_hours"], errors="coerce") if "window_hours" in out
               else pd.Series(1.0, index=out.index)).fillna(1.0).clip(1, MAX_EVIDENCE_HOURS)
    for metric in out["metric"].unique():
        rows = out["metric"] == metric
        # over the hours of evidence behind the metric's flags: a drop the sequential test
        # flagged after six hours pooled is invisible in its last hour alone
        hours = int(windows[rows].max())
        try:
            _causes, explained = localise(
                con, metric=metric, start=hour - timedelta(hours=hours - 1),
                end=hour + timedelta(hours=1), cohorts=sorted(set(out.loc[rows, "cohort"])),
                **({"cache": cache} if cache is not None else {}))
        except ValueError as exc:  # unknown metric, no data: the points keep their cohorts
            log.info("no localisation of %s at %s: %s", metric, hour, exc)
            continue
        for i in out.index[rows]:
            where = explained.get(out.at[i, "cohort"])
            if where is not None:
                out.at[i, "where"], out.at[i, "localised"] = where, True
    return out


TRAFFIC_METRICS = frozenset({"sessions", "events", "product_view_sessions"})


def is_surge(metric: str, direction: str | None) -> bool:
    """A rise of traffic (sessions, events): planned sends, bots, a viral post."""
    return metric in TRAFFIC_METRICS and direction == "up"


def same_problem(a: str, a_localised: bool, b: str, b_localised: bool,
                 shared_metric: bool, same_mechanism: bool = True,
                 closures: dict[str, dict[str, str]] | None = None,
                 a_surge: bool = False) -> bool:
    """Whether two localised cohorts are one problem (see the module docstring).

    The same or nested cohorts, localised or not, nesting judged on `closures` (each cohort's
    filters plus the dimensions all its sessions share: `device_type=desktop&utm_campaign=x`
    contains `os=Linux&utm_campaign=x` when Linux is only desktops). Overlapping cohorts that
    are not nested are one problem only when the localiser gives both the same where: the
    looser "no dimension differs" rule let an unexplained JS-error blip in one country join a
    payment problem on Windows desktop and, hour after hour, most of a day's noise (the 4-day
    smoke run's 31-point incident). The whole store contains every cohort, so a cohort's
    problem joins a store-wide one (or the reverse) only when both are seen on the same metric
    and both are localised or neither is: a bot campaign during a store-wide payment outage
    is a second problem, not a symptom.

    `same_mechanism` False (a traffic surge on one side, `a_surge` saying which, anything else
    on the other): a surge lowers conversion only through the sessions it adds, so it
    explains a conversion drop localised to its own cohort or one around it (the bots' Linux
    Chrome sessions inside the campaign whose add-to-cart rate fell), not one localised to a
    smaller cohort inside it (a payment break among the newsletter's readers)."""
    if a == b:
        return True
    if "all" in (a, b):
        # a store-wide change joins only a problem seen on the same metric, localised alike:
        # an unlocalised small-cohort incident (which collects many metrics) never absorbs it
        return same_mechanism and shared_metric and a_localised == b_localised
    if not same_mechanism:
        surge, other = (a, b) if a_surge else (b, a)
        return contains(other, surge, closures)
    return nested(a, b, closures)


def _closures_of(con, points: pd.DataFrame, hour: datetime, policy: IncidentPolicy,
                 closures: Closures | None) -> dict[str, dict[str, str]]:
    """The closures (see `same_problem`) of the hour's wheres and of the live incidents',
    over the week up to the hour: an implication that holds for a week (Linux sessions are
    desktop sessions) is structure, one that holds for an hour of a small cohort may be
    chance. Empty without points or a `closures` function."""
    if closures is None or points.empty:
        return {}
    live = _live_incidents(con, hour, policy)
    cohorts = set(points["where"]) | set(points["cohort"])
    cohorts |= {(_text(r.localised_cohort) or r.cohort) for r in live.itertuples()}
    return closures(con, sorted(cohorts), hour - timedelta(days=7), hour + timedelta(hours=1))


def _live_incidents(con, hour: datetime, policy: IncidentPolicy) -> pd.DataFrame:
    return con.execute(
        f"""SELECT incident_id, state, metric, cohort, direction, localised_cohort, metrics,
                   severity, funnel_step,
                   -- the best hypothesis is all grouping needs of the analysis
                   json_extract_string(rca, '$.hypotheses[0].kind') AS cause_kind,
                   json_extract_string(rca, '$.hypotheses[0].ref') AS cause_ref,
                   started_at, last_anomaly_at, resolved_at, alert_key
            FROM {SCHEMA}.incidents
            WHERE started_at <= $h
              AND (state IN ('open', 'acknowledged')
                   OR (state = 'resolved' AND resolved_at >= $reopen))
            ORDER BY severity DESC, started_at""",
        {"h": hour, "reopen": hour - timedelta(hours=policy.reopen_hours)},
    ).df()


def _after_new_deploy(con, incidents: dict[str, dict], hour: datetime) -> set[str]:
    """The incidents a deploy made after they began makes a new problem possible for (see
    the module docstring): those root cause put on a deploy, and a later one within
    `CAUSE_WINDOW` before the hour's end, of a service that serves the incident's funnel step
    (any service when either is unknown). The deploy in an incident's first hour is its own
    onset's candidate. An incident explained otherwise (planned traffic, bots, a provider, a
    stock-out) is not made a new problem by a release in its window (the newsletter's own
    surge was paged as two web releases' doing), and one with no known cause is analysed
    again with the release in its window anyway."""
    if not incidents:
        return set()
    deploys = deploys_between(con, hour - CAUSE_WINDOW, hour + timedelta(hours=1))
    out = set()
    for inc_id, inc in incidents.items():
        if inc["cause_kind"] != "deploy":
            continue
        step = _text(inc.get("funnel_step"))
        for service, version, at, _ in deploys:
            if at < inc["started_at"] + timedelta(hours=1) or str(version) == inc["cause_ref"]:
                continue
            steps = SERVICE_STEPS.get(str(service).lower())
            if steps is None or step is None or step in steps:
                out.add(inc_id)
                break
    return out


def _recovered(con, inc: dict, hour: datetime, hours: int) -> bool:
    """The incident's localised cohort recovered over the `hours` hours up to and including
    `hour` (none of them before its last anomaly): its main series scored, unflagged and in
    its band in each of them (or, for a series only the fast lane watches, such as
    payment_failure_rate per provider, nearly all its slots scored and none flagged), and no
    symptom series flagged in either lane."""
    if hour - inc["last_anomaly_at"] < timedelta(hours=hours):
        return False
    start = hour - timedelta(hours=hours)
    symptoms = [tuple(r) for r in con.execute(
        f"SELECT DISTINCT metric, cohort FROM {SCHEMA}.members WHERE incident_id = $id",
        {"id": inc["incident_id"]}).fetchall()]
    main = (inc["metric"], inc["cohort"])
    series = sorted(set(symptoms) | {main})
    hourly = detection_store.series_health(con, series, start, hour)
    slots = fastlane_store.slot_health(con, series, start, hour)
    if int(hourly["flagged"].sum()) or int(slots["flagged"].sum()):
        return False
    own = hourly[(hourly["metric"] == main[0]) & (hourly["cohort"] == main[1])]
    if len(own) and int(own["good"].iloc[0]) >= hours:
        return True
    own_slots = slots[(slots["metric"] == main[0]) & (slots["cohort"] == main[1])]
    return bool(len(own_slots)) and (
        int(own_slots["scored"].iloc[0]) >= FASTLANE_RECOVERY_COVERAGE * hours * SLOTS_PER_HOUR)


def process_hour(
    con: duckdb.DuckDBPyConnection,
    hour: datetime,
    policy: IncidentPolicy | None = None,
    analyse: Analyse | None = None,
    localise: Localise | None = None,
    closures: Closures | None = None,
) -> HourResult:
    """Localise the hour's flagged points (`localise`, see `localise_points`), group them by
    where into incidents, resolve the recovered ones and re-run root cause (`analyse`, see
    funnelwatch.incidents.rca) for those that changed. One transaction per hour for the
    grouping; localisation runs before it and root cause after it (read-only queries that
    need not hold the incident tables)."""
    policy = policy or IncidentPolicy()
    hour = as_utc_hour(hour)
    ensure_incident_schema(con)
    result = HourResult(hour)
    # query results shared by this hour's localisations and analyses (same data, same windows)
    cache: dict = {}
    points = localise_points(con, anomalies_of_hour(con, hour), hour, localise, cache)
    result.points = len(points)
    closed = _closures_of(con, points, hour, policy, closures)
    con.execute("BEGIN TRANSACTION")
    try:
        _undo_hour(con, hour)
        live = _live_incidents(con, hour, policy)
        incidents: dict[str, dict] = {}
        for row in live.itertuples():
            inc = row._asdict()
            inc["localised_cohort"] = _text(inc["localised_cohort"])
            inc["metric_set"] = {inc["metric"], *(list(inc["metrics"]) if inc["metrics"]
                                                   is not None else [])}
            incidents[inc["incident_id"]] = inc
        # with root cause to judge, a new deploy opens a provisional incident (see above)
        changed = _after_new_deploy(con, incidents, hour) if analyse is not None else set()
        fresh: dict[str, dict] = {}
        members: list[tuple] = []
        for point in points.itertuples():
            target = None
            for inc in list(incidents.values()) + list(fresh.values()):
                # Fresh and recently resolved incidents are eligible; open ones only while
                # their last anomaly is within the merge gap.
                eligible = inc["incident_id"] not in changed and (
                    inc["incident_id"] in fresh
                    or inc["state"] == "resolved"
                    or hour - inc["last_anomaly_at"] <= timedelta(hours=policy.merge_gap_hours)
                )
                inc_where = inc["localised_cohort"] or inc["cohort"]
                point_surge = is_surge(point.metric, point.direction)
                if eligible and same_problem(
                        point.where, bool(point.localised), inc_where,
                        inc["localised_cohort"] is not None, point.metric in inc["metric_set"],
                        point_surge == is_surge(inc["metric"], inc["direction"]),
                        closed, a_surge=point_surge):
                    target = inc
                    break
            if target is None:
                new_id = incident_id(hour, point.metric, point.where)
                target = {"incident_id": new_id, "state": "open", "metric": point.metric,
                          "cohort": point.cohort, "severity": float(point.severity),
                          "localised_cohort": point.where if point.localised else None,
                          "started_at": hour, "last_anomaly_at": hour, "resolved_at": None,
                          "alert_key": new_id, "direction": point.direction,
                          "metric_set": set()}
                fresh[new_id] = target
            target["metric_set"].add(point.metric)
            members.append((target["incident_id"], hour, point.metric, point.cohort,
                            float(point.severity), point.direction))

        localised_ids = {i for i, inc in {**incidents, **fresh}.items()
                         if inc["localised_cohort"] is not None}
        members = _absorb_fragments(members, fresh, localised_ids, closed)

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
                          alert_version, alerted_version, localised_cohort)
                        VALUES ($id, 'open', 'business', $title, $m, $c, $ms, $cs, $dir, $sev,
                                $h, $h, now(), $n, $id, 1, 0, $where)""",
                    {"id": inc_id, "where": inc["localised_cohort"],
                     "title": _title(inc["metric"], inc["localised_cohort"] or inc["cohort"],
                                     inc["direction"]),
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
                _reopen(con, inc_id, hour,
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
            if _recovered(con, inc, hour, policy.recovery_hours):
                con.execute(
                    f"""UPDATE {SCHEMA}.incidents SET state = 'resolved', resolved_at = $h,
                          updated_at = now(), alert_version = alert_version + 1
                        WHERE incident_id = $id""",
                    {"h": hour, "id": inc["incident_id"]},
                )
                add_timeline(con, inc["incident_id"], hour, "resolved",
                          f"{inc['localised_cohort'] or inc['cohort']} recovered: "
                          f"{inc['metric']} | {inc['cohort']} back in its expected band and no "
                          f"symptom flagged for {policy.recovery_hours} h")
                result.resolved.append(inc["incident_id"])

        con.execute("COMMIT")
    except BaseException:
        con.execute("ROLLBACK")
        raise
    # Root cause after the commit: a failing analysis query must not abort the grouping's
    # transaction (DuckDB has no savepoints), and the warehouse is held for less time.
    if analyse is not None:
        for inc_id in result.touched:
            if _due_for_analysis(con, inc_id, hour, result):
                update_root_cause(con, inc_id, hour, analyse, cache)
        for survivor in _merge_by_cause(con, hour, result, policy, closed):
            update_root_cause(con, survivor, hour, analyse, cache)
    return result


def _due_for_analysis(con, inc_id: str, hour: datetime, result: HourResult) -> bool:
    """Whether root cause runs again for an incident this hour: when it opens, re-opens or
    escalates, has no analysis yet, and then at ages 1, 2, 4, 8 ... hours (with more hours
    of data the answer firms up, but an analysis costs seconds, and re-running every open
    incident every hour was most of a 14-day backfill's time)."""
    if inc_id in result.opened or inc_id in result.reopened or inc_id in result.escalated:
        return True
    row = con.execute(f"SELECT started_at, rca IS NULL FROM {SCHEMA}.incidents "
                      "WHERE incident_id = $id", {"id": inc_id}).fetchone()
    if row is None or row[1]:
        return True
    age = int((hour - row[0]).total_seconds() // 3600)
    return age > 0 and (age & (age - 1)) == 0


def _cause_of(rca_json) -> tuple[str, str | None] | None:
    """(kind, ref) of an analysis' best hypothesis; None without one."""
    try:
        rca = json.loads(rca_json) if isinstance(rca_json, str) else (rca_json or {})
    except ValueError:
        return None
    top = (rca.get("hypotheses") or [None])[0]
    if not isinstance(top, dict):
        return None
    return str(top.get("kind") or "none"), top.get("ref")


def _same_cause(a, b) -> bool:
    """One known cause named by both, or the same funnel step where one analysis found no
    cause (a 5% checkout loss analysed as 'deploy checkout 2.9.0' at the shipping step for
    the store, 'no known cause' at the same step in the US purchases it took)."""
    if a.cause[0] != "none" and a.cause == b.cause:
        return True
    step_a, step_b = _text(a.funnel_step), _text(b.funnel_step)
    return "none" in (a.cause[0], b.cause[0]) and step_a is not None and step_a == step_b


def _reopen(con, inc_id: str, hour: datetime, why: str) -> None:
    """A resolved incident is open again: a fresh alert key, so receivers page again."""
    reopen_count = con.execute(
        f"SELECT count(*) FROM {SCHEMA}.timeline WHERE incident_id = $id "
        "AND kind = 'reopened'", {"id": inc_id}).fetchone()[0]
    con.execute(
        f"""UPDATE {SCHEMA}.incidents SET state = 'open', resolved_at = NULL,
              alert_key = $key, alert_version = alert_version + 1
            WHERE incident_id = $id""",
        {"id": inc_id, "key": f"{inc_id}-r{reopen_count + 1}"},
    )
    add_timeline(con, inc_id, hour, "reopened", why)


def _bots_explain(a, b) -> bool:
    """Bot traffic named by one analysis explains the other's unexplained change when that
    change is one bots make (sessions up; a view, add-to-cart, conversion or JS-error rate
    diluted) in a where that overlaps the bots' cohort: the store-wide add-to-cart rate that
    falls while the scraper's sessions never add to cart is the bots, not a second problem."""
    for bots, other in ((a, b), (b, a)):
        if bots.cause[0] != "bot_traffic" or other.cause[0] != "none":
            continue
        if other.metric not in BOT_METRICS:
            continue
        if other.metric in TRAFFIC_METRICS and other.direction != "up":
            continue
        if compatible(_text(bots.where_cohort) or "all", _text(other.where_cohort) or "all"):
            return True
    return False


def _one_change(a, b) -> bool:
    """Both analyses name the same deploy, or one names it and the other found no cause (at
    the same step, which `_same_cause` checks): one change, whatever cohorts it showed in
    (checkout 2.9.0 breaking the shipping step, found as Safari, desktop and ig_sale in
    three hours, named in one of them)."""
    if a.cause == b.cause:
        return a.cause[0] in ONE_CHANGE_CAUSES
    kinds = {a.cause[0], b.cause[0]}
    return "none" in kinds and bool(kinds - {"none"}) and (kinds - {"none"}) <= ONE_CHANGE_CAUSES


def _common_where(a: str | None, b: str | None) -> str:
    """The cohort both wheres lie in: the dimensions they share with equal values."""
    fa, fb = parse_filters(a or "all"), parse_filters(b or "all")
    return format_cohort({k: v for k, v in fa.items() if fb.get(k) == v})


def _absorbed_where(keep, other, where: str | None,
                    closures: dict[str, dict[str, str]]) -> str | None:
    """`keep`'s where (`where`, as widened so far) once it absorbs `other`, or None when it
    does not: bots explain `other`; or the same cause for a nested where; or, while `keep` is
    live, one deploy's change (the where widens to what both share)."""
    if _bots_explain(keep, other):
        return where
    if not _same_cause(keep, other):
        return None
    other_where = _text(other.where_cohort)
    if _where_nested(where, other_where, closures):
        return where
    if keep.state != "resolved" and _one_change(keep, other):
        return _common_where(where, other_where)
    return None


def _where_nested(a: str | None, b: str | None, closures: dict[str, dict[str, str]]) -> bool:
    """Nested wheres; a where over a provider or a product category is not a set of sessions
    and spans every session cohort (an Adyen outage seen in mobile, in Google traffic ...)."""
    a, b = a or "all", b or "all"
    if any(k in ("payment_provider", "category") for c in (a, b) for k in parse_filters(c)):
        return True
    return nested(a, b, closures)


def _merge_by_cause(con, hour: datetime, result: HourResult, policy: IncidentPolicy,
                    closures: dict[str, dict[str, str]]) -> list[str]:
    """Root cause drives grouping, after the analysis too: incidents live at this hour whose
    analyses name the same cause (kind and ref; or the same funnel step where one found no
    cause, `_same_cause`) for the same or nested where are one problem, whatever series and cohorts their points came from (the bots'
    add-to-cart drop seen per product category, which no session cohort explains; one
    provider's failures flagged in cohorts the localiser could not attribute). The one that
    paged, else the earliest, else the most severe, absorbs the others (members, timeline,
    span, severity); one that paged is never absorbed. An incident resolved less than
    `reopen_hours` ago absorbs a new one with the same known cause for a nested where (or one
    its bots explain) and re-opens: a slow drop whose flags paused for the recovery hours is
    still one problem (the seeded iOS Safari drop, deploy 1.13.0, flagged again three hours
    after it resolved). Returns the survivors that changed."""
    touched = set(result.touched)
    if not touched:
        return []
    live = con.execute(
        f"""SELECT incident_id, state, category, metric, direction, where_cohort, funnel_step,
                   rca, started_at, last_anomaly_at, severity,
                   coalesce(alerted_version, 0) AS alerted
            FROM {SCHEMA}.incidents
            WHERE started_at <= $h AND rca IS NOT NULL
              AND ((state IN ('open', 'acknowledged') AND last_anomaly_at >= $since)
                   OR (state = 'resolved' AND resolved_at >= $reopen))""",
        {"h": hour, "since": hour - timedelta(hours=policy.merge_gap_hours),
         "reopen": hour - timedelta(hours=policy.reopen_hours)},
    ).df()
    if len(live) < 2:
        return []
    live["cause"] = [_cause_of(r) for r in live["rca"]]
    live = live[live["cause"].map(lambda c: c is not None)]
    # a known cause first among equals: the survivor keeps its analysis
    live["known"] = live["cause"].map(lambda c: c[0] != "none")
    live = live.sort_values(["alerted", "known", "started_at", "severity"],
                            ascending=[False, False, True, False], kind="stable")
    merged: dict[str, str] = {}
    rows = list(live.itertuples())
    # a survivor's where widens to the cohort all its deploy's wheres share
    wheres = {r.incident_id: _text(r.where_cohort) for r in rows}
    for i, keep in enumerate(rows):
        if keep.incident_id in merged:
            continue
        if keep.state == "resolved" and keep.cause[0] == "none":
            continue  # only a known cause re-opens a resolved incident
        for other in rows[i + 1:]:
            if (other.incident_id in merged or other.alerted or other.category != keep.category
                    or other.state == "resolved"
                    or not (keep.incident_id in touched or other.incident_id in touched)):
                continue
            where = _absorbed_where(keep, other, wheres[keep.incident_id], closures)
            if where is None:
                continue
            merged[other.incident_id] = keep.incident_id
            wheres[keep.incident_id] = where
    states = dict(zip(live["incident_id"], live["state"], strict=True))
    live_where = dict(zip(live["incident_id"], live["where_cohort"], strict=True))
    for victim, survivor in merged.items():
        con.execute(f"UPDATE {SCHEMA}.members SET incident_id = $s WHERE incident_id = $v",
                    {"s": survivor, "v": victim})
        con.execute(f"DELETE FROM {SCHEMA}.timeline WHERE incident_id = $v", {"v": victim})
        con.execute(
            f"""UPDATE {SCHEMA}.incidents AS i SET
                  started_at = least(i.started_at, v.started_at),
                  last_anomaly_at = greatest(i.last_anomaly_at, v.last_anomaly_at),
                  anomaly_count = i.anomaly_count + v.anomaly_count,
                  severity = greatest(i.severity, v.severity),
                  metrics = list_sort(list_distinct(list_concat(i.metrics, v.metrics))),
                  cohorts = list_sort(list_distinct(list_concat(i.cohorts, v.cohorts))),
                  updated_at = now()
                FROM {SCHEMA}.incidents AS v
                WHERE i.incident_id = $s AND v.incident_id = $v""",
            {"s": survivor, "v": victim},
        )
        con.execute(f"DELETE FROM {SCHEMA}.incidents WHERE incident_id = $v", {"v": victim})
        if wheres[survivor] != _text(live_where[survivor]):
            con.execute(f"UPDATE {SCHEMA}.incidents SET where_cohort = $w WHERE incident_id = $s",
                        {"w": wheres[survivor], "s": survivor})
        add_timeline(con, survivor, hour, "updated",
                     f"absorbed {victim}: the same cause for the same or a nested where, "
                     "or a change its bot traffic explains")
        if states.get(survivor) == "resolved":
            _reopen(con, survivor, hour, f"the same cause again in {victim}")
            states[survivor] = "open"
            result.reopened.append(survivor)
        for bucket in (result.opened, result.updated, result.escalated, result.reopened):
            if victim in bucket:
                bucket.remove(victim)
                if survivor not in result.touched:
                    result.updated.append(survivor)
    return sorted(set(merged.values()))


def update_root_cause(con, inc_id: str, hour: datetime, analyse: Analyse,
                      cache: dict | None = None) -> None:
    """Run `analyse` over the incident's span so far and store where, step, cause and impact.
    A failing analysis is recorded in the incident (rca.error) instead of losing it."""
    # the analysis starts from where the grouping localised the problem, not from the
    # incident's worst symptom series
    metric, symptom, cohort, started, direction = con.execute(
        f"SELECT metric, cohort, coalesce(localised_cohort, cohort), started_at, direction "
        f"FROM {SCHEMA}.incidents WHERE incident_id = $id",
        {"id": inc_id},
    ).fetchone()
    # from the first hour of evidence behind the flag of its main series when it opened (a
    # slow drop's pooled hours), at most MAX_EVIDENCE_HOURS before. Not every member's: among
    # a sudden store-wide break's dozens of flags some pick a two-day window, which would
    # stretch the analysis over days of normal traffic (and a smaller cohort explains that
    # best); the main series of a slow drop was flagged on its long window.
    members = con.execute(f"SELECT metric, cohort, event_hour FROM {SCHEMA}.members "
                          "WHERE incident_id = $id AND event_hour <= $started",
                          {"id": inc_id, "started": started}).fetchall()
    main = [m for m in members if m[0] == metric and m[1] == symptom]
    evidence = detection_store.evidence_start(con, main or members)
    flagged = started
    if evidence is not None:
        started = max(min(started, evidence), started - timedelta(hours=MAX_EVIDENCE_HOURS - 1))
    try:
        end = hour + timedelta(hours=1)
        rca = mask_small_cohorts(con, localise_top_down(con, analyse, metric, cohort, started,
                                                        end, flagged, cache, direction),
                                 started, end)
    except Exception as exc:  # an analysis bug must not lose the incident
        log.exception("root cause of %s failed", inc_id)
        rca = {"error": f"{type(exc).__name__}: {exc}"}
    where = (rca.get("where") or [{}])[0].get("cohort")
    hypotheses = rca.get("hypotheses") or []
    impact = rca.get("impact") or {}
    # Planned traffic (a campaign send, a holiday) is context, never an incident: a change
    # the analysis explains by it is kept as category 'context' (no page, not listed as a
    # problem) until the analysis says otherwise: a real problem during the send turns it
    # back into a business incident, which then pages. One already paged stays business.
    category = CONTEXT if explained_by_planned(rca) else "business"
    con.execute(
        f"""UPDATE {SCHEMA}.incidents SET rca = $rca, where_cohort = $where, funnel_step = $step,
              top_cause = $cause, lost_orders = $lost, revenue_at_risk = $risk,
              category = CASE WHEN coalesce(alerted_version, 0) = 0 THEN $category
                              ELSE category END
            WHERE incident_id = $id""",
        {"rca": json.dumps(rca, default=str), "where": where, "step": rca.get("funnel_step"),
         "cause": hypotheses[0].get("title") if hypotheses else None,
         "lost": impact.get("lost_orders"), "risk": impact.get("revenue_at_risk"),
         "category": category, "id": inc_id},
    )


def _moves(where: dict, direction: str | None) -> bool:
    """Whether a localised cohort changed the way a flagged series did (its z's sign; any way
    when the direction or the z is unknown)."""
    z = where.get("z")
    if direction not in ("up", "down") or z is None or not math.isfinite(float(z)):
        return True
    return (float(z) > 0) == (direction == "up")


def localise_top_down(con, analyse: Analyse, metric: str, cohort: str, start: datetime,
                      end: datetime, first_flagged: datetime | None = None,
                      cache: dict | None = None, direction: str | None = None) -> dict:
    """Root cause from the whole store first (localisation explains the parent KPI, so the
    cohort detection flagged first, often a narrow one, does not fence the answer in: a bot
    campaign flagged in `os=Linux&browser=Chrome&utm_campaign=fb_retarget` is named
    `utm_campaign=fb_retarget`). When the store-wide analysis has no confident cause that is
    compatible with the flagged cohort, the flagged cohort's own analysis is used (a small
    cohort's drop is invisible in the store's totals). On the evaluation's pipeline incidents
    this raised where-top-1 from 0.36 to 0.71 (docs/evaluation.md). The store's answer must
    also move the way the flagged series did (`direction`): bots' sessions rise in one cohort
    while the store's sessions fall short of a baseline that still holds yesterday's newsletter,
    and the store-wide answer (the newsletter's cohort, down) explains the store, not the bots."""
    extra: dict = {} if first_flagged is None or first_flagged <= start else {
        "first_flagged": first_flagged}
    if cache is not None:
        extra["cache"] = cache
    rca = analyse(con, metric=metric, cohort="all", start=start, end=end, **extra)
    if cohort == "all":
        return {**rca, "scope": "store"}
    top = (rca.get("where") or [None])[0]
    if (top and top.get("root_cause") and compatible(top.get("cohort") or "all", cohort)
            and _moves(top, direction)):
        return {**rca, "scope": "store"}
    return {**analyse(con, metric=metric, cohort=cohort, start=start, end=end, **extra),
            "scope": "flagged cohort"}


def process_window(
    con: duckdb.DuckDBPyConnection,
    start: datetime,
    end: datetime,
    policy: IncidentPolicy | None = None,
    analyse: Analyse | None = None,
    localise: Localise | None = None,
    closures: Closures | None = None,
) -> list[HourResult]:
    """`process_hour` for every hour of [start, end), in order (state depends on order)."""
    hour = as_utc_hour(start)
    results = []
    while hour < end:
        results.append(process_hour(con, hour, policy, analyse, localise, closures))
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
