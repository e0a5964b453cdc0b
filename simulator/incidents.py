"""Incidents: specs (from scenario YAML), injection, and the ground-truth labels.

An `IncidentSpec` says what goes wrong, when, for whom and how much. `resolve_incidents`
pins relative starts ("day -10 14:00") to a simulation window. Business incidents change the
funnel's probabilities per session (`StageEffects`, used by `simulator.generate`); the
bot spike adds sessions; data-quality faults pick event rows to drop, duplicate, copy or
null (`plan_event_faults`) or change how an hour is delivered (`late_deliveries`). `ground_truth` turns the
resolved incidents into the JSON labels the detectors are scored against.
"""

from __future__ import annotations

import itertools
import re
import warnings
from dataclasses import dataclass, field
from datetime import date, datetime
from pathlib import Path
from typing import Annotated, Any

import numpy as np
import pandas as pd
from pydantic import AfterValidator, BeforeValidator, Field, StrictFloat

from funnelwatch.config_files import ConfigModel, display_path, read_yaml, validate_model
from funnelwatch.contract import EVENT_TYPES

SCENARIO_DIR = Path(__file__).parent / "scenarios"

# type -> (kind, metric, cause type, default magnitude, default params)
INCIDENT_TYPES: dict[str, tuple[str, str, str, float, dict[str, Any]]] = {
    "cohort_checkout_drop": (
        "business",
        "checkout_conversion_rate",
        "deploy",
        -0.18,
        {
            "drop_after": "payment",
            "deploy": {
                "service": "payment-widget",
                "description": "payment-widget {version}: new wallet button layout",
            },
        },
    ),
    "checkout_conversion_drop": (
        "business",
        "checkout_conversion_rate",
        "deploy",
        -0.05,
        {
            "drop_after": "checkout_start",
            "deploy": {
                "service": "checkout",
                "description": "checkout {version}: address validation rewrite",
            },
        },
    ),
    "tracking_outage": (
        "data_quality",
        "add_to_cart_rate",
        "tracking",
        -1.0,
        {"event_type": "add_to_cart"},
    ),
    "bot_spike": ("business", "sessions", "bot", 4.0, {"n_users": 5, "country": "US"}),
    # a campaign starts and its visitors abandon checkout (the campaign is the cause)
    "campaign_loss": (
        "business",
        "checkout_conversion_rate",
        "campaign",
        -0.3,
        {"drop_after": "checkout_start", "starts_campaign": True},
    ),
    "stock_out": ("business", "add_to_cart_rate", "stock", -1.0, {}),
    "payment_provider_errors": (
        "business",
        "payment_failure_rate",
        "payment_provider",
        None,
        {"failure_rate": 0.40, "latency_factor": 3.0},
    ),
    "late_hour": (
        "data_quality",
        "events",
        "data",
        -1.0,
        {"arrives_after_hours": 6, "fraction": 1.0},
    ),
    "duplicate_events": ("data_quality", "events", "data", None, {"fraction": 0.05}),
    "null_field": ("data_quality", "events", "data", None, {"field": "country"}),
    "unknown_event_type": (
        "data_quality",
        "events",
        "data",
        None,
        {"event_type": "wishlist_add", "fraction": 0.10},
    ),
}
DRIFT_STEPS = ("checkout_start", "shipping", "payment", "review")  # drop_after values
CHECKOUT_DROP_TYPES = ("cohort_checkout_drop", "checkout_conversion_drop", "campaign_loss")
# the funnel step a drop_after value breaks (the numerator stage of the rate that falls)
DROP_STEP = {"checkout_start": "shipping_step", "shipping": "payment_step",
             "payment": "review_step", "review": "payment_attempt"}
EXPECTED_STEP = {"stock_out": "add_to_cart", "payment_provider_errors": "purchase"}
# ground-truth cause type -> the hypothesis kind the root cause should name first
CAUSE_KIND = {"deploy": "deploy", "stock": "stock_out", "payment_provider": "payment_provider",
              "bot": "bot_traffic", "campaign": "campaign", "tracking": "tracking",
              "unknown": "none"}
STAGE_DROP_COLUMN = {"checkout_start": 3, "shipping": 4, "payment": 5, "review": 6}
EVENT_TYPE_METRIC = {
    "product_view": "product_view_rate",
    "add_to_cart": "add_to_cart_rate",
    "checkout_start": "checkout_start_rate",
    "checkout_step": "payment_step_rate",
    "payment_attempt": "payment_failure_rate",
    "purchase": "purchases",
}
NULLABLE_FIELDS = (
    "page_type",
    "checkout_step",
    "sku",
    "category",
    "currency",
    "device_type",
    "os",
    "os_version",
    "browser",
    "browser_version",
    "app_version",
    "country",
    "region",
    "utm_source",
    "utm_medium",
    "utm_campaign",
    "payment_provider",
    "payment_status",
    "error_code",
)
SESSION_DIMENSIONS = (
    "device_type",
    "os",
    "os_version",
    "browser",
    "browser_version",
    "app_version",
    "country",
    "region",
    "utm_source",
    "utm_medium",
    "utm_campaign",
    "payment_provider",
    "category",
)


@dataclass
class IncidentSpec:
    """One incident to inject.

    start: an absolute UTC time ("2026-11-12T14:00") or relative to the window:
    "day N HH:MM" counts N days from the window's first day (day 0), "day -N HH:MM" counts
    back from the day the window ends (day -1 is the last full day).
    magnitude: relative change of the incident's metric (-0.18 = 18% lower); None = the
    type's default. cohort: {dimension: value}, {} = everyone.
    """

    type: str
    start: Any
    duration_hours: float = 1.0
    cohort: dict[str, Any] = field(default_factory=dict)
    magnitude: float | None = None
    params: dict[str, Any] = field(default_factory=dict)
    id: str | None = None
    kind: str | None = None  # override the type's default kind
    metric: str | None = None  # override the type's default metric
    description: str | None = None

    @classmethod
    def from_dict(cls, raw: dict[str, Any], source: str | None = None) -> IncidentSpec:
        """An IncidentSpec from a scenario entry; a problem is one ConfigError line."""
        if source is None:
            name = raw.get("id") or raw.get("type") if isinstance(raw, dict) else None
            source = f"incident {name}" if name else "incident"
        return validate_model(raw, IncidentEntry, source).spec()


def _known_type(name: str) -> str:
    if name not in INCIDENT_TYPES:
        raise ValueError(f"unknown incident type {name!r}; known: {', '.join(INCIDENT_TYPES)}")
    return name


def _start(value: Any) -> Any:
    if isinstance(value, (str, datetime, date)):
        return value
    raise ValueError(f"expected a start like 'day -3 14:00' or '2026-11-12T14:00', got {value!r}")


class IncidentEntry(ConfigModel):
    """One entry of a scenario's `incidents:` (the fields of IncidentSpec)."""

    type: Annotated[str, AfterValidator(_known_type)]
    start: Annotated[Any, BeforeValidator(_start)]
    duration_hours: Annotated[StrictFloat, Field(gt=0)] = 1.0
    cohort: dict[str, str] = Field(default_factory=dict)
    magnitude: StrictFloat | None = None
    params: dict[str, Any] = Field(default_factory=dict)
    id: str | None = None
    kind: str | None = None
    metric: str | None = None
    description: str | None = None

    def spec(self) -> IncidentSpec:
        # Keys left out keep IncidentSpec's defaults; an explicit `magnitude: null` stays None.
        given = self.model_dump(exclude_unset=True)
        return IncidentSpec(**{k: v for k, v in given.items()
                               if v is not None or k == "magnitude"})


class ScenarioFile(ConfigModel):
    """simulator/scenarios/<name>.yaml (or a file holding only the list of incidents)."""

    name: str | None = None
    description: str | None = None
    incidents: list[IncidentEntry] = Field(default_factory=list)


def load_incidents(name_or_path: str | Path) -> list[IncidentSpec]:
    """Read a scenario: `simulator/scenarios/<name>.yaml`, or a path to a YAML file.

    The file holds `incidents:` (a list of IncidentSpec fields), or is itself that list. A
    bad file raises ConfigError (one line: file, key, what was expected).
    """
    path = Path(name_or_path)
    if not path.suffix:
        path = SCENARIO_DIR / f"{name_or_path}.yaml"
    if not path.is_file():
        known = sorted(p.stem for p in SCENARIO_DIR.glob("*.yaml"))
        raise FileNotFoundError(f"no scenario {name_or_path!r} (known: {known})")
    doc = read_yaml(path)
    doc = {"incidents": doc} if isinstance(doc, list) else ({} if doc is None else doc)
    scenario = validate_model(doc, ScenarioFile, display_path(path))
    return [entry.spec() for entry in scenario.incidents]


@dataclass
class Incident:
    """An IncidentSpec pinned to a window, with its defaults filled in."""

    id: str
    type: str
    kind: str
    start: pd.Timestamp
    end: pd.Timestamp
    metric: str
    cohort: dict[str, Any]
    magnitude: float | None
    params: dict[str, Any]
    cause_type: str
    description: str | None = None
    deploy_time: pd.Timestamp | None = None  # set when the incident comes with a deploy
    deploy_service: str | None = None

    def seconds(self, origin: pd.Timestamp) -> tuple[float, float]:
        return ((self.start - origin).total_seconds(), (self.end - origin).total_seconds())


_RELATIVE = re.compile(r"^\s*day\s+([+-]?\d+)(?:\s+(\d{1,2}):(\d{2}))?\s*$", re.IGNORECASE)
WEEKDAYS = ("monday", "tuesday", "wednesday", "thursday", "friday", "saturday", "sunday")
# "last tuesday 10:00": that time on the last such weekday that is a full day of the window
# (the newsletter goes out on Tuesdays: store.NEWSLETTER_SEND_WEEKDAY)
_LAST_WEEKDAY = re.compile(r"^\s*last\s+(" + "|".join(WEEKDAYS) + r")(?:\s+(\d{1,2}):(\d{2}))?\s*$",
                           re.IGNORECASE)


def resolve_time(value: Any, start: pd.Timestamp, end: pd.Timestamp) -> pd.Timestamp:
    if isinstance(value, str):
        m = _RELATIVE.match(value)
        if m:
            day = int(m.group(1))
            base = start.normalize() if day >= 0 else end.normalize()
            if day < 0 and end.normalize() != end:
                base = end.normalize() + pd.Timedelta(days=1)
            t = base + pd.Timedelta(
                days=day, hours=int(m.group(2) or 0), minutes=int(m.group(3) or 0)
            )
            return t
        m = _LAST_WEEKDAY.match(value)
        if m:
            last_full_day = (end - pd.Timedelta(days=1)).normalize()
            if end.normalize() != end:
                last_full_day = end.normalize() - pd.Timedelta(days=1)
            back = (last_full_day.weekday() - WEEKDAYS.index(m.group(1).lower())) % 7
            return last_full_day - pd.Timedelta(days=back) + pd.Timedelta(
                hours=int(m.group(2) or 0), minutes=int(m.group(3) or 0))
    ts = pd.Timestamp(value)
    return ts.tz_localize("UTC") if ts.tzinfo is None else ts.tz_convert("UTC")


def resolve_incidents(
    specs: list[IncidentSpec], start: pd.Timestamp, end: pd.Timestamp
) -> list[Incident]:
    out: list[Incident] = []
    seen: set[str] = set()
    for i, spec in enumerate(specs):
        if spec.type not in INCIDENT_TYPES:
            raise ValueError(
                f"unknown incident type {spec.type!r}; known: {sorted(INCIDENT_TYPES)}"
            )
        kind, metric, cause, default_mag, default_params = INCIDENT_TYPES[spec.type]
        params = {**default_params, **(spec.params or {})}
        t0 = resolve_time(spec.start, start, end)
        if spec.type in ("late_hour", "duplicate_events"):
            t0 = t0.floor("h")
        t1 = t0 + pd.Timedelta(hours=float(spec.duration_hours))
        ident = spec.id or f"inc-{i + 1:02d}-{spec.type}"
        if ident in seen:
            raise ValueError(f"duplicate incident id {ident!r}")
        seen.add(ident)
        if not (start <= t0 and t1 <= end and t0 < t1):
            raise ValueError(
                f"incident {ident} ({spec.start!r}, {spec.duration_hours} h) resolves to "
                f"{t0}..{t1}, outside the simulation window {start}..{end}; the default "
                "scenario needs a window of at least 14 days"
            )
        cohort = dict(spec.cohort or {})
        for dim in cohort:
            if dim not in SESSION_DIMENSIONS:
                raise ValueError(
                    f"incident {ident}: unknown cohort dimension {dim!r}; known: {SESSION_DIMENSIONS}"
                )
        if spec.type == "stock_out" and "category" not in cohort:
            raise ValueError(f"incident {ident}: stock_out needs cohort.category")
        if spec.type == "payment_provider_errors" and "payment_provider" not in cohort:
            raise ValueError(
                f"incident {ident}: payment_provider_errors needs cohort.payment_provider"
            )
        if spec.type == "bot_spike" and params.get("campaigns"):
            if "utm_campaign" in cohort:
                raise ValueError(f"incident {ident}: a bot spike over params.campaigns has the "
                                 "bots' own cohort (e.g. country x device), not utm_campaign")
        elif spec.type == "bot_spike" and "utm_campaign" not in cohort:
            cohort["utm_campaign"] = "fb_retarget"
        if spec.type == "campaign_loss" and "utm_campaign" not in cohort:
            raise ValueError(f"incident {ident}: campaign_loss needs cohort.utm_campaign")
        if (
            spec.type in CHECKOUT_DROP_TYPES
            and params["drop_after"] not in STAGE_DROP_COLUMN
        ):
            raise ValueError(f"incident {ident}: drop_after must be one of {DRIFT_STEPS}")
        if spec.type == "null_field" and params["field"] not in NULLABLE_FIELDS:
            raise ValueError(f"incident {ident}: null_field.field must be one of {NULLABLE_FIELDS}")
        metric = spec.metric or metric
        if spec.type == "tracking_outage":
            metric = spec.metric or EVENT_TYPE_METRIC.get(params["event_type"], "events")
        magnitude = spec.magnitude if spec.magnitude is not None else default_mag
        inc = Incident(
            ident,
            spec.type,
            spec.kind or kind,
            t0,
            t1,
            metric,
            cohort,
            magnitude,
            params,
            cause,
            spec.description,
        )
        deploy = params.get("deploy")
        if deploy:
            inc.deploy_time = t0 - pd.Timedelta(minutes=float(deploy.get("minutes_before", 5)))
            inc.deploy_service = deploy["service"]
            inc.deploy_time = max(inc.deploy_time, start)
        elif cause == "deploy":
            inc.cause_type = "data" if kind == "data_quality" else "unknown"
        out.append(inc)
    _warn_overlaps(out)
    return out


def _warn_overlaps(incidents: list[Incident]) -> None:
    spans = sorted((i.start, i.end, i.id) for i in incidents)
    for (s0, e0, a), (s1, e1, b) in itertools.pairwise(spans):
        if s1 < e0:
            warnings.warn(f"incidents {a} and {b} overlap in time", stacklevel=3)


def incident_deploys(incidents: list[Incident]) -> pd.DataFrame:
    """Deploy rows the incidents bring with them (merged into the deploys table)."""
    rows = []
    for inc in incidents:
        decoy = inc.params.get("decoy_deploy")
        if decoy:  # a deploy that is not the cause (e.g. yesterday's web release)
            rows.append((inc.start - pd.Timedelta(hours=float(decoy.get("hours_before", 20))),
                         decoy.get("service", "web"), decoy.get("bump", "minor"),
                         decoy.get("description", f"{decoy.get('service', 'web')} {{version}}")))
        if inc.deploy_time is None:
            continue
        d = inc.params["deploy"]
        rows.append(
            (
                inc.deploy_time,
                inc.deploy_service,
                d.get("bump", "minor"),
                d.get("description", f"{inc.deploy_service} {{version}}"),
            )
        )
    return pd.DataFrame(rows, columns=["deploy_time", "service", "bump", "description"])


# --------------------------------------------------------------------------------------
# Business incidents: per-session effects on the funnel
# --------------------------------------------------------------------------------------


@dataclass
class StageEffects:
    """What the business incidents do to a batch of sessions.

    multiplier: [S, 7] factors on the stage continuation probabilities (page->product,
    product->cart, cart->checkout_start, checkout_start->shipping, shipping->payment,
    payment->review, review->attempt).
    failure_rate: [S] payment failure probability override (NaN = the provider's base rate).
    latency_factor: [S] multiplier on payment latency.
    """

    multiplier: np.ndarray
    failure_rate: np.ndarray
    latency_factor: np.ndarray


def stage_effects(
    incidents: list[Incident],
    cohort_mask,
    stage_times: np.ndarray,
    stage_ends: np.ndarray,
    origin: pd.Timestamp,
) -> StageEffects:
    """Per-session effects of the business incidents.

    cohort_mask(cohort) -> bool[S]; stage_times[S, 8]: when each session would reach each
    stage (seconds from origin); stage_ends[S, 8]: when it would leave it. An incident hits a
    session when the session is at the affected stage during the incident window.
    """
    n = stage_times.shape[0]
    mult = np.ones((n, 7))
    fail = np.full(n, np.nan)
    latency = np.ones(n)
    for inc in incidents:
        t0, t1 = inc.seconds(origin)
        factor = 1.0 + float(inc.magnitude or 0.0)
        if inc.type in CHECKOUT_DROP_TYPES:
            col = STAGE_DROP_COLUMN[inc.params["drop_after"]]
            at = stage_times[:, col]
            hit = cohort_mask(inc.cohort) & (at >= t0) & (at < t1)
            mult[hit, col] *= max(factor, 0.0)
        elif inc.type == "stock_out":
            # the cart stage [reach cart, leave cart) overlaps the outage
            hit = cohort_mask(inc.cohort) & (stage_times[:, 2] < t1) & (stage_ends[:, 2] >= t0)
            mult[hit, 1] *= max(factor, 0.0)
        elif inc.type == "payment_provider_errors":
            at = stage_times[:, 7]
            hit = cohort_mask(inc.cohort) & (at >= t0) & (at < t1)
            fail[hit] = float(inc.params["failure_rate"])
            latency[hit] *= float(inc.params["latency_factor"])
    return StageEffects(mult, fail, latency)


# --------------------------------------------------------------------------------------
# Data-quality faults: applied to the finished event frame
# --------------------------------------------------------------------------------------


def _us(ts: pd.Timestamp) -> int:
    return int(ts.value // 1000)


def _window_mask(t_us: np.ndarray, inc: Incident) -> np.ndarray:
    return (t_us >= _us(inc.start)) & (t_us < _us(inc.end))


def incident_rng(seed: int, index: int) -> np.random.Generator:
    return np.random.default_rng([seed, 1000 + index])


@dataclass
class FaultPlan:
    """Row-level data-quality faults, as positions in the generated (unsorted) event arrays.

    drop: rows not emitted (tracking outage); duplicates: rows emitted twice with the same
    event_id; extra_rows/extra_types/extra_shift_us: copies of rows re-emitted as another
    (unknown) event type a few seconds later; nulls: (field, incident) pairs whose window
    nulls the field, applied to the final rows by the generator.
    """

    drop: np.ndarray
    duplicates: np.ndarray
    extra_rows: np.ndarray
    extra_types: list[str]  # one per extra row
    extra_shift_us: np.ndarray
    nulls: list[tuple[str, Incident]]


def plan_event_faults(
    incidents: list[Incident], seed: int, t_us: np.ndarray, is_type, cohort_mask
) -> FaultPlan:
    """Decide which event rows the data-quality incidents touch.

    t_us: event times (µs since epoch); is_type(name) -> bool[N]; cohort_mask(cohort) ->
    bool[N] for the event rows.
    """
    n = len(t_us)
    drop = np.zeros(n, dtype=bool)
    extra_rows, extra_types, extra_shift, nulls = [], [], [], []
    for index, inc in enumerate(incidents):
        rng = incident_rng(seed, index)
        if inc.type == "tracking_outage":
            drop |= (
                _window_mask(t_us, inc)
                & is_type(inc.params["event_type"])
                & cohort_mask(inc.cohort)
            )
        elif inc.type == "null_field":
            nulls.append((inc.params["field"], inc))
        elif inc.type == "unknown_event_type":
            pv = _window_mask(t_us, inc) & is_type("product_view") & cohort_mask(inc.cohort)
            rows = np.flatnonzero(pv)
            rows = rows[rng.random(len(rows)) < float(inc.params["fraction"])]
            extra_rows.append(rows)
            extra_types += [inc.params["event_type"]] * len(rows)
            extra_shift.append(np.round(rng.uniform(2.0, 20.0, len(rows)) * 1e6).astype(np.int64))
    dups = [np.zeros(0, dtype=np.int64)]
    for index, inc in enumerate(incidents):
        if inc.type == "duplicate_events":
            rng = incident_rng(seed, index)
            hit = np.flatnonzero(_window_mask(t_us, inc) & ~drop)
            dups.append(hit[rng.random(len(hit)) < float(inc.params["fraction"])])
    empty = np.zeros(0, dtype=np.int64)
    return FaultPlan(
        drop=drop,
        duplicates=np.concatenate(dups),
        extra_rows=np.concatenate(extra_rows) if extra_rows else empty,
        extra_types=extra_types,
        extra_shift_us=np.concatenate(extra_shift) if extra_shift else empty,
        nulls=nulls,
    )


def null_mask(t_us: np.ndarray, inc: Incident, cohort_mask) -> np.ndarray:
    return _window_mask(t_us, inc) & cohort_mask(inc.cohort)


@dataclass
class LateDelivery:
    """Rows of one event hour that reach the landing area late, as `late.parquet`."""

    incident_id: str
    hour: pd.Timestamp
    arrives_after_hours: float
    rows: np.ndarray  # positions in SimulationResult.events

    @property
    def arrives_at(self) -> pd.Timestamp:
        return self.hour + pd.Timedelta(hours=self.arrives_after_hours)


def late_deliveries(
    events: pd.DataFrame, incidents: list[Incident], seed: int
) -> list[LateDelivery]:
    t_us = pd.DatetimeIndex(events["event_time"]).as_unit("us").asi8
    out = []
    for index, inc in enumerate(incidents):
        if inc.type != "late_hour":
            continue
        rng = incident_rng(seed, index)
        rows = np.flatnonzero(_window_mask(t_us, inc))
        fraction = float(inc.params["fraction"])
        if fraction < 1.0:
            rows = rows[rng.random(len(rows)) < fraction]
        out.append(LateDelivery(inc.id, inc.start, float(inc.params["arrives_after_hours"]), rows))
    return out


# --------------------------------------------------------------------------------------
# Ground truth
# --------------------------------------------------------------------------------------


def _iso(ts: pd.Timestamp) -> str:
    return ts.tz_convert("UTC").strftime("%Y-%m-%dT%H:%M:%SZ")


def expected_answers(label: dict[str, Any]) -> dict[str, Any]:
    """What the root cause of a business label should say, from its type, cohort, drop_after
    and cause: where (the cohort as the marts key it), the funnel step that breaks (None when
    the type has none) and the first cause (kind, ref; ref None = any ref of that kind; kind
    "none" = "no known cause"). Works on labels written before these fields existed; a label's
    own expected_where / expected_step / expected_cause (scenario params) win."""
    cohort = label.get("cohort") or {}
    where = "&".join(f"{k}={cohort[k]}" for k in sorted(cohort)) or "all"
    kind_of = label.get("type")
    step = (DROP_STEP.get(label.get("drop_after")) if kind_of in CHECKOUT_DROP_TYPES
            else EXPECTED_STEP.get(kind_of))
    cause = label.get("cause") or {}
    kind = CAUSE_KIND.get(cause.get("type"), cause.get("type") or "none")
    ref = None if kind == "none" else cause.get("ref")
    return {
        "expected_where": label.get("expected_where", where),
        "expected_step": label.get("expected_step", step),
        "expected_cause": label.get("expected_cause", {"kind": kind, "ref": ref}),
    }


def ground_truth(
    incidents: list[Incident],
    deploys: pd.DataFrame,
    base_failure: dict[str, float],
    extra: dict[str, dict[str, Any]] | None = None,
) -> list[dict[str, Any]]:
    """One JSON-able label per incident: id, type, kind, start, end, metric, cohort,
    magnitude, cause {type, ref}, plus type-specific fields."""
    labels = []
    for inc in incidents:
        cause: dict[str, Any] = {"type": inc.cause_type, "ref": None}
        magnitude = inc.magnitude
        label: dict[str, Any] = {}
        if inc.deploy_time is not None:
            match = deploys[
                (deploys["deploy_time"] == inc.deploy_time)
                & (deploys["service"] == inc.deploy_service)
            ]
            version = str(match["version"].iloc[0]) if len(match) else None
            cause = {
                "type": "deploy",
                "ref": version,
                "service": inc.deploy_service,
                "deploy_time": _iso(inc.deploy_time),
            }
        elif inc.type == "tracking_outage":
            cause["ref"] = inc.params["event_type"]
        elif inc.type == "bot_spike":
            # bot traffic is named by the bots' cohort, as the marts key it (the root cause's
            # "bot traffic on utm_campaign=fb_retarget")
            cause["ref"] = "&".join(f"{k}={inc.cohort[k]}" for k in sorted(inc.cohort)) or None
            label["bot_users"] = int(inc.params["n_users"])
            if inc.params.get("campaigns"):
                label["bot_campaigns"] = list(inc.params["campaigns"])
        elif inc.type == "campaign_loss":
            cause["ref"] = inc.cohort["utm_campaign"]
        elif inc.type == "stock_out":
            cause["ref"] = inc.cohort["category"]
        elif inc.type == "payment_provider_errors":
            provider = inc.cohort["payment_provider"]
            cause["ref"] = provider
            if magnitude is None:
                magnitude = round(
                    float(inc.params["failure_rate"]) / base_failure[provider] - 1.0, 3
                )
            label["failure_rate"] = float(inc.params["failure_rate"])
            label["base_failure_rate"] = base_failure[provider]
            label["latency_factor"] = float(inc.params["latency_factor"])
        elif inc.type == "late_hour":
            cause["ref"] = "late_file"
            label["arrives_after_hours"] = float(inc.params["arrives_after_hours"])
            label["arrives_at"] = _iso(inc.start + pd.Timedelta(hours=label["arrives_after_hours"]))
            label["fraction"] = float(inc.params["fraction"])
        elif inc.type == "duplicate_events":
            cause["ref"] = "duplicate_event_id"
            label["fraction"] = float(inc.params["fraction"])
            if magnitude is None:
                magnitude = float(inc.params["fraction"])
        elif inc.type == "null_field":
            cause["ref"] = inc.params["field"]
            label["field"] = inc.params["field"]
        elif inc.type == "unknown_event_type":
            cause["ref"] = inc.params["event_type"]
            label["event_type"] = inc.params["event_type"]
            label["fraction"] = float(inc.params["fraction"])
        if inc.type in CHECKOUT_DROP_TYPES:
            label["drop_after"] = inc.params["drop_after"]
        overrides = {k: inc.params[k] for k in ("expected_where", "expected_step",
                                                 "expected_cause") if k in inc.params}
        labels.append(
            {
                "id": inc.id,
                "type": inc.type,
                "kind": inc.kind,
                "start": _iso(inc.start),
                "end": _iso(inc.end),
                "metric": inc.metric,
                "cohort": dict(inc.cohort),
                "magnitude": magnitude,
                "cause": cause,
                **({"description": inc.description} if inc.description else {}),
                **label,
                **((extra or {}).get(inc.id, {})),
                **overrides,
            }
        )
        if inc.kind == "business":
            labels[-1].update(expected_answers(labels[-1]))
    return labels


assert all(t in EVENT_TYPES for t in EVENT_TYPE_METRIC)
