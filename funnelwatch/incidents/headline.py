"""The alert's first line, the one a person can act on, for every channel:

    checkout conversion -18% on iOS Safari x ig_sale since 14:00 UTC, ~40 orders/h lost,
    likely cause: deploy payment-widget 1.13.2 at 13:52 (explains 92%)

Built from an incident row (``incidents.incidents``: metric, cohort, started_at, where_cohort,
top_cause, lost_orders, rca) and its root cause (``rca``, the ``analyse_incident`` result, a dict
or its JSON). Every part is left out when the data for it are missing, except the cause: "no
known cause" when root cause found none (or has not run).
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping

import pandas as pd

from funnelwatch.incidents.rca.constants import RATE_METRICS, STAGES
from funnelwatch.incidents.rca.hypotheses import NO_KNOWN_CAUSE
from rootcause import parse_cohort

# the platform of a cohort reads as one phrase ("iOS Safari"), the other dimensions join with x
PLATFORM_DIMENSIONS = ("device_type", "os", "browser")
# signatures are seen in the window itself: their time says nothing a person can act on
UNTIMED_KINDS = {"bot_traffic", "tracking", "stock_out", "none"}


def _rca(incident: Mapping) -> dict:
    rca = incident.get("rca")
    if isinstance(rca, str):
        try:
            rca = json.loads(rca)
        except ValueError:
            return {}
    return rca if isinstance(rca, dict) else {}


def _num(value) -> float | None:
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    return float(value) if math.isfinite(value) else None


def _first(items) -> dict:
    if isinstance(items, list) and items and isinstance(items[0], Mapping):
        return dict(items[0])
    return {}


def metric_label(metric: str) -> str:
    """``checkout_conversion_rate`` -> ``checkout conversion``."""
    name = metric.removesuffix("_rate")
    return name.replace("_", " ")


def cohort_label(cohort: str | None) -> str:
    """``browser=Safari&os=iOS&utm_campaign=ig_sale`` -> ``iOS Safari x ig_sale``; ``all`` ->
    ``the whole store``."""
    if not cohort or cohort == "all":
        return "the whole store"
    try:
        filters = parse_cohort(cohort)
    except ValueError:
        return cohort
    platform = " ".join(str(filters.pop(d)) for d in PLATFORM_DIMENSIONS if d in filters)
    parts = ([platform] if platform else []) + [str(v) for _, v in sorted(filters.items())]
    return " x ".join(parts) or "the whole store"


def metric_change(metric: str, rca: Mapping) -> float | None:
    """The flagged metric's relative change in the localised cohort: for a conversion, the
    product of its step conversions in ``rca["funnel"]`` against their expected rates (the
    localised scan may be of one step only); otherwise the localised cohort's deviation."""
    if metric in RATE_METRICS:
        num, den = RATE_METRICS[metric]
        steps = set(STAGES[STAGES.index(den) + 1 : STAGES.index(num) + 1])
        rows = [r for r in rca.get("funnel") or [] if isinstance(r, Mapping)
                and r.get("step") in steps]
        if len(rows) == len(steps):
            cur = exp = 1.0
            for r in rows:
                rate, expected = _num(r.get("cohort_rate")), _num(r.get("cohort_expected_rate"))
                if rate is None or not expected:
                    break
                cur, exp = cur * rate, exp * expected
            else:
                return cur / exp - 1.0
    return _num(_first(rca.get("where")).get("deviation"))


def _when(value, reference) -> str | None:
    if value is None:
        return None
    try:
        ts = pd.Timestamp(value)
    except (ValueError, TypeError):
        return None
    if ts is pd.NaT:
        return None
    ts = ts.tz_localize("UTC") if ts.tzinfo is None else ts.tz_convert("UTC")
    ref = pd.Timestamp(reference) if reference is not None else ts
    ref = ref.tz_localize("UTC") if ref.tzinfo is None else ref.tz_convert("UTC")
    return f"{ts:%H:%M}" if ts.date() == ref.date() else f"{ts:%Y-%m-%d %H:%M}"


def cause_phrase(incident: Mapping, rca: Mapping | None = None) -> str:
    """``likely cause: deploy payment-widget 1.13.2 at 13:52 (explains 92%)``, or ``no known
    cause``."""
    rca = _rca(incident) if rca is None else rca
    top = _first(rca.get("hypotheses"))
    if not top:
        cause = incident.get("top_cause")
        return f"likely cause: {cause}" if cause and cause != NO_KNOWN_CAUSE else NO_KNOWN_CAUSE
    if top.get("kind") == "none":
        return NO_KNOWN_CAUSE
    text = f"likely cause: {top.get('title') or top.get('kind')}"
    if top.get("kind") not in UNTIMED_KINDS:
        at = _when(top.get("at"), rca.get("onset") or incident.get("started_at"))
        if at:
            text += f" at {at}"
    share = _num(top.get("contribution"))
    if share is not None and share > 0:
        text += f" (explains {share:.0%})"
    return text


def alert_headline(incident: Mapping) -> str:
    """The alert's first line (see the module docstring)."""
    rca = _rca(incident)
    metric = str(incident.get("metric") or rca.get("metric") or "metric")
    where = (incident.get("where_cohort") or _first(rca.get("where")).get("cohort")
             or incident.get("cohort"))
    change = metric_change(metric, rca)
    head = metric_label(metric) + (f" {change:+.0%}" if change is not None else "")
    head += f" on {cohort_label(where)}"
    reference = incident.get("last_anomaly_at") or incident.get("started_at")
    since = _when(rca.get("onset") or incident.get("started_at"), reference)
    if since:
        head += f" since {since} UTC"
    parts = [head]
    impact = rca.get("impact") if isinstance(rca.get("impact"), Mapping) else {}
    lost = _num(incident.get("lost_orders"))
    lost = lost if lost is not None else _num(impact.get("lost_orders"))
    hours = len(impact.get("per_hour") or []) if isinstance(impact.get("per_hour"), list) else 0
    if lost and lost > 0 and hours:
        per_hour = lost / hours
        parts.append(f"~{per_hour:.0f} orders/h lost" if per_hour >= 10
                     else f"~{per_hour:.1f} orders/h lost")
    elif lost and lost > 0:
        parts.append(f"~{lost:.0f} orders lost")
    parts.append(cause_phrase(incident, rca))
    return ", ".join(parts)


__all__ = ["alert_headline", "cause_phrase", "cohort_label", "metric_change", "metric_label"]
