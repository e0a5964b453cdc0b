"""Entry points (``analyse_incident``, ``cohort_deviation``) and the analysis run of one incident."""

from __future__ import annotations

import math
from datetime import datetime, timedelta

import duckdb
import numpy as np

from funnelwatch.incidents.rca.constants import (
    CAUSE_WINDOW,
    KNOWN_METRICS,
    LEAF_DIMENSIONS,
    SESSION_DIMENSIONS,
    SYMPTOM_Z,
    UNKNOWN_LABEL,
)
from funnelwatch.incidents.rca.context import _WindowData
from funnelwatch.incidents.rca.funnel import _Funnel
from funnelwatch.incidents.rca.hypotheses import _Hypotheses
from funnelwatch.incidents.rca.impact import _Impact
from funnelwatch.incidents.rca.localise import _Localise
from funnelwatch.incidents.rca.util import _utc
from funnelwatch.warehouse import has_table
from rootcause import cohort_mask, parse_cohort, residual_z


# ---------------------------------------------------------------------------------------------
def analyse_incident(
    con: duckdb.DuckDBPyConnection,
    *,
    metric: str,
    cohort: str,
    start: datetime,
    end: datetime,
    history_days: int = 7,
    lookback_hours: int = 24,
    cause_window_hours: float | None = None,
    first_flagged: datetime | None = None,
    cache: dict | None = None,
) -> dict:
    """Root cause of one incident (see the module docstring); a JSON-serialisable dict.

    ``lookback_hours``: how far before ``start`` (the first anomalous hour) the onset of the
    deviation and its candidate causes are looked for (detection flags small drops late).
    ``cause_window_hours``: how long before the onset a cause may start (default
    ``CAUSE_WINDOW``); older ones only when nothing else fits (rca/hypotheses.py).
    ``first_flagged``: the first hour detection flagged, when ``start`` is earlier (the
    window then holds the hours of evidence behind the flag): the onset is searched up to it,
    and it is the onset when the data show no clear change point. ``cache``: a dict shared by
    the analyses of one pass over the same data (query results are reused; start a new one
    whenever the warehouse may have changed)."""
    if metric not in KNOWN_METRICS:
        raise ValueError(f"unknown metric {metric!r}; expected one of {sorted(KNOWN_METRICS)}")
    start, end = _utc(start, "start"), _utc(end, "end")
    if end <= start:
        raise ValueError(f"empty window: end {end.isoformat()} <= start {start.isoformat()}")
    if not isinstance(history_days, int) or history_days < 1:
        raise ValueError(f"history_days must be a positive integer, got {history_days!r}")
    if not isinstance(lookback_hours, int) or lookback_hours < 0:
        raise ValueError(f"lookback_hours must be a non-negative integer, got {lookback_hours!r}")
    window = CAUSE_WINDOW
    if cause_window_hours is not None:
        if isinstance(cause_window_hours, bool) or not isinstance(
            cause_window_hours, int | float
        ) or not 0 < cause_window_hours <= 24 * 7:
            raise ValueError(
                f"cause_window_hours must be a number of hours in (0, 168], got "
                f"{cause_window_hours!r}"
            )
        window = timedelta(hours=float(cause_window_hours))
    flagged = parse_cohort(cohort) if cohort else {}
    bad = [d for d in flagged if d not in (*SESSION_DIMENSIONS, "category", "payment_provider")]
    if bad:
        raise ValueError(f"cohort {cohort!r} has unknown dimension(s) {bad}")
    ctx = _Context(con, metric, cohort, flagged, start, end, history_days, cache)
    ctx.lookback = timedelta(hours=lookback_hours)
    ctx.cause_window = window
    if first_flagged is not None:
        ctx.first_flagged = min(max(_utc(first_flagged, "first_flagged"), start), end)
    return ctx.run()


def cohort_deviation(
    con: duckdb.DuckDBPyConnection,
    *,
    metric: str,
    cohort: str,
    start: datetime,
    end: datetime,
    history_days: int = 7,
) -> dict | None:
    """The flagged metric over ``[start, end)`` in a session cohort vs its expectation (same
    expectations as analyse_incident): ``{"z": ...}``; None for category / provider cohorts.
    Used by the evaluation to say how visible a labelled incident was at all."""
    filters = parse_cohort(cohort) if cohort else {}
    if any(k not in SESSION_DIMENSIONS for k in filters) or metric not in KNOWN_METRICS:
        return None
    ctx = _Context(
        con, metric, cohort, filters, _utc(start, "start"), _utc(end, "end"), history_days
    )
    ctx.cube = ctx.load_cube()
    ctx.inside = ctx.cube[ctx.cube["in_flagged"]] if filters else ctx.cube
    ctx.loc_dims = [d for d in LEAF_DIMENSIONS if d not in filters]
    if ctx.inside.empty:
        return None
    ctx._direction()
    if not math.isfinite(ctx.metric_z):  # the cohort had no trials in the window or history
        return None
    return {"z": ctx.metric_z}


def localise_change(
    con: duckdb.DuckDBPyConnection,
    *,
    metric: str,
    start: datetime,
    end: datetime,
    history_days: int = 7,
) -> list[dict]:
    """Where the store's ``metric`` changed over ``[start, end)``: the cohorts the localiser
    accepts as root causes (``root_cause``), best first, as in ``analyse_incident()["where"]``;
    ``[]`` when nothing stands out from noise or the window has no data. The incident
    lifecycle groups anomalies by these cohorts before opening incidents (localise, then
    group), so it runs only the "where" part: no funnel, onset, hypotheses or impact."""
    if metric not in KNOWN_METRICS:
        raise ValueError(f"unknown metric {metric!r}; expected one of {sorted(KNOWN_METRICS)}")
    if not has_table(con, "marts.fct_funnel_hourly"):  # before the first dbt build (the fast lane runs ahead of it)
        return []
    ctx = _Context(con, metric, "all", {}, _utc(start, "start"), _utc(end, "end"), history_days)
    cube = ctx.load_cube()
    if cube.empty or cube["cur_sessions"].sum() <= 0:
        return []
    ctx.cube, ctx.inside = cube, cube.copy()
    ctx.loc_dims = list(LEAF_DIMENSIONS)
    where, _step, _info = ctx.localise()
    return [w for w in where if w.get("root_cause")]


def cohort_closures(con: duckdb.DuckDBPyConnection, cohorts: list[str], start: datetime,
                    end: datetime) -> dict[str, dict[str, str]]:
    """Each cohort's filters plus every session dimension whose value is the same for all of
    its sessions in [start, end): ``os=Linux`` -> ``{os: Linux, device_type: desktop}`` when
    Linux is only on desktops, ``utm_source=facebook`` -> ``{..., utm_campaign: fb_retarget}``.
    Two names of the same sessions then compare as nested, which their names alone do not
    (``device_type=desktop&os=Linux`` and ``os=Linux&browser=Chrome``). Cohorts over other
    attributes (category, payment provider) or without sessions keep their own filters."""
    out = {c: (parse_cohort(c) if c else {}) for c in cohorts}
    session = {c: f for c, f in out.items()
               if f and all(k in SESSION_DIMENSIONS for k in f)}
    if not session or not has_table(con, "marts.fct_funnel_hourly"):
        return out
    dims = ", ".join(f"coalesce({d}, '{UNKNOWN_LABEL[d]}') AS {d}" for d in SESSION_DIMENSIONS)
    rows = con.execute(
        f"""SELECT {dims} FROM marts.fct_funnel_hourly
            WHERE event_hour >= $s AND event_hour < $e AND sessions > 0 GROUP BY ALL""",
        {"s": start, "e": end},
    ).df()
    if rows.empty:
        return out
    for cohort, filters in session.items():
        mask = np.ones(len(rows), dtype=bool)
        for k, v in filters.items():
            mask &= (rows[k] == v).to_numpy()
        inside = rows[mask]
        if inside.empty:
            continue
        constant = {d: str(inside[d].iloc[0]) for d in SESSION_DIMENSIONS
                    if inside[d].nunique() == 1}
        out[cohort] = {**constant, **filters}
    return out


def explain_points(
    con: duckdb.DuckDBPyConnection,
    *,
    metric: str,
    start: datetime,
    end: datetime,
    cohorts: list[str],
    history_days: int = 7,
    cache: dict | None = None,
) -> tuple[list[dict], dict[str, str | None]]:
    """Localise the store's change of ``metric`` over ``[start, end)`` (the causes
    ``localise_change`` returns) and say which of them explains each flagged cohort:
    ``(causes, {cohort: the explaining cause's cohort or None})``.

    A cause explains a flagged cohort when it shares sessions with it and, once the cause's
    effect is taken out (the expectations raked so that the cause matches its actual, as the
    localiser's explaining-away does), what is left of the cohort's deviation is noise
    (|z| < ``SYMPTOM_Z``): a country x device cohort whose drop is the ended campaign's traffic
    inside it, a ``device_type=desktop&os=Linux`` cohort around the bots' Linux Chrome
    sessions. Of several, the one that leaves the least. Cohorts over dimensions the leaves do
    not have (category, payment provider, a source spread over several campaigns) get None."""
    if metric not in KNOWN_METRICS:
        raise ValueError(f"unknown metric {metric!r}; expected one of {sorted(KNOWN_METRICS)}")
    none: dict[str, str | None] = dict.fromkeys(cohorts)
    if not has_table(con, "marts.fct_funnel_hourly"):
        return [], none
    ctx = _Context(con, metric, "all", {}, _utc(start, "start"), _utc(end, "end"), history_days,
                   cache)
    cube = ctx.load_cube()
    if cube.empty or cube["cur_sessions"].sum() <= 0:
        return [], none
    ctx.cube, ctx.inside = cube, cube.copy()
    ctx.loc_dims = list(LEAF_DIMENSIONS)
    where, _step, _info = ctx.localise()
    causes = [w for w in where if w.get("root_cause")]
    leaves = ctx.metric_leaves()
    if not causes or leaves is None:
        return causes, none
    closures = cohort_closures(con, cohorts, ctx.start, ctx.end)
    out = dict(none)
    drift = ctx.drift_of_metric()
    for cohort in cohorts:
        if not _leaf_expressible(parse_cohort(cohort) if cohort else {}, closures[cohort]):
            continue  # utm_source=google over several campaigns, a category: not leaves
        filters = {k: v for k, v in closures[cohort].items() if k in LEAF_DIMENSIONS}
        mask = cohort_mask(leaves, filters)
        if mask is None or not mask.any():
            continue
        (before,) = residual_z(leaves, [], [filters], drift=drift)
        best, best_z = None, None
        for cause in causes:
            cause_mask = cohort_mask(leaves, cause["filters"])
            if cause_mask is None or not (cause_mask & mask).any():
                continue
            (after,) = residual_z(leaves, [cause["filters"]], [filters], drift=drift)
            if (after is None or before is None or abs(after) >= SYMPTOM_Z
                    or abs(after) >= abs(before)):
                continue
            if best_z is None or abs(after) < best_z:
                best, best_z = cause["cohort"], abs(after)
        out[cohort] = best
    return causes, out


def _leaf_expressible(named: dict, closure: dict) -> bool:
    """Whether a cohort is a set of leaves: named by leaf dimensions only, or by a source or
    medium that pins one campaign in the window (utm_source=facebook: only fb_retarget)."""
    extra = [k for k in named if k not in LEAF_DIMENSIONS]
    if not extra:
        return True
    return all(k in ("utm_source", "utm_medium") for k in extra) and "utm_campaign" in closure


def explained_by_planned(rca: dict) -> bool:
    """Whether the best compatible explanation of a change is planned traffic (a campaign
    send, a holiday): context, not an incident. Pure: reads an ``analyse_incident`` result
    (its ``hypotheses``; False for an error or an empty result)."""
    hypotheses = rca.get("hypotheses") if isinstance(rca, dict) else None
    if not hypotheses or not isinstance(hypotheses[0], dict):
        return False
    return hypotheses[0].get("kind") == "planned_traffic"


class _Context(_WindowData, _Localise, _Funnel, _Hypotheses, _Impact):
    # -- main ----------------------------------------------------------------------------------
    def run(self) -> dict:
        cube = self.load_cube()
        cur_total = cube["cur_sessions"].sum() if len(cube) else 0.0
        if cube.empty or cur_total <= 0:
            raise ValueError(
                f"no data in the window [{self.start.isoformat()}, {self.end.isoformat()}) "
                "of marts.fct_funnel_hourly"
            )
        self.cube = cube
        self.inside = cube[cube["in_flagged"]].copy() if self.session_flagged else cube.copy()
        if self.inside.empty or self.inside["cur_sessions"].sum() <= 0:
            raise ValueError(f"cohort {self.cohort!r} has no sessions in the window")
        self.loc_dims = [d for d in LEAF_DIMENSIONS if d not in self.session_flagged]

        where, step, step_info = self.localise()
        self.categories = self.category_table()
        self.providers = self.provider_table()
        where = self.special_where(where, step)
        main = where[0] if where else None
        main_filters = main["filters"] if main else dict(self.flagged)
        funnel = self.funnel_table(main_filters)
        self.onset = self.estimate_onset(main_filters, step)
        hypotheses = self.hypotheses(where, step, step_info)
        where = self.prefer_campaign(where, hypotheses)
        impact = self.impact(where[0]["filters"] if where else self.flagged, step)
        return {
            "metric": self.metric,
            "cohort": self.cohort,
            "window_start": self.start.isoformat(),
            "window_end": self.end.isoformat(),
            "onset": self.onset.isoformat(),
            "where": where,
            "funnel_step": step,
            "funnel": funnel,
            "hypotheses": hypotheses,
            # what was ruled out and why (a deploy after the onset, of another platform ...)
            "rejected_causes": self.rejected,
            # planned traffic touching the cohort; the lifecycle opens no incident when it
            # explains the change (explained_by_planned)
            "planned_context": self.planned_context,
            "explained_by_planned": explained_by_planned({"hypotheses": hypotheses}),
            "impact": impact,
        }
