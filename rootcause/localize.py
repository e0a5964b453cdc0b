"""Multi-dimensional root-cause localisation: which cohorts explain a KPI deviation.

Input: one row per LEAF cohort (a combination of dimension values, e.g. device_type x os x
browser x country x utm_campaign) with the actual and the expected (baseline) values for one hour.
Output: a ranked frame of cohorts such as ``browser=Safari&os=iOS&utm_campaign=ig_sale``.

Method (a Squeeze / HotSpot-style search, see docs/rootcause.md for why this one):

1. The KPI is reduced to an additive quantity per leaf, an actual ``v`` and an expected ``f``.
   Additive KPIs (orders) are used as they are. For ratio KPIs (conversion = sum numerators /
   sum denominators) ``f = expected_rate_leaf * actual_denominator`` (the numerator the leaf would
   have had at its usual rate with the traffic it actually got) and ``v = numerator + mix``,
   with ``mix = (expected_rate_leaf - expected_rate_parent) * (denominator - expected_denominator)``
   the leaf's traffic-mix effect. Then ``sum(v - f) / actual_denominator`` is exactly the parent's
   rate deviation, so a cohort whose rate dropped *and* a cohort that brought a surge of
   low-converting traffic both show up, while a cohort that only lost traffic at the usual rate
   (no effect on the parent rate) does not.
2. Every candidate cohort (``all``, then every element of every cuboid of 1..``max_dimensions``
   dimensions) is scored by the *ripple effect*: if the cohort is the root cause, all its leaves
   moved by the same factor ``v(S) / f(S)``, the rest did not move. The score is the share of
   the total (noise-weighted) absolute leaf deviation that this hypothesis removes, i.e. the
   generalised potential score of Squeeze written as a gain. Cohorts holding normal leaves
   (too coarse) or missing abnormal ones (too fine) both lose, without any threshold on single
   noisy leaves. The search is exhaustive over cuboids (<= a few hundred) and vectorised within a
   cuboid (one ``np.bincount`` pass per cuboid), so no heuristic pruning is needed.
3. Greedy explaining-away for several simultaneous causes: the best cohort is accepted if its
   gain reaches ``min_score`` and its aggregated deviation is significant (|z| >= ``min_z``
   against a leaf noise model fitted to the cube); the expectations are then raked so that every
   accepted cause matches its actual total (one factor per cause, fitted jointly, so overlapping
   causes leave no residual), and the search repeats (up to ``max_causes``) on the cohorts that
   are not inside an accepted one, so a second, independent cause is found next.

Pure pandas / numpy: no I/O, no Dagster.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass

import numpy as np
import pandas as pd

KPI_KINDS = ("additive", "ratio")
ADDITIVE_COLUMNS = ("actual", "expected")
RATIO_COLUMNS = ("numerator", "denominator", "expected_numerator", "expected_denominator")
RESULT_COLUMNS = [
    "rank",
    "cohort",
    "filters",
    "n_dimensions",
    "root_cause",
    "score",
    "z",
    "explanatory_power",
    "actual",
    "expected",
    "deviation",
    "leaves",
]
ALL = "all"


def deviation_score(actual, expected) -> np.ndarray:
    """Symmetric relative deviation ``2 (f - v) / (f + v)`` in [-2, 2] (0 where both are 0).

    Positive when the actual is below the expectation (a drop); bounded, so a leaf that went
    from 0 to 3 does not dominate as a plain ratio would.
    """
    v = np.asarray(actual, dtype=float)
    f = np.asarray(expected, dtype=float)
    den = f + v
    with np.errstate(invalid="ignore", divide="ignore"):
        out = np.where(den != 0, 2.0 * (f - v) / np.where(den != 0, den, 1.0), 0.0)
    return out


def format_cohort(filters: dict) -> str:
    """``{"os": "iOS", "browser": "Safari"}`` -> ``browser=Safari&os=iOS`` (``all`` if empty)."""
    if not filters:
        return ALL
    return "&".join(f"{k}={filters[k]}" for k in sorted(filters))


def parse_cohort(cohort: str) -> dict:
    """Inverse of ``format_cohort`` (values are returned as strings)."""
    if cohort == ALL:
        return {}
    return dict(part.split("=", 1) for part in cohort.split("&"))


@dataclass
class _Prepared:
    codes: np.ndarray  # (n_leaves, n_dims) int64 codes per dimension
    uniques: list  # per dimension, the values behind the codes
    sizes: np.ndarray  # cardinality per dimension
    v: np.ndarray  # additive actual per leaf
    f: np.ndarray  # additive expected per leaf
    w: np.ndarray  # noise weight per leaf
    raw: dict  # raw columns for reporting (actual/expected or the four counts)
    names: list  # dimension names


class Localizer:
    """Rank the cohorts that explain one hour's deviation of a KPI.

    Parameters
    ----------
    max_dimensions:
        Largest number of dimensions in a candidate cohort (3 finds ``os & browser & campaign``;
        the number of cuboids grows as C(n_dims, k)).
    top_k:
        Rows returned: the accepted root causes first, then the best alternatives (at least
        ``top_k`` rows when that many candidates exist).
    min_score:
        Gain (share of the total weighted absolute leaf deviation removed) a cohort needs to be
        accepted as a root cause (a floor; ``min_z`` does most of the work).
    min_z:
        |z| of the cohort's aggregated deviation a cause needs, with the leaf noise variance
        ``k f + c f^2`` fitted robustly to the cube itself. ~3,000 overlapping candidates are
        tested, hence 5.5 (noise-only synthetic cubes reach |z| ~ 4-5 on their best candidate).
    max_causes:
        Most root causes accepted by the greedy explaining-away loop.
    weighting:
        ``"poisson"`` (default) divides each leaf's absolute deviation by sqrt(expected), so the
        many small, noisy leaves and the few big ones weigh like z-scores; ``"none"`` uses plain
        absolute deviations (big leaves dominate).
    dimension_penalty:
        Relative discount of the gain per dimension when ranking (gain x (1 - p x dims)): on a
        near tie, the simpler cohort.
    """

    def __init__(
        self,
        max_dimensions: int = 3,
        top_k: int = 3,
        min_score: float = 0.002,
        max_causes: int = 3,
        weighting: str = "poisson",
        min_z: float = 5.5,
        dimension_penalty: float = 0.02,
    ):
        if int(max_dimensions) < 1:
            raise ValueError(f"max_dimensions must be >= 1, got {max_dimensions}")
        if int(top_k) < 1:
            raise ValueError(f"top_k must be >= 1, got {top_k}")
        if int(max_causes) < 1:
            raise ValueError(f"max_causes must be >= 1, got {max_causes}")
        if weighting not in ("poisson", "none"):
            raise ValueError(f"weighting must be 'poisson' or 'none', got {weighting!r}")
        if not 0 <= float(min_score) <= 1:
            raise ValueError(f"min_score must be in [0, 1], got {min_score}")
        self.max_dimensions = int(max_dimensions)
        self.top_k = int(top_k)
        self.min_score = float(min_score)
        self.max_causes = int(max_causes)
        self.weighting = weighting
        self.min_z = float(min_z)
        self.dimension_penalty = float(dimension_penalty)

    # public API -------------------------------------------------------------------------
    def localize(
        self, leaves: pd.DataFrame, dimensions: list[str], kpi: str = "additive"
    ) -> pd.DataFrame:
        """Ranked candidate cohorts (``RESULT_COLUMNS``), best first.

        Rows: the accepted root causes (``root_cause`` True, in the order the greedy loop took
        them), then alternatives taken in turn from the ranking on what the accepted causes leave
        unexplained and from the first ranking, at least ``top_k`` rows in all.

        ``score``: share of the weighted absolute leaf deviation the cohort's ripple removes, at
        the step it was ranked (0..1; noise-only synthetic cubes stay below ~0.01). ``z``: the
        cohort's aggregated deviation sum(v - f) in noise standard deviations, at that step.
        ``explanatory_power``: share of the parent's deviation inside the cohort (sum of
        actual - expected; for ratios the exact rate decomposition, see the module docstring).
        ``actual`` / ``expected``: the cohort's sum (additive) or rate (ratio); ``deviation`` =
        actual / expected - 1; ``filters``: the cohort as a dict; ``leaves``: leaf count.
        """
        prep = self._prepare(leaves, dimensions, kpi)
        n_dims = len(dimensions)
        cuboids = [()] + [
            c
            for k in range(1, min(self.max_dimensions, n_dims) + 1)
            for c in itertools.combinations(range(n_dims), k)
        ]
        groups = [self._group(prep, c) for c in cuboids]
        cuboid_dims = np.array([len(c) for c in cuboids], dtype=float)

        f_cur = prep.f.copy()
        total0 = float(np.sum(prep.w * np.abs(prep.v - prep.f)))
        selected: list[tuple[int, int, float, float]] = []  # (cuboid, element, gain, z)
        masks: list[np.ndarray] = []  # leaves of the accepted causes
        first = last = None
        if total0 > 0:
            for step in range(self.max_causes + 1):
                var = _leaf_variance(prep.v, f_cur)
                cub, elem, gain, z, inside = self._score_all(
                    prep, f_cur, var, groups, total0, masks
                )
                # a relative preference for fewer dimensions: it only decides near-ties
                rank_key = gain * (1.0 - self.dimension_penalty * cuboid_dims[cub])
                # alternatives: the ranking on what the accepted causes leave unexplained
                order = np.argsort(-rank_key, kind="stable")
                last = (cub[order], elem[order], gain[order], z[order])
                first = first or last
                if step == self.max_causes:
                    break
                # an accepted cause and its refinements are not candidates any more
                keep = ~inside
                cub, elem, gain, z, rank_key = (
                    cub[keep],
                    elem[keep],
                    gain[keep],
                    z[keep],
                    rank_key[keep],
                )
                if len(gain) == 0:
                    break
                best = int(np.argmax(rank_key))
                if gain[best] < self.min_score or abs(z[best]) < self.min_z:
                    break
                c, e = int(cub[best]), int(elem[best])
                selected.append((c, e, float(gain[best]), float(z[best])))
                masks.append(groups[c][0] == e)
                f_cur = _rake(prep.v, prep.f, masks)

        rows = [(c, e, s, zz, True) for c, e, s, zz in selected]
        if last is not None:
            sel = [
                (self._filters(prep, cuboids[c], groups[c], e), self._change(prep, groups[c], e))
                for c, e, _, _ in selected
            ]
            # alternatives, taken in turn from the ranking on what the accepted causes leave
            # unexplained (a further, weaker cause) and from the first ranking (the runner-up
            # explanations of the main deviation)
            streams = [zip(*last, strict=True)]
            if first is not last:
                streams.append(zip(*first, strict=True))
            want = max(self.top_k, len(selected))
            while len(rows) < want and streams:
                stream = streams.pop(0)
                for c, e, s, zz in stream:
                    c, e = int(c), int(e)
                    if any(r[0] == c and r[1] == e for r in rows):
                        continue
                    filt = self._filters(prep, cuboids[c], groups[c], e)
                    # a strict descendant of an accepted cause that moved like it adds nothing;
                    # one that moved much more may be the true, finer cause
                    change = self._change(prep, groups[c], e)
                    if any(
                        _is_descendant(filt, sf) and abs(change - sc) <= 0.15 * abs(sc)
                        for sf, sc in sel
                    ):
                        continue
                    rows.append((c, e, float(s), float(zz), False))
                    streams.append(stream)
                    break
        return self._report(prep, kpi, cuboids, groups, rows)

    # internals --------------------------------------------------------------------------
    def _prepare(self, leaves, dimensions, kpi) -> _Prepared:
        if not isinstance(leaves, pd.DataFrame):
            raise ValueError(  # noqa: TRY004 - one exception type for every input problem
                f"leaves must be a pandas DataFrame, got {type(leaves).__name__}"
            )
        if kpi not in KPI_KINDS:
            raise ValueError(f"kpi must be one of {KPI_KINDS}, got {kpi!r}")
        if isinstance(dimensions, str) or not dimensions:
            raise ValueError("dimensions must be a non-empty list of column names")
        dimensions = list(dimensions)
        if len(set(dimensions)) != len(dimensions):
            raise ValueError(f"dimensions has duplicates: {dimensions}")
        value_cols = ADDITIVE_COLUMNS if kpi == "additive" else RATIO_COLUMNS
        overlap = [d for d in dimensions if d in value_cols]
        if overlap:
            raise ValueError(f"value column(s) {overlap} cannot be dimensions")
        missing = [c for c in [*dimensions, *value_cols] if c not in leaves.columns]
        if missing:
            raise ValueError(
                f"leaves is missing column(s) {missing} for kpi={kpi!r}; has {list(leaves.columns)}"
            )
        if leaves.empty:
            raise ValueError("leaves is empty")
        for d in dimensions:
            if leaves[d].isna().any():
                raise ValueError(f"dimension column {d!r} has null values; fill them first")
        dup = leaves.duplicated(dimensions, keep=False)
        if dup.any():
            raise ValueError(
                f"leaves has {int(dup.sum())} rows with duplicate dimension values; "
                "aggregate to one row per leaf first"
            )
        raw = {}
        for col in value_cols:
            try:
                x = pd.to_numeric(leaves[col], errors="raise").to_numpy(dtype=float)
            except (ValueError, TypeError) as exc:
                raise ValueError(f"column {col!r} is not numeric: {exc}") from exc
            if not np.isfinite(x).all():
                raise ValueError(f"column {col!r} has NaN or infinite values")
            if (x < 0).any():
                raise ValueError(f"column {col!r} has negative values")
            raw[col] = x

        codes, uniques = [], []
        for d in dimensions:
            code, uniq = pd.factorize(leaves[d], sort=True)
            codes.append(code.astype(np.int64))
            uniques.append(list(uniq))
        codes_arr = np.column_stack(codes)
        sizes = np.array([len(u) for u in uniques], dtype=np.int64)

        if kpi == "additive":
            v, f = raw["actual"], raw["expected"]
        else:
            n, d = raw["numerator"], raw["denominator"]
            fn, fd = raw["expected_numerator"], raw["expected_denominator"]
            if fd.sum() <= 0 or fn.sum() <= 0:
                raise ValueError("expected_numerator and expected_denominator must not sum to 0")
            if (fn > fd).any() or (n > d).any():
                raise ValueError("a numerator exceeds its denominator (rates must be <= 1)")
            parent_rate = fn.sum() / fd.sum()
            leaf_rate = np.where(fd > 0, fn / np.where(fd > 0, fd, 1.0), parent_rate)
            f = leaf_rate * d
            v = n + (leaf_rate - parent_rate) * (d - fd)
        if self.weighting == "poisson":
            w = 1.0 / np.sqrt(np.maximum(f, 1.0))
        else:
            w = np.ones_like(f)
        return _Prepared(codes_arr, uniques, sizes, v, f, w, raw, dimensions)

    @staticmethod
    def _group(prep: _Prepared, cuboid: tuple) -> tuple[np.ndarray, np.ndarray]:
        """Per leaf, the element id in the cuboid; and per element id, its combined key."""
        n = len(prep.v)
        if not cuboid:
            return np.zeros(n, dtype=np.int64), np.zeros(1, dtype=np.int64)
        key = np.ravel_multi_index(
            tuple(prep.codes[:, list(cuboid)].T), tuple(prep.sizes[list(cuboid)])
        )
        keys, g = np.unique(key, return_inverse=True)
        return g.astype(np.int64), keys

    @staticmethod
    def _score_all(prep, f_cur, var, groups, total0, masks):
        """Gain and aggregated z of every element of every cuboid (ripple-effect hypothesis).

        Also flags the elements lying wholly inside one of ``masks`` (accepted causes).
        """
        v, w = prep.v, prep.w
        base = w * np.abs(v - f_cur)
        cubs, elems, gains, zs, insides = [], [], [], [], []
        for i, (g, keys) in enumerate(groups):
            k = len(keys)
            vs = np.bincount(g, v, k)
            fs = np.bincount(g, f_cur, k)
            ratio = np.where(fs > 0, vs / np.where(fs > 0, fs, 1.0), 1.0)
            after = np.bincount(g, w * np.abs(v - f_cur * ratio[g]), k)
            before = np.bincount(g, base, k)
            sd = np.sqrt(np.bincount(g, var, k))
            inside = np.zeros(k, dtype=bool)
            if masks:
                count = np.bincount(g, minlength=k)
                for m in masks:
                    inside |= np.bincount(g, m, k) == count
            idx = np.flatnonzero(fs > 0)
            cubs.append(np.full(len(idx), i, dtype=np.int64))
            elems.append(idx)
            gains.append((before[idx] - after[idx]) / total0)
            zs.append((vs[idx] - fs[idx]) / np.maximum(sd[idx], 1e-12))
            insides.append(inside[idx])
        return tuple(np.concatenate(x) for x in (cubs, elems, gains, zs, insides))

    @staticmethod
    def _change(prep, group, elem) -> float:
        """Relative change v(S) / f(S) - 1 of the (additive-reduced) KPI in a cohort."""
        mask = group[0] == elem
        fs = prep.f[mask].sum()
        return float(prep.v[mask].sum() / fs - 1.0) if fs > 0 else 0.0

    @staticmethod
    def _filters(prep, cuboid, group, elem) -> dict:
        if not cuboid:
            return {}
        _, keys = group
        vals = np.unravel_index(int(keys[elem]), tuple(prep.sizes[list(cuboid)]))
        return {int(d): int(x) for d, x in zip(cuboid, vals, strict=True)}

    def _report(self, prep, kpi, cuboids, groups, rows) -> pd.DataFrame:
        dims_names = prep.names
        raw = prep.raw
        contrib = prep.v - prep.f
        total_contrib = contrib.sum()
        out = []
        for rank, (c, e, score, z, is_cause) in enumerate(rows, start=1):
            g, _ = groups[c]
            mask = g == e
            codes = self._filters(prep, cuboids[c], groups[c], e)
            filters = {dims_names[d]: prep.uniques[d][x] for d, x in codes.items()}
            if kpi == "additive":
                actual = raw["actual"][mask].sum()
                expected = raw["expected"][mask].sum()
            else:
                den = raw["denominator"][mask].sum()
                eden = raw["expected_denominator"][mask].sum()
                actual = raw["numerator"][mask].sum() / den if den > 0 else np.nan
                expected = raw["expected_numerator"][mask].sum() / eden if eden > 0 else np.nan
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
                        float(contrib[mask].sum() / total_contrib) if total_contrib else np.nan
                    ),
                    "actual": float(actual),
                    "expected": float(expected),
                    "deviation": float(actual / expected - 1) if expected else np.nan,
                    "leaves": int(mask.sum()),
                }
            )
        return pd.DataFrame(out, columns=RESULT_COLUMNS)


def _rake(v: np.ndarray, f: np.ndarray, masks: list[np.ndarray], sweeps: int = 20) -> np.ndarray:
    """Expectations scaled so that every accepted cause matches its actual total.

    Iterative proportional fitting over the accepted causes: with overlapping causes (a country
    drop and a device surge) one factor per cause is fitted jointly, so neither leaves a residual
    that a third, spurious cohort would pick up.
    """
    out = f.copy()
    for _ in range(sweeps):
        for m in masks:
            fs = out[m].sum()
            if fs > 0:
                out[m] *= v[m].sum() / fs
    return out


def _leaf_variance(v: np.ndarray, f: np.ndarray) -> np.ndarray:
    """Per-leaf noise variance ``k f + c f^2``, fitted robustly to the residuals ``v - f``.

    Counts are Poisson-like (variance ~ f) but a baseline's own error is proportional
    (variance ~ f^2) and dominates big leaves. The median of the squared standardised residuals
    of a normal variable is 0.455; as most leaves are normal, the median is matched by raising
    the proportional term ``c`` (bisection) or, when the data are under-dispersed against
    Poisson (other units than counts), by scaling ``k``. Used for the cohort ``z`` only.
    """
    f = np.maximum(f, 1e-9)
    r2 = (v - f) ** 2
    target = 0.4549
    m0 = np.median(r2 / f)
    if m0 <= target:
        return f * max(m0 / target, 1e-6)
    lo, hi = 0.0, 1.0
    while np.median(r2 / (f + hi * f * f)) > target and hi < 1e6:
        hi *= 4.0
    for _ in range(40):
        mid = 0.5 * (lo + hi)
        if np.median(r2 / (f + mid * f * f)) > target:
            lo = mid
        else:
            hi = mid
    return f + hi * f * f


def _is_descendant(child: dict, parent: dict) -> bool:
    """True when ``child`` is strictly finer than ``parent`` (same values on parent's dims)."""
    return len(child) > len(parent) and all(child.get(k) == v for k, v in parent.items())
