"""Localisation: where (which cohort) the deviation is, and at which funnel step."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd

from funnelwatch.incidents.rca.constants import (
    ADDITIVE_DRIFT,
    ADDITIVE_METRICS,
    OTHER_RATE_METRICS,
    PRIOR_WEIGHT,
    RATE_METRICS,
    RATIO_DRIFT,
    STAGES,
    stage_column,
)
from funnelwatch.incidents.rca.scan import _choose, _scan
from funnelwatch.incidents.rca.util import _f
from rootcause import format_cohort


class _Localise:
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
