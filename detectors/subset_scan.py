"""Detection over the whole cohort cube: a fast subset scan of every cohort of up to three
dimensions, per rate metric and hour, with evidence pooled over windows of hours.

The monitored series (``config/cohorts.yml``) cover the dimensions one by one and a few listed
combinations; a drop in ``os=Android & browser=Chrome & country=DE`` is in none of them. Listing
every combination as a series would make the cost grow with the number of combinations. The
scan works on the *leaf* table instead (one row per hour and combination of every dimension,
``marts.fct_funnel_hourly``): every cohort of 0..``max_dimensions`` dimensions is a sum of
leaves, so all cohorts of all cuboids are one sparse (cohort x leaf) matrix product per window
(the "fast subset scan" idea of Neill, 2012, over the lattice of dimension combinations
instead of spatial regions; the statistic is the expectation-based binomial score of
Kulldorff's scan with a normal approximation).

Per rate metric (``rates``: metric -> (numerator column, denominator column)) and leaf:

* **Expected rate**: the leaf's pooled rate over the history before the windows, shrunk
  towards the metric's rate (empirical Bayes, ``leaf_rel_sd``), times the metric's
  hour-of-day profile (the store's rate at that hour of day over its rate, shrunk to 1 with
  ``hour_of_day_rel_sd``): a leaf with a handful of trials expects its parent's rate.
* **Noise**: binomial variance of the hours, plus the error of the leaf's estimated rate
  (perfectly correlated across the hours of a window: it does not average out), plus a
  cohort-level proportional ``drift`` of the expectation.

For every scored hour t, window w of ``windows`` and cohort S: A = observed numerator over
(t - w, t], E = expected, V = the noise variance, and the signed root of the binomial
likelihood ratio with overdispersion V / (binomial variance) (more exact than a Wald z for the
few counts of a rare error), one-sided in the metric's alerting direction (``directions``).

Multiplicity: the false-alarm budget ``false_alarms_per_day`` is split evenly over the
dimension depths (0, 1, .. ``max_dimensions``) and, within a depth, Bonferroni over its
cohorts, the windows, the metrics and the 24 hours of a day: a one-dimension cohort (tens of
them) needs |z| ~ 4.8, a three-dimension one (thousands) ~ 5.8. Shallow cohorts are not made to
pay for the many deep ones (the scan's size penalty), and the bound holds however many cohorts
the cube has. Cohorts below ``min_denominator`` trials in the window and cohorts whose own hour
does not move the alerting way never alert.

Per (metric, hour) the alerting cohorts are explained greedily (the strongest is taken, its
leaves' deviation is taken out, the rest are scored again on what is left; at most
``max_cohorts_per_hour``): a drop in one three-dimension cohort also lifts its parents' and its
overlapping neighbours' z, which are its echo. Excluded cohorts (those monitored as
series) take part in that explanation (a store-wide drop explains its cohorts) but are not
reported: their own sequential test covers them. As in a CUSUM, the hours are replayed in order
and evidence spent on an alarm is not spent again: after a cohort alarms, windows of every
cohort sharing its leaves start after that hour.

Pure: numpy / scipy, no I/O. ``fit(history)`` then ``score(current)``; both take the leaf frame
(``ts``, the dimension columns, the count columns); ``score`` returns one row per alert.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterable, Sequence

import numpy as np
import pandas as pd
from scipy import sparse, special, stats

from detectors.config import DEFAULT_DIRECTION, METRIC_DIRECTIONS, log10p

WINDOWS = (1, 2, 4, 8, 16, 24)
ALERT_COLUMNS = [
    "ts", "metric", "cohort", "cohort_dimensions", "value", "numerator", "denominator",
    "expected", "score", "p_value", "severity", "direction", "window_hours", "z", "why",
]


class SubsetScan:
    """Scan every cohort of up to ``max_dimensions`` dimensions of a leaf table for rate drops
    (or rises, per ``directions``) pooled over ``windows`` hours. See the module docstring."""

    def __init__(
        self,
        rates: dict[str, tuple[str, str]],
        dimensions: Sequence[str],
        directions: dict[str, str] | None = None,
        max_dimensions: int = 3,
        windows: Sequence[int] = WINDOWS,
        false_alarms_per_day: float = 0.1,
        min_denominator: float = 30.0,
        drift: float = 0.01,
        leaf_rel_sd: float = 0.5,
        hour_of_day_rel_sd: float = 0.3,
        history_days: int = 14,
        max_cohorts_per_hour: int = 3,
        exclude: Iterable[str] = (),
    ):
        if not rates:
            raise ValueError("rates must name at least one metric: {metric: (numerator, denominator)}")
        dimensions = list(dimensions)
        if not dimensions or len(set(dimensions)) != len(dimensions):
            raise ValueError(f"dimensions must be distinct column names, got {dimensions!r}")
        windows = tuple(sorted({int(w) for w in windows}))
        if not windows or windows[0] < 1:
            raise ValueError(f"windows must be positive hour counts, got {windows!r}")
        if int(max_dimensions) < 0 or int(history_days) < 1:
            raise ValueError("max_dimensions must be >= 0 and history_days >= 1")
        if false_alarms_per_day <= 0:
            raise ValueError(f"false_alarms_per_day must be > 0, got {false_alarms_per_day}")
        if min(drift, leaf_rel_sd, hour_of_day_rel_sd, min_denominator) < 0:
            raise ValueError("drift, leaf_rel_sd, hour_of_day_rel_sd, min_denominator must be >= 0")
        self.rates = dict(rates)
        self.dimensions = dimensions
        self.directions = dict(METRIC_DIRECTIONS if directions is None else directions)
        self.max_dimensions = min(int(max_dimensions), len(dimensions))
        self.windows = windows
        self.false_alarms_per_day = float(false_alarms_per_day)
        self.min_denominator = float(min_denominator)
        self.drift = float(drift)
        self.leaf_rel_sd, self.hour_of_day_rel_sd = float(leaf_rel_sd), float(hour_of_day_rel_sd)
        self.history_hours = 24 * int(history_days)
        self.max_cohorts_per_hour = int(max_cohorts_per_hour)
        self.exclude = frozenset(exclude)

    # -- input ------------------------------------------------------------------------------------
    def _columns(self) -> list[str]:
        return sorted({c for pair in self.rates.values() for c in pair})

    def _check(self, frame: pd.DataFrame, name: str) -> pd.DataFrame:
        if not isinstance(frame, pd.DataFrame):
            raise TypeError(f"{name} must be a pandas DataFrame, got {type(frame).__name__}")
        missing = [c for c in ["ts", *self.dimensions, *self._columns()] if c not in frame.columns]
        if missing:
            raise ValueError(f"{name} is missing column(s) {missing}")
        out = frame[["ts", *self.dimensions, *self._columns()]].copy()
        out["ts"] = pd.to_datetime(out["ts"], utc=True).dt.floor("h")
        for d in self.dimensions:
            out[d] = out[d].astype(str)
        for c in self._columns():
            # NaN stays NaN: an unknown count is left out of its metric, not read as 0
            out[c] = pd.to_numeric(out[c], errors="coerce").clip(lower=0.0)
        return out

    def _lead_hours(self) -> int:
        """Hours before a scored hour that its windows and the replay of alarms reach: two of
        the longest window. The expectation is pooled from the hours before those (a window
        must not test the hours it learnt from)."""
        return 2 * max(self.windows) - 1

    def fit(self, history: pd.DataFrame) -> SubsetScan:
        """Keep the leaf rows of the last ``history_days`` (plus the replay's lead) of
        ``history`` (one row per hour and leaf; several rows of one leaf-hour add up). History
        may be empty: a new store, nothing to expect, nothing alerts."""
        h = self._check(history, "history")
        if len(h):
            reach = pd.Timedelta(hours=self.history_hours + self._lead_hours())
            h = h[h["ts"] > h["ts"].max() - reach]
        self.history_ = h
        return self

    # -- the cube ---------------------------------------------------------------------------------
    def _cohorts(self, leaves: pd.DataFrame):
        """Sparse (cohort x leaf) membership, each cohort's filters and depth."""
        codes, uniques = [], []
        for d in self.dimensions:
            c, u = pd.factorize(leaves[d], sort=True)
            codes.append(c)
            uniques.append(np.asarray(u, dtype=object))
        codes_arr = np.column_stack(codes)
        rows, filters, depth = [], [], []
        offset = 0
        for k in range(self.max_dimensions + 1):
            for cub in itertools.combinations(range(len(self.dimensions)), k):
                if cub:
                    keys, inverse = np.unique(codes_arr[:, list(cub)], axis=0, return_inverse=True)
                    inverse = inverse.ravel()
                else:
                    keys, inverse = np.zeros((1, 0), int), np.zeros(len(leaves), int)
                rows.append(inverse + offset)
                for key in keys:
                    filters.append({self.dimensions[d]: uniques[d][v] for d, v in zip(cub, key)})
                    depth.append(k)
                offset += len(keys)
        cols = np.tile(np.arange(len(leaves)), len(rows))
        member = sparse.csr_matrix((np.ones(len(cols)), (np.concatenate(rows), cols)),
                                   shape=(offset, len(leaves)))
        return member, filters, np.array(depth)

    def _thresholds(self, depth: np.ndarray, metrics: int, sides: float) -> np.ndarray:
        """Per cohort, the p a one-sided test must reach (see the module docstring)."""
        levels = self.max_dimensions + 1
        per_depth = np.bincount(depth, minlength=levels).astype(float)
        tests = 24.0 * len(self.windows) * metrics * levels * per_depth[depth]
        return self.false_alarms_per_day / (tests * sides)

    def _expectation(self, k, n, hod, c0, c1):
        """(expected rate per leaf and hour of columns [c0, c1), relative variance of each
        leaf's estimated rate), from the pool of hours before c0 - lead (a young store: all
        hours before c0); None when the pool has no trials."""
        p1 = c0 - self._lead_hours()
        p1 = p1 if p1 > 0 else c0
        p0 = max(0, p1 - self.history_hours)
        hk, hn = k[:, p0:p1].sum(axis=1), n[:, p0:p1].sum(axis=1)
        if hn.sum() <= 0:
            return None
        p_metric = hk.sum() / hn.sum()
        m_leaf = _prior_trials(p_metric, self.leaf_rel_sd)
        p_leaf = (hk + m_leaf * p_metric) / (hn + m_leaf)
        rel_var = (1 - p_leaf) / np.maximum(p_leaf, 1e-9) / np.maximum(hn + m_leaf, 1.0)
        # the store's hour-of-day profile of the rate, shrunk to flat
        store_k = np.bincount(hod[p0:p1], k[:, p0:p1].sum(axis=0), minlength=24)
        store_n = np.bincount(hod[p0:p1], n[:, p0:p1].sum(axis=0), minlength=24)
        m_hod = _prior_trials(p_metric, self.hour_of_day_rel_sd)
        factor = ((store_k + m_hod * p_metric) / (store_n + m_hod)) / p_metric if p_metric > 0 \
            else np.ones(24)
        rate = np.clip(p_leaf[:, None] * factor[hod[c0:c1]][None, :], 1e-9, 1 - 1e-9)
        return rate, rel_var

    # -- scoring ----------------------------------------------------------------------------------
    def score(self, current: pd.DataFrame) -> pd.DataFrame:
        """One row per alerting (metric, cohort, hour) of ``current`` (``ALERT_COLUMNS``).
        ``current`` may span many hours and days: the expectation is pooled again at each UTC
        day from the hours before it (history and earlier current hours), as a day-by-day
        live run would have it."""
        if not hasattr(self, "history_"):
            raise ValueError("fit the scan on history before scoring")
        cur = self._check(current, "current")
        if cur.empty or self.history_.empty:
            return pd.DataFrame(columns=ALERT_COLUMNS)
        frame = pd.concat([self.history_[self.history_["ts"] < cur["ts"].min()], cur],
                          ignore_index=True)
        t0 = frame["ts"].min()
        hour = ((frame["ts"] - t0) / pd.Timedelta(hours=1)).to_numpy().astype(int)
        n_hours = int(hour.max()) + 1
        stamps = t0 + pd.to_timedelta(np.arange(n_hours), unit="h")
        hod = stamps.hour.to_numpy()
        first = int((cur["ts"].min() - t0) / pd.Timedelta(hours=1))
        leaf_codes = frame.groupby(self.dimensions, sort=True).ngroup().to_numpy()
        leaves = (frame[self.dimensions].assign(code=leaf_codes).drop_duplicates("code")
                  .sort_values("code")[self.dimensions].reset_index(drop=True))
        member, filters, depth = self._cohorts(leaves)
        names = np.array([_format(f) for f in filters], dtype=object)
        emitted = ~np.isin(names, list(self.exclude))
        # UTC days of the replayed hours: the expectation is pooled afresh at each
        replay_from = max(0, first - self._lead_hours())
        day = stamps.normalize()
        blocks = [(int(i), int(j)) for i, j in _runs(day[replay_from:], replay_from)]
        metrics = [m for m in self.rates if self.directions.get(m, DEFAULT_DIRECTION) != "none"]
        out = []
        for metric in metrics:
            num, den = self.rates[metric]
            known = frame[num].notna().to_numpy() & frame[den].notna().to_numpy()
            grid = {}
            for col in (num, den):
                g = np.zeros((len(leaves), n_hours))
                np.add.at(g, (leaf_codes[known], hour[known]), frame[col].to_numpy()[known])
                grid[col] = g
            n = grid[den]
            k = np.minimum(grid[num], n)
            rate = np.full(n.shape, np.nan)
            rel_var = np.full(n.shape, np.nan)
            for c0, c1 in blocks:
                got = self._expectation(k, n, hod, c0, c1)
                if got is not None:
                    rate[:, c0:c1], rel_var[:, c0:c1] = got[0], got[1][:, None]
            out += self._replay(metric, member, filters, depth, names, emitted, k, n, rate,
                                rel_var, replay_from, first, stamps, len(metrics))
        if not out:
            return pd.DataFrame(columns=ALERT_COLUMNS)
        return pd.DataFrame(out, columns=ALERT_COLUMNS)

    def _replay(self, metric, member, filters, depth, names, emitted, k, n, rate, rel_var,
                replay_from, first, stamps, n_metrics) -> list[dict]:
        """Hour by hour from ``replay_from``, as in a CUSUM: evidence spent on an alarm is not
        spent again (after a cohort alarms, windows of every cohort sharing its leaves start
        after that hour, so a drop that ended does not keep paging through the long windows
        of its cohorts). Alerts of the hours from ``first`` on are returned."""
        allowed = self.directions.get(metric, DEFAULT_DIRECTION)
        sign = {"down": -1.0, "up": 1.0}.get(allowed, 0.0)
        p_star = self._thresholds(depth, n_metrics, 2.0 if allowed == "both" else 1.0)
        z_star = stats.norm.isf(p_star)  # the directed z an alarm needs, per cohort
        has = np.isfinite(rate)
        e = np.where(has, n * np.nan_to_num(rate), 0.0)
        vb = np.where(has, e * (1 - np.nan_to_num(rate)), 0.0)
        kk, nn = np.where(has, k, 0.0), np.where(has, n, 0.0)
        cum = {name: np.concatenate([np.zeros((len(x), 1)), np.cumsum(x, axis=1)], axis=1)
               for name, x in (("k", kk), ("n", nn), ("e", e), ("vb", vb))}
        restart = np.zeros(member.shape[1])
        coh_restart = np.zeros(member.shape[0])
        out = []
        for h in range(replay_from, k.shape[1]):
            if not has[:, h].any():
                continue
            ws = np.array([w for w in self.windows if w <= h + 1])
            lo = h + 1 - ws
            leaf = {name: c[:, [h + 1]] - c[:, lo] for name, c in cum.items()}
            leaf["v"] = leaf["vb"] + leaf["e"] ** 2 * np.nan_to_num(rel_var[:, [h]])
            # every window of this hour in one sparse product
            sums = member @ np.hstack([leaf["k"], leaf["n"], leaf["e"], leaf["v"],
                                       kk[:, [h]], e[:, [h]], nn[:, [h]]])
            A, N, E, V = np.split(sums[:, :-3], 4, axis=1)
            a1, e1, n1 = sums[:, -3], sums[:, -2], sums[:, -1]
            moves = (a1 - e1) * sign > 0 if sign else np.ones(len(a1), dtype=bool)
            ok = ((N >= self.min_denominator) & (E > 0) & (lo[None, :] >= coh_restart[:, None])
                  & moves[:, None])
            # the likelihood ratio only where a Wald z comes near the bar (it is the costly
            # part, and almost every cohort-window of a quiet hour is far below it)
            wald = (A - E) / np.sqrt(V + (self.drift * E) ** 2 + 1.0)
            near = ok & ((wald * sign if sign else np.abs(wald)) > 0.5 * z_star[:, None])
            ratio = np.zeros(A.shape)
            if near.any():
                r = self._signed_root(A[near], N[near], E[near], V[near])
                directed = r * sign if sign else np.abs(r)
                ratio[near] = directed / np.broadcast_to(z_star[:, None], A.shape)[near]
            pick = np.argmax(ratio, axis=1)
            best = ratio[np.arange(len(ratio)), pick]
            hits = np.flatnonzero(best > 1.0)
            if not len(hits):
                continue
            picked = self._explain_away(member, filters, depth, cum, rel_var[:, h], h, hits,
                                        ws[pick[hits]], z_star, sign)
            for c, _ in picked:
                restart = np.maximum(restart, (h + 1) * member[c].toarray().ravel())
            coh_restart = member.multiply(restart[None, :]).max(axis=1).toarray().ravel()
            if h < first:
                continue
            for c, (ratio_c, z, w) in picked:
                if not emitted[c]:
                    continue  # monitored as a series: its own test reports it
                pval = float(stats.norm.sf(abs(z)) * (2.0 if allowed == "both" else 1.0))
                evidence = float(log10p(max(pval, 1e-300)) / -np.log10(p_star[c]))
                a, nh, eh = float(a1[c]), float(n1[c]), float(e1[c])
                out.append({
                    "ts": stamps[h], "metric": metric, "cohort": names[c],
                    "cohort_dimensions": ",".join(sorted(filters[c])),
                    "value": a / nh if nh > 0 else np.nan, "numerator": a, "denominator": nh,
                    "expected": eh / nh if nh > 0 else np.nan, "score": evidence,
                    "p_value": pval, "severity": 100.0 * evidence / (1.0 + evidence),
                    "direction": "down" if z < 0 else "up", "window_hours": float(w), "z": z,
                    "why": (f"cube scan {w:.0f} h: {names[c]} z={z:.1f} (alarm p<{p_star[c]:.2g}"
                            f" for {depth[c]}-dimension cohorts); this hour {a:.0f} of {nh:.0f}"
                            f" vs {eh:.1f} expected"),
                })
        return out

    def _signed_root(self, A, N, E, V):
        """sign(A - E) sqrt(2 LLR / phi): the binomial likelihood ratio of the pooled window
        against its expectation, overdispersion phi = the noise variance (with the rate's
        estimation error and the drift) over the binomial's. More exact than a Wald z for the
        few counts of a rare error in a small cohort (a normal approximation makes 3 errors
        against 0.6 expected a 5-sigma event)."""
        with np.errstate(divide="ignore", invalid="ignore"):
            p0 = np.clip(E / N, 1e-9, 1 - 1e-9)
            ph = np.clip(A / N, 0.0, 1.0)
            llr = (special.xlogy(A, ph) - special.xlogy(A, p0)
                   + special.xlogy(N - A, 1 - ph) - special.xlogy(N - A, 1 - p0))
            v0 = N * p0 * (1 - p0)
            phi = np.fmax((V + (self.drift * E) ** 2 + 1.0) / v0, 1.0)
            r = np.sign(A - E) * np.sqrt(np.clip(2.0 * llr / phi, 0.0, None))
        return np.where(np.isfinite(r) & (N > 0), r, 0.0)

    def _explain_away(self, member, filters, depth, cum, rel_var, h, hits, windows, z_star,
                      sign) -> list[tuple[int, tuple]]:
        """The alerting cohorts of one (metric, hour), explained greedily: the strongest is
        taken, its leaves' deviation is taken out (they are explained by it), the rest are
        scored again on what is left, until none alerts or ``max_cohorts_per_hour``. A cohort
        overlapping the taken one (Chrome & DE & no campaign beside Android & Chrome & DE)
        alerts only on its own remaining leaves. Cohorts monitored as series take part (a
        store-wide drop explains its cohorts' drops) though only the others are reported."""
        keep = np.ones(member.shape[1])
        sub = member[hits]
        chosen: list[tuple[int, tuple]] = []
        while len(chosen) < self.max_cohorts_per_hour:
            ratio = np.zeros(len(hits))
            res = np.zeros((len(hits), 2))
            for w in np.unique(windows):
                rows = np.flatnonzero(windows == w)
                lo = h + 1 - int(w)
                leaf = {name: (c[:, h + 1] - c[:, lo]) * keep for name, c in cum.items()}
                sums = sub[rows] @ np.column_stack([
                    leaf["k"], leaf["n"], leaf["e"], leaf["vb"] + leaf["e"] ** 2 * rel_var])
                r = self._signed_root(*sums.T)
                directed = r * sign if sign else np.abs(r)
                ok = (sums[:, 1] >= self.min_denominator) & (sums[:, 2] > 0)
                ratio[rows] = np.where(ok, directed / z_star[hits[rows]], 0.0)
                res[rows] = np.column_stack([r, np.full(len(rows), w)])
            for c, _ in chosen:
                ratio[[i for i, x in enumerate(hits) if _nested(filters[x], filters[c])]] = 0.0
            if not (ratio > 1.0).any():
                break
            best = np.lexsort((depth[hits], -ratio))[0]
            c = int(hits[best])
            chosen.append((c, (float(ratio[best]), *map(float, res[best]))))
            keep = keep * (1.0 - member[c].toarray().ravel())
        return chosen


def _runs(values: pd.DatetimeIndex, offset: int) -> list[tuple[int, int]]:
    """[start, end) column ranges of equal consecutive values, shifted by ``offset``."""
    arr = values.to_numpy()
    if not len(arr):
        return []
    cuts = np.flatnonzero(arr[1:] != arr[:-1]) + 1
    starts = np.concatenate([[0], cuts])
    ends = np.concatenate([cuts, [len(arr)]])
    return [(offset + s, offset + e) for s, e in zip(starts, ends)]


def _prior_trials(p: float, rel_sd: float) -> float:
    """Pseudo-trials of a Beta prior with mean p and sd rel_sd x min(p, 1 - p)."""
    if rel_sd == 0 or not np.isfinite(p):
        return 0.0
    q = min(max(min(p, 1 - p), 1e-6), 0.5)
    return max(1.0, (1 - q) / (rel_sd**2 * q))


def _format(filters: dict) -> str:
    return "&".join(f"{k}={filters[k]}" for k in sorted(filters)) if filters else "all"


def _nested(a: dict, b: dict) -> bool:
    """One cohort inside the other (or the same)."""
    small, large = (a, b) if len(a) >= len(b) else (b, a)
    return all(small.get(k) == v for k, v in large.items())
