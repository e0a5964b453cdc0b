"""Dagster features we use although Dagster marks them beta or preview, and the warning each
one raises at import (filtered unless `funnelwatch --verbose`; other warnings still show)."""

from __future__ import annotations

import warnings

import dagster as dg

from funnelwatch.verbosity import verbose

# (warning class, start of its message, why we use the feature)
CHOSEN_FEATURES = (
    (dg.BetaWarning, r"Parameter `backfill_policy` of function",
     ("BackfillPolicy.single_run: history loads as one run, not one run per hour "
      "(partitions.py)")),
    (dg.PreviewWarning, r"Specifying a partitions_def on an AssetCheckSpec",
     ("hourly-partitioned blocking asset checks: the data-quality gate per hour "
      "(quality/checks.py)")),
)


def ignore_chosen_feature_warnings() -> None:
    if verbose():
        return
    for category, message, _why in CHOSEN_FEATURES:
        warnings.filterwarnings("ignore", message=message, category=category)
