"""Impact: expected minus actual orders per hour from the onset, times the average order value."""

from __future__ import annotations

import pandas as pd

from funnelwatch.incidents.rca.constants import SESSION_DIMENSIONS, STAGES, stage_column
from funnelwatch.incidents.rca.context import _filter_sql
from funnelwatch.incidents.rca.util import _f, _iso
from rootcause import format_cohort


class _Impact:
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
        # from the estimated onset (the loss began before detection flagged it; it may also
        # lie after the start of a window that holds the hours of evidence behind the flag)
        first = pd.Timestamp(self.onset).floor("h")
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
