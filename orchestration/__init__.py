"""The Dagster side of funnelwatch (code location: orchestration.definitions).

Dagster warns at import that a few features we use are beta or preview; we chose them on
purpose (chosen_features.py), so those warnings, and only those, are filtered here, before any
module of this package defines an asset, unless `funnelwatch --verbose` asked for everything.
"""

from orchestration.chosen_features import ignore_chosen_feature_warnings

ignore_chosen_feature_warnings()
