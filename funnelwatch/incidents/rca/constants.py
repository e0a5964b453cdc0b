"""Dimensions, funnel stages, metrics and tuning constants of the incident root cause."""

from __future__ import annotations

from datetime import timedelta

LEAF_DIMENSIONS = ("device_type", "os", "browser", "country", "utm_campaign")
SESSION_DIMENSIONS = (*LEAF_DIMENSIONS, "utm_source", "utm_medium")
UNKNOWN_LABEL = {
    "device_type": "(unknown)",
    "os": "(unknown)",
    "browser": "(unknown)",
    "country": "(unknown)",
    "utm_source": "(none)",
    "utm_medium": "(none)",
    "utm_campaign": "(none)",
}
STAGES = (
    "sessions",
    "product_view",
    "add_to_cart",
    "checkout_start",
    "shipping_step",
    "payment_step",
    "review_step",
    "payment_attempt",
    "purchase",
)
COUNT_COLUMNS = (
    "payment_attempts",
    "payment_failures",
    "purchases",
    "revenue",
    "js_error_sessions",
    "events",
)


def stage_column(stage: str) -> str:
    return "sessions" if stage == "sessions" else f"{stage}_sessions"


CUBE_COLUMNS = tuple(stage_column(s) for s in STAGES) + COUNT_COLUMNS

# rate metric -> (numerator stage, denominator stage) of fct_cohort_metrics_hourly
RATE_METRICS = {
    "product_view_rate": ("product_view", "sessions"),
    "add_to_cart_rate": ("add_to_cart", "product_view"),
    "checkout_start_rate": ("checkout_start", "add_to_cart"),
    "shipping_step_rate": ("shipping_step", "checkout_start"),
    "payment_step_rate": ("payment_step", "shipping_step"),
    "review_step_rate": ("review_step", "payment_step"),
    "payment_attempt_rate": ("payment_attempt", "review_step"),
    "checkout_conversion_rate": ("purchase", "checkout_start"),
    "session_conversion_rate": ("purchase", "sessions"),
}
# metrics where up is bad (their funnel loss is a drop of payment_attempt -> purchase)
OTHER_RATE_METRICS = {
    "payment_failure_rate": ("payment_failures", "payment_attempts"),
    "js_error_session_rate": ("js_error_sessions", "sessions"),
}
ADDITIVE_METRICS = {
    "sessions": "sessions",
    "events": "events",
    "purchases": "purchases",
    "revenue": "revenue",
    "product_view_sessions": "product_view_sessions",
}
KNOWN_METRICS = (*RATE_METRICS, *OTHER_RATE_METRICS, *ADDITIVE_METRICS)

# which funnel steps a service's deploy can break (step = the numerator stage of a conversion)
SERVICE_STEPS = {
    "payment-widget": {"payment_step", "review_step", "payment_attempt", "purchase"},
    "payment": {"payment_attempt", "purchase"},
    "checkout": {"checkout_start", "shipping_step", "payment_step", "review_step"},
    "web": {"sessions", "product_view", "add_to_cart", "checkout_start"},
    "search": {"product_view", "add_to_cart"},
    "catalog": {"product_view", "add_to_cart"},
}
# funnel event types in order (tracking gaps: an earlier one stops while later ones continue)
TRACKED_EVENTS = (
    "product_view",
    "add_to_cart",
    "checkout_start",
    "checkout_step",
    "payment_attempt",
    "purchase",
)
EVENT_STAGE = {
    "product_view": "product_view",
    "add_to_cart": "add_to_cart",
    "checkout_start": "checkout_start",
    "checkout_step": "shipping_step",
    "payment_attempt": "payment_attempt",
    "purchase": "purchase",
}
PRIOR_WEIGHT = 20.0  # pseudo-denominators shrinking a leaf's history rate to its parent's
LOOKBACK_BEFORE = timedelta(hours=6)  # changes up to this long before the onset are candidates
ONSET_NORMAL_LLR = 3.0  # a stretch favouring "no change" by e^3 ends an older deviation
ONSET_MIN_GAIN = 3.0  # log-LR an onset before start must gain over start itself (else start)
# log-LR a second level must gain over one for the onset to move to where the deviation
# deepened (an earlier, milder deviation of the same cohort is another cause's or the mix's)
ONSET_SPLIT_GAIN = 6.0
ONSET_DECAY_HOURS = 6.0  # mild preference for changes nearer the estimated onset
BASELINE_ERROR = 0.05  # proportional error of a baseline, in every z below
RATIO_DRIFT = 0.01  # cohort-level proportional error of an expected conversion (drift)
ADDITIVE_DRIFT = 0.08  # ... of an expected count from the same hours of previous days
DIMENSION_PENALTY = 2.0  # z^2 a cohort must gain per extra dimension (multiple testing)
MAX_DIMENSIONS = None  # every combination of the leaf dimensions (5 dims: 31 cuboids)
MIN_REFINE_Z = 3.0  # a sub-cohort replaces the flagged cohort only when |z| >= this
ROOT_CAUSE_Z = 4.0  # |z| a cohort needs to be a root cause (and a further cause to be sought)
# a flagged cohort is a symptom of a cause when, the cause's effect taken out, what is left of
# its deviation is within this |z| (noise)
SYMPTOM_Z = 3.0
# naming ties between cohorts with identical leaves: campaign, os, browser, country, then device
DIMENSION_PREFERENCE = {"utm_campaign": 0, "os": 1, "browser": 2, "country": 3, "device_type": 4}

# -- which hypotheses can explain a change (compatibility before ranking) ----------------------
# A cause must start at most this long before the onset of the change (and not after its first
# hour: the onset is an hour, a change inside it can have started it). An older one is kept
# only when nothing else is compatible and the change-point curve says the loss may have begun
# at its time (its log-likelihood within STALE_MAX_LLR_LOST of the best onset's).
CAUSE_WINDOW = timedelta(hours=6)
CAUSE_GRACE = timedelta(hours=1)
STALE_MAX_LLR_LOST = 2.0
# a deploy limited to a platform explains a cohort only when most of the cohort's sessions are
# on that platform (an iOS app deploy cannot explain a desktop drop)
MIN_COHORT_OVERLAP = 0.5
# words of a deploy's service name or description -> the sessions it can touch; a deploy naming
# none of them (web, checkout, payment-widget ...) serves every platform
PLATFORM_TOKENS = {
    "ios": ("os", "iOS"),
    "iphone": ("os", "iOS"),
    "ipad": ("os", "iOS"),
    "android": ("os", "Android"),
    "desktop": ("device_type", "desktop"),
    "tablet": ("device_type", "tablet"),
}
# steps a payment provider's failures can break, and those bot traffic moves (bots view and leave)
PROVIDER_STEPS = {"payment_attempt", "purchase"}
BOT_STEPS = {"sessions", "product_view", "add_to_cart"}
BOT_METRICS = {
    "sessions",
    "events",
    "product_view_sessions",
    "product_view_rate",
    "add_to_cart_rate",
    "session_conversion_rate",
    "js_error_session_rate",
}
# planned traffic: a running campaign whose cohort was as far above its daily baseline at the
# same hours a week before (a weekly send) within this proportional tolerance
WEEKLY_MATCH = 0.25
# a stock-out empties a category's add-to-carts, not only its rate: at most this share of the
# category's average hourly add-to-carts over the window (bots viewing products and never
# adding dilute the rate while the humans' carts continue at ~1x)
STOCK_OUT_MAX_ATC_RATIO = 0.5
# the reference campaigns' channel of e-mail sends (compared lower-case)
EMAIL_CHANNEL = "email"
SURGE_RATIO = 1.3  # sessions at least this much above the baseline make a surge
# the traffic metrics a holiday explains a change of, in either direction
HOLIDAY_METRICS = frozenset({"sessions", "events", "product_view_sessions"})
# how long after a campaign's end the loss of its traffic is still its end (the hour-of-week
# baseline remembers a week of its sends)
CAMPAIGN_END_MEMORY = timedelta(days=8)
# a loss in a campaign's own traffic, which did not exist before its launch, is the campaign's
# when the launch came at most this long before the onset (detection needs hours of its traffic)
CAMPAIGN_LAUNCH_WINDOW = timedelta(hours=48)
