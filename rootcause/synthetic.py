"""Synthetic leaf cubes with known root causes, for tests and ``bench/rootcause.py``.

Leaf sizes are products of skewed per-dimension shares (a few big values, a long tail, as
device / os / browser / country / campaign traffic is), actuals are Poisson / binomial draws, and
the expectation carries a small multiplicative baseline error (a forecast is never exact).
"""

from __future__ import annotations

import itertools

import numpy as np
import pandas as pd

from rootcause.leaves import additive_leaves, ratio_leaves

DIMENSIONS = {
    "device_type": ["desktop", "mobile", "tablet"],
    "os": ["iOS", "Android", "Windows", "macOS", "Linux"],
    "browser": ["Chrome", "Safari", "Firefox", "Edge"],
    "country": ["US", "GB", "DE", "FR", "CA", "AU", "NL", "ES"],
    "utm_campaign": ["none", "ig_sale", "google_cpc", "newsletter", "affiliate", "tiktok"],
}


def make_cube(
    causes: list[tuple[dict, float]] = (),
    *,
    kpi: str = "additive",
    total: float = 50_000.0,
    rate: float = 0.03,
    forecast_noise: float = 0.03,
    dimensions: dict | None = None,
    seed: int = 0,
) -> pd.DataFrame:
    """A leaf frame with the given ``causes`` (filters dict, relative change) applied.

    ``additive``: ``actual`` ~ Poisson(expected x (1 + change)) per leaf (``total`` expected in
    all). ``ratio``: ``total`` expected sessions; ``denominator`` ~ Poisson(expected_denominator)
    (traffic is NOT changed), ``numerator`` ~ Binomial(denominator, rate_leaf x (1 + change)).
    ``forecast_noise``: the expectation's multiplicative error per leaf (lognormal sigma; for
    ratios also on the expected rate), known to the noise model (``variance``).
    A leaf inside several causes takes the product of the changes.

    The frame is ready for ``Localizer``: ``actual``, ``expected``, ``denominator``, ``variance``
    (``additive_leaves`` with the baseline error; ``ratio_leaves`` from the exact leaf rates,
    whose raw columns ``numerator``, ``expected_numerator``, ``expected_denominator`` are kept).
    """
    dims = dimensions or DIMENSIONS
    rng = np.random.default_rng(seed)
    names = list(dims)
    grid = pd.DataFrame(list(itertools.product(*dims.values())), columns=names)
    share = np.ones(len(grid))
    rate_mult = np.ones(len(grid))
    for name, values in dims.items():
        w = rng.dirichlet(np.full(len(values), 1.5))
        share *= grid[name].map(dict(zip(values, w, strict=True))).to_numpy()
        rm = dict(zip(values, rng.lognormal(0.0, 0.2, len(values)), strict=True))
        rate_mult *= grid[name].map(rm).to_numpy()
    share /= share.sum()
    effect = np.ones(len(grid))
    for filters, change in causes:
        mask = np.ones(len(grid), dtype=bool)
        for k, val in filters.items():
            mask &= (grid[k] == val).to_numpy()
        effect[mask] *= 1.0 + change
    base = total * share
    error = np.exp(rng.normal(0.0, forecast_noise, len(grid)))
    out = grid.copy()
    if kpi == "additive":
        out["actual"] = rng.poisson(base * effect).astype(float)
        out["expected"] = base * error
        return additive_leaves(out, proportional_error=forecast_noise)
    if kpi == "ratio":
        leaf_rate = np.clip(rate * rate_mult, 0.0, 0.9)
        den = rng.poisson(base).astype(float)
        out["numerator"] = rng.binomial(den.astype(np.int64), np.clip(leaf_rate * effect, 0, 1))
        out["numerator"] = out["numerator"].astype(float)
        out["denominator"] = den
        out["expected_denominator"] = base * error
        rate_error = np.exp(rng.normal(0.0, forecast_noise, len(grid)))
        out["expected_numerator"] = base * error * leaf_rate * rate_error
        leaves = rate_cube_leaves(out)
        # the expected rate's own error (a forecast is never exact), in the noise model
        return leaves.assign(
            variance=leaves["variance"] + (forecast_noise * leaves["expected"]) ** 2
        )
    raise ValueError(f"kpi must be 'additive' or 'ratio', got {kpi!r}")


def rate_cube_leaves(cube: pd.DataFrame) -> pd.DataFrame:
    """(Re)derive a ratio cube's leaf columns from its raw counts (after editing them)."""
    return ratio_leaves(
        cube,
        numerator="numerator",
        denominator="denominator",
        history_numerator="expected_numerator",
        history_denominator="expected_denominator",
        prior_weight=0.0,
        history_error=False,
    )


def cohort_share(cube: pd.DataFrame, filters: dict, column: str) -> float:
    """Share of ``column`` inside the cohort ``filters``."""
    mask = np.ones(len(cube), dtype=bool)
    for k, val in filters.items():
        mask &= (cube[k] == val).to_numpy()
    return float(cube.loc[mask, column].sum() / cube[column].sum())
