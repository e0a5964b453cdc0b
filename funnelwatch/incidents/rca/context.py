"""Data access: the marts of one incident window (the session cube, categories, providers)."""

from __future__ import annotations

from datetime import timedelta

import duckdb
import numpy as np
import pandas as pd

from funnelwatch.incidents.rca.constants import (
    CUBE_COLUMNS,
    LEAF_DIMENSIONS,
    SESSION_DIMENSIONS,
    UNKNOWN_LABEL,
)
from funnelwatch.incidents.rca.util import _rate_z


def _filter_sql(filters: dict, allowed=SESSION_DIMENSIONS) -> tuple[str, list]:
    """``col = ?`` conditions for the session dimensions of a cohort (names from a fixed list)."""
    parts, params = [], []
    for dim in SESSION_DIMENSIONS:
        if dim in filters and dim in allowed:
            parts.append(f"coalesce({dim}, '{UNKNOWN_LABEL[dim]}') = ?")
            params.append(str(filters[dim]))
    return (" and ".join(parts) if parts else "true"), params

class _WindowData:
    """The incident's window and the queries over it (the analysis steps are mixins, see
    ``analyse._Context``)."""

    def __init__(self, con, metric, cohort, flagged, start, end, history_days, cache=None):
        self.con = con
        # query results shared by the analyses of one pass (the lifecycle passes one dict per
        # hour: its incidents and localisations read the same windows); None: no sharing
        self.cache = cache
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

    def _memo(self, key: tuple, compute):
        """``compute()``, or its result for the same ``key`` earlier in this pass (a copy:
        callers may add columns)."""
        if self.cache is None:
            return compute()
        if key not in self.cache:
            self.cache[key] = compute()
        found = self.cache[key]
        return found.copy() if isinstance(found, pd.DataFrame) else found

    def load_cube(self) -> pd.DataFrame:
        key = ("cube", self.start, self.end, self.history_days,
               tuple(sorted(self.session_flagged.items())))
        return self._memo(key, self._load_cube)

    def _load_cube(self) -> pd.DataFrame:
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

    # -- categories / providers ----------------------------------------------------------------
    def category_table(self) -> pd.DataFrame:
        return self._memo(("categories", self.start, self.end, self.history_days),
                          self._category_table)

    def _category_table(self) -> pd.DataFrame:
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
        # add-to-carts against the category's own hourly average: a stock-out empties them,
        # bots that view and never add only dilute the rate (the humans' carts continue)
        hours_ratio = (self.end - self.start) / max(self.start - self.hist_start,
                                                    timedelta(hours=1))
        df["atc_ratio"] = df.cur_atc / np.maximum(df.hist_atc * hours_ratio, 1.0)
        return df.sort_values("z").reset_index(drop=True)

    def provider_table(self) -> pd.DataFrame:
        return self._memo(("providers", self.start, self.end, self.history_days,
                           tuple(sorted(self.session_flagged.items()))), self._provider_table)

    def _provider_table(self) -> pd.DataFrame:
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


def deploys_between(con, start, end) -> list[tuple[str, str, object, str | None]]:
    """(service, version, deploy_time, description) of the deploys in [start, end), oldest
    first; none before the reference data is built (``marts.dim_deploys`` missing)."""
    try:
        return [tuple(r) for r in con.execute(
            "select service, version, deploy_time, description from marts.dim_deploys "
            "where deploy_time >= ? and deploy_time < ? order by deploy_time",
            [start, end]).fetchall()]
    except duckdb.CatalogException:
        return []
