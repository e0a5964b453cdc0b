"""Multi-dimensional root-cause localisation: which cohorts explain a KPI deviation.

Input: one row per LEAF cohort (a combination of dimension values, e.g. device_type x os x
browser x country x utm_campaign) with ``actual``, ``expected``, ``denominator`` and
``variance`` for one window (see ``rootcause.leaves``). Output: a ranked frame of cohorts such
as ``browser=Safari&os=iOS&utm_campaign=ig_sale``, the accepted root causes first.

Method (docs/rootcause.md has the why):

1. **Scan.** Every cohort S of 0..``max_dimensions`` dimensions (all cuboids, exhaustive, one
   ``np.bincount`` over all of them) gets ``z = (A_S - E_S) / sqrt(V_S + (drift E_S)^2 + 1)``,
   with V_S the summed leaf noise variance. If S is where the KPI moved (by one factor), z^2 is
   largest for S itself: a coarser cohort adds normal leaves (same excess, more variance), a
   finer one drops abnormal leaves. Cohorts are ranked by the scan statistic
   ``z^2 - dimension_penalty x n_dimensions`` (Kulldorff-style, with a penalty for the many
   more fine cohorts noise can pick).
2. **Choose between nested cohorts** (widen / narrow): for the best cohort S and an ancestor P
   (``all`` included: this is the explicit whole-store-or-cohort decision), two hypotheses
   explain the pair: "P moved by one factor" leaves the residual chi^2 of S and P \\ S around
   one common factor; "only S moved" leaves z(P \\ S)^2. The smaller residual plus
   ``dimension_penalty`` x n_dimensions wins. A store-wide change thus comes out as ``all``
   (the remainder moved the same way), a cohort change never (the remainder did not move).
   The same test narrows to a descendant nearly as significant whose remainder did not move.
3. **Explaining-away.** When the best cohort reaches |z| >= ``min_z``, the chosen cohort is
   accepted, the expectations are raked (iterative proportional fitting over all accepted
   causes, one factor each, fitted jointly) so that every accepted cause matches its actual
   total, and the scan repeats on the rest (cohorts wholly inside an accepted cause are no
   candidates), up to ``max_causes``, until what is left is noise.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass

import numpy as np
import pandas as pd

from rootcause.cohorts import format_cohort
from rootcause.leaves import validate_leaves

KPI_KINDS = ("additive", "ratio")
RESULT_COLUMNS = [
    "rank",
    "cohort",
    "filters",
    "n_dimensions",
    "root_cause",
    "score",
    "z",
    "explanatory_power",
    "explained_share",
    "actual",
    "expected",
    "deviation",
    "leaves",
]
VARIANCE_FLOOR = 1.0  # added to every cohort's variance: a cohort of a few units is no finding


@dataclass
class _Cube:
    """Leaves and every cohort of the searched cuboids, as flat arrays."""

    names: list
    uniques: list
    a: np.ndarray  # actual per leaf
    e0: np.ndarray  # expected per leaf (given)
    var: np.ndarray  # noise variance per leaf
    ids: np.ndarray  # (n_cuboids, n_leaves): the cohort id of each leaf in each cuboid
    cuboid: np.ndarray  # per cohort: its cuboid
    pattern: np.ndarray  # per cohort: the value code per dimension, -1 = any
    n_dims: np.ndarray  # per cohort: number of dimensions
    canonical: np.ndarray  # per cohort: False for a cohort with the leaves of a simpler one
    A: np.ndarray  # per cohort sums that do not change: actual, denominator, variance, leaves
    D: np.ndarray
    V: np.ndarray
    L: np.ndarray

    def sums(self, x: np.ndarray) -> np.ndarray:
        n_cub = self.ids.shape[0]
        return np.bincount(self.ids.ravel(), np.tile(x, n_cub), len(self.cuboid))

    def mask(self, cohort: int) -> np.ndarray:
        return self.ids[self.cuboid[cohort]] == cohort

    def filters(self, cohort: int) -> dict:
        return {
            self.names[d]: self.uniques[d][int(c)]
            for d, c in enumerate(self.pattern[cohort])
            if c >= 0
        }


class Localizer:
    """Rank the cohorts that explain a KPI's deviation; several simultaneous causes.

    Parameters
    ----------
    max_dimensions:
        Largest number of dimensions in a candidate cohort (None: every dimension; the number
        of cuboids is 2^n_dims - 1, 31 for 5 dimensions).
    top_k:
        Rows returned: the accepted root causes first, then the best alternatives (at least
        ``top_k`` rows when that many candidates exist).
    min_z:
        |z| the best cohort needs for a cause to be accepted (and the loop to go on). The scan
        tests thousands of overlapping cohorts; on noise-only cubes of 5 dimensions the best
        reaches |z| ~ 4-4.5, hence 5.
    max_causes:
        Most root causes accepted by the explaining-away loop.
    dimension_penalty:
        z^2 a cohort must gain per extra dimension (the multiple-testing price of finer cohorts).
    drift:
        Cohort-level proportional error of the expectation (a baseline that is a few % off for
        a whole cohort, not leaf by leaf): ``(drift x E_S)^2`` is added to every cohort's
        variance.
    dimension_preference:
        Names equivalent cohorts (identical leaves) by the preferred dimensions: a mapping
        dimension -> rank (lower first); default the order of ``dimensions``.
    fallback_z:
        When no cause is accepted and no cohort reaches this |z|, the whole cube (``all``) is
        listed first: nothing inside it stands out (None: the strongest cohorts first anyway).
    """

    def __init__(
        self,
        max_dimensions: int | None = None,
        top_k: int = 3,
        min_z: float = 5.0,
        max_causes: int = 3,
        dimension_penalty: float = 2.0,
        drift: float = 0.0,
        dimension_preference: dict | None = None,
        fallback_z: float | None = None,
    ):
        if max_dimensions is not None and int(max_dimensions) < 1:
            raise ValueError(f"max_dimensions must be >= 1, got {max_dimensions}")
        if int(top_k) < 1:
            raise ValueError(f"top_k must be >= 1, got {top_k}")
        if int(max_causes) < 1:
            raise ValueError(f"max_causes must be >= 1, got {max_causes}")
        if float(min_z) <= 0:
            raise ValueError(f"min_z must be > 0, got {min_z}")
        if float(drift) < 0 or float(dimension_penalty) < 0:
            raise ValueError("drift and dimension_penalty must be >= 0")
        self.max_dimensions = None if max_dimensions is None else int(max_dimensions)
        self.top_k = int(top_k)
        self.min_z = float(min_z)
        self.max_causes = int(max_causes)
        self.dimension_penalty = float(dimension_penalty)
        self.drift = float(drift)
        self.dimension_preference = dict(dimension_preference or {})
        self.fallback_z = None if fallback_z is None else float(fallback_z)

    # public API -------------------------------------------------------------------------
    def localize(
        self,
        leaves: pd.DataFrame,
        dimensions: list[str],
        kpi: str = "additive",
        direction: float | None = None,
    ) -> pd.DataFrame:
        """Ranked cohorts (``RESULT_COLUMNS``), the accepted root causes first.

        ``direction``: +1 / -1 to look only for causes that moved the KPI up / down (an
        incident's direction); None for both. ``score``: the scan statistic at the step the
        cohort was ranked (z^2 - penalty x n_dimensions); ``z``: its aggregated deviation in
        noise standard deviations, at that step (after the causes accepted before it were taken
        out). ``explanatory_power``: share of the parent's deviation (actual - expected) inside
        the cohort. ``explained_share``: for a root cause, the part of the parent's deviation that
        taking it out explained, as a share of all the causes explained plus what is left
        unexplained (the shares add up to about 1 when the causes explain everything); NaN for
        alternatives. ``actual`` / ``expected``: sums (additive) or rates
        (ratio: numerator / denominator); ``deviation`` = actual / expected - 1.
        """
        if kpi not in KPI_KINDS:
            raise ValueError(f"kpi must be one of {KPI_KINDS}, got {kpi!r}")
        if direction is not None and direction not in (-1, 1, -1.0, 1.0):
            raise ValueError(f"direction must be +1, -1 or None, got {direction!r}")
        cube = self._cube(leaves, dimensions)
        rows = self._search(cube, direction)
        return self._report(cube, kpi, rows)

    # internals --------------------------------------------------------------------------
    def _cube(self, leaves, dimensions) -> _Cube:
        dimensions, values = validate_leaves(leaves, dimensions)
        n = len(leaves)
        codes, uniques = [], []
        for d in dimensions:
            code, uniq = pd.factorize(leaves[d], sort=True)
            codes.append(code.astype(np.int64))
            uniques.append(list(uniq))
        codes_arr = np.column_stack(codes)
        sizes = np.array([len(u) for u in uniques], dtype=np.int64)
        n_dims = len(dimensions)
        depth = n_dims if self.max_dimensions is None else min(self.max_dimensions, n_dims)
        cuboids = [()] + [
            c for k in range(1, depth + 1) for c in itertools.combinations(range(n_dims), k)
        ]
        ids, cub_of, patterns = [], [], []
        offset = 0
        for i, cub in enumerate(cuboids):
            if cub:
                key = np.ravel_multi_index(
                    tuple(codes_arr[:, list(cub)].T), tuple(sizes[list(cub)])
                )
                keys, g = np.unique(key, return_inverse=True)
                vals = np.unravel_index(keys, tuple(sizes[list(cub)]))
            else:
                keys, g, vals = np.zeros(1, dtype=np.int64), np.zeros(n, dtype=np.int64), ()
            pat = np.full((len(keys), n_dims), -1, dtype=np.int64)
            for d, v in zip(cub, vals, strict=True):
                pat[:, d] = v
            ids.append(g.astype(np.int64) + offset)
            cub_of.append(np.full(len(keys), i, dtype=np.int64))
            patterns.append(pat)
            offset += len(keys)
        ids_arr = np.vstack(ids)
        cube = _Cube(
            names=dimensions,
            uniques=uniques,
            a=values["actual"],
            e0=values["expected"],
            var=values["variance"],
            ids=ids_arr,
            cuboid=np.concatenate(cub_of),
            pattern=np.vstack(patterns),
            n_dims=np.array([len(cuboids[c]) for c in np.concatenate(cub_of)], dtype=np.int64),
            canonical=np.ones(offset, dtype=bool),
            A=np.zeros(0),
            D=np.zeros(0),
            V=np.zeros(0),
            L=np.zeros(0),
        )
        cube.A = cube.sums(cube.a)
        cube.D = cube.sums(values["denominator"])
        cube.V = cube.sums(cube.var)
        cube.L = cube.sums(np.ones(n))
        # equivalent cohorts (identical leaves, e.g. os=iOS and device_type=mobile&os=iOS when
        # iOS is only mobile) are listed once, by the fewest and most telling dimensions
        pref = np.array(
            [
                self.dimension_preference.get(d, len(self.dimension_preference) + i)
                for i, d in enumerate(dimensions)
            ],
            dtype=float,
        )
        naming = ((cube.pattern >= 0) * pref).sum(axis=1)
        table = pd.DataFrame(
            {"L": cube.L, "A": cube.A, "E": cube.sums(cube.e0), "D": cube.D, "V": cube.V}
        )
        order = np.lexsort((naming, cube.n_dims))
        dup = table.iloc[order].duplicated(keep="first").to_numpy()
        cube.canonical[order[dup]] = False
        return cube

    def _z(self, cube: _Cube, E: np.ndarray) -> np.ndarray:
        # a rise is measured against the noise at the risen level (variance x A / E): on a few
        # expected units the normal approximation would otherwise make 10 orders against 2
        # expected a z of 4.6 where the Poisson tail says ~3.9 (a 4-leaf noise cohort was a
        # cause beside a store-wide change)
        scale = np.maximum(1.0, cube.A / np.maximum(E, 1e-12))
        return (cube.A - E) / np.sqrt(cube.V * scale + (self.drift * E) ** 2 + VARIANCE_FLOOR)

    def _search(self, cube: _Cube, direction) -> list[tuple]:
        """Rows (cohort, score, z, explained_share or NaN, is_cause): causes, then alternatives."""
        e_cur = cube.e0.copy()
        parent_dev = float(cube.a.sum() - cube.e0.sum())
        accepted: list[tuple] = []  # (cohort, score, z, deviation it explained, True)
        masks: list[np.ndarray] = []  # leaves of the accepted causes other than `all`
        rake_masks: list[np.ndarray] = []  # leaves of every accepted cause
        first_order = first_score = first_z = None
        for _ in range(self.max_causes):
            E = cube.sums(e_cur)
            z = self._z(cube, E)
            score = z**2 - self.dimension_penalty * cube.n_dims
            taken = [c for c, *_ in accepted]
            cand = self._candidates(cube, E, taken, masks, direction)
            if first_order is None:
                first_score, first_z = score, z
                idx = np.flatnonzero(cand)
                first_order = idx[np.argsort(-score[idx], kind="stable")]
            if not cand.any():
                break
            best = int(np.flatnonzero(cand)[np.argmax(score[cand])])
            if abs(z[best]) < self.min_z:
                break
            sign = float(np.sign(z[best]))
            chosen = self._choose(cube, E, z, cand & (np.sign(z) == sign), best, sign)
            if not accepted:
                # the chosen answer heads the alternatives too
                first_order = np.concatenate([[chosen], first_order[first_order != chosen]])
            mask = cube.mask(chosen)
            rake_masks.append(mask)
            if cube.n_dims[chosen] > 0:
                # the cohorts inside a cause are explained by it; after `all`, cohorts that
                # moved differently from the whole store are still to be found
                masks.append(mask)
            e_cur = _rake(cube.a, cube.e0, rake_masks)
            accepted.append((chosen, float(score[chosen]), float(z[chosen]), 0.0, True))
        accepted = self._revisit_all(cube, accepted, direction)
        # what each cause explains: the expectation it adds when taken out after the ones before
        before = float(cube.e0.sum())
        for k, (c, sc, zz, _, t) in enumerate(accepted):
            after = float(
                _rake(cube.a, cube.e0, [cube.mask(x[0]) for x in accepted[: k + 1]]).sum()
            )
            accepted[k] = (c, sc, zz, after - before, t)
            before = after
        # each cause's share of what moved: its part of the deviation it took out, against all
        # that was taken out plus what is left unexplained (in [0, 1] also when causes oppose)
        left = abs(parent_dev - sum(r[3] for r in accepted))
        whole = sum(abs(r[3]) for r in accepted) + left
        rows = [(c, s, zz, abs(x) / whole if whole else np.nan, t) for c, s, zz, x, t in accepted]
        if first_order is None:
            return rows
        if (
            not accepted
            and self.fallback_z is not None
            and (len(first_order) == 0 or abs(first_z[first_order[0]]) < self.fallback_z)
        ):
            rows.append((0, float(first_score[0]), float(first_z[0]), np.nan, False))
        sel = [(cube.filters(c), self._change(cube, c)) for c, *_ in accepted]
        for c in first_order:
            if len(rows) >= max(self.top_k, len(accepted)):
                break
            c = int(c)
            if any(r[0] == c for r in rows):
                continue
            filt = cube.filters(c)
            change = self._change(cube, c)
            # a refinement of a cause that moved like it adds nothing (a much stronger one may
            # be the finer cause and stays)
            if any(
                _is_descendant(filt, sf) and abs(change - sc) <= 0.15 * abs(sc) for sf, sc in sel
            ):
                continue
            rows.append((c, float(first_score[c]), float(first_z[c]), np.nan, False))
        return rows

    @staticmethod
    def _candidates(cube: _Cube, E, taken, masks, direction) -> np.ndarray:
        """Cohorts that may be the next cause: not taken, not inside a cause, in direction."""
        cand = cube.canonical & (E > 0)
        if taken:
            cand[list(taken)] = False
        for m in masks:
            # a cohort wholly inside an accepted cause is explained by it
            cand &= cube.sums(m.astype(float)) != cube.L
        if direction is not None:
            cand &= np.sign(cube.A - E) == direction
        return cand

    def _revisit_all(self, cube: _Cube, accepted: list, direction) -> list:
        """``all`` accepted beside other causes: decide again once the others are taken out.

        When most of the store is in causes that moved the same way (three campaigns down, one
        of them the big one), the first whole-store-or-cohort decision saw the other causes in
        the remainder and took ``all``; with them explained, the cohort may win.
        """
        roots = [k for k, r in enumerate(accepted) if cube.n_dims[r[0]] == 0]
        if not roots or len(accepted) < 2:
            return accepted
        others = [r[0] for r in accepted if cube.n_dims[r[0]] > 0]
        masks = [cube.mask(c) for c in others]
        E = cube.sums(_rake(cube.a, cube.e0, masks))
        z = self._z(cube, E)
        score = z**2 - self.dimension_penalty * cube.n_dims
        cand = self._candidates(cube, E, others, masks, direction)
        if not cand.any():
            return accepted
        best = int(np.flatnonzero(cand)[np.argmax(score[cand])])
        if abs(z[best]) < self.min_z:
            return accepted
        sign = float(np.sign(z[best]))
        chosen = self._choose(cube, E, z, cand & (np.sign(z) == sign), best, sign)
        out = list(accepted)
        out[roots[0]] = (chosen, float(score[chosen]), float(z[chosen]), 0.0, True)
        return out

    def _choose(self, cube: _Cube, E, z, cand, best: int, sign: float) -> int:
        """Widen or narrow ``best`` along nested candidates by the residual of two hypotheses.

        For a coarse P and a fine S inside it: "P moved by one factor" leaves the chi^2 of S
        and P \\ S around their common factor; "only S moved" leaves z(P \\ S)^2. The smaller
        residual + penalty x n_dimensions wins. Narrowing considers descendants nearly as
        significant as ``best`` (|z| >= 0.9 x) only, so a small noisy sub-cohort is never it.
        """
        pat = cube.pattern
        A, V = cube.A, cube.V
        pen = self.dimension_penalty

        def total_v(e, v):
            return np.maximum(v, 0.0) + (self.drift * e) ** 2 + VARIANCE_FLOOR

        def compare(coarse, fine):
            """(residual if coarse is the answer, residual if fine is) for arrays of pairs."""
            a_r, e_r = A[coarse] - A[fine], E[coarse] - E[fine]
            v_r = total_v(e_r, V[coarse] - V[fine])
            a_s, e_s, v_s = A[fine], E[fine], total_v(E[fine], V[fine])
            # one common factor r for both parts: weighted least squares
            sxy = a_s * e_s / v_s + a_r * e_r / v_r
            sxx = e_s**2 / v_s + e_r**2 / v_r
            syy = a_s**2 / v_s + a_r**2 / v_r
            common = np.where(sxx > 0, syy - sxy**2 / np.where(sxx > 0, sxx, 1.0), np.inf)
            only_fine = (a_r - e_r) ** 2 / v_r
            return common + pen * cube.n_dims[coarse], only_fine + pen * cube.n_dims[fine]

        idx = np.flatnonzero(cand)
        for _ in range(4):
            moved = False
            p = pat[best]
            # widen: ancestors of best (all included), coarsest first
            anc = idx[((pat[idx] == -1) | (pat[idx] == p)).all(axis=1) & (idx != best)]
            anc = anc[((pat[anc] == -1) | (pat[anc] == p)).all(axis=1)]
            anc = anc[(pat[anc] >= 0).sum(axis=1) < (p >= 0).sum()]
            if len(anc):
                anc = anc[np.argsort(cube.n_dims[anc], kind="stable")]
                res_coarse, res_fine = compare(anc, np.full(len(anc), best))
                win = np.flatnonzero(res_coarse < res_fine)
                if len(win):
                    best, moved = int(anc[win[0]]), True
                    p = pat[best]
            # narrow: descendants nearly as significant, the strongest first
            desc = idx[((p == -1) | (pat[idx] == p)).all(axis=1) & (idx != best)]
            desc = desc[z[desc] * sign >= 0.9 * z[best] * sign]
            if len(desc):
                desc = desc[np.argsort(-z[desc] * sign, kind="stable")]
                res_coarse, res_fine = compare(np.full(len(desc), best), desc)
                win = np.flatnonzero(res_fine < res_coarse)
                if len(win):
                    best, moved = int(desc[win[0]]), True
            if not moved:
                break
        return best

    @staticmethod
    def _change(cube: _Cube, c: int) -> float:
        e = float(cube.e0[cube.mask(c)].sum())
        return float(cube.A[c] / e - 1.0) if e > 0 else 0.0

    def _report(self, cube: _Cube, kpi: str, rows) -> pd.DataFrame:
        E0 = cube.sums(cube.e0)
        parent_dev = float(cube.a.sum() - cube.e0.sum())
        out = []
        for rank, (c, score, z, share, is_cause) in enumerate(rows, start=1):
            filters = cube.filters(c)
            if kpi == "ratio":
                d = cube.D[c]
                actual = cube.A[c] / d if d > 0 else np.nan
                expected = E0[c] / d if d > 0 else np.nan
            else:
                actual, expected = cube.A[c], E0[c]
            out.append(
                {
                    "rank": rank,
                    "cohort": format_cohort(filters),
                    "filters": filters,
                    "n_dimensions": len(filters),
                    "root_cause": bool(is_cause),
                    "score": float(score),
                    "z": float(z),
                    "explanatory_power": (
                        float((cube.A[c] - E0[c]) / parent_dev) if parent_dev else np.nan
                    ),
                    "explained_share": float(share),
                    "actual": float(actual),
                    "expected": float(expected),
                    "deviation": float(actual / expected - 1) if expected else np.nan,
                    "leaves": int(cube.L[c]),
                }
            )
        return pd.DataFrame(out, columns=RESULT_COLUMNS)


def cohort_z(leaves: pd.DataFrame, filters: dict, drift: float = 0.0) -> float | None:
    """z of one cohort's aggregated deviation, as the scan computes it (None if absent)."""
    mask = cohort_mask(leaves, filters)
    if mask is None or not mask.any():
        return None
    a = float(leaves.loc[mask, "actual"].sum())
    e = float(leaves.loc[mask, "expected"].sum())
    v = float(leaves.loc[mask, "variance"].sum())
    return (a - e) / float(np.sqrt(v + (drift * e) ** 2 + VARIANCE_FLOOR))


def _rake(a: np.ndarray, e0: np.ndarray, masks: list[np.ndarray], sweeps: int = 20) -> np.ndarray:
    """Expectations scaled so that every accepted cause matches its actual total.

    Iterative proportional fitting over the accepted causes: with overlapping causes (a country
    drop and a device surge) one factor per cause is fitted jointly, so neither leaves a residual
    that a third, spurious cohort would pick up.
    """
    out = e0.copy()
    for _ in range(sweeps if len(masks) > 1 else 1):
        for m in masks:
            es = out[m].sum()
            if es > 0:
                out[m] *= a[m].sum() / es
    return out


def _is_descendant(child: dict, parent: dict) -> bool:
    """True when ``child`` is strictly finer than ``parent`` (same values on parent's dims)."""
    return len(child) > len(parent) and all(child.get(k) == v for k, v in parent.items())


def cohort_mask(leaves: pd.DataFrame, filters: dict) -> np.ndarray | None:
    """The leaves of a cohort (None when it names a dimension the leaves do not have)."""
    mask = np.ones(len(leaves), dtype=bool)
    for k, v in filters.items():
        if k not in leaves.columns:
            return None
        mask &= (leaves[k].astype(str) == str(v)).to_numpy()
    return mask


def residual_z(leaves: pd.DataFrame, causes: list[dict], cohorts: list[dict],
               drift: float = 0.0) -> list[float | None]:
    """Each cohort's z once ``causes`` (filters) are taken out: the expectations raked so that
    every cause matches its actual total, as the explaining-away loop does. A cohort whose
    deviation the causes account for comes out near 0 (a symptom of them); one they do not
    touch keeps its z. None for a cohort with a dimension the leaves lack, or no leaves."""
    a = leaves["actual"].to_numpy(dtype=float)
    e0 = leaves["expected"].to_numpy(dtype=float)
    var = (leaves["variance"] if "variance" in leaves.columns else leaves["expected"]).to_numpy(
        dtype=float)
    masks = [m for m in (cohort_mask(leaves, c) for c in causes) if m is not None and m.any()]
    e = _rake(a, e0, masks) if masks else e0
    out: list[float | None] = []
    for filters in cohorts:
        m = cohort_mask(leaves, filters)
        if m is None or not m.any():
            out.append(None)
            continue
        ex = float(e[m].sum())
        out.append(float((a[m].sum() - ex) / np.sqrt(var[m].sum() + (drift * ex) ** 2
                                                     + VARIANCE_FLOOR)))
    return out
