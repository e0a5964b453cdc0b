"""What the fast lane watches and how strictly (one frozen object, passed down)."""

from __future__ import annotations

from dataclasses import dataclass

# Session attributes every event carries; cohorts of the fast lane are single values of these.
SESSION_DIMENSIONS = ("device_type", "os", "browser", "country")
# Payment attempts also carry their provider: payment_failure_rate is watched per provider.
PROVIDER_DIMENSION = "payment_provider"
# Names shared with the hourly lane (marts.fct_cohort_metrics_hourly), so an incident the
# fast lane opens is the one the hourly lane later updates and resolves.
METRICS = ("checkout_conversion_rate", "payment_failure_rate", "purchases")
# Store-wide share of events with a session field null, per slot: not scored, the inputs of
# the data-quality guard (funnelwatch/fastlane/quality.py). "null_rate:country", ...
NULL_RATE_PREFIX = "null_rate:"


@dataclass(frozen=True)
class FastLaneConfig:
    slot_minutes: int = 5
    # Cohorts: the whole store plus the largest single-dimension cohorts, those with at least
    # `min_share` of the store's checkout starts over `cohort_days`, at most `max_cohorts`.
    min_share: float = 0.15
    max_cohorts: int = 10
    cohort_days: int = 7
    # Same slot on these earlier days is the baseline (yesterday..a week, same weekday 2-3
    # weeks back); windows of 1, 3, 6, 12 slots (5 to 60 minutes) are tested.
    lag_days: tuple[int, ...] = (1, 2, 3, 4, 5, 6, 7, 14, 21)
    windows: tuple[int, ...] = (1, 3, 6, 12)
    # Per (series, slot) after the Bonferroni over windows. 1e-5 gave no false flags in 7
    # quiet days of 30 noisy synthetic series (bench/fast_lane.py); 1e-4 gave 0.6 a day.
    alpha: float = 1e-5
    min_baseline_days: int = 3
    min_expected: float = 3.0
    # Data-quality guard, as the hourly lane's gate (funnelwatch.quality.QualitySettings): a
    # session field null in more than this share of the store's events over the longest
    # window holds back the flags of that field's cohorts (with at least `min_guard_events`).
    max_null_rate: float = 0.05
    min_guard_events: int = 100

    def __post_init__(self):
        if 60 % self.slot_minutes or self.slot_minutes <= 0:
            raise ValueError(f"slot_minutes must divide 60, got {self.slot_minutes}")
        if not 0 < self.min_share <= 1:
            raise ValueError(f"min_share must be in (0, 1], got {self.min_share}")

    @property
    def history_days(self) -> int:
        return max(self.lag_days) + 1

    def detector(self):
        from detectors.slots import SameSlotTest

        return SameSlotTest(slot_minutes=self.slot_minutes, windows=self.windows,
                            lag_days=self.lag_days, alpha=self.alpha,
                            min_baseline_days=self.min_baseline_days,
                            min_expected=self.min_expected)
