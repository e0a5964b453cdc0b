"""Anomaly detectors for funnelwatch (pure Python: no Dagster, no I/O).

Every detector follows one contract, as PyOD / scikit-learn do: configure in ``__init__``,
``fit(history)``, then ``score(current)`` on LONG frames (``series_id``, ``ts``, ``value``, and for
funnel metrics ``numerator`` / ``denominator``). ``score`` returns a frame aligned to ``current``
with ``expected``, ``lower``, ``upper``, ``score``, ``p_value``, ``direction``, ``is_anomaly``,
``reason``. See docs/detectors.md.

``SubsetScan`` is the one detector over a *cube* instead of series: ``fit`` / ``score`` take the
leaf table (one row per hour and combination of every dimension, with count columns) and
``score`` returns one row per alerting cohort, not one per input row.
"""

from detectors.base import SCORE_COLUMNS, Detector, NotFittedError, validate_frame
from detectors.baselines import EWMABaseline, HourOfWeekBaseline
from detectors.changepoint import CUSUMDetector
from detectors.config import (
    METRIC_DIRECTIONS,
    Thresholds,
    make_series_id,
    split_series_id,
    thresholds,
)
from detectors.ensemble import ENSEMBLE_COLUMNS, Ensemble, score_streaming
from detectors.multivariate import MultivariateDetector
from detectors.prophet_detector import ProphetDetector
from detectors.stats import CountTest, RateTest, betabinomial_pvalue, binomial_pvalue, negbin_pvalue
from detectors.subset_scan import SubsetScan

__all__ = [
    "ENSEMBLE_COLUMNS",
    "METRIC_DIRECTIONS",
    "SCORE_COLUMNS",
    "CUSUMDetector",
    "CountTest",
    "Detector",
    "EWMABaseline",
    "Ensemble",
    "HourOfWeekBaseline",
    "MultivariateDetector",
    "NotFittedError",
    "ProphetDetector",
    "RateTest",
    "SubsetScan",
    "Thresholds",
    "betabinomial_pvalue",
    "binomial_pvalue",
    "from_mart",
    "make_series_id",
    "negbin_pvalue",
    "score_streaming",
    "split_series_id",
    "thresholds",
    "validate_frame",
]


def from_mart(mart):
    """Rows of ``marts.fct_cohort_metrics_hourly`` (event_hour, metric, cohort, numerator,
    denominator, value) -> the detectors' long frame (series_id = 'metric|cohort')."""
    import pandas as pd

    return pd.DataFrame(
        {
            "series_id": mart["metric"].astype(str) + "|" + mart["cohort"].astype(str),
            "metric": mart["metric"].astype(str),
            "cohort": mart["cohort"].astype(str),
            "ts": mart["event_hour"],
            "value": mart["value"],
            "numerator": mart["numerator"],
            "denominator": mart["denominator"],
        },
        index=mart.index,
    )
