"""Configuration shared by all detectors: metric directions, sensitivity, volume, cold start.

One configuration for all series (no per-series tuning). The single ``sensitivity`` knob
(0..1, or 'low' / 'medium' / 'high' = 0.25 / 0.5 / 0.75) maps to every detector's threshold
through :func:`thresholds`.
"""

from __future__ import annotations

from dataclasses import dataclass

from scipy import stats

SEP = "|"  # series_id = f"{metric}|{cohort}"
STORE_COHORT = "all"  # the cohort of the whole store's series

COUNT_METRICS = ("sessions", "events", "purchases", "revenue", "product_view_sessions")
RATE_METRICS = (
    "product_view_rate",
    "add_to_cart_rate",
    "checkout_start_rate",
    "shipping_step_rate",
    "payment_step_rate",
    "review_step_rate",
    "payment_attempt_rate",
    "checkout_conversion_rate",
    "session_conversion_rate",
    "payment_failure_rate",
    "js_error_session_rate",
)

# Which side of a deviation raises an alert. 'down' = only drops, 'up' = only rises,
# 'both' = either side, 'none' = scored for context, never an alert. Unknown metrics (and the
# NAB univariate mode) use DEFAULT_DIRECTION.
METRIC_DIRECTIONS: dict[str, str] = {
    # traffic: a drop is an outage, a rise is a bot / traffic spike
    "sessions": "both",
    # raw event volume is heavy-tailed (one bot or one keen shopper fires hundreds) and is the
    # data-quality gate's business (volume against previous weeks); sessions carry traffic
    "events": "none",
    # business outcomes: only drops hurt
    "purchases": "down",
    # revenue is order count x order value: the heavy tail of order values makes an hour of
    # zero revenue in a small cohort ordinary; purchases (a count) carries the signal
    "revenue": "none",
    "product_view_sessions": "down",
    # funnel step and conversion rates: only drops hurt
    "product_view_rate": "down",
    "add_to_cart_rate": "down",
    "checkout_start_rate": "down",
    "shipping_step_rate": "down",
    "payment_step_rate": "down",
    "review_step_rate": "down",
    "payment_attempt_rate": "down",
    "checkout_conversion_rate": "down",
    "session_conversion_rate": "down",
    # error rates: only rises hurt
    "payment_failure_rate": "up",
    "js_error_session_rate": "up",
}
DEFAULT_DIRECTION = "both"

# Minimum volume: a rate point whose denominator is below MIN_DENOMINATOR, or a count point whose
# max(observed, expected) is below MIN_COUNT, is never an alert (severity 0, reason 'low volume').
MIN_DENOMINATOR = 30
MIN_COUNT = 20

# Cold start (hours of history a series has before the scored point):
# < COLD_START_HOURS  -> no alert (severity 0, reason 'cold start');
# < WARM_UP_HOURS     -> baselines only (no Prophet) with bands WARM_UP_BAND_FACTOR wider.
COLD_START_HOURS = 48
WARM_UP_HOURS = 168
WARM_UP_BAND_FACTOR = 1.5

# On a holiday or promotion day a count may rise up to CALENDAR_LIFT x its usual level without
# an alert (Black Friday is ~2.5x sessions, ~3.3x events); beyond that it is still an alert (a
# bot spike is ~5x sessions and more events).
CALENDAR_LIFT = 4.0

# Practical significance of counts (sessions, events, purchases, revenue): an alert needs a rise
# of at least MIN_COUNT_RISE or a drop of at least MIN_COUNT_DROP relative to the expected level.
MIN_COUNT_RISE = 0.5
MIN_COUNT_DROP = 0.25

# Sustained shifts: the rate test is also run on the last RATE_WINDOW_HOURS hours pooled.
RATE_WINDOW_HOURS = 3

# The sequential test's false-alarm budget: alerts per day over ALL monitored series (issue 15's
# aim), split over the series by Bonferroni (detectors/sequential.py, alarm_pvalue).
FALSE_ALARMS_PER_DAY = 0.3

SENSITIVITY_LEVELS = {"low": 0.25, "medium": 0.5, "high": 0.75}


def make_series_id(metric: str, cohort: str) -> str:
    return f"{metric}{SEP}{cohort}"


def split_series_id(series_id: str) -> tuple[str, str]:
    """(metric, cohort) from 'metric|cohort'; a plain id is (id, id)."""
    if SEP in series_id:
        metric, cohort = series_id.split(SEP, 1)
        return metric, cohort
    return series_id, series_id


def metric_direction(metric: str) -> str:
    return METRIC_DIRECTIONS.get(metric, DEFAULT_DIRECTION)


def sensitivity_value(sensitivity: float | str) -> float:
    if isinstance(sensitivity, str):
        try:
            return SENSITIVITY_LEVELS[sensitivity.lower()]
        except KeyError:
            raise ValueError(
                f"sensitivity must be 0..1 or one of {list(SENSITIVITY_LEVELS)}, got {sensitivity!r}"
            ) from None
    s = float(sensitivity)
    if not 0.0 <= s <= 1.0:
        raise ValueError(f"sensitivity must be within 0..1, got {sensitivity}")
    return s


@dataclass(frozen=True)
class Thresholds:
    """Every detector's threshold, derived from one sensitivity value s in 0..1."""

    sensitivity: float
    z: float  # robust-z / EWMA-z / Prophet band half-width, in standard deviations
    alpha: float  # p-value threshold of the rate-aware tests
    cusum_k: float  # CUSUM allowance (sigma units)
    cusum_h: float  # CUSUM decision interval (sigma units)
    interval_width: float  # Prophet interval width, = coverage of +-z under a normal
    mv_alpha: float  # empirical p-value threshold of the multivariate detector


def thresholds(sensitivity: float | str = "medium") -> Thresholds:
    """Map sensitivity s (0 = fewest alerts, 1 = most) to thresholds.

    z = 5 - 3 s (medium 3.5), alpha = 10^-(1.5 + 5 (1 - s)) (medium 1e-4),
    CUSUM h = 2 + 6 (1 - s) with k = 0.5, Prophet interval width = 2 Phi(z) - 1,
    multivariate alpha = 10^-(2 + 4 (1 - s)).
    """
    s = sensitivity_value(sensitivity)
    z = 5.0 - 3.0 * s
    return Thresholds(
        sensitivity=s,
        z=z,
        alpha=10 ** (-(1.5 + 5.0 * (1.0 - s))),
        cusum_k=0.5,
        cusum_h=2.0 + 6.0 * (1.0 - s),
        interval_width=float(min(2 * stats.norm.cdf(z) - 1, 0.9999)),
        mv_alpha=10 ** (-(2.0 + 4.0 * (1.0 - s))),
    )


def log10p(p):
    """-log10(p) with p clipped away from 0 (the scale of the statistical scores)."""
    import numpy as np

    return -np.log10(np.clip(np.asarray(p, dtype=float), 1e-300, 1.0))


__all__ = [
    "CALENDAR_LIFT",
    "COLD_START_HOURS",
    "COUNT_METRICS",
    "DEFAULT_DIRECTION",
    "FALSE_ALARMS_PER_DAY",
    "METRIC_DIRECTIONS",
    "MIN_COUNT",
    "MIN_COUNT_DROP",
    "MIN_COUNT_RISE",
    "MIN_DENOMINATOR",
    "RATE_METRICS",
    "RATE_WINDOW_HOURS",
    "WARM_UP_BAND_FACTOR",
    "WARM_UP_HOURS",
    "Thresholds",
    "make_series_id",
    "metric_direction",
    "sensitivity_value",
    "split_series_id",
    "thresholds",
]
