"""Leaf frames for the localiser: validation, and the noise variance of count and rate leaves.

A leaf is one combination of dimension values (device_type x os x browser x ...) with, for the
window under study, ``actual`` and ``expected`` (counts: orders, sessions, revenue; for a rate
KPI the numerator: purchases), ``denominator`` (for a rate KPI the leaf's actual denominator,
e.g. checkout sessions, so ``expected = expected rate x denominator``; 1 for additive KPIs) and
``variance`` (the noise variance of ``actual - expected`` when nothing is wrong).
"""

from __future__ import annotations

import numpy as np
import pandas as pd

LEAF_COLUMNS = ("actual", "expected", "denominator", "variance")


def additive_leaves(
    frame: pd.DataFrame,
    *,
    actual: str = "actual",
    expected: str = "expected",
    history_periods: float | None = None,
    proportional_error: float = 0.0,
) -> pd.DataFrame:
    """Leaves of a count KPI (orders, sessions, revenue): Poisson variance.

    ``variance = expected x (1 + 1 / history_periods) + (proportional_error x expected)^2``: the
    hour's Poisson noise, the error of an expectation that is a mean over ``history_periods``
    earlier periods (None: exact), and a leaf-level proportional baseline error.
    """
    a = _numeric(frame, actual).clip(min=0)
    e = _numeric(frame, expected).clip(min=0)
    hist = 0.0 if history_periods is None else 1.0 / float(history_periods)
    out = frame.drop(columns=[c for c in LEAF_COLUMNS if c in frame.columns])
    out = out.assign(
        actual=a,
        expected=e,
        denominator=1.0,
        variance=e * (1.0 + hist) + (float(proportional_error) * e) ** 2,
    )
    return out


def ratio_leaves(
    frame: pd.DataFrame,
    *,
    numerator: str,
    denominator: str,
    history_numerator: str,
    history_denominator: str,
    prior_weight: float = 20.0,
    history_error: bool = True,
) -> pd.DataFrame:
    """Leaves of a rate KPI (conversion = sum numerators / sum denominators): binomial variance.

    The leaf's expected rate is its history rate ``history_numerator / history_denominator``
    shrunk towards the parent's with ``prior_weight`` pseudo-denominators (sparse leaves);
    ``expected = rate x denominator`` (the numerator the leaf would have had at its usual rate
    with the traffic it actually got, so a traffic change alone is no cause; a surge of traffic
    that does not convert is). ``variance = d r (1 - r) (1 + d / (history_d + prior_weight))``:
    the hour's binomial noise plus, with ``history_error``, the error of the estimated rate.
    Numerators are clipped to their denominators (session-hour counting guard); leaves
    without denominator are dropped (they cannot move a rate).
    """
    d = _numeric(frame, denominator)
    n = np.minimum(_numeric(frame, numerator), d)
    hd = _numeric(frame, history_denominator)
    hn = np.minimum(_numeric(frame, history_numerator), hd)
    if hd.sum() <= 0 or hn.sum() <= 0:
        raise ValueError(
            f"no history for the rate: {history_numerator!r} / {history_denominator!r} sum to 0"
        )
    parent = hn.sum() / hd.sum()
    w = float(prior_weight)
    rate = np.where(hd + w > 0, (hn + w * parent) / np.where(hd + w > 0, hd + w, 1.0), parent)
    extra = d / (hd + w) if history_error else 0.0
    out = frame.drop(columns=[c for c in LEAF_COLUMNS if c in frame.columns])
    out = out.assign(
        actual=n,
        expected=rate * d,
        denominator=d,
        variance=d * rate * (1.0 - rate) * (1.0 + extra),
    )
    return out[out["denominator"] > 0]


def validate_leaves(leaves, dimensions) -> tuple[list[str], dict]:
    """Checked dimensions and the value columns as float arrays; ValueError on bad input."""
    if not isinstance(leaves, pd.DataFrame):
        raise ValueError(  # noqa: TRY004 - one exception type for every input problem
            f"leaves must be a pandas DataFrame, got {type(leaves).__name__}"
        )
    if isinstance(dimensions, str) or not dimensions:
        raise ValueError("dimensions must be a non-empty list of column names")
    dimensions = list(dimensions)
    if len(set(dimensions)) != len(dimensions):
        raise ValueError(f"dimensions has duplicates: {dimensions}")
    overlap = [d for d in dimensions if d in LEAF_COLUMNS]
    if overlap:
        raise ValueError(f"value column(s) {overlap} cannot be dimensions")
    required = ["actual", "expected"]
    missing = [c for c in [*dimensions, *required] if c not in leaves.columns]
    if missing:
        hint = ""
        if "expected" in missing:
            hint = " (no expected values: derive them from history first, e.g. ratio_leaves)"
        raise ValueError(f"leaves is missing column(s) {missing}{hint}; has {list(leaves.columns)}")
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
    values = {}
    for col in LEAF_COLUMNS:
        if col not in leaves.columns:
            continue
        x = _numeric(leaves, col)
        if not np.isfinite(x).all():
            raise ValueError(f"column {col!r} has NaN or infinite values")
        if (x < 0).any():
            raise ValueError(f"column {col!r} has negative values")
        values[col] = x
    values.setdefault("denominator", np.ones(len(leaves)))
    # without a variance column: Poisson (variance = expected), the count KPIs' noise
    values.setdefault("variance", values["expected"].copy())
    if values["expected"].sum() <= 0:
        raise ValueError("expected sums to 0: no baseline to compare the actual values with")
    if all(leaves[d].nunique() < 2 for d in dimensions):
        raise ValueError(
            "the cube has a single cohort (every dimension has one value): nothing to localise"
        )
    return dimensions, values


def _numeric(frame: pd.DataFrame, col: str) -> np.ndarray:
    if col not in frame.columns:
        raise ValueError(f"column {col!r} is missing; has {list(frame.columns)}")
    try:
        return pd.to_numeric(frame[col], errors="raise").to_numpy(dtype=float)
    except (ValueError, TypeError) as exc:
        raise ValueError(f"column {col!r} is not numeric: {exc}") from exc
