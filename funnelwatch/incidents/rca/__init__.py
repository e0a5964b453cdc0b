"""Root-cause analysis of one incident: where, which funnel step, what changed, impact.

``analyse_incident(con, metric=..., cohort=..., start=..., end=...)`` reads the warehouse (read
only, parameterised SQL) and answers, for the incident's anomalous span ``[start, end)``:

* **where**: the smallest dimension-value combinations that explain the deviation, from
  expected vs actual at the leaves: ``rootcause.Localizer``, an exhaustive scan of every cohort
  of any depth by its aggregated z with explaining-away for several causes (ratio KPIs for
  conversions, additive for counts; docs/rootcause.md "Incident root cause"). Leaves are
  device_type x os x browser x country x utm_campaign (utm_source / utm_medium are
  near-duplicates of utm_campaign and are left out so the campaign is named, not its source).
  Payment-provider failures are localised on ``payment_provider`` (raw.events, not a session
  dimension), stock-outs on ``category`` (intermediate.int_category_hourly).
* **funnel_step**: the step-to-step conversion (``add_to_cart`` = add_to_cart / product_view
  sessions ...) where the loss starts.
* **onset**: when the deviation began, which for a small drop is hours before ``start`` (the
  first hour detection flagged): a change point in the localised cohort's conversion at the
  loss's step, searched up to ``lookback_hours`` back (``estimate_onset``); ``start`` when the
  data do not show an earlier onset clearly.
* **hypotheses**: deploys, campaign starts, JS error codes, payment providers, bot traffic,
  stock-outs and tracking gaps, ranked by time (how well a change at that time explains the
  onset) and cohort / step match, with the share of the deviation each explains.
* **impact**: expected minus actual orders per hour from the onset, times the average order
  value.

Expected values: ratio KPIs use the leaf's pooled rate over the ``history_days`` before
``start``, shrunk towards the flagged cohort's rate (20 pseudo-denominators); additive KPIs
use the same hours of the day over the ``history_days`` before (mean per day).
"""

from funnelwatch.incidents.rca.analyse import (
    analyse_incident,
    cohort_closures,
    cohort_deviation,
    explain_points,
    explained_by_planned,
    localise_change,
)
from funnelwatch.incidents.rca.constants import (
    ADDITIVE_DRIFT,
    ADDITIVE_METRICS,
    BASELINE_ERROR,
    CAUSE_WINDOW,
    COUNT_COLUMNS,
    CUBE_COLUMNS,
    DIMENSION_PENALTY,
    DIMENSION_PREFERENCE,
    EVENT_STAGE,
    KNOWN_METRICS,
    LEAF_DIMENSIONS,
    LOOKBACK_BEFORE,
    MAX_DIMENSIONS,
    MIN_REFINE_Z,
    ONSET_DECAY_HOURS,
    ONSET_MIN_GAIN,
    ONSET_NORMAL_LLR,
    OTHER_RATE_METRICS,
    PRIOR_WEIGHT,
    RATE_METRICS,
    RATIO_DRIFT,
    ROOT_CAUSE_Z,
    SERVICE_STEPS,
    SESSION_DIMENSIONS,
    STAGES,
    SYMPTOM_Z,
    TRACKED_EVENTS,
    UNKNOWN_LABEL,
    stage_column,
)
from funnelwatch.incidents.rca.context import deploys_between
from funnelwatch.incidents.rca.hypotheses import NO_KNOWN_CAUSE, deploy_platform

__all__ = [
    "ADDITIVE_DRIFT",
    "ADDITIVE_METRICS",
    "BASELINE_ERROR",
    "CAUSE_WINDOW",
    "COUNT_COLUMNS",
    "CUBE_COLUMNS",
    "DIMENSION_PENALTY",
    "DIMENSION_PREFERENCE",
    "EVENT_STAGE",
    "KNOWN_METRICS",
    "LEAF_DIMENSIONS",
    "LOOKBACK_BEFORE",
    "MAX_DIMENSIONS",
    "MIN_REFINE_Z",
    "NO_KNOWN_CAUSE",
    "ONSET_DECAY_HOURS",
    "ONSET_MIN_GAIN",
    "ONSET_NORMAL_LLR",
    "OTHER_RATE_METRICS",
    "PRIOR_WEIGHT",
    "RATE_METRICS",
    "RATIO_DRIFT",
    "ROOT_CAUSE_Z",
    "SERVICE_STEPS",
    "SESSION_DIMENSIONS",
    "STAGES",
    "SYMPTOM_Z",
    "TRACKED_EVENTS",
    "UNKNOWN_LABEL",
    "analyse_incident",
    "cohort_closures",
    "cohort_deviation",
    "deploy_platform",
    "deploys_between",
    "explain_points",
    "explained_by_planned",
    "localise_change",
    "stage_column",
]
