"""Accuracy and cost of root-cause localisation on random synthetic cubes with known answers.

    .venv/bin/python bench/rootcause.py              # 50 cases per scenario
    .venv/bin/python bench/rootcause.py --cases 20   # quicker

Cube: 5 dimensions (3 x 5 x 4 x 8 x 6 = 2,880 leaves), skewed shares, Poisson / binomial noise and
a 3 % multiplicative baseline error (``rootcause.synthetic.make_cube``). Per case one random
cause of 1-3 dimensions holding >= 1 % of the traffic, change +-15..50 % (80 % of them drops);
half additive (50k expected orders), half ratio (1M sessions, ~3 % conversion, traffic
unchanged). Two-cause cases draw two such causes on disjoint dimension sets. Noise-only cases
count how often something is (wrongly) accepted as a root cause.

top-1: the first row is the true cohort; top-3: it is among the first 3 rows; both causes: the two
true cohorts are the two accepted root causes. Time: wall clock per ``localize`` call.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from rootcause import Localizer, format_cohort
from rootcause.synthetic import DIMENSIONS, cohort_share, make_cube

DIMS = list(DIMENSIONS)


def random_cause(rng, cube, column, exclude=(), min_share=0.01):
    k = int(rng.integers(1, 4))
    for _ in range(5000):
        free = [d for d in DIMS if d not in exclude]
        dims = rng.choice(free, size=min(k, len(free)), replace=False)
        filters = {str(d): str(rng.choice(DIMENSIONS[str(d)])) for d in dims}
        if cohort_share(cube, filters, column) >= min_share:
            sign = -1.0 if rng.random() < 0.8 else 1.0
            return filters, sign * float(rng.uniform(0.15, 0.5))
    raise RuntimeError("no cause with enough share")


def run(cases: int, seed: int = 0, **params) -> None:
    rng = np.random.default_rng(seed)
    loc = Localizer(**params)
    stats = {"single": [], "double": [], "noise": []}
    times = []
    for i in range(cases):
        kpi = "additive" if i % 2 == 0 else "ratio"
        total = 50_000.0 if kpi == "additive" else 1_000_000.0
        column = "expected" if kpi == "additive" else "expected_denominator"
        cube_seed = int(rng.integers(1 << 31))
        clean = make_cube([], kpi=kpi, total=total, seed=cube_seed)
        # single cause
        cause = random_cause(rng, clean, column)
        cube = make_cube([cause], kpi=kpi, total=total, seed=cube_seed)
        t0 = time.perf_counter()
        res = loc.localize(cube, DIMS, kpi)
        times.append(time.perf_counter() - t0)
        truth = format_cohort(cause[0])
        cohorts = list(res["cohort"])
        accepted = list(res.loc[res["root_cause"], "cohort"])
        stats["single"].append(
            (
                cohorts[:1] == [truth],
                truth in cohorts[:3],
                kpi,
                len(cause[0]),
                truth,
                cohorts[0],
                accepted == [truth],
            )
        )
        # two causes on disjoint dimensions
        c1 = random_cause(rng, clean, column)
        c2 = random_cause(rng, clean, column, exclude=tuple(c1[0]))
        cube = make_cube([c1, c2], kpi=kpi, total=total, seed=cube_seed)
        t0 = time.perf_counter()
        res = loc.localize(cube, DIMS, kpi)
        times.append(time.perf_counter() - t0)
        found = set(res.loc[res["root_cause"], "cohort"])
        truths = {format_cohort(c1[0]), format_cohort(c2[0])}
        stats["double"].append(
            (truths <= found, bool(truths & found), truths <= set(res["cohort"][:3]))
        )
        # noise only
        res = loc.localize(clean, DIMS, kpi)
        stats["noise"].append(
            (bool(res["root_cause"].any()), float(res["z"].abs().iloc[0]), res["score"].max())
        )

    single = stats["single"]
    print(f"single cause, {len(single)} cases (additive and ratio alternate):")
    print(f"  top-1 accuracy {np.mean([s[0] for s in single]):.2f}")
    print(f"  top-3 accuracy {np.mean([s[1] for s in single]):.2f}")
    for kpi in ("additive", "ratio"):
        sub = [s for s in single if s[2] == kpi]
        print(
            f"  {kpi:8s} top-1 {np.mean([s[0] for s in sub]):.2f}  top-3 "
            f"{np.mean([s[1] for s in sub]):.2f}  (n={len(sub)})"
        )
    for k in (1, 2, 3):
        sub = [s for s in single if s[3] == k]
        if sub:
            print(
                f"  {k}-dimension causes top-1 {np.mean([s[0] for s in sub]):.2f}  top-3 "
                f"{np.mean([s[1] for s in sub]):.2f}  (n={len(sub)})"
            )
    print(f"  exactly the true cohort accepted {np.mean([s[6] for s in single]):.2f}")
    misses = [s for s in single if not s[0]]
    for s in misses[:8]:
        print(f"    miss ({s[2]}): truth {s[4]!r}, got {s[5]!r}")
    double = stats["double"]
    print(
        f"two causes, {len(double)} cases: both accepted {np.mean([d[0] for d in double]):.2f}, "
        f"at least one {np.mean([d[1] for d in double]):.2f}, "
        f"both in the first 3 rows {np.mean([d[2] for d in double]):.2f}"
    )
    noise = stats["noise"]
    print(
        f"noise only, {len(noise)} cases: false root cause {np.mean([n[0] for n in noise]):.2f}, "
        f"max |z| of the top row {max(n[1] for n in noise):.1f}, "
        f"max score {max(n[2] for n in noise):.4f}"
    )
    t = np.array(times) * 1000
    print(
        f"time per localize call: median {np.median(t):.0f} ms, max {t.max():.0f} ms "
        f"({len(t)} calls, {len(clean)} leaves, 5 dims, max_dimensions=3)"
    )


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--cases", type=int, default=50)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--min-score", type=float, default=None)
    ap.add_argument("--min-z", type=float, default=None)
    ap.add_argument("--weighting", default=None, choices=["poisson", "none"])
    args = ap.parse_args()
    params = {
        k: v
        for k, v in (
            ("min_score", args.min_score),
            ("min_z", args.min_z),
            ("weighting", args.weighting),
        )
        if v is not None
    }
    run(args.cases, args.seed, **params)
