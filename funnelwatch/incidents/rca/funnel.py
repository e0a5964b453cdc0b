"""The funnel by step (affected cohort vs the rest) and the onset estimate."""

from __future__ import annotations

import itertools
import math
from datetime import datetime, timedelta

import numpy as np
import pandas as pd

from funnelwatch.incidents.rca.constants import (
    LEAF_DIMENSIONS,
    ONSET_MIN_GAIN,
    ONSET_NORMAL_LLR,
    ONSET_SPLIT_GAIN,
    OTHER_RATE_METRICS,
    RATE_METRICS,
    SESSION_DIMENSIONS,
    STAGES,
    stage_column,
)
from funnelwatch.incidents.rca.context import _filter_sql
from funnelwatch.incidents.rca.util import _f


class _Funnel:
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
        loss's step, searched from ``lookback`` before ``start`` up to the first flagged hour
        (``first_flagged``, default ``start``).

        The rate before the lookback (history) is r0; for a change at hour tau the rate after it
        is the MLE r1 over [tau, end) (in the incident's direction, else no evidence). Profile
        log-likelihood ratio ``S(tau) = sum_{t >= tau} llr_t(r1, r0)``. A tau is admissible only
        when the deviation is sustained from it through ``start``: no stretch inside
        [tau, start) favours r0 over r1 by more than ``ONSET_NORMAL_LLR`` (so an older,
        already-ended deviation with normal hours between is not taken). The onset is the
        admissible tau with the largest S; ``self.change_curve`` keeps S per hour (candidate
        changes are scored by how close their S comes to the best).

        One level from tau on can hide two: a milder deviation (a mix change, an
        earlier drop in a cohort around this one) and the break that deepened it. While
        splitting [tau, end) into two levels gains ``ONSET_SPLIT_GAIN`` over one and
        the later level is the further from r0, the onset moves to the split
        (`_deepened_at`): the cause is sought where the current level began.
        """
        self.change_curve = None
        flagged = getattr(self, "first_flagged", None) or self.start
        if self.lookback <= timedelta(0):
            return flagged
        got = self._onset_series(filters, step)
        if got is None:
            return flagged
        df, direction = got
        if df.empty:
            return flagged
        ts = pd.to_datetime(df.event_hour, utc=True)
        d = df.d.fillna(0.0).to_numpy(dtype=float)
        n = np.minimum(df.n.fillna(0.0).to_numpy(dtype=float), d)
        lo = pd.Timestamp(self.start).floor("h") - pd.Timedelta(self.lookback)
        # the onset is searched up to the first flagged hour, which may lie after the start of
        # the analysed window (the hours of evidence behind a flag can reach back before the
        # change: a 24 h window whose last 6 hours dropped)
        start_h = pd.Timestamp(flagged).floor("h")
        before = (ts < lo).to_numpy()
        if d[before].sum() <= 0 or n[before].sum() <= 0:
            return flagged
        r0 = min(max(n[before].sum() / d[before].sum(), 1e-6), 1 - 1e-6)
        seg = (ts >= lo).to_numpy()
        hours, n, d = list(ts[seg]), n[seg], d[seg]
        if not hours:
            return flagged
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
            return flagged  # no clear evidence the deviation began before it was flagged
        while (later := _deepened_at(n, d, best_i, i_start, direction)) is not None:
            best_i = later
        self.change_curve = curve
        # changes before a deepened onset are not penalised by the curve (their S is higher);
        # the time check and the closeness to the onset rank them
        self.change_best = curve.get(hours[best_i], best_s)
        return pd.Timestamp(hours[best_i]).to_pydatetime()


def _binomial_ll(n: float, d: float) -> float:
    """Binomial log-likelihood of n in d at its own MLE rate (0 for an empty or pure segment)."""
    if d <= 0 or n <= 0 or n >= d:
        return 0.0
    r = n / d
    return n * math.log(r) + (d - n) * math.log(1 - r)


def _deepened_at(n: np.ndarray, d: np.ndarray, first: int, last: int,
                 direction: int) -> int | None:
    """The hour j in (first, last] that best splits the hours from ``first`` into two rates,
    when the split gains ``ONSET_SPLIT_GAIN`` log-likelihood over one rate and the rate from
    j on is further in ``direction`` than the one before it; None otherwise."""
    total = _binomial_ll(float(n[first:].sum()), float(d[first:].sum()))
    best_j, best_gain = None, ONSET_SPLIT_GAIN
    for j in range(first + 1, min(last, len(n) - 1) + 1):
        na, da = float(n[first:j].sum()), float(d[first:j].sum())
        nb, db = float(n[j:].sum()), float(d[j:].sum())
        if da <= 0 or db <= 0 or (nb / db - na / da) * direction <= 0:
            continue
        gain = _binomial_ll(na, da) + _binomial_ll(nb, db) - total
        if gain > best_gain:
            best_j, best_gain = j, gain
    return best_j
