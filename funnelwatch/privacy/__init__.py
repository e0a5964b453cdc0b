"""Privacy controls: retention of raw events, erasure of one person, the minimum cohort size,
and the pseudonymisation keys (current and retired). See docs/privacy.md.

- `retention.apply_retention`: delete per-person rows (and landing folders) older than N days;
  the marts (aggregates, no ids) are kept.
- `erasure.erase_user`: remove one person everywhere, rebuild the marts of their hours, record it.
- `small_cohorts` / `mask_cohort`: reports and alerts never show a cohort smaller than
  `min_cohort_sessions()` sessions.
- `pseudonymization_keys`: the current key and the retired ones (key rotation).
"""

from __future__ import annotations

import os
from datetime import datetime

import duckdb

from funnelwatch.ingest.pseudonymize import DEMO_KEY

KEY_ENV_VAR = "FUNNELWATCH_PSEUDONYMIZATION_KEY"
OLD_KEYS_ENV_VAR = "FUNNELWATCH_PSEUDONYMIZATION_OLD_KEYS"
MIN_COHORT_ENV_VAR = "FUNNELWATCH_MIN_COHORT_SESSIONS"
DEFAULT_MIN_COHORT_SESSIONS = 20
PRIVACY_SCHEMA = "privacy"
ERASURES_TABLE = f"{PRIVACY_SCHEMA}.erasures"

# Metric of fct_cohort_metrics_hourly that measures a cohort's size: sessions, except for
# category cohorts, which are measured in product-view sessions.
_SIZE_METRICS = ("sessions", "product_view_sessions")


def current_key() -> tuple[str, bool]:
    """(key, is_demo_key): PseudonymizerResource's rule (env var, else the demo key)."""
    value = os.environ.get(KEY_ENV_VAR, "")
    if value and value != DEMO_KEY:
        return value, False
    return DEMO_KEY, True


def pseudonymization_keys() -> list[str]:
    """Every key an id may have been hashed with: the current one first, then the retired keys
    of FUNNELWATCH_PSEUDONYMIZATION_OLD_KEYS (comma-separated), without repeats. Keep a retired
    key listed for at least the retention period after a rotation (docs/privacy.md)."""
    keys = [current_key()[0]]
    for old in os.environ.get(OLD_KEYS_ENV_VAR, "").split(","):
        old = old.strip()
        if old and old not in keys:
            keys.append(old)
    return keys


def min_cohort_sessions() -> int:
    """The minimum cohort size reports and alerts may show (env FUNNELWATCH_MIN_COHORT_SESSIONS,
    default 20)."""
    raw = os.environ.get(MIN_COHORT_ENV_VAR, "").strip()
    if not raw:
        return DEFAULT_MIN_COHORT_SESSIONS
    value = int(raw)
    if value < 1:
        raise ValueError(f"{MIN_COHORT_ENV_VAR} must be >= 1, got {value}")
    return value


def mask_cohort(cohort: str, sessions: float | None, minimum: int | None = None) -> str:
    """The cohort's label if it has at least `minimum` sessions, else a masked label that says
    why (the cohort's name and numbers must then not be shown)."""
    minimum = min_cohort_sessions() if minimum is None else minimum
    if cohort == "all" or (sessions is not None and sessions >= minimum):
        return cohort
    return f"(cohort of fewer than {minimum} sessions)"


def is_small(sessions: float | None, minimum: int | None = None) -> bool:
    minimum = min_cohort_sessions() if minimum is None else minimum
    return sessions is None or sessions < minimum


def small_cohorts(
    con: duckdb.DuckDBPyConnection,
    start: datetime,
    end: datetime,
    min_sessions: int | None = None,
    per_hour: bool = True,
    table: str = "marts.fct_cohort_metrics_hourly",
) -> dict[str, float]:
    """Cohorts too small to show for [start, end): cohort -> its size.

    With `per_hour` (what an hourly chart or table shows), a cohort is small when its smallest
    hourly session count in the window is below the minimum; otherwise when its total over the
    window is. `table` may be the analyst snapshot's `fct_cohort_metrics_hourly`. The overall
    store (`all`) is never masked."""
    minimum = min_cohort_sessions() if min_sessions is None else min_sessions
    agg = "min" if per_hour else "sum"
    rows = con.execute(
        f"""SELECT cohort, {agg}(hour_size) AS size FROM (
              SELECT cohort, event_hour, sum(value) AS hour_size FROM {table}
              WHERE metric IN {_SIZE_METRICS} AND event_hour >= $s AND event_hour < $e
              GROUP BY cohort, event_hour)
            WHERE cohort != 'all' GROUP BY cohort HAVING {agg}(hour_size) < $m ORDER BY cohort""",
        {"s": start, "e": end, "m": minimum},
    ).fetchall()
    return {cohort: size for cohort, size in rows}


__all__ = [
    "DEFAULT_MIN_COHORT_SESSIONS",
    "ERASURES_TABLE",
    "current_key",
    "is_small",
    "mask_cohort",
    "min_cohort_sessions",
    "pseudonymization_keys",
    "small_cohorts",
]
