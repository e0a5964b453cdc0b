"""What an oracle can see of every labelled business incident (issue 15 §1).

The simulator knows, for every session, the probabilities it drew its funnel from with and
without the incidents (`generate.funnel_outcome`), and the expected sessions per hour it drew
traffic from (`ctx.lam`, `ctx.chan_p`). The oracle compares the true cohort's metric over the
incident's hours with that counterfactual expectation: not an estimate from the data's
history, so what it finds is what the data allows, whatever the detector.

Per incident and hour h of its window (hours overlapping [start, end)):

* rates (k of n, e.g. checkout conversion = purchases of the sessions that started checkout):
  the units are the cohort's sessions that reached the rate's denominator stage in hour h
  (by the time they reached it); observed O_h = how many went on to the numerator stage,
  expected E_h = sum of their no-incident probabilities q_i of doing so, V_h = sum q_i (1 - q_i);
* payment failure rate: units = sessions that attempted a payment, O_h = first attempts that
  failed, E_h = sum of the providers' base failure rates;
* counts (sessions): O_h = sessions of the cohort that started in hour h (bots included),
  E_h = V_h = the Poisson mean the store drew them from.

z_h = (O_h - E_h) / sqrt(V_h); the cumulative z from the start is the count z over the hours so
far, Z_k = sum_{h<=k} (O_h - E_h) / sqrt(sum_{h<=k} V_h). An incident is **visible** when its
direction times Z_k reaches `threshold` (4) in its window; its **oracle hour** is the first hour
that does.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd

from simulator import store
from simulator.generate import (
    DEVICE_GIVEN_CHANNEL,
    OS_GIVEN_CHANNEL_DEVICE,
    PreparedStore,
    SimulationConfig,
    funnel_outcome,
    prepare,
    purchase_probability,
)

VISIBLE_Z = 4.0
PURCHASE = 8  # stage rank of a purchase (0..7 are the continuation stages of the simulator)
# rate metric -> (denominator stage, numerator stage); stage 0 = every session
RATE_STAGES = {
    "product_view_rate": (0, 1),
    "add_to_cart_rate": (1, 2),
    "checkout_start_rate": (2, 3),
    "shipping_step_rate": (3, 4),
    "payment_step_rate": (4, 5),
    "review_step_rate": (5, 6),
    "payment_attempt_rate": (6, 7),
    "checkout_conversion_rate": (3, PURCHASE),
    "session_conversion_rate": (0, PURCHASE),
}
COUNT_METRICS = ("sessions",)
# Dimensions whose share of an hour's traffic the traffic model gives exactly.
COUNT_DIMENSIONS = ("country", "utm_source", "utm_medium", "utm_campaign", "device_type", "os",
                    "browser")
HOUR_COLUMNS = ["id", "hour", "units", "observed", "expected", "variance", "z", "cum_z"]
INCIDENT_COLUMNS = ["id", "metric", "direction", "hours", "units", "oracle_z", "peak_z",
                    "visible", "oracle_hour", "oracle_note"]


def _reach(funnel, stage: int) -> np.ndarray:
    if stage == PURCHASE:
        return funnel.bought
    return funnel.stage >= stage


def _continue_probability(funnel, start: int, stop: int) -> np.ndarray:
    """No-incident probability of going from stage `start` to stage `stop`."""
    last = min(stop, 7)
    q = np.prod(funnel.p_base[:, start:last], axis=1)
    if stop == PURCHASE:
        q = q * purchase_probability(funnel.fail_base)
    return q


def _stage_time(funnel, stage: int) -> np.ndarray:
    return funnel.times[:, min(stage, 7)]


def _unit_sums(hour_of_unit: np.ndarray, observed: np.ndarray, q: np.ndarray,
               hours: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """(units, observed, expected, variance) per hour index of `hours`."""
    index = np.searchsorted(hours, hour_of_unit)
    ok = (index < len(hours)) & (hours[np.minimum(index, len(hours) - 1)] == hour_of_unit)
    index, observed, q = index[ok], observed[ok], q[ok]
    size = len(hours)
    return (np.bincount(index, minlength=size).astype(float),
            np.bincount(index, weights=observed.astype(float), minlength=size),
            np.bincount(index, weights=q, minlength=size),
            np.bincount(index, weights=q * (1 - q), minlength=size))


def cohort_traffic_share(prepared: PreparedStore, cohort: dict[str, Any]) -> np.ndarray:
    """Expected sessions per hour of a cohort, [H]: sum over countries of lam[h, c] times the
    probability that a session of hour h is in the cohort (channel, device, os and browser
    are drawn in that order from the store's tables)."""
    unknown = sorted(set(cohort) - set(COUNT_DIMENSIONS))
    if unknown:
        raise ValueError(f"no traffic model for cohort dimension(s) {unknown}")
    lam, chan_p = prepared.ctx.lam, prepared.ctx.chan_p
    countries = [i for i, code in enumerate(store.COUNTRY_CODES)
                 if cohort.get("country", code) == code]
    share = np.zeros(lam.shape[0])
    for ch, channel in enumerate(store.CHANNELS):
        names = {"utm_source": channel.source, "utm_medium": channel.medium,
                 "utm_campaign": channel.campaign}
        if any(k in cohort and cohort[k] != v for k, v in names.items()):
            continue
        inner = 0.0
        for dev, device in enumerate(store.DEVICES):
            if cohort.get("device_type", device) != device:
                continue
            for o, os_name in enumerate(store.OSES):
                if cohort.get("os", os_name) != os_name:
                    continue
                browsers = sum(store.BROWSER_GIVEN_OS[o, b] for b, name in enumerate(store.BROWSERS)
                               if cohort.get("browser", name) == name)
                inner += DEVICE_GIVEN_CHANNEL[ch, dev] * OS_GIVEN_CHANNEL_DEVICE[ch, dev, o] * browsers
        share += chan_p[:, ch] * inner
    return lam[:, countries].sum(1) * share


def _direction(label: dict) -> int:
    magnitude = label.get("magnitude")
    if label.get("metric") == "payment_failure_rate" or label.get("type") == "bot_spike":
        return 1
    return -1 if magnitude is not None and float(magnitude) < 0 else 1


def _window_bins(label: dict, bin_minutes: int) -> pd.DatetimeIndex:
    start, end = pd.Timestamp(label["start"]), pd.Timestamp(label["end"])
    freq = f"{bin_minutes}min"
    return pd.date_range(start.floor(freq), end, freq=freq, inclusive="left")


def cumulative_z(observed, expected, variance) -> np.ndarray:
    """Count z of the hours so far: sum(O - E) / sqrt(sum V) (NaN while sum V is 0)."""
    diff = np.cumsum(np.asarray(observed, float) - np.asarray(expected, float))
    var = np.cumsum(np.asarray(variance, float))
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(var > 0, diff / np.sqrt(np.where(var > 0, var, 1.0)), np.nan)


def first_visible(hours, cum_z, direction: int, threshold: float = VISIBLE_Z):
    """The first hour whose direction-aligned cumulative z reaches `threshold`, or NaT."""
    aligned = direction * np.asarray(cum_z, float)
    hits = np.flatnonzero(np.nan_to_num(aligned, nan=-np.inf) >= threshold)
    return pd.Timestamp(hours[hits[0]]) if len(hits) else pd.NaT


def incident_hours(prepared: PreparedStore, funnel, label: dict,
                   bin_minutes: int = 60) -> pd.DataFrame:
    """The oracle's per-hour table of one business label (columns HOUR_COLUMNS; `hour` is
    the start of each bin). `bin_minutes` < 60 (a divisor of 60) gives the fast lane's slots:
    a count's hourly mean is spread evenly over the hour's slots."""
    if bin_minutes <= 0 or 60 % bin_minutes:
        raise ValueError(f"bin_minutes must divide 60, got {bin_minutes}")
    window = _window_bins(label, bin_minutes)
    origin = prepared.window.start
    bin_s = 60.0 * bin_minutes
    hour_index = ((window - origin) / pd.Timedelta(minutes=bin_minutes)).astype(int).to_numpy()
    cohort = {k: str(v) for k, v in (label.get("cohort") or {}).items()}
    metric = label["metric"]
    if metric in COUNT_METRICS:
        s = prepared.sessions
        mask = funnel.cohort_mask(cohort)
        per_hour = 60 // bin_minutes
        units = np.bincount(np.floor(s["start_s"][mask] / bin_s).astype(int),
                            minlength=prepared.ctx.n_hours * per_hour)[hour_index]
        expected = cohort_traffic_share(prepared, cohort)[hour_index // per_hour] / per_hour
        observed, variance = units.astype(float), expected
    else:
        if metric == "payment_failure_rate":
            stage = 7
            members = funnel.cohort_mask(cohort) & (funnel.stage >= 7)
            outcome, q = funnel.first_failed, funnel.fail_base
        elif metric in RATE_STAGES:
            stage, stop = RATE_STAGES[metric]
            members = funnel.cohort_mask(cohort) & _reach(funnel, stage)
            outcome, q = _reach(funnel, stop), _continue_probability(funnel, stage, stop)
        else:
            raise ValueError(f"the oracle has no model for metric {metric!r}")
        unit_hour = np.floor(_stage_time(funnel, stage)[members] / bin_s).astype(int)
        units, observed, expected, variance = _unit_sums(
            unit_hour, outcome[members], q[members], hour_index)
    with np.errstate(invalid="ignore", divide="ignore"):
        z = np.where(variance > 0, (observed - expected) / np.sqrt(np.maximum(variance, 1e-300)),
                     np.nan)
    return pd.DataFrame({
        "id": label["id"], "hour": window, "units": units, "observed": observed,
        "expected": expected, "variance": variance, "z": z,
        "cum_z": cumulative_z(observed, expected, variance),
    })[HOUR_COLUMNS]


def summarise(label: dict, hours: pd.DataFrame, threshold: float = VISIBLE_Z) -> dict:
    """One incident's oracle verdict from its hours (a row of INCIDENT_COLUMNS)."""
    direction = _direction(label)
    cum = hours["cum_z"].to_numpy(float)
    aligned = direction * cum
    finite = aligned[np.isfinite(aligned)]
    oracle_hour = first_visible(hours["hour"].to_numpy(), cum, direction, threshold)
    return {
        "id": label["id"], "metric": label["metric"], "direction": direction,
        "hours": len(hours), "units": float(hours["units"].sum()),
        "oracle_z": float(cum[np.isfinite(cum)][-1]) if np.isfinite(cum).any() else float("nan"),
        "peak_z": float(direction * finite.max()) if len(finite) else float("nan"),
        "visible": bool(pd.notna(oracle_hour)), "oracle_hour": oracle_hour, "oracle_note": "",
    }


PLANNED_COLUMNS = ["start", "end", "cohort", "name"]


def planned_traffic(prepared: PreparedStore) -> pd.DataFrame:
    """The store's planned traffic changes, as the reference data announces them: newsletter
    send days (UTC), campaign launches and ends inside the window (their first / last day),
    holidays and promotions (their day, widened by 12 h for the countries' local time).
    Columns PLANNED_COLUMNS; cohort is a marts cohort key ('all' for store-wide)."""
    window = prepared.window
    rows = []
    for day in pd.date_range(window.start.normalize(), window.end, freq="D", inclusive="left"):
        if day.weekday() == store.NEWSLETTER_SEND_WEEKDAY:
            rows.append((day, day + pd.Timedelta(days=1), "utm_campaign=weekly_newsletter",
                         "newsletter send"))
    for c in prepared.campaigns.itertuples():
        for edge, name in ((c.start_time, "launch"), (c.end_time, "end")):
            if window.start < edge < window.end:
                edge = pd.Timestamp(edge)
                rows.append((edge, edge + pd.Timedelta(days=1), f"utm_campaign={c.campaign_name}",
                             f"campaign {c.campaign_name} {name}"))
    for h in prepared.holidays.itertuples():
        day = pd.Timestamp(h.holiday_date, tz="UTC")
        cohort = "all" if h.country == "ALL" else f"country={h.country}"
        rows.append((day - pd.Timedelta(hours=12), day + pd.Timedelta(hours=36), cohort, h.name))
    frame = pd.DataFrame(rows, columns=PLANNED_COLUMNS)
    for column in ("start", "end"):
        frame[column] = pd.to_datetime(frame[column], utc=True)
    return frame


def oracle(cfg: SimulationConfig | PreparedStore, threshold: float = VISIBLE_Z,
           bin_minutes: int = 60) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(hours, incidents) of the oracle for every business incident of `cfg` (a config, or
    the store `prepare(cfg)` already built); `bin_minutes=5` gives the fast lane's slots
    (then `hour` / `oracle_hour` are slot starts).

    A label the oracle has no model for (a metric or cohort dimension it cannot give an
    expectation for) gets visible=False and the reason in `oracle_note`, not an exception."""
    from simulator.incidents import ground_truth  # labels as the run writes them

    prepared = cfg if isinstance(cfg, PreparedStore) else prepare(cfg)
    empty = (pd.DataFrame(columns=HOUR_COLUMNS), pd.DataFrame(columns=INCIDENT_COLUMNS))
    business = [i for i in prepared.incidents if i.kind == "business"]
    if not business:
        return empty
    labels = ground_truth(business, prepared.deploys,
                          dict(zip(store.PROVIDERS, [p[2] for p in store.PAYMENT_PROVIDERS])),
                          prepared.extra_labels)
    funnel = funnel_outcome(prepared.sessions, prepared.ctx, prepared.incidents)
    hour_frames, rows = [], []
    for label in labels:
        try:
            hours = incident_hours(prepared, funnel, label, bin_minutes)
        except ValueError as exc:
            rows.append({**dict.fromkeys(INCIDENT_COLUMNS), "id": label["id"],
                         "metric": label["metric"], "direction": _direction(label),
                         "visible": False, "oracle_hour": pd.NaT, "oracle_note": str(exc)})
            continue
        hour_frames.append(hours)
        rows.append(summarise(label, hours, threshold))
    hours = pd.concat(hour_frames, ignore_index=True) if hour_frames else empty[0]
    return hours, pd.DataFrame(rows, columns=INCIDENT_COLUMNS)

