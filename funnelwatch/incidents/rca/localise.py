"""Localisation: where (which cohort) the deviation is, and at which funnel step."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd

from funnelwatch.incidents.rca.constants import (
    ADDITIVE_DRIFT,
    ADDITIVE_METRICS,
    DIMENSION_PENALTY,
    DIMENSION_PREFERENCE,
    MAX_DIMENSIONS,
    MIN_REFINE_Z,
    OTHER_RATE_METRICS,
    PRIOR_WEIGHT,
    RATE_METRICS,
    RATIO_DRIFT,
    ROOT_CAUSE_Z,
    STAGES,
    stage_column,
)
from funnelwatch.incidents.rca.util import _f
from rootcause import Localizer, additive_leaves, cohort_z, format_cohort, ratio_leaves


def _localizer(drift: float) -> Localizer:
    """The shared localiser with the pipeline's noise settings (see constants)."""
    return Localizer(
        max_dimensions=MAX_DIMENSIONS,
        top_k=3,
        min_z=ROOT_CAUSE_Z,
        dimension_penalty=DIMENSION_PENALTY,
        drift=drift,
        dimension_preference=DIMENSION_PREFERENCE,
        fallback_z=MIN_REFINE_Z,
    )


class _Localise:
    # -- where / which step --------------------------------------------------------------------
    def _ratio_leaves(self, num_col: str, den_col: str, frame=None) -> pd.DataFrame | None:
        """Leaves of a conversion: actual ``n`` of ``d`` and the expected rate from history.

        ``rootcause.ratio_leaves``: the leaf's pooled rate over the history window, shrunk
        towards the flagged cohort's rate with ``PRIOR_WEIGHT`` pseudo-denominators, binomial
        noise plus the error of the rate estimated from history; ``n`` clipped to ``d``.
        """
        df = self.inside if frame is None else frame
        counts = df[self.loc_dims].assign(
            n=df[f"cur_{num_col}"].to_numpy(),
            d=df[f"cur_{den_col}"].to_numpy(),
            hn=df[f"hist_{num_col}"].to_numpy(),
            hd=df[f"hist_{den_col}"].to_numpy(),
        )
        try:
            out = ratio_leaves(
                counts,
                numerator="n",
                denominator="d",
                history_numerator="hn",
                history_denominator="hd",
                prior_weight=PRIOR_WEIGHT,
            )
        except ValueError:  # no history for this conversion: nothing to compare with
            return None
        if out.empty or out["expected"].sum() <= 0:
            return None
        return out.drop(columns=["n", "d", "hn", "hd"])

    def _localise_ratio(self, num_col, den_col, direction=None):
        leaves = self._ratio_leaves(num_col, den_col)
        return self._localise(leaves, "ratio", RATIO_DRIFT, direction)

    def _additive_leaves(self, col) -> pd.DataFrame | None:
        df = self.inside
        frame = df[self.loc_dims].assign(
            cur=df[f"cur_{col}"].to_numpy(), base=df[f"base_{col}"].to_numpy()
        )
        # Poisson noise of the hour and of the mean over history_days days
        leaves = additive_leaves(
            frame, actual="cur", expected="base", history_periods=self.history_days
        ).drop(columns=["cur", "base"])
        leaves = leaves[(leaves["actual"] > 0) | (leaves["expected"] > 0)]
        if leaves.empty or leaves["expected"].sum() <= 0:
            return None
        return leaves

    def _localise_additive(self, col, direction=None):
        return self._localise(self._additive_leaves(col), "additive", ADDITIVE_DRIFT, direction)

    def _localise(self, leaves, kpi, drift, direction):
        """The ranked cohorts of one scan, or None when there is nothing to localise."""
        if leaves is None or not self.loc_dims:
            return None
        try:
            return _localizer(drift).localize(leaves, self.loc_dims, kpi, direction=direction)
        except ValueError:  # e.g. a single cohort inside the flagged one: nothing to localise
            return None

    def _rows(self, ranked, step) -> list[dict]:
        if ranked is None or ranked.empty:
            return []
        rows = []
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
                    "explained_share": _f(r["explained_share"], 4),
                }
            )
        return rows

    def metric_leaves(self) -> pd.DataFrame | None:
        """The flagged metric's own leaves (its conversion, or its count), whatever scan
        localised it: a flagged point's deviation is measured on them."""
        if self.metric in RATE_METRICS:
            num, den = RATE_METRICS[self.metric]
            return self._ratio_leaves(stage_column(num), stage_column(den))
        if self.metric in OTHER_RATE_METRICS:
            return self._ratio_leaves(*OTHER_RATE_METRICS[self.metric])
        if self.metric in ADDITIVE_METRICS:
            return self._additive_leaves(ADDITIVE_METRICS[self.metric])
        return None

    def drift_of_metric(self) -> float:
        return ADDITIVE_DRIFT if self.metric in ADDITIVE_METRICS else RATIO_DRIFT

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
        self.metric_z = float("nan")  # no trials now or in history: no evidence either way
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
            ranked = self._localise_ratio(stage_column(num), stage_column(den), direction)
            scans.append(
                (num if STAGES.index(num) - STAGES.index(den) == 1 else None, ranked, direction)
            )
        elif self.metric in OTHER_RATE_METRICS:
            num_col, den_col = OTHER_RATE_METRICS[self.metric]
            scans.append((None, self._localise_ratio(num_col, den_col, direction), direction))
        elif self.metric in ADDITIVE_METRICS:
            col = ADDITIVE_METRICS[self.metric]
            scans.append((None, self._localise_additive(col, direction), direction))
            step_dir = -1.0
        step_leaves = {}
        for den, num in self._step_pairs():
            leaves = self._ratio_leaves(stage_column(num), stage_column(den))
            if leaves is None:
                continue
            step_leaves[num] = leaves
            if self.metric not in ADDITIVE_METRICS:
                ranked = self._localise(leaves, "ratio", RATIO_DRIFT, step_dir)
                scans.append((num, ranked, step_dir))
        best, best_z = None, -np.inf
        for step, ranked, d in scans:
            if ranked is None or ranked.empty:
                continue
            z = float(ranked["z"].iloc[0]) * d
            if z > best_z + 1e-9:
                best, best_z = (step, ranked, d), z
        step_info = {"direction": direction, "steps": {}}
        if best is None:
            return [], None, step_info
        step, chosen, d = best
        local = chosen["filters"].iloc[0]
        # the funnel step where the loss starts, in the localised cohort
        zs = []
        for num, leaves in step_leaves.items():
            z = cohort_z(leaves, local, drift=RATIO_DRIFT)
            z = float(z) * step_dir if z is not None else 0.0
            zs.append((num, z))
            step_info["steps"][num] = z
        funnel_step = step
        if zs:
            top = max(z for _, z in zs)
            if top > 0:
                funnel_step = next(n for n, z in zs if z >= max(3.0, 0.6 * top) or z == top)
            elif funnel_step is None:
                funnel_step = None
        return self._rows(chosen, funnel_step), funnel_step, step_info

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
