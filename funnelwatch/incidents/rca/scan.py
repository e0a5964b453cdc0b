"""The cohort scan behind localisation: rank every cohort (``_scan``) and pick the answer
(``_choose``)."""

from __future__ import annotations

import itertools
import math

import numpy as np
import pandas as pd

from funnelwatch.incidents.rca.constants import (
    DIMENSION_PENALTY,
    DIMENSION_PREFERENCE,
    MAX_DIMENSIONS,
    MIN_REFINE_Z,
)
from rootcause import format_cohort


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
