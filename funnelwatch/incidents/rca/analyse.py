"""Entry points (``analyse_incident``, ``cohort_deviation``) and the analysis run of one incident."""

from __future__ import annotations

import math
from datetime import datetime, timedelta

import duckdb

from funnelwatch.incidents.rca.constants import (
    CAUSE_WINDOW,
    KNOWN_METRICS,
    LEAF_DIMENSIONS,
    SESSION_DIMENSIONS,
)
from funnelwatch.incidents.rca.context import _WindowData
from funnelwatch.incidents.rca.funnel import _Funnel
from funnelwatch.incidents.rca.hypotheses import _Hypotheses
from funnelwatch.incidents.rca.impact import _Impact
from funnelwatch.incidents.rca.localise import _Localise
from funnelwatch.incidents.rca.util import _utc
from funnelwatch.warehouse import has_table
from rootcause import parse_cohort


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
) -> dict:
    """Root cause of one incident (see the module docstring); a JSON-serialisable dict.

    ``lookback_hours``: how far before ``start`` (the first anomalous hour) the onset of the
    deviation and its candidate causes are looked for (detection flags small drops late).
    ``cause_window_hours``: how long before the onset a cause may start (default
    ``CAUSE_WINDOW``); older ones only when nothing else fits (rca/hypotheses.py)."""
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
    ctx = _Context(con, metric, cohort, flagged, start, end, history_days)
    ctx.lookback = timedelta(hours=lookback_hours)
    ctx.cause_window = window
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
