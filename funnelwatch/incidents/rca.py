"""Root-cause analysis of one incident: where, which funnel step, what changed, impact.

``analyse_incident(con, metric=..., cohort=..., start=..., end=...)`` reads the warehouse (read
only, parameterised SQL) and answers, for the incident's anomalous span ``[start, end)``:

* **where**: the smallest dimension-value combinations that explain the deviation, from
  expected vs actual at the leaves: an exhaustive scan of every cohort of up to 3 dimensions by
  its aggregated z (ratio KPIs for conversions, additive for counts; ``_scan``, and
  docs/rootcause.md "Incident root cause" for why not ``rootcause.Localizer``). Leaves are
  device_type x os x browser x country x utm_campaign (utm_source / utm_medium are
  near-duplicates of utm_campaign and are left out so the campaign is named, not its source).
  Payment-provider failures are localised on ``payment_provider`` (raw.events, not a session
  dimension), stock-outs on ``category`` (intermediate.int_category_hourly).
* **funnel_step**: the step-to-step conversion (``add_to_cart`` = add_to_cart / product_view
  sessions ...) where the loss starts.
* **onset**: when the deviation began, which for a small drop is hours before ``start`` (the
  first hour detection flagged): a change point in the localised cohort's conversion at the
  loss's step, searched up to ``lookback_hours`` back (``estimate_onset``); ``start`` when the
  data do not show an earlier onset clearly.
* **hypotheses**: deploys, campaign starts, JS error codes, payment providers, bot traffic,
  stock-outs and tracking gaps, ranked by time (how well a change at that time explains the
  onset) and cohort / step match, with the share of the deviation each explains.
* **impact**: expected minus actual orders per hour from the onset, times the average order
  value.

Expected values: ratio KPIs use the leaf's pooled rate over the ``history_days`` before
``start``, shrunk towards the flagged cohort's rate (20 pseudo-denominators); additive KPIs
use the same hours of the day over the ``history_days`` before (mean per day).
"""

from __future__ import annotations

import itertools
import math
from datetime import UTC, datetime, timedelta

import duckdb
import numpy as np
import pandas as pd

from rootcause import format_cohort, parse_cohort

LEAF_DIMENSIONS = ("device_type", "os", "browser", "country", "utm_campaign")
SESSION_DIMENSIONS = (*LEAF_DIMENSIONS, "utm_source", "utm_medium")
UNKNOWN_LABEL = {
    "device_type": "(unknown)",
    "os": "(unknown)",
    "browser": "(unknown)",
    "country": "(unknown)",
    "utm_source": "(none)",
    "utm_medium": "(none)",
    "utm_campaign": "(none)",
}
STAGES = (
    "sessions",
    "product_view",
    "add_to_cart",
    "checkout_start",
    "shipping_step",
    "payment_step",
    "review_step",
    "payment_attempt",
    "purchase",
)
COUNT_COLUMNS = (
    "payment_attempts",
    "payment_failures",
    "purchases",
    "revenue",
    "js_error_sessions",
    "events",
)


def stage_column(stage: str) -> str:
    return "sessions" if stage == "sessions" else f"{stage}_sessions"


CUBE_COLUMNS = tuple(stage_column(s) for s in STAGES) + COUNT_COLUMNS

# rate metric -> (numerator stage, denominator stage) of fct_cohort_metrics_hourly
RATE_METRICS = {
    "product_view_rate": ("product_view", "sessions"),
    "add_to_cart_rate": ("add_to_cart", "product_view"),
    "checkout_start_rate": ("checkout_start", "add_to_cart"),
    "shipping_step_rate": ("shipping_step", "checkout_start"),
    "payment_step_rate": ("payment_step", "shipping_step"),
    "review_step_rate": ("review_step", "payment_step"),
    "payment_attempt_rate": ("payment_attempt", "review_step"),
    "checkout_conversion_rate": ("purchase", "checkout_start"),
    "session_conversion_rate": ("purchase", "sessions"),
}
# metrics where up is bad (their funnel loss is a drop of payment_attempt -> purchase)
OTHER_RATE_METRICS = {
    "payment_failure_rate": ("payment_failures", "payment_attempts"),
    "js_error_session_rate": ("js_error_sessions", "sessions"),
}
ADDITIVE_METRICS = {
    "sessions": "sessions",
    "events": "events",
    "purchases": "purchases",
    "revenue": "revenue",
    "product_view_sessions": "product_view_sessions",
}
KNOWN_METRICS = (*RATE_METRICS, *OTHER_RATE_METRICS, *ADDITIVE_METRICS)

# which funnel steps a service's deploy can break (step = the numerator stage of a conversion)
SERVICE_STEPS = {
    "payment-widget": {"payment_step", "review_step", "payment_attempt", "purchase"},
    "payment": {"payment_attempt", "purchase"},
    "checkout": {"checkout_start", "shipping_step", "payment_step", "review_step"},
    "web": {"sessions", "product_view", "add_to_cart", "checkout_start"},
    "search": {"product_view", "add_to_cart"},
    "catalog": {"product_view", "add_to_cart"},
}
# funnel event types in order (tracking gaps: an earlier one stops while later ones continue)
TRACKED_EVENTS = (
    "product_view",
    "add_to_cart",
    "checkout_start",
    "checkout_step",
    "payment_attempt",
    "purchase",
)
EVENT_STAGE = {
    "product_view": "product_view",
    "add_to_cart": "add_to_cart",
    "checkout_start": "checkout_start",
    "checkout_step": "shipping_step",
    "payment_attempt": "payment_attempt",
    "purchase": "purchase",
}
PRIOR_WEIGHT = 20.0  # pseudo-denominators shrinking a leaf's history rate to its parent's
LOOKBACK_BEFORE = timedelta(hours=6)  # changes up to this long before the onset are candidates
ONSET_NORMAL_LLR = 3.0  # a stretch favouring "no change" by e^3 ends an older deviation
ONSET_MIN_GAIN = 3.0  # log-LR an onset before start must gain over start itself (else start)
ONSET_DECAY_HOURS = 6.0  # mild preference for changes nearer the estimated onset
BASELINE_ERROR = 0.05  # proportional error of a baseline, in every z below
RATIO_DRIFT = 0.01  # cohort-level proportional error of an expected conversion (drift)
ADDITIVE_DRIFT = 0.08  # ... of an expected count from the same hours of previous days
DIMENSION_PENALTY = 2.0  # z^2 a cohort must gain per extra dimension (multiple testing)
MAX_DIMENSIONS = 3
MIN_REFINE_Z = 3.0  # a sub-cohort replaces the flagged cohort only when |z| >= this
# naming ties between cohorts with identical leaves: campaign, os, browser, country, then device
DIMENSION_PREFERENCE = {"utm_campaign": 0, "os": 1, "browser": 2, "country": 3, "device_type": 4}


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
) -> dict:
    """Root cause of one incident (see the module docstring); a JSON-serialisable dict.

    ``lookback_hours``: how far before ``start`` (the first anomalous hour) the onset of the
    deviation and its candidate causes are looked for (detection flags small drops late)."""
    if metric not in KNOWN_METRICS:
        raise ValueError(f"unknown metric {metric!r}; expected one of {sorted(KNOWN_METRICS)}")
    start, end = _utc(start, "start"), _utc(end, "end")
    if end <= start:
        raise ValueError(f"empty window: end {end.isoformat()} <= start {start.isoformat()}")
    if not isinstance(history_days, int) or history_days < 1:
        raise ValueError(f"history_days must be a positive integer, got {history_days!r}")
    if not isinstance(lookback_hours, int) or lookback_hours < 0:
        raise ValueError(f"lookback_hours must be a non-negative integer, got {lookback_hours!r}")
    flagged = parse_cohort(cohort) if cohort else {}
    bad = [d for d in flagged if d not in (*SESSION_DIMENSIONS, "category", "payment_provider")]
    if bad:
        raise ValueError(f"cohort {cohort!r} has unknown dimension(s) {bad}")
    ctx = _Context(con, metric, cohort, flagged, start, end, history_days)
    ctx.lookback = timedelta(hours=lookback_hours)
    return ctx.run()


def _utc(ts: datetime, name: str) -> datetime:
    if not isinstance(ts, datetime):
        raise ValueError(f"{name} must be a datetime, got {type(ts).__name__}")  # noqa: TRY004
    if ts.tzinfo is None:
        raise ValueError(f"{name} must be timezone-aware (UTC), got naive {ts.isoformat()}")
    return ts.astimezone(UTC)


def _iso(ts) -> str | None:
    if ts is None or (isinstance(ts, float) and math.isnan(ts)) or ts is pd.NaT:
        return None
    return pd.Timestamp(ts).tz_convert("UTC").isoformat()


def _f(x, nd: int = 6):
    """Float for JSON (None for NaN / inf)."""
    if x is None:
        return None
    x = float(x)
    if not math.isfinite(x):
        return None
    return round(x, nd)


def _relative(onset: datetime, at) -> str:
    minutes = (onset - pd.Timestamp(at).to_pydatetime()).total_seconds() / 60.0
    if minutes >= 0:
        return f"{minutes:.0f} min before the onset ({onset:%H:%M} UTC)"
    if minutes > -60:
        return f"in the first hour of the loss ({onset:%H:%M} UTC)"
    return f"{-minutes:.0f} min after the onset ({onset:%H:%M} UTC)"


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
    return {"z": ctx.metric_z}


def _rate_z(n: float, d: float, r: float) -> float:
    """z of ``n`` successes out of ``d`` against an expected rate ``r`` (binomial + 5 % baseline)."""
    e = d * r
    var = d * r * (1 - r) + (BASELINE_ERROR * e) ** 2 + 1.0
    return (n - e) / math.sqrt(var)


def _count_z(actual: float, expected: float) -> float:
    var = expected + (BASELINE_ERROR * expected) ** 2 + 1.0
    return (actual - expected) / math.sqrt(var)


def _filter_sql(filters: dict, allowed=SESSION_DIMENSIONS) -> tuple[str, list]:
    """``col = ?`` conditions for the session dimensions of a cohort (names from a fixed list)."""
    parts, params = [], []
    for dim in SESSION_DIMENSIONS:
        if dim in filters and dim in allowed:
            parts.append(f"coalesce({dim}, '{UNKNOWN_LABEL[dim]}') = ?")
            params.append(str(filters[dim]))
    return (" and ".join(parts) if parts else "true"), params


class _Context:
    def __init__(self, con, metric, cohort, flagged, start, end, history_days):
        self.con = con
        self.metric = metric
        self.cohort = cohort
        self.flagged = flagged
        self.session_flagged = {k: v for k, v in flagged.items() if k in SESSION_DIMENSIONS}
        self.start, self.end = start, end
        self.hist_start = start - timedelta(days=history_days)
        self.history_days = history_days
        self.hours = int((end - start).total_seconds() // 3600) or 1
        self.lookback = timedelta(hours=24)
        self.onset = start
        self.change_curve = None  # hour -> profile log-likelihood of a change point there
        self.change_best = None

    # -- data ----------------------------------------------------------------------------------
    def _weights(self) -> tuple[list, list]:
        """History hours and weights: an hour counts once per day-shift that maps it into the span."""
        hours, weights = [], []
        h = self.hist_start.replace(minute=0, second=0, microsecond=0)
        while h < self.start:
            k = sum(
                1
                for day in range(1, self.history_days + 1)
                if self.start <= h + timedelta(days=day) < self.end
            )
            if k:
                hours.append(h)
                weights.append(k / self.history_days)
            h += timedelta(hours=1)
        return hours, weights

    def load_cube(self) -> pd.DataFrame:
        where_flagged, fparams = _filter_sql(self.session_flagged)
        cur = ", ".join(
            f"sum({c}) filter (where f.event_hour >= ?) as cur_{c}" for c in CUBE_COLUMNS
        )
        hist = ", ".join(
            f"sum({c}) filter (where f.event_hour < ?) as hist_{c}" for c in CUBE_COLUMNS
        )
        base = ", ".join(f"sum({c} * coalesce(w.wt, 0)) as base_{c}" for c in CUBE_COLUMNS)
        dims = ", ".join(f"coalesce({d}, '{UNKNOWN_LABEL[d]}') as {d}" for d in LEAF_DIMENSIONS)
        hours, weights = self._weights()
        sql = f"""
            with w as (select unnest(?::timestamptz[]) as h, unnest(?::double[]) as wt)
            select {dims}, bool_or({where_flagged}) as in_flagged, {cur}, {hist}, {base}
            from marts.fct_funnel_hourly f left join w on f.event_hour = w.h
            where f.event_hour >= ? and f.event_hour < ?
            group by all
        """
        params = [hours, weights, *fparams]
        params += [self.start] * len(CUBE_COLUMNS) + [self.start] * len(CUBE_COLUMNS)
        params += [self.hist_start, self.end]
        df = self.con.execute(sql, params).df()
        value_cols = [c for c in df.columns if c.split("_", 1)[0] in ("cur", "hist", "base")]
        df[value_cols] = df[value_cols].fillna(0.0).astype(float)
        return df

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
            "impact": impact,
        }

    # -- where / which step --------------------------------------------------------------------
    def _ratio_leaves(self, num_col: str, den_col: str, frame=None) -> pd.DataFrame | None:
        """Leaves of a conversion: actual ``n`` of ``d`` and the expected rate from history.

        The leaf's pooled rate over the history window, shrunk towards the flagged cohort's rate
        with ``PRIOR_WEIGHT`` pseudo-denominators; ``n`` is clipped to ``d`` (session-hour
        counting guard).
        """
        df = self.inside if frame is None else frame
        d = df[f"cur_{den_col}"].to_numpy()
        n = np.minimum(df[f"cur_{num_col}"].to_numpy(), d)
        hd = df[f"hist_{den_col}"].to_numpy()
        hn = np.minimum(df[f"hist_{num_col}"].to_numpy(), hd)
        if hd.sum() <= 0 or hn.sum() <= 0:
            return None
        parent = hn.sum() / hd.sum()
        rate = (hn + PRIOR_WEIGHT * parent) / (hd + PRIOR_WEIGHT)
        out = df[self.loc_dims].copy()
        out["actual"] = n
        out["denominator"] = d
        out["expected"] = rate * d
        # binomial noise of the hour's counts + the error of the rate estimated from history
        out["variance"] = d * rate * (1 - rate) * (1.0 + d / (hd + PRIOR_WEIGHT))
        out = out[out["denominator"] > 0]
        if out.empty or out["expected"].sum() <= 0:
            return None
        return out

    def _localise_ratio(self, num_col, den_col):
        leaves = self._ratio_leaves(num_col, den_col)
        if leaves is None or not self.loc_dims:
            return None
        return _scan(leaves, self.loc_dims, ratio=True, drift=RATIO_DRIFT)

    def _localise_additive(self, col):
        df = self.inside
        leaves = df[self.loc_dims].copy()
        leaves["actual"] = df[f"cur_{col}"].clip(lower=0)
        leaves["expected"] = df[f"base_{col}"].clip(lower=0)
        leaves["denominator"] = 1.0
        # Poisson noise of the hour and of the mean over history_days days
        leaves["variance"] = leaves["expected"] * (1.0 + 1.0 / self.history_days)
        leaves = leaves[(leaves["actual"] > 0) | (leaves["expected"] > 0)]
        if leaves.empty or leaves["expected"].sum() <= 0 or not self.loc_dims:
            return None
        return _scan(leaves, self.loc_dims, ratio=False, drift=ADDITIVE_DRIFT)

    def _rows(self, ranked, step, direction, chosen_already=False) -> list[dict]:
        if ranked is None or ranked.empty:
            return []
        rows = []
        # cohorts that moved the way the incident did first, the best supported on top
        if not chosen_already:
            ranked = _choose(ranked, direction)
        for _, r in ranked.head(3).iterrows():
            filters = {**self.session_flagged, **r["filters"]}
            rows.append(
                {
                    "rank": len(rows) + 1,
                    "cohort": format_cohort(filters),
                    "filters": {k: str(v) for k, v in filters.items()},
                    "step": step,
                    "score": _f(r["score"]),
                    "z": _f(r["z"], 3),
                    "actual": _f(r["actual"]),
                    "expected": _f(r["expected"]),
                    "deviation": _f(r["deviation"]),
                    "root_cause": bool(r["root_cause"]),
                    "explanatory_power": _f(r["explanatory_power"], 4),
                }
            )
        return rows

    def _step_pairs(self) -> list[tuple[str, str]]:
        if self.metric in RATE_METRICS:
            num, den = RATE_METRICS[self.metric]
        elif self.metric == "payment_failure_rate":
            num, den = "purchase", "payment_attempt"
        elif self.metric in ("purchases", "revenue"):
            num, den = "purchase", "sessions"
        else:
            return []
        i, j = STAGES.index(den), STAGES.index(num)
        return [(STAGES[k], STAGES[k + 1]) for k in range(i, j)]

    def _direction(self) -> float:
        """+1 when the flagged metric rose, -1 when it fell (-1 if unclear: a loss)."""
        df = self.inside
        if self.metric in RATE_METRICS or self.metric in OTHER_RATE_METRICS:
            if self.metric in RATE_METRICS:
                num, den = (stage_column(x) for x in RATE_METRICS[self.metric])
            else:
                num, den = OTHER_RATE_METRICS[self.metric]
            d, hd = df[f"cur_{den}"].sum(), df[f"hist_{den}"].sum()
            if d <= 0 or hd <= 0:
                return -1.0
            r = min(df[f"hist_{num}"].sum() / hd, 1.0)
            n, e = min(df[f"cur_{num}"].sum(), d), r * d
            # as in the scan: binomial noise, the history estimate's error, the drift
            z = (n - e) / math.sqrt(d * r * (1 - r) * (1 + d / hd) + (RATIO_DRIFT * e) ** 2 + 1.0)
        else:
            col = ADDITIVE_METRICS[self.metric]
            a, e = df[f"cur_{col}"].sum(), df[f"base_{col}"].sum()
            z = (a - e) / math.sqrt(
                e * (1 + 1 / self.history_days) + (ADDITIVE_DRIFT * e) ** 2 + 1.0
            )
        self.metric_z = float(z)
        if abs(z) >= 2:
            return float(np.sign(z))
        if self.metric in ADDITIVE_METRICS:
            # a count that moved in a cohort, not (yet) visibly in the flagged total
            ranked = self._localise_additive(ADDITIVE_METRICS[self.metric])
            if ranked is not None and not ranked.empty and ranked["z"].iloc[0] != 0:
                return float(np.sign(ranked["z"].iloc[0]))
        return -1.0

    def localise(self):
        """Where (the best-supported cohort of the metric itself or of one step) and which step.

        Scans: the flagged metric's own conversion (the parent KPI) and every step-to-step
        conversion it spans. ``where`` comes from the scan whose best cohort moved most
        significantly (a loss concentrated at one step is sharper there; a loss spread over
        the checkout steps is sharper on the whole conversion). The funnel step is then read
        off the localised cohort: the earliest step whose conversion in that cohort dropped
        clearly (|z| >= 3 and >= 60 % of its strongest step), else its strongest step.
        """
        direction = self._direction()
        self.direction = direction
        # a step conversion loses when the metric falls, except for failure / error rates
        step_dir = -direction if self.metric in OTHER_RATE_METRICS else direction
        scans = []  # (step or None, ranked, direction)
        if self.metric in RATE_METRICS:
            num, den = RATE_METRICS[self.metric]
            ranked = self._localise_ratio(stage_column(num), stage_column(den))
            scans.append(
                (num if STAGES.index(num) - STAGES.index(den) == 1 else None, ranked, direction)
            )
        elif self.metric in OTHER_RATE_METRICS:
            num_col, den_col = OTHER_RATE_METRICS[self.metric]
            scans.append((None, self._localise_ratio(num_col, den_col), direction))
        elif self.metric in ADDITIVE_METRICS:
            scans.append((None, self._localise_additive(ADDITIVE_METRICS[self.metric]), direction))
            step_dir = -1.0
        step_scans = {}
        for den, num in self._step_pairs():
            ranked = self._localise_ratio(stage_column(num), stage_column(den))
            if ranked is None or ranked.empty:
                continue
            step_scans[num] = ranked
            if self.metric not in ADDITIVE_METRICS:
                scans.append((num, ranked, step_dir))
        best, best_z = None, -np.inf
        for step, ranked, d in scans:
            if ranked is None or ranked.empty:
                continue
            chosen = _choose(ranked, d)
            z = float(chosen["z"].iloc[0]) * d
            if z > best_z + 1e-9:
                best, best_z = (step, chosen, d), z
        step_info = {"direction": direction, "steps": {}}
        if best is None:
            return [], None, step_info
        step, chosen, d = best
        local = chosen["cohort"].iloc[0]
        # the funnel step where the loss starts, in the localised cohort
        zs = []
        for num, ranked in step_scans.items():
            hit = ranked.loc[ranked["cohort"] == local, "z"]
            z = float(hit.iloc[0]) * step_dir if len(hit) else 0.0
            zs.append((num, z))
            step_info["steps"][num] = z
        funnel_step = step
        if zs:
            top = max(z for _, z in zs)
            if top > 0:
                funnel_step = next(n for n, z in zs if z >= max(3.0, 0.6 * top) or z == top)
            elif funnel_step is None:
                funnel_step = None
        return self._rows(chosen, funnel_step, d, chosen_already=True), funnel_step, step_info

    # -- categories / providers ----------------------------------------------------------------
    def category_table(self) -> pd.DataFrame:
        sql = """
            select category,
              sum(product_view_sessions) filter (where event_hour >= ?) as cur_pv,
              sum(add_to_cart_sessions) filter (where event_hour >= ?) as cur_atc,
              sum(product_view_sessions) filter (where event_hour < ?) as hist_pv,
              sum(add_to_cart_sessions) filter (where event_hour < ?) as hist_atc
            from intermediate.int_category_hourly
            where event_hour >= ? and event_hour < ?
            group by category
        """
        s = self.start
        df = self.con.execute(sql, [s, s, s, s, self.hist_start, self.end]).df()
        for c in ("cur_pv", "cur_atc", "hist_pv", "hist_atc"):
            df[c] = df[c].fillna(0.0).astype(float)
        df = df[(df.cur_pv > 0) & (df.hist_pv > 0)].copy()
        if df.empty:
            return df
        df["exp_rate"] = np.minimum(df.hist_atc, df.hist_pv) / df.hist_pv
        df["rate"] = np.minimum(df.cur_atc, df.cur_pv) / df.cur_pv
        df["lost"] = df.exp_rate * df.cur_pv - df.cur_atc
        df["z"] = [
            _rate_z(n, d, r) for n, d, r in zip(df.cur_atc, df.cur_pv, df.exp_rate, strict=True)
        ]
        # product views against the store's traffic: a stock-out keeps the views
        pv_share = df.cur_pv.sum() / max(df.hist_pv.sum(), 1.0)
        df["pv_ratio"] = df.cur_pv / np.maximum(df.hist_pv * pv_share, 1.0)
        return df.sort_values("z").reset_index(drop=True)

    def provider_table(self) -> pd.DataFrame:
        where_flagged, fparams = _filter_sql(self.session_flagged)
        sql = f"""
            select payment_provider as provider,
              count(*) filter (where event_time >= ?) as cur_n,
              count(*) filter (where event_time >= ? and payment_status = 'failure') as cur_fail,
              avg(latency_ms) filter (where event_time >= ?) as cur_latency,
              count(*) filter (where event_time < ?) as hist_n,
              count(*) filter (where event_time < ? and payment_status = 'failure') as hist_fail,
              avg(latency_ms) filter (where event_time < ?) as hist_latency,
              min(event_hour) filter (where event_time >= ? and payment_status = 'failure')
                as first_failure
            from raw.events
            where event_type = 'payment_attempt' and payment_provider is not null
              and event_time >= ? and event_time < ? and {where_flagged}
            group by payment_provider
        """
        s = self.start
        df = self.con.execute(sql, [s] * 7 + [self.hist_start, self.end, *fparams]).df()
        df = df[(df.cur_n > 0) & (df.hist_n > 0)].copy()
        if df.empty:
            return df
        df["exp_rate"] = (df.hist_fail + 0.5) / (df.hist_n + 1.0)
        df["rate"] = df.cur_fail / df.cur_n
        df["excess"] = df.cur_fail - df.exp_rate * df.cur_n
        df["z"] = [
            _rate_z(n, d, r) for n, d, r in zip(df.cur_fail, df.cur_n, df.exp_rate, strict=True)
        ]
        df["latency_ratio"] = df.cur_latency / df.hist_latency
        return df.sort_values("z", ascending=False).reset_index(drop=True)

    def special_where(self, where: list[dict], step: str | None) -> list[dict]:
        """Stock-outs are named by category, payment failures by provider, when they dominate."""
        extra = []
        if "category" in self.flagged or step == "add_to_cart" or self.metric == "add_to_cart_rate":
            cats = self.categories
            if not cats.empty:
                lost_total = cats.lost.clip(lower=0).sum()
                for _, c in cats.head(3).iterrows():
                    share = c.lost / lost_total if lost_total > 0 else 0.0
                    if c.z <= -5 and share >= 0.4 or self.flagged.get("category") == c.category:
                        extra.append(
                            {
                                "cohort": f"category={c.category}",
                                "filters": {"category": str(c.category)},
                                "step": "add_to_cart",
                                "score": _f(share),
                                "z": _f(c.z, 3),
                                "actual": _f(c.rate),
                                "expected": _f(c.exp_rate),
                                "deviation": _f(c.rate / c.exp_rate - 1 if c.exp_rate else None),
                                "root_cause": bool(c.z <= -5 and share >= 0.4),
                                "explanatory_power": _f(share, 4),
                            }
                        )
        if (
            self.metric == "payment_failure_rate"
            or step == "purchase"
            or "payment_provider" in self.flagged
        ):
            prov = self.providers
            if not prov.empty:
                excess_total = prov.excess.clip(lower=0).sum()
                for _, p in prov.head(3).iterrows():
                    share = p.excess / excess_total if excess_total > 0 else 0.0
                    if (
                        p.z >= 5
                        and share >= 0.4
                        or self.flagged.get("payment_provider") == p.provider
                    ):
                        extra.append(
                            {
                                "cohort": f"payment_provider={p.provider}",
                                "filters": {"payment_provider": str(p.provider)},
                                "step": "purchase",
                                "score": _f(share),
                                "z": _f(p.z, 3),
                                "actual": _f(p.rate),
                                "expected": _f(p.exp_rate),
                                "deviation": _f(p.rate / p.exp_rate - 1),
                                "root_cause": bool(p.z >= 5 and share >= 0.4),
                                "explanatory_power": _f(share, 4),
                            }
                        )
        if not extra:
            return where
        out = extra + [w for w in where if w["cohort"] not in {e["cohort"] for e in extra}]
        out = out[:3]
        for i, w in enumerate(out, start=1):
            w["rank"] = i
        return [{"rank": w.pop("rank"), **w} for w in out]

    # -- funnel --------------------------------------------------------------------------------
    def funnel_table(self, filters: dict) -> list[dict]:
        session_filters = {k: v for k, v in filters.items() if k in LEAF_DIMENSIONS}
        mask = np.ones(len(self.cube), dtype=bool)
        for k, v in session_filters.items():
            mask &= (self.cube[k] == v).to_numpy()
        if self.session_flagged and not session_filters:
            mask = self.cube["in_flagged"].to_numpy()
        inside, rest = self.cube[mask], self.cube[~mask]
        out = []
        for den, num in itertools.pairwise(STAGES):
            nc, dc = stage_column(num), stage_column(den)

            def rate(df, period, nc=nc, dc=dc):
                d = df[f"{period}_{dc}"].sum()
                return min(df[f"{period}_{nc}"].sum(), d) / d if d > 0 else None

            cr, ce = rate(inside, "cur"), rate(inside, "hist")
            rr, re_ = rate(rest, "cur"), rate(rest, "hist")
            out.append(
                {
                    "step": num,
                    "cohort_rate": _f(cr),
                    "cohort_expected_rate": _f(ce),
                    "rest_rate": _f(rr),
                    "rest_expected_rate": _f(re_),
                    "change": _f(cr / ce - 1) if cr is not None and ce else None,
                    "rest_change": _f(rr / re_ - 1) if rr is not None and re_ else None,
                }
            )
        return out

    # -- onset ---------------------------------------------------------------------------------
    def _onset_series(self, filters: dict, step: str | None):
        """Hourly (hour, n, d) of the conversion the loss is at, in the localised session cohort,
        from ``hist_start`` to ``end``; the direction a loss moves it. None when not a session
        cohort's conversion (providers, categories, counts without a step)."""
        if any(k not in SESSION_DIMENSIONS for k in filters):
            return None
        if step is not None and step in STAGES and STAGES.index(step) > 0:
            num, den = stage_column(step), stage_column(STAGES[STAGES.index(step) - 1])
            direction = -1.0  # a loss at the step (counts: purchases, revenue)
            if self.metric in RATE_METRICS:
                direction = self.direction
            elif self.metric in OTHER_RATE_METRICS:
                direction = -self.direction
        elif self.metric in RATE_METRICS:
            num, den = (stage_column(x) for x in RATE_METRICS[self.metric])
            direction = self.direction
        elif self.metric in OTHER_RATE_METRICS:
            num, den = OTHER_RATE_METRICS[self.metric]
            direction = self.direction
        else:
            return None
        where_f, params = _filter_sql({**self.session_flagged, **filters})
        df = self.con.execute(
            f"select event_hour, sum({num}) as n, sum({den}) as d from marts.fct_funnel_hourly "
            f"where event_hour >= ? and event_hour < ? and {where_f} group by all order by 1",
            [self.hist_start, self.end, *params],
        ).df()
        return df, direction

    def estimate_onset(self, filters: dict, step: str | None) -> datetime:
        """When the deviation began: a change point in the localised cohort's conversion at the
        loss's step, searched from ``lookback`` before ``start`` up to ``start``.

        The rate before the lookback (history) is r0; for a change at hour tau the rate after it
        is the MLE r1 over [tau, end) (in the incident's direction, else no evidence). Profile
        log-likelihood ratio ``S(tau) = sum_{t >= tau} llr_t(r1, r0)``. A tau is admissible only
        when the deviation is sustained from it through ``start``: no stretch inside
        [tau, start) favours r0 over r1 by more than ``ONSET_NORMAL_LLR`` (so an older,
        already-ended deviation with normal hours between is not taken). The onset is the
        admissible tau with the largest S; ``self.change_curve`` keeps S per hour (candidate
        changes are scored by how close their S comes to the best).
        """
        self.change_curve = None
        if self.lookback <= timedelta(0):
            return self.start
        got = self._onset_series(filters, step)
        if got is None:
            return self.start
        df, direction = got
        if df.empty:
            return self.start
        ts = pd.to_datetime(df.event_hour, utc=True)
        d = df.d.fillna(0.0).to_numpy(dtype=float)
        n = np.minimum(df.n.fillna(0.0).to_numpy(dtype=float), d)
        start_h = pd.Timestamp(self.start).floor("h")
        lo = start_h - pd.Timedelta(self.lookback)
        before = (ts < lo).to_numpy()
        if d[before].sum() <= 0 or n[before].sum() <= 0:
            return self.start
        r0 = min(max(n[before].sum() / d[before].sum(), 1e-6), 1 - 1e-6)
        seg = (ts >= lo).to_numpy()
        hours, n, d = list(ts[seg]), n[seg], d[seg]
        if not hours:
            return self.start
        i_start = next((i for i, h in enumerate(hours) if h >= start_h), len(hours))
        cn, cd = np.cumsum(n[::-1])[::-1], np.cumsum(d[::-1])[::-1]  # sums over [i, end)
        curve = {}
        best_i, best_s = None, -np.inf
        for i in range(len(hours)):
            if cd[i] <= 0:
                continue
            r1 = min(max(cn[i] / cd[i], 1e-6), 1 - 1e-6)
            if (r1 - r0) * direction <= 0:
                curve[hours[i]] = 0.0
                continue
            a, b = math.log(r1 / r0), math.log((1 - r1) / (1 - r0))
            llr = n * a + (d - n) * b  # per hour
            s_i = float(llr[i:].sum())
            curve[hours[i]] = s_i
            if i > i_start:
                continue  # the onset is not after the first anomalous hour
            # sustained: the worst stretch inside [i, i_start) (min sub-array sum)
            worst, run = 0.0, 0.0
            for x in llr[i:i_start]:
                run = min(x, run + x)
                worst = min(worst, run)
            if worst < -ONSET_NORMAL_LLR:
                continue
            if s_i > best_s + 1e-9:
                best_i, best_s = i, s_i
        if best_i is None or best_s - curve.get(hours[min(i_start, len(hours) - 1)], 0.0) < (
            ONSET_MIN_GAIN
        ):
            return self.start  # no clear evidence the deviation began before start
        self.change_curve = curve
        self.change_best = best_s
        return pd.Timestamp(hours[best_i]).to_pydatetime()

    # -- hypotheses ----------------------------------------------------------------------------
    def _time_score(self, at) -> float:
        """How well a change at ``at`` explains the onset: 1 for a change just before it.

        With a change-point curve: ``exp(-(S_best - S(hour of at)) / 2)`` (the log-likelihood
        lost by putting the change at ``at`` instead of the best onset), times a mild decay
        with the distance to the estimated onset (``ONSET_DECAY_HOURS``); a change after the
        first anomalous hour weighs at most half and decays by the hour. Without a curve (no
        conversion series): the distance to the onset alone."""
        if at is None:
            return 0.5
        at = pd.Timestamp(at).tz_convert("UTC").to_pydatetime()
        curve = self.change_curve
        if curve and self.change_best is not None:
            tau = pd.Timestamp(at).round("h")
            s = curve.get(tau)
            if s is None:  # before the lookback or after the last hour
                s = 0.0
            lost = max(self.change_best - s, 0.0)
            hours = (self.onset - at).total_seconds() / 3600.0
            score = math.exp(-lost / 2.0) * math.exp(-abs(hours) / ONSET_DECAY_HOURS)
            after = (at - self.start).total_seconds() / 3600.0
            if after > 0:
                score *= 0.5 * math.exp(-after)
            return score
        hours = (self.onset - at).total_seconds() / 3600.0
        if hours >= -1.0:  # before the onset (or inside its first hour)
            return math.exp(-max(hours, 0.0) / 2.0)
        return 0.5 * math.exp(hours / 1.0)  # after the onset: it cannot have started it

    def hypotheses(self, where, step, step_info) -> list[dict]:
        main = where[0] if where else None
        main_filters = main["filters"] if main else {}
        strength = min(1.0, abs(main["z"] or 0.0) / 5.0) if main else 0.3
        expl = 1.0
        if main and main.get("explanatory_power") is not None:
            expl = float(min(max(main["explanatory_power"], 0.0), 1.0))
        hyps = []
        lo = min(self.start - self.lookback, self.onset - LOOKBACK_BEFORE)
        lo, hi = min(lo, self.start - LOOKBACK_BEFORE), self.end

        deploys = self.con.execute(
            "select service, version, deploy_time, description from marts.dim_deploys "
            "where deploy_time >= ? and deploy_time < ? order by deploy_time",
            [lo, hi],
        ).fetchall()
        for service, version, at, desc in deploys:
            steps = SERVICE_STEPS.get(str(service).lower())
            if step is None or steps is None:
                match = 0.5
            else:
                match = 1.0 if step in steps else 0.2
            ts = self._time_score(at)
            score = ts * match * strength
            hyps.append(
                {
                    "kind": "deploy",
                    "ref": str(version),
                    "service": str(service),
                    "title": f"deploy {service} {version}",
                    "contribution": _f(expl * strength if match >= 1.0 and ts >= 0.3 else 0.0, 3),
                    "evidence": (
                        f"{service} {version} deployed at {pd.Timestamp(at).tz_convert('UTC'):%Y-%m-%d %H:%M} UTC, "
                        + _relative(self.onset, at)
                        + "; "
                        + (
                            f"the loss is at the {step} step, which {service} serves"
                            if match >= 1.0
                            else f"the loss is at the {step} step, which {service} does not obviously touch"
                            if step
                            else "no funnel step localised"
                        )
                        + (
                            f"; {main['cohort']} moved {main['deviation']:+.1%} (z {main['z']:.1f})"
                            if main and main.get("deviation") is not None
                            else ""
                        )
                        + (f" ({desc})" if desc else "")
                    ),
                    "at": _iso(at),
                    "_score": score,
                }
            )

        campaigns = self.con.execute(
            "select campaign_name, start_time, channel from marts.dim_campaigns "
            "where start_time >= ? and start_time < ?",
            [lo, hi],
        ).fetchall()
        for name, at, channel in campaigns:
            match = 1.0 if main_filters.get("utm_campaign") == name else 0.3
            ts = self._time_score(at)
            hyps.append(
                {
                    "kind": "campaign",
                    "ref": str(name),
                    "service": None,
                    "title": f"campaign {name} started",
                    "contribution": _f(expl * strength if match >= 1.0 else 0.0, 3),
                    "evidence": f"{channel} campaign {name} started at {pd.Timestamp(at).tz_convert('UTC'):%Y-%m-%d %H:%M} UTC"
                    + ("; the localised cohort is its traffic" if match >= 1.0 else ""),
                    "at": _iso(at),
                    "_score": ts * match * strength * 0.9,
                }
            )

        hyps += self._js_errors(main_filters, strength)
        hyps += self._provider_hyps(step)
        hyps += self._bot_hyps(main_filters)
        hyps += self._stock_hyps(step)
        hyps += self._tracking_hyps(step)

        hyps.sort(key=lambda h: -h["_score"])
        out = []
        for i, h in enumerate(hyps[:8], start=1):
            score = h.pop("_score")
            out.append({"rank": i, **h, "score": _f(score, 4)})
        return out

    def _js_errors(self, filters, strength) -> list[dict]:
        where_f, params = _filter_sql(
            self.session_flagged | {k: v for k, v in filters.items() if k in LEAF_DIMENSIONS}
        )
        sql = f"""
            select error_code,
              count(*) filter (where event_time >= ? and event_type = 'js_error') as cur,
              count(*) filter (where event_time < ? and event_type = 'js_error') as hist,
              min(event_hour) filter (where event_time >= ? and event_type = 'js_error') as first_seen
            from raw.events
            where event_time >= ? and event_time < ? and event_type = 'js_error' and {where_f}
            group by error_code
        """
        s = self.start
        errs = self.con.execute(sql, [s, s, s, self.hist_start, self.end, *params]).df()
        pv = self.con.execute(
            f"select count(*) filter (where event_time >= ?), count(*) filter (where event_time < ?) "
            f"from raw.events where event_type = 'page_view' and event_time >= ? and event_time < ? and {where_f}",
            [s, s, self.hist_start, self.end, *params],
        ).fetchone()
        if errs.empty or not pv or not pv[1]:
            return []
        scale = pv[0] / pv[1]
        out = []
        for _, e in errs.iterrows():
            hist_n, cur_n = float(e["hist"]), float(e["cur"])
            exp = hist_n * scale
            z = _count_z(cur_n, exp)
            new = hist_n == 0 and cur_n >= 10
            if (z >= 4 and cur_n >= 1.5 * exp + 5) or new:
                ts = self._time_score(e.first_seen) if new else 0.8
                out.append(
                    {
                        "kind": "js_error",
                        "ref": str(e.error_code),
                        "service": None,
                        "title": f"JS error {e.error_code}",
                        "contribution": _f(min(1.0, (cur_n - exp) / max(cur_n, 1.0)) * 0.5, 3),
                        "evidence": f"{int(cur_n)} {e.error_code} errors vs {exp:.0f} expected for the traffic (z {z:.1f})",
                        "at": _iso(e.first_seen),
                        "_score": min(1.0, z / 10.0) * ts * 0.8 * max(strength, 0.5),
                    }
                )
        return out

    def _provider_hyps(self, step) -> list[dict]:
        prov = self.providers
        if prov.empty:
            return []
        excess_total = prov.excess.clip(lower=0).sum()
        match = (
            1.0
            if (self.metric == "payment_failure_rate" or step in ("purchase", "payment_attempt"))
            else 0.3
        )
        out = []
        for _, p in prov.iterrows():
            lat = p.latency_ratio if p.latency_ratio == p.latency_ratio else 1.0
            if p.z < 4 and lat < 1.5:
                continue
            share = max(p.excess, 0.0) / excess_total if excess_total > 0 else 0.0
            strength = max(min(1.0, p.z / 8.0), min(1.0, (lat - 1.0)))
            out.append(
                {
                    "kind": "payment_provider",
                    "ref": str(p.provider),
                    "service": None,
                    "title": f"payment provider {p.provider} failing",
                    "contribution": _f(share, 3),
                    "evidence": (
                        f"{p.provider}: {int(p.cur_fail)} of {int(p.cur_n)} payment attempts failed "
                        f"({p.rate:.1%} vs {p.exp_rate:.1%} before, z {p.z:.1f}); latency x{lat:.1f}"
                    ),
                    "at": _iso(p.first_failure),
                    "_score": strength * match * (0.5 + 0.5 * share),
                }
            )
        return out

    def _bot_hyps(self, filters) -> list[dict]:
        """A sessions surge from few users in one campaign."""
        day = timedelta(days=1)
        # sessions per campaign: expected from the same hours of previous days (cube baseline)
        by = self.cube.groupby("utm_campaign")[["cur_sessions", "base_sessions"]].sum()
        surged = [
            str(c)
            for c, r in by.iterrows()
            if c != "(none)"
            and r.cur_sessions >= 1.5 * r.base_sessions
            and _count_z(r.cur_sessions, r.base_sessions) >= 5
        ]
        if not surged:
            return []
        sql = """
            select coalesce(utm_campaign, '(none)') as campaign,
              count(distinct session_id) filter (where event_time >= ?) as cur_s,
              count(distinct user_id) filter (where event_time >= ?) as cur_u,
              count(distinct session_id) filter (where event_time < ?) as hist_s,
              count(distinct user_id) filter (where event_time < ?) as hist_u
            from raw.events
            where event_time >= ? and event_time < ? and list_contains(?, utm_campaign)
            group by all
        """
        span_end = min(self.end, self.start + day)
        s = self.start
        df = self.con.execute(sql, [s, s, s, s, s - day, span_end, surged]).df()
        total_excess = (by.cur_sessions - by.base_sessions).clip(lower=0).sum()
        out = []
        for _, r in df.iterrows():
            if r.campaign == "(none)" or r.campaign not in by.index:
                continue
            cur, base = by.loc[r.campaign, "cur_sessions"], by.loc[r.campaign, "base_sessions"]
            spu = r.cur_s / max(r.cur_u, 1)
            hist_spu = r.hist_s / max(r.hist_u, 1)
            z = _count_z(cur, base)
            if cur < 1.5 * base or z < 5 or spu < 1.5 * hist_spu:
                continue
            share = (cur - base) / total_excess if total_excess > 0 else 0.0
            match = 1.0 if filters.get("utm_campaign") in (None, r.campaign) else 0.5
            out.append(
                {
                    "kind": "bot_traffic",
                    "ref": str(r.campaign),
                    "service": None,
                    "title": f"bot traffic on {r.campaign}",
                    "contribution": _f(min(max(share, 0.0), 1.0), 3),
                    "evidence": (
                        f"{r.campaign}: {cur:.0f} session-hours vs {base:.0f} expected (x{cur / max(base, 1):.1f}); "
                        f"{spu:.1f} sessions per user vs {hist_spu:.2f} the day before"
                    ),
                    "at": self.start.isoformat(),
                    "_score": min(1.0, z / 10.0) * match * min(1.0, spu / hist_spu / 3.0),
                }
            )
        return out

    def _stock_hyps(self, step) -> list[dict]:
        cats = self.categories
        if cats.empty:
            return []
        lost_total = cats.lost.clip(lower=0).sum()
        match = (
            1.0
            if (
                step == "add_to_cart"
                or self.metric == "add_to_cart_rate"
                or "category" in self.flagged
            )
            else 0.3
        )
        out = []
        for _, c in cats.iterrows():
            if not (c.z <= -5 and c.rate <= 0.3 * c.exp_rate and c.pv_ratio >= 0.3):
                continue
            share = max(c.lost, 0.0) / lost_total if lost_total > 0 else 0.0
            out.append(
                {
                    "kind": "stock_out",
                    "ref": str(c.category),
                    "service": None,
                    "title": f"stock-out in {c.category}",
                    "contribution": _f(share, 3),
                    "evidence": (
                        f"{c.category}: {int(c.cur_atc)} add-to-carts from {int(c.cur_pv)} product-view sessions "
                        f"({c.rate:.1%} vs {c.exp_rate:.1%} before, z {c.z:.1f}) while views continue"
                    ),
                    "at": self.start.isoformat(),
                    "_score": min(1.0, -c.z / 10.0) * match,
                }
            )
        return out

    def _tracking_hyps(self, step) -> list[dict]:
        s = self.start
        df = (
            self.con.execute(
                "select event_type, count(*) filter (where event_time >= ?) as cur, "
                "count(*) filter (where event_time < ?) as hist from raw.events "
                "where event_time >= ? and event_time < ? group by event_type",
                [s, s, self.hist_start, self.end],
            )
            .df()
            .set_index("event_type")
        )
        if "page_view" not in df.index or not df.loc["page_view", "hist"]:
            return []
        scale = df.loc["page_view", "cur"] / df.loc["page_view", "hist"]
        ratio = {}
        for et in TRACKED_EVENTS:
            if et in df.index and df.loc[et, "hist"] > 0:
                ratio[et] = df.loc[et, "cur"] / (df.loc[et, "hist"] * scale)
        out = []
        for i, et in enumerate(TRACKED_EVENTS):
            if et not in ratio or ratio[et] >= 0.2:
                continue
            later = [e for e in TRACKED_EVENTS[i + 1 :] if ratio.get(e, 0) >= 0.5]
            if not later:
                continue
            match = 1.0 if step in (None, EVENT_STAGE[et]) else 0.5
            out.append(
                {
                    "kind": "tracking",
                    "ref": et,
                    "service": None,
                    "title": f"{et} tracking stopped",
                    "contribution": 1.0 if match >= 1.0 else 0.5,
                    "evidence": (
                        f"{et} events at {ratio[et]:.0%} of their usual share of page views while "
                        f"{', '.join(later)} continue ({ratio[later[0]]:.0%})"
                    ),
                    "at": self.start.isoformat(),
                    "_score": match,
                }
            )
        return out

    def prefer_campaign(self, where, hypotheses) -> list[dict]:
        """Bot traffic is named by its campaign, the actionable cohort, ahead of its fingerprint."""
        if not hypotheses or not where or hypotheses[0]["kind"] != "bot_traffic":
            return where
        camp = hypotheses[0]["ref"]
        if where[0]["filters"].get("utm_campaign") != camp or where[0]["filters"] == {
            "utm_campaign": camp
        }:
            return where
        filters = {**self.flagged, "utm_campaign": camp}
        df = self.inside[self.inside["utm_campaign"] == camp]
        cur, base = df.cur_sessions.sum(), df.base_sessions.sum()
        row = {
            "rank": 1,
            "cohort": format_cohort(filters),
            "filters": filters,
            "step": where[0]["step"],
            "score": where[0]["score"],
            "z": _f(_count_z(cur, base), 3),
            "actual": _f(cur),
            "expected": _f(base),
            "deviation": _f(cur / base - 1) if base else None,
            "root_cause": True,
            "explanatory_power": None,
        }
        rest = [w for w in where if w["cohort"] != row["cohort"]][:2]
        for i, w in enumerate(rest, start=2):
            w["rank"] = i
        return [row, *rest]

    # -- impact --------------------------------------------------------------------------------
    def impact(self, filters: dict, step: str | None) -> dict:
        session_filters = {k: v for k, v in filters.items() if k in SESSION_DIMENSIONS}
        if not session_filters and not any(k in SESSION_DIMENSIONS for k in filters):
            session_filters = dict(self.session_flagged)
        where_f, params = _filter_sql(session_filters)
        den = None
        if step is not None and step in STAGES and STAGES.index(step) > 0:
            den = STAGES[STAGES.index(step) - 1]
        den_col = stage_column(den) if den else "sessions"
        sql = f"""
            select event_hour, extract(hour from event_hour) as hod,
              sum(purchases) as orders, sum(revenue) as revenue, sum({den_col}) as den
            from marts.fct_funnel_hourly
            where event_hour >= ? and event_hour < ? and {where_f}
            group by all order by event_hour
        """
        df = self.con.execute(sql, [self.hist_start, self.end, *params]).df()
        for c in ("orders", "revenue", "den"):
            df[c] = df[c].fillna(0.0).astype(float)
        ts = pd.to_datetime(df.event_hour, utc=True)
        # from the estimated onset (the loss began before detection flagged it)
        first = pd.Timestamp(min(self.onset, self.start)).floor("h")
        hist = df[ts < first]
        cur = df[ts >= first]
        aov = hist.revenue.sum() / hist.orders.sum() if hist.orders.sum() > 0 else None
        if aov is None:
            tot = self.con.execute(
                "select sum(revenue), sum(purchases) from marts.fct_funnel_hourly where event_hour >= ? and event_hour < ?",
                [self.hist_start, self.start],
            ).fetchone()
            aov = tot[0] / tot[1] if tot and tot[1] else 0.0
        if den and hist.den.sum() > 0:
            conv = hist.orders.sum() / hist.den.sum()
            expected = cur.den * conv  # orders at the usual conversion with the traffic it got
            basis = f"{den} sessions x the prior {self.history_days} days' orders per {den} session"
        else:
            by_hod = hist.groupby("hod").orders.sum() / self.history_days
            expected = cur.hod.map(by_hod).fillna(0.0)
            basis = f"the same hour of the prior {self.history_days} days (mean)"
        per_hour, cum = [], 0.0
        for (_, r), e in zip(cur.iterrows(), expected, strict=True):
            lost = e - r.orders
            cum += lost * aov
            per_hour.append(
                {
                    "event_hour": _iso(r.event_hour),
                    "expected_orders": _f(e, 3),
                    "actual_orders": _f(r.orders, 3),
                    "lost_orders": _f(lost, 3),
                    "revenue_at_risk": _f(lost * aov, 2),
                    "cumulative_revenue_at_risk": _f(cum, 2),
                }
            )
        total_lost = max(float(expected.sum() - cur.orders.sum()), 0.0)
        return {
            "cohort": format_cohort(session_filters),
            "basis": basis,
            "lost_orders": _f(total_lost, 3),
            "revenue_at_risk": _f(total_lost * aov, 2),
            "average_order_value": _f(aov, 2),
            "expected_orders": _f(expected.sum(), 3),
            "actual_orders": _f(cur.orders.sum(), 3),
            "per_hour": per_hour,
        }


def _scan(leaves: pd.DataFrame, dims: list[str], *, ratio: bool, drift: float) -> pd.DataFrame:
    """Rank every cohort of 0..MAX_DIMENSIONS dimensions by its aggregated deviation.

    ``leaves``: dims + ``actual``, ``expected`` (counts), ``denominator`` and ``variance`` (the
    leaf's noise variance). For a cohort S: ``z = (A_S - E_S) / sqrt(V_S + (drift E_S)^2)``.
    If S is where the KPI moved (by one factor), ``z^2`` is largest for S itself: a coarser
    cohort adds normal leaves (same excess, more variance), a finer one drops abnormal leaves
    (a share q of the excess, z^2 shrinks by q). So the cohorts are ranked by the scan
    statistic ``z^2 - DIMENSION_PENALTY x n_dimensions`` (a Kulldorff-style scan with a
    penalty for the many more fine cohorts that noise can pick). This replaces the Localizer's
    L1 ripple score, which on these sparse cubes (hundreds of leaves holding a handful of
    checkouts an hour) preferred noisy sub-cohorts to a store-wide drop, and whose variance,
    fitted to the cube, collapsed for rates near 1 (|z| 40-70 for one lost purchase).
    Returns rows with ``cohort``, ``filters``, ``n_dimensions``, ``z``, ``score`` (the scan
    statistic), ``actual`` / ``expected`` (rates for ratio KPIs, sums otherwise),
    ``deviation``, ``explanatory_power`` (share of the parent's excess), ``leaves``,
    ``root_cause`` (|z| >= 4); cohorts with identical leaves are listed once (the simplest).
    """
    n_dims = len(dims)
    codes, uniques = [], []
    for d in dims:
        code, uniq = pd.factorize(leaves[d], sort=True)
        codes.append(code.astype(np.int64))
        uniques.append(list(uniq))
    codes_arr = np.column_stack(codes) if codes else np.zeros((len(leaves), 0), dtype=np.int64)
    sizes = np.array([len(u) for u in uniques], dtype=np.int64)
    a = leaves["actual"].to_numpy(dtype=float)
    e = leaves["expected"].to_numpy(dtype=float)
    den = leaves["denominator"].to_numpy(dtype=float)
    var = leaves["variance"].to_numpy(dtype=float)
    total_excess = float(a.sum() - e.sum())
    rows = []
    cuboids = [()] + [
        c
        for k in range(1, min(MAX_DIMENSIONS, n_dims) + 1)
        for c in itertools.combinations(range(n_dims), k)
    ]
    for cub in cuboids:
        if cub:
            key = np.ravel_multi_index(tuple(codes_arr[:, list(cub)].T), tuple(sizes[list(cub)]))
            keys, g = np.unique(key, return_inverse=True)
        else:
            keys, g = np.zeros(1, dtype=np.int64), np.zeros(len(a), dtype=np.int64)
        k = len(keys)
        A = np.bincount(g, a, k)
        E = np.bincount(g, e, k)
        D = np.bincount(g, den, k)
        V = np.bincount(g, var, k)
        L = np.bincount(g, minlength=k)
        V = V + (drift * E) ** 2 + 1.0
        z = (A - E) / np.sqrt(V)
        for j in np.flatnonzero(E > 0):
            rows.append((cub, int(keys[j]), A[j], E[j], D[j], V[j], z[j], int(L[j])))
    if not rows:
        return pd.DataFrame()
    out = pd.DataFrame(rows, columns=["cub", "key", "A", "E", "D", "V", "z", "leaves"])
    out["n_dimensions"] = out["cub"].map(len)
    out["score"] = out["z"] ** 2 - DIMENSION_PENALTY * out["n_dimensions"]
    # equivalent cohorts are named by the more telling dimensions (iOS Safari, not mobile Safari)
    pref = [DIMENSION_PREFERENCE.get(d, len(DIMENSION_PREFERENCE)) for d in dims]
    out["pref"] = out["cub"].map(lambda c: sum(pref[i] for i in c))
    out = out.sort_values(
        ["score", "n_dimensions", "pref"], ascending=[False, True, True], kind="stable"
    )
    # equivalent cohorts (identical leaves): keep the simplest
    out = out.drop_duplicates(subset=["A", "E", "D", "leaves"], keep="first")

    def filters_of(cub, key):
        if not cub:
            return {}
        vals = np.unravel_index(int(key), tuple(sizes[list(cub)]))
        return {dims[d]: uniques[d][int(x)] for d, x in zip(cub, vals, strict=True)}

    out["filters"] = [filters_of(c, k) for c, k in zip(out["cub"], out["key"], strict=True)]
    out["cohort"] = out["filters"].map(format_cohort)
    if ratio:
        out["actual"] = out["A"] / out["D"]
        out["expected"] = out["E"] / out["D"]
    else:
        out["actual"] = out["A"]
        out["expected"] = out["E"]
    out["deviation"] = out["actual"] / out["expected"] - 1.0
    out["explanatory_power"] = (out["A"] - out["E"]) / total_excess if total_excess else np.nan
    out["root_cause"] = out["z"].abs() >= 4.0
    out = out.reset_index(drop=True)
    out["rank"] = np.arange(1, len(out) + 1)
    return out.drop(columns=["cub", "key", "pref"])


def _choose(ranked: pd.DataFrame, direction: float) -> pd.DataFrame:
    """Move the best-supported cohort to the top: widen a too-fine answer, narrow a too-coarse one.

    Start from the best scan statistic in the incident's direction. Widen: an ancestor P whose
    remainder (P minus the answer) moved the same way (z >= 2 and at least 40 % of the answer's
    relative change) is the better answer (a store-wide drop is not "Chrome on iOS"). Narrow: a
    descendant C nearly as significant (z >= 0.9 x) whose remainder (answer minus C) did not
    move (z < 1, less than 40 % of C's change) is the better, finer answer (Safari on iOS in the
    campaign, not Safari in the campaign when macOS Safari is fine).
    """
    if ranked is None or ranked.empty:
        return ranked
    same = (np.sign(ranked["z"]) == direction).to_numpy()
    if not same.any():
        return ranked
    cand = ranked[same].reset_index(drop=True)
    filt = cand["filters"].tolist()
    A, E, V, Z = (cand[c].to_numpy() for c in ("A", "E", "V", "z"))

    def rel(i):
        return (A[i] - E[i]) / E[i] if E[i] > 0 else 0.0

    def rem(i, j):  # remainder of i without its sub-cohort j
        a, e, v = A[i] - A[j], E[i] - E[j], max(V[i] - V[j], 1.0)
        return (a - e) / math.sqrt(v) * direction, ((a - e) / e if e > 0 else 0.0)

    def inside(child, parent):
        return len(child) > len(parent) and all(child.get(k) == v for k, v in parent.items())

    best = 0
    for _ in range(3):
        moved = False
        # widen: the coarsest ancestor whose remainder moved like the answer
        ancestors = [i for i in range(len(cand)) if inside(filt[best], filt[i])]
        ancestors.sort(key=lambda i: len(filt[i]))
        for i in ancestors:
            zr, rr = rem(i, best)
            if zr >= 2.0 and rr * direction >= 0.4 * abs(rel(best)):
                best, moved = i, True
                break
        # narrow: the strongest descendant that leaves a normal remainder
        kids = [
            j
            for j in range(len(cand))
            if inside(filt[j], filt[best]) and Z[j] * direction >= 0.9 * Z[best] * direction
        ]
        kids.sort(key=lambda j: -Z[j] * direction)
        for j in kids:
            zr, rr = rem(best, j)
            if zr < 1.0 and rr * direction < 0.4 * abs(rel(j)):
                best, moved = j, True
                break
        if not moved:
            break
    order = [best] + [i for i in range(len(cand)) if i != best]
    out = pd.concat([cand.iloc[order], ranked[~same]]).reset_index(drop=True)
    if abs(Z[best]) < MIN_REFINE_Z:
        # nothing inside the flagged cohort stands out from noise: the flagged cohort itself
        root = out.index[out["n_dimensions"] == 0]
        if len(root):
            out = pd.concat([out.loc[root[:1]], out.drop(index=root[:1])]).reset_index(drop=True)
    return out
