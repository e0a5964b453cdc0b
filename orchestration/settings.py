"""Settings resources of the domains: what each domain's assets are configured with.

They sit below both the asset modules, which take them as resources, and
`orchestration/resources.py`, whose `default_resources` builds them; neither imports the other
for them.
"""

from typing import Literal

import dagster as dg

from funnelwatch.privacy.retention import DEFAULT_RETENTION_DAYS


class DetectionSettings(dg.ConfigurableResource):
    """One configuration for every series (no per-scenario tuning)."""

    sensitivity: str = "medium"
    use_prophet: bool = True
    prophet_top_n: int = 50
    history_days: int = 28
    # every cohort of up to three dimensions that is not a series, by a subset scan over the
    # leaf table, and the share of the daily false-alarm budget it may spend
    cube_scan: bool = True
    cube_scan_false_alarms_per_day: float = 0.1

    def make_ensemble(self, holidays):
        from detectors import Ensemble  # pandas/numpy/pyod/prophet: imported when a run needs it

        return Ensemble(
            sensitivity=self.sensitivity, use_prophet=self.use_prophet,
            prophet_top_n=self.prophet_top_n, holidays=holidays,
        )


class FastLaneSettings(dg.ConfigurableResource):
    """What the fast lane watches and how strictly (funnelwatch.fastlane.config)."""

    min_share: float = 0.15
    max_cohorts: int = 10
    alpha: float = 1e-5

    def config(self):
        from funnelwatch.fastlane.config import FastLaneConfig

        return FastLaneConfig(min_share=self.min_share, max_cohorts=self.max_cohorts,
                              alpha=self.alpha)


class RetentionSettings(dg.ConfigurableResource):
    """How long raw, per-person data is kept (the marts, which hold no ids, are kept)."""

    days: int = DEFAULT_RETENTION_DAYS
    # "newest_hour": days before the end of the newest loaded hour (the warehouse's clock;
    # a replay or an imported historical data set is not wiped on load). "now": wall clock.
    relative_to: Literal["newest_hour", "now"] = "newest_hour"
    # Also delete the landing folders (date=/hour=) of expired hours: they hold the RAW ids.
    delete_landing: bool = True
    # With relative_to="now": evaluate as of this ISO time instead of the wall clock (replays,
    # tests). Empty: the current time.
    as_of: str | None = None
