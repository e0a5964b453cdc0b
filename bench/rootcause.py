"""F1 of root-cause localisation on generated cubes, beside a simple baseline, and its cost.

    .venv/bin/python bench/rootcause.py               # 20 cases per setting (~10 min, 2 cores)
    .venv/bin/python bench/rootcause.py --cases 5     # quicker

Cubes (``rootcause.synthetic.make_cube``): 5 dimensions, 3 x 5 x 4 x 8 x 6 = 2,880 leaves,
skewed shares; additive (50k expected orders, Poisson) and ratio (1M sessions, ~3 %
conversion, binomial, traffic unchanged) alternate. Settings as Squeeze's B0-B4: B0 has no
baseline error, B1-B4 a multiplicative baseline error per leaf of 2 / 5 / 8 / 12 % (the
noise model knows it, as RobustSpot's noisy sets ask a method to cope with noisy leaves). In
each, 1-3 causes x cause layer 1-3 (every cause has that many dimensions; causes hold
disjoint leaves, each >= 2 % of the traffic, <= 60 % together, change +-20..60 %, 80 %
drops), like Squeeze's
``B_cuboid_layer_L_n_ele_N``.

F1 (micro over the cases of a setting, as Squeeze): predicted = the cohorts accepted as root
causes, true positives = exact cohort matches. Baseline "top-z": the single cohort of largest
|z| (same variance model, no dimension penalty, no widen / narrow, no explaining-away) when
|z| >= 5. Extra rows: pure noise (the share of cases with any answer: aim 0) and a store-wide
change (the share answered exactly ``all``).
"""

from __future__ import annotations

import argparse
import itertools
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from rootcause import Localizer, format_cohort
from rootcause.synthetic import DIMENSIONS, make_cube

DIMS = list(DIMENSIONS)
NOISE_LEVELS = {"B0": 0.0, "B1": 0.02, "B2": 0.05, "B3": 0.08, "B4": 0.12}
MIN_Z = 5.0


def random_causes(rng, cube, n_causes, layer, column, min_share=0.02, max_total=0.6):
    """``n_causes`` causes of ``layer`` dimensions on disjoint leaves, together <= 60 % of the
    traffic (three device types all down is a store-wide change: ``all`` and the odd one out
    is then as good an answer, and a simpler one)."""
    total = cube[column].sum()
    for _ in range(200):
        used = np.zeros(len(cube), dtype=bool)
        out = []
        for _ in range(2000):
            dims = rng.choice(DIMS, size=layer, replace=False)
            filters = {str(d): str(rng.choice(DIMENSIONS[str(d)])) for d in dims}
            mask = np.ones(len(cube), dtype=bool)
            for k, v in filters.items():
                mask &= (cube[k] == v).to_numpy()
            share = cube.loc[mask, column].sum() / total
            if (mask & used).any() or share < min_share:
                continue
            if cube.loc[used | mask, column].sum() > max_total * total:
                continue
            used |= mask
            sign = -1.0 if rng.random() < 0.8 else 1.0
            out.append((filters, sign * float(rng.uniform(0.2, 0.6))))
            if len(out) == n_causes:
                return out
    raise RuntimeError(f"no {n_causes} disjoint causes of layer {layer}")


def top_z_baseline(leaves: pd.DataFrame) -> list[str]:
    """The single cohort of largest |z| over every cuboid, if |z| >= MIN_Z."""
    best, best_z = None, 0.0
    for k in range(len(DIMS) + 1):
        for cub in itertools.combinations(DIMS, k):
            if cub:
                g = leaves.groupby(list(cub), sort=False)[["actual", "expected", "variance"]].sum()
            else:
                g = leaves[["actual", "expected", "variance"]].sum().to_frame().T
            z = (g["actual"] - g["expected"]) / np.sqrt(g["variance"] + 1.0)
            i = int(np.argmax(np.abs(z.to_numpy())))
            if abs(z.iloc[i]) > abs(best_z):
                key = g.index[i] if cub else ()
                key = key if isinstance(key, tuple) else (key,)
                best, best_z = dict(zip(cub, key, strict=True)), float(z.iloc[i])
    return [format_cohort(best)] if best is not None and abs(best_z) >= MIN_Z else []


def f1(tp: int, n_pred: int, n_true: int) -> float:
    return 2 * tp / (n_pred + n_true) if n_pred + n_true else 1.0


def run(cases: int, seed: int) -> None:
    rng = np.random.default_rng(seed)
    loc = Localizer(min_z=MIN_Z)
    times = []
    print(f"{'setting':<28} {'F1':>6} {'top-z':>6}   (cases={cases}, micro F1)")
    for level, noise in NOISE_LEVELS.items():
        for n_causes, layer in itertools.product((1, 2, 3), (1, 2, 3)):
            counts = {"ours": [0, 0, 0], "base": [0, 0, 0]}  # tp, predicted, true
            for i in range(cases):
                kpi = "additive" if i % 2 == 0 else "ratio"
                total = 50_000.0 if kpi == "additive" else 1_000_000.0
                column = "expected" if kpi == "additive" else "expected_denominator"
                cube_seed = int(rng.integers(1 << 31))
                clean = make_cube([], kpi=kpi, total=total, forecast_noise=noise, seed=cube_seed)
                causes = random_causes(rng, clean, n_causes, layer, column)
                cube = make_cube(causes, kpi=kpi, total=total, forecast_noise=noise, seed=cube_seed)
                truth = {format_cohort(f) for f, _ in causes}
                t0 = time.perf_counter()
                res = loc.localize(cube, DIMS, kpi)
                times.append(time.perf_counter() - t0)
                ours = set(res.loc[res["root_cause"], "cohort"])
                base = set(top_z_baseline(cube))
                for name, pred in (("ours", ours), ("base", base)):
                    c = counts[name]
                    c[0] += len(pred & truth)
                    c[1] += len(pred)
                    c[2] += len(truth)
            name = f"{level} causes={n_causes} layer={layer}"
            print(f"{name:<28} {f1(*counts['ours']):6.2f} {f1(*counts['base']):6.2f}")
        # pure noise and a store-wide change at this noise level
        answered = {"ours": 0, "base": 0}
        store = {"ours": 0, "base": 0}
        for i in range(cases):
            kpi = "additive" if i % 2 == 0 else "ratio"
            total = 50_000.0 if kpi == "additive" else 1_000_000.0
            cube_seed = int(rng.integers(1 << 31))
            clean = make_cube([], kpi=kpi, total=total, forecast_noise=noise, seed=cube_seed)
            res = loc.localize(clean, DIMS, kpi)
            answered["ours"] += bool(res["root_cause"].any())
            answered["base"] += bool(top_z_baseline(clean))
            change = float(rng.choice([-1, 1]) * rng.uniform(0.2, 0.4))
            wide = make_cube(
                [({}, change)], kpi=kpi, total=total, forecast_noise=noise, seed=cube_seed
            )
            res = loc.localize(wide, DIMS, kpi)
            store["ours"] += list(res.loc[res["root_cause"], "cohort"]) == ["all"]
            store["base"] += top_z_baseline(wide) == ["all"]
        print(
            f"{level + ' pure noise: any answer':<28} {answered['ours'] / cases:6.2f} "
            f"{answered['base'] / cases:6.2f}"
        )
        print(
            f"{level + ' store-wide: exactly all':<28} {store['ours'] / cases:6.2f} "
            f"{store['base'] / cases:6.2f}"
        )
    t = np.array(times) * 1000
    print(
        f"time per localize call: median {np.median(t):.0f} ms, max {t.max():.0f} ms "
        f"({len(t)} calls, 2,880 leaves, 5 dims, all 31 cuboids)"
    )


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--cases", type=int, default=20)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    run(args.cases, args.seed)
