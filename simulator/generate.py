"""Vectorised clickstream generation.

The pipeline, all numpy arrays (no per-event Python loops):

1. traffic: expected sessions per (UTC hour, country) from the store's seasonality, growth,
   calendar and active campaigns; Poisson counts;
2. sessions: one row per session with its attributes, potential event counts, stage dwell
   times and the uniforms that decide how far it gets in the funnel;
3. incidents: business incidents scale the funnel probabilities of the sessions they hit
   (a bot spike adds sessions);
4. events: per-session counts are expanded to event rows with `np.repeat`; per-event
   randomness (SKUs, jitter, latencies, error codes) comes from a counter-based hash of
   (session, event slot), so a session's events do not depend on other sessions;
5. data-quality faults drop, duplicate, add or null event rows before strings are built.

Session-level draws come from a fixed number of calls to one seeded generator, so the same
config and seed give the same frame, and adding an incident changes only what it touches:
the quiet store and the incident store share every unaffected session.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from funnelwatch.contract import (
    CHECKOUT_STEPS,
    EVENT_ARROW_SCHEMA,
    EVENT_TYPES,
    PAGE_TYPES,
    PAYMENT_STATUSES,
    to_arrow,
)
from funnelwatch.landing import LANDING_FILE_MODE, hour_dir, write_events, write_reference
from simulator import store
from simulator.incidents import (
    Incident,
    IncidentSpec,
    LateDelivery,
    ground_truth,
    incident_deploys,
    late_deliveries,
    load_incidents,
    null_mask,
    plan_event_faults,
    resolve_incidents,
    stage_effects,
)

# Average events per session at base traffic; used to size SimulationConfig.single_hour.
EVENTS_PER_SESSION = 4.29
USER_SKEW = 1.15  # user index = floor(pool * u**USER_SKEW): a few heavy repeat visitors
SESSIONS_PER_USER = 3.0  # pool size = expected sessions / this


@dataclass
class SimulationConfig:
    """What to simulate. `start` inclusive, `end` exclusive, UTC (floored to the hour).

    sessions_per_hour: mean sessions per hour over a week at base traffic (before growth,
    campaigns and calendar surges). incidents: IncidentSpec list, dicts, or a scenario name.
    """

    start: str | pd.Timestamp = "2026-11-01"
    end: str | pd.Timestamp = "2026-11-22"
    sessions_per_hour: float = 1500.0
    seed: int = 42
    incidents: list[IncidentSpec] | list[dict[str, Any]] | str = field(default_factory=list)
    producer: str = "simulator"

    def window(self) -> store.Window:
        start, end = _utc(self.start).floor("h"), _utc(self.end).ceil("h")
        if end <= start:
            raise ValueError(f"end {end} must be after start {start}")
        return store.Window(start, end)

    def incident_specs(self) -> list[IncidentSpec]:
        if isinstance(self.incidents, (str, Path)):
            return load_incidents(self.incidents)
        return [
            i if isinstance(i, IncidentSpec) else IncidentSpec.from_dict(i) for i in self.incidents
        ]

    @classmethod
    def single_hour(
        cls,
        hour: str | pd.Timestamp,
        events_target: int = 1_000_000,
        seed: int = 0,
        incidents: list | None = None,
    ) -> SimulationConfig:
        """A one-hour window sized to produce about `events_target` events (for benchmarks)."""
        start = _utc(hour).floor("h")
        window = store.Window(start, start + pd.Timedelta(hours=1))
        lam, _, _ = _traffic(
            window, 1.0, store.build_holidays(window), store.campaign_windows(window)
        )
        spm = events_target / (EVENTS_PER_SESSION * float(lam.sum()))
        return cls(
            start=window.start,
            end=window.end,
            sessions_per_hour=spm,
            seed=seed,
            incidents=list(incidents or []),
        )


@dataclass
class SimulationResult:
    events: pd.DataFrame  # contract columns, sorted by event_time
    reference: dict[str, pd.DataFrame]  # deploys, campaigns, holidays
    incidents: list[dict[str, Any]]  # ground truth labels
    late: list[LateDelivery] = field(default_factory=list)  # rows landing as late.parquet
    config: SimulationConfig | None = None


def _utc(value) -> pd.Timestamp:
    ts = pd.Timestamp(value)
    return ts.tz_localize("UTC") if ts.tzinfo is None else ts.tz_convert("UTC")


# --------------------------------------------------------------------------------------
# Probability tables derived from the store model
# --------------------------------------------------------------------------------------


def _flat_vocab(table: dict[str, tuple[tuple[str, float], ...]], parents: tuple[str, ...]):
    vocab: list[str] = []
    probs = []
    for parent in parents:
        row = {}
        for version, share in table[parent]:
            if version not in vocab:
                vocab.append(version)
            row[vocab.index(version)] = share
        probs.append(row)
    matrix = np.zeros((len(parents), len(vocab)))
    for i, row in enumerate(probs):
        for j, share in row.items():
            matrix[i, j] = share
    return vocab, matrix / matrix.sum(1, keepdims=True)


OS_VERSION_VOCAB, OS_VERSION_P = _flat_vocab(store.OS_VERSIONS, store.OSES)
BROWSER_VERSION_VOCAB, BROWSER_VERSION_P = _flat_vocab(store.BROWSER_VERSIONS, store.BROWSERS)
REGION_P = np.zeros((len(store.COUNTRIES), len(store.REGIONS)))
for _ci, _c in enumerate(store.COUNTRIES):
    for _ri, _r in enumerate(_c[4]):
        REGION_P[_ci, store.REGIONS.index(_r)] = 1.0 / np.sqrt(_ri + 1)
REGION_P /= REGION_P.sum(1, keepdims=True)
COUNTRY_SHARE = np.array([c[1] for c in store.COUNTRIES])
COUNTRY_SHARE = COUNTRY_SHARE / COUNTRY_SHARE.sum()
COUNTRY_OFFSET = np.array([c[2] for c in store.COUNTRIES])
COUNTRY_CONV = np.array([c[3] for c in store.COUNTRIES])
CHANNEL_CONV = np.array([c.conv for c in store.CHANNELS])
CH = {c.key: i for i, c in enumerate(store.CHANNELS)}
DEVICE_GIVEN_CHANNEL = np.array(
    [
        [
            1 - c.mobile - (0.03 if c.mobile > 0.8 else 0.06),
            c.mobile,
            0.03 if c.mobile > 0.8 else 0.06,
        ]
        for c in store.CHANNELS
    ]
)
_IOS = store.OSES.index("iOS")
OS_GIVEN_CHANNEL_DEVICE = np.empty((len(store.CHANNELS), len(store.DEVICES), len(store.OSES)))
for _i, _c in enumerate(store.CHANNELS):
    _m = store.OS_GIVEN_DEVICE.copy()
    _m[:, _IOS] *= _c.ios_boost
    OS_GIVEN_CHANNEL_DEVICE[_i] = _m / _m.sum(1, keepdims=True)
PROVIDER_SHARE = np.array([p[1] for p in store.PAYMENT_PROVIDERS])
PROVIDER_FAIL = np.array([p[2] for p in store.PAYMENT_PROVIDERS])
PROVIDER_LATENCY = np.array([p[3] for p in store.PAYMENT_PROVIDERS])
PAY_ERR_VOCAB = [c for c, _ in store.PAYMENT_ERROR_CODES]
PAY_ERR_CUM = np.cumsum([p for _, p in store.PAYMENT_ERROR_CODES])
JS_ERR_VOCAB = [c for c, _ in store.JS_ERROR_CODES]
JS_ERR_CUM = np.cumsum([p for _, p in store.JS_ERROR_CODES])
ERROR_VOCAB = PAY_ERR_VOCAB + list(store.OUTAGE_ERROR_CODES) + JS_ERR_VOCAB
CATALOG = store.build_catalog()
CATEGORY_CUM = np.cumsum(CATALOG.category_share)

# event kinds in canonical within-session order, and their contract event type
(
    K_PAGE,
    K_PRODUCT,
    K_ADD,
    K_REMOVE,
    K_CHECKOUT,
    K_SHIP,
    K_PAY,
    K_REVIEW,
    K_ATTEMPT,
    K_PURCHASE,
    K_JS,
) = range(11)
K_EXTRA = 20  # injected events of unknown types: kind K_EXTRA + event type code
KIND_EVENT_TYPE = np.array(
    [
        EVENT_TYPES.index(t)
        for t in (
            "page_view",
            "product_view",
            "add_to_cart",
            "remove_from_cart",
            "checkout_start",
            "checkout_step",
            "checkout_step",
            "checkout_step",
            "payment_attempt",
            "purchase",
            "js_error",
        )
    ]
)
PT = {p: i for i, p in enumerate(PAGE_TYPES)}


def _pick(prob_rows: np.ndarray, u: np.ndarray) -> np.ndarray:
    """Vectorised categorical draw: row i of prob_rows with uniform u[i]."""
    cum = np.cumsum(prob_rows, axis=1)
    cum /= cum[:, -1:]
    return np.minimum((u[:, None] >= cum).sum(1), prob_rows.shape[1] - 1)


@dataclass(frozen=True)
class _Cond:
    """A conditional distribution stored compactly: row p lists only the categories with
    positive probability (cum: [P, k] cumulative, codes: [P, k] global category codes)."""

    cum: np.ndarray
    codes: np.ndarray

    @classmethod
    def from_matrix(cls, matrix: np.ndarray) -> _Cond:
        k = int((matrix > 0).sum(1).max())
        cum = np.ones((matrix.shape[0], k))
        codes = np.zeros((matrix.shape[0], k), dtype=np.int64)
        for p, row in enumerate(matrix):
            idx = np.flatnonzero(row > 0)
            codes[p, : len(idx)] = idx
            codes[p, len(idx) :] = idx[-1]
            cum[p, : len(idx)] = np.cumsum(row[idx]) / row[idx].sum()
        return cls(cum, codes)

    def draw(self, parent: np.ndarray, u: np.ndarray) -> np.ndarray:
        local = np.minimum((u[:, None] >= self.cum[parent]).sum(1), self.cum.shape[1] - 1)
        return self.codes[parent, local]


OS_VERSION_COND = _Cond.from_matrix(OS_VERSION_P)
BROWSER_VERSION_COND = _Cond.from_matrix(BROWSER_VERSION_P)
REGION_COND = _Cond.from_matrix(REGION_P)


def _pick_cum(cum: np.ndarray, u: np.ndarray) -> np.ndarray:
    return np.minimum(np.searchsorted(cum, u * cum[-1], side="right"), len(cum) - 1)


_M1 = np.uint64(0xBF58476D1CE4E5B9)
_M2 = np.uint64(0x94D049BB133111EB)
_GOLD = np.uint64(0x9E3779B97F4A7C15)


def _hash_u(keys: np.ndarray, salt: int) -> np.ndarray:
    """Uniform [0, 1) per key (splitmix64 finaliser): counter-based, order-independent."""
    z = keys.astype(np.uint64) * _GOLD + np.uint64(salt & 0xFFFFFFFFFFFFFFFF)
    z = (z ^ (z >> np.uint64(30))) * _M1
    z = (z ^ (z >> np.uint64(27))) * _M2
    z = z ^ (z >> np.uint64(31))
    return (z >> np.uint64(11)).astype(np.float64) * (1.0 / 9007199254740992.0)


# --------------------------------------------------------------------------------------
# Traffic
# --------------------------------------------------------------------------------------


def _traffic(window: store.Window, base: float, holidays: pd.DataFrame, campaigns: pd.DataFrame):
    """Expected sessions lam[H, C], channel probabilities [H, n_channels] and the calendar
    conversion multiplier [H, C] for every UTC hour of the window."""
    hours = pd.date_range(window.start, window.end, freq="h", inclusive="left")
    utc = hours.tz_convert(None).values.astype("datetime64[h]")
    n_hours = len(hours)
    lam = np.empty((n_hours, len(store.COUNTRIES)))
    conv = np.empty_like(lam)
    days_in = np.arange(n_hours) / 24.0
    growth = (1.0 + store.GROWTH_PER_DAY) ** days_in
    for c in range(len(store.COUNTRIES)):
        local = utc + np.timedelta64(int(COUNTRY_OFFSET[c]), "h")
        local_day = local.astype("datetime64[D]")
        local_hour = (local - local_day).astype(int)
        weekday = (local_day.astype(np.int64) + 3) % 7
        t_mult, c_mult = store.calendar_effects(holidays, local_day, c)
        lam[:, c] = COUNTRY_SHARE[c] * store.DIURNAL[local_hour] * store.WEEKLY[weekday] * t_mult
        conv[:, c] = c_mult
    # channels: always-on channels plus campaigns while they run (incremental traffic)
    weights = np.tile([c.weight for c in store.CHANNELS], (n_hours, 1)).astype(float)
    camp = campaigns.set_index("campaign_name")
    for i, ch in enumerate(store.CHANNELS):
        if ch.campaign in camp.index:
            row = camp.loc[ch.campaign]
            active = (hours >= row["start_time"]) & (hours < row["end_time"])
            weights[~np.asarray(active), i] = 0.0
    utc_weekday = (utc.astype("datetime64[D]").astype(np.int64) + 3) % 7
    nl = CH["newsletter"]
    weights[utc_weekday == store.NEWSLETTER_SEND_WEEKDAY, nl] *= store.NEWSLETTER_SEND_BOOST
    always_on = sum(c.weight for c in store.CHANNELS if c.key != "ig_sale")
    base_sum = always_on + store.CHANNELS[nl].weight * (store.NEWSLETTER_SEND_BOOST - 1) / 7
    total = weights.sum(1)
    lam *= (base * growth * total / base_sum)[:, None]
    return lam, weights / total[:, None], conv


# --------------------------------------------------------------------------------------
# Sessions
# --------------------------------------------------------------------------------------


@dataclass
class _Ctx:
    window: store.Window
    n_hours: int
    lam: np.ndarray
    chan_p: np.ndarray
    conv_cal: np.ndarray
    pool_size: np.ndarray
    pool_offset: np.ndarray
    pool_total: int
    web_times: np.ndarray  # seconds from window start
    web_versions: list[str]
    salt: int


def _session_arrays(
    ctx: _Ctx,
    rng: np.random.Generator,
    hour: np.ndarray,
    country: np.ndarray,
    hour_span: tuple[np.ndarray, np.ndarray] | None = None,
) -> dict[str, np.ndarray]:
    """Draw every session-level attribute and funnel uniform. Fixed number of rng calls."""
    n = len(hour)
    u = rng.random((n, 13))
    if hour_span is None:
        start_s = (hour + u[:, 0]) * 3600.0
    else:
        lo, hi = hour_span
        start_s = lo + u[:, 0] * (hi - lo)
    channel = _pick(ctx.chan_p[hour], u[:, 1])
    device = _pick(DEVICE_GIVEN_CHANNEL[channel], u[:, 2])
    os_ = _pick(OS_GIVEN_CHANNEL_DEVICE[channel, device], u[:, 3])
    os_version = OS_VERSION_COND.draw(os_, u[:, 4])
    browser = _pick(store.BROWSER_GIVEN_OS[os_], u[:, 5])
    browser_version = BROWSER_VERSION_COND.draw(browser, u[:, 6])
    region = REGION_COND.draw(country, u[:, 7])
    user = ctx.pool_offset[country] + np.floor(
        ctx.pool_size[country] * u[:, 8] ** USER_SKEW
    ).astype(np.int64)
    category = _pick_cum(CATEGORY_CUM, u[:, 9])
    provider = _pick_cum(np.cumsum(PROVIDER_SHARE), u[:, 10])
    js = u[:, 11] < store.BROWSER_JS_ERROR[browser]
    n_pv = 1 + rng.poisson(1.3, n)
    n_prod = 1 + rng.poisson(1.6, n)
    n_add = 1 + np.minimum(rng.poisson(0.35, n), 4)
    n_remove = ((n_add >= 2) & (u[:, 12] < store.P_REMOVE)).astype(np.int64)
    counts = np.column_stack([n_pv, n_prod, n_add + n_remove, np.ones((n, 4)), np.full(n, 3)])
    dwell = rng.gamma(counts, store.STAGE_DWELL[None, :])
    u_stage = rng.random((n, 7))
    u_pay = rng.random((n, 5))  # 3 attempt outcomes, 2 retry decisions
    m = (
        store.DEVICE_CONV[device]
        * store.OS_CONV[os_]
        * store.BROWSER_CONV[browser]
        * COUNTRY_CONV[country]
        * CHANNEL_CONV[channel]
        * ctx.conv_cal[hour, country]
    )
    dev_ck = store.DEVICE_CHECKOUT[device]
    p = np.column_stack(
        [
            np.full(n, store.P_PRODUCT_VIEW),
            store.P_ADD_TO_CART * m,
            store.P_CHECKOUT_START * np.sqrt(m),
            store.P_SHIPPING * dev_ck,
            store.P_PAYMENT * dev_ck,
            store.P_REVIEW * dev_ck,
            np.full(n, store.P_ATTEMPT),
        ]
    )
    return {
        "hour": hour,
        "country": country,
        "start_s": start_s,
        "channel": channel,
        "device": device,
        "os": os_,
        "os_version": os_version,
        "browser": browser,
        "browser_version": browser_version,
        "region": region,
        "user": user,
        "category": category,
        "provider": provider,
        "js": js,
        "n_pv": n_pv,
        "n_prod": n_prod,
        "n_add": n_add,
        "n_remove": n_remove,
        "dwell": dwell,
        "u_stage": u_stage,
        "u_pay": u_pay,
        "p": p,
        "key": np.arange(n, dtype=np.uint64),
    }


def _bot_sessions(ctx: _Ctx, inc: Incident, index: int) -> dict[str, np.ndarray] | None:
    """Extra sessions of a bot spike: (1 + magnitude) x the campaign's normal traffic, or,
    with params.campaigns, magnitude x each listed campaign's traffic in the bots' country
    (one scraper behind several campaigns' landing pages)."""
    rng = np.random.default_rng([ctx.salt & 0xFFFFFFFF, 2000 + index])
    campaigns = inc.params.get("campaigns")
    names = list(campaigns) if campaigns else [inc.cohort.get("utm_campaign", "fb_retarget")]
    chans = []
    for campaign in names:
        chan = [i for i, c in enumerate(store.CHANNELS) if c.campaign == campaign]
        if not chan:
            raise ValueError(f"bot_spike {inc.id}: unknown campaign {campaign!r}")
        chans.append(chan[0])
    t0, t1 = inc.seconds(ctx.window.start)
    h0, h1 = int(t0 // 3600), int(np.ceil(t1 / 3600))
    hrs = np.arange(h0, min(h1, ctx.n_hours))
    lo = np.maximum(hrs * 3600.0, t0)
    hi = np.minimum((hrs + 1) * 3600.0, t1)
    country_code = inc.params.get("country", "US")
    if not campaigns:  # one campaign: the campaign's whole traffic (kept as first written)
        expected = (ctx.lam[hrs].sum(1) * ctx.chan_p[hrs, chans[0]] * float(inc.magnitude or 0)
                    * (hi - lo) / 3600.0)
        counts = rng.poisson(expected)
        channel_of_slot = np.full(len(hrs), chans[0])
    else:
        c = store.COUNTRY_CODES.index(country_code)
        expected = np.concatenate([ctx.lam[hrs, c] * ctx.chan_p[hrs, ch] * float(inc.magnitude or 0)
                                   * (hi - lo) / 3600.0 for ch in chans])
        counts = rng.poisson(expected)
        channel_of_slot = np.repeat(chans, len(hrs))
        hrs, lo, hi = np.tile(hrs, len(chans)), np.tile(lo, len(chans)), np.tile(hi, len(chans))
    if counts.sum() == 0:
        return None
    which = np.repeat(np.arange(len(hrs)), counts)
    n = len(which)
    country = np.full(n, store.COUNTRY_CODES.index(country_code))
    s = _session_arrays(ctx, rng, hrs[which], country, (lo[which], hi[which]))
    s["channel"][:] = channel_of_slot[which]
    # the scraper's user agent (params device_type/os/browser; default a Linux Chrome desktop)
    os_name = inc.params.get("os", "Linux")
    browser_name = inc.params.get("browser", "Chrome")
    s["device"][:] = store.DEVICES.index(inc.params.get("device_type", "desktop"))
    s["os"][:] = store.OSES.index(os_name)
    s["os_version"][:] = OS_VERSION_VOCAB.index(
        "6.8" if os_name == "Linux" else store.OS_VERSIONS[os_name][0][0])
    s["browser"][:] = store.BROWSERS.index(browser_name)
    s["browser_version"][:] = BROWSER_VERSION_VOCAB.index(
        "120.0" if browser_name == "Chrome" else store.BROWSER_VERSIONS[browser_name][0][0])
    s["region"][:] = store.REGIONS.index(store.COUNTRIES[country[0]][4][0])
    n_users = int(inc.params["n_users"])
    s["user"] = ctx.pool_total + 1000 * index + rng.integers(0, n_users, n)
    s["js"][:] = False
    s["n_pv"] = 1 + rng.poisson(1.0, n)
    s["n_prod"] = rng.integers(8, 40, n)
    s["n_add"][:] = 1
    s["n_remove"][:] = 0
    counts2 = np.column_stack([s["n_pv"], s["n_prod"], np.ones((n, 5)), np.full(n, 3)])
    s["dwell"] = rng.gamma(counts2, store.STAGE_DWELL[None, :] * 0.08)
    s["p"][:] = 0.0
    s["p"][:, 0] = 1.0
    s["key"] = (
        (np.uint64(1) << np.uint64(40))
        + (np.uint64(index) << np.uint64(32))
        + np.arange(n, dtype=np.uint64)
    )
    return s


def _concat(parts: list[dict[str, np.ndarray]]) -> dict[str, np.ndarray]:
    return {k: np.concatenate([p[k] for p in parts]) for k in parts[0]}


def _session_dims(s: dict[str, np.ndarray], web_versions: list[str]):
    return {
        "device_type": (s["device"], list(store.DEVICES)),
        "os": (s["os"], list(store.OSES)),
        "os_version": (s["os_version"], OS_VERSION_VOCAB),
        "browser": (s["browser"], list(store.BROWSERS)),
        "browser_version": (s["browser_version"], BROWSER_VERSION_VOCAB),
        "app_version": (s["app_version"], web_versions),
        "country": (s["country"], list(store.COUNTRY_CODES)),
        "region": (s["region"], list(store.REGIONS)),
        "utm_source": (s["channel"], [c.source for c in store.CHANNELS]),
        "utm_medium": (s["channel"], [c.medium for c in store.CHANNELS]),
        "utm_campaign": (s["channel"], [c.campaign for c in store.CHANNELS]),
        "payment_provider": (s["provider"], list(store.PROVIDERS)),
        "category": (s["category"], list(CATALOG.category_names)),
    }


# --------------------------------------------------------------------------------------
# Events
# --------------------------------------------------------------------------------------


def _expand(counts: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Session index and within-kind index for each of counts[s] events of session s."""
    sess = np.repeat(np.arange(len(counts)), counts)
    first = np.cumsum(counts) - counts
    j = np.arange(len(sess)) - np.repeat(first, counts)
    return sess, j


# The contract schema with large_string for strings: pandas' Arrow-backed `str` dtype
# stores large_string, so building it directly saves a copy in to_pandas.
_FRAME_SCHEMA = pa.schema(
    [(f.name, pa.large_string() if f.type == pa.string() else f.type) for f in EVENT_ARROW_SCHEMA]
)


def _ls(text: str) -> pa.Scalar:
    return pa.scalar(text, pa.large_string())


def _take(vocab: list, codes: np.ndarray) -> pa.Array:
    return pc.take(pa.array(vocab, type=pa.large_string()), pa.array(codes, mask=codes < 0))


@dataclass
class FunnelOutcome:
    """How far every session gets, with and without the business incidents' effects.

    times/ends[S, 8]: when each session reaches / leaves each stage (seconds from the window
    start); p_base[S, 7]: the store's continuation probabilities (no incident), p: with the
    incidents' multipliers; stage[S]: 0..7, the deepest stage reached (7 = payment attempt);
    fail_base/fail_p[S]: payment failure probability without / with the incidents;
    first_failed, n_att, bought: the realised payment outcome. cohort_mask(cohort) -> bool[S].
    """

    times: np.ndarray
    ends: np.ndarray
    cohort_mask: Any
    p_base: np.ndarray
    p: np.ndarray
    stage: np.ndarray
    fail_base: np.ndarray
    fail_p: np.ndarray
    first_failed: np.ndarray
    n_att: np.ndarray
    bought: np.ndarray
    latency_factor: np.ndarray


def purchase_probability(fail: np.ndarray) -> np.ndarray:
    """P(a session that reaches the payment attempt buys) with failure probability `fail`
    per attempt and the store's retry probabilities (up to three attempts)."""
    r0, r1 = store.P_RETRY
    return (1 - fail) * (1 + fail * r0 + fail * r0 * fail * r1)


def funnel_outcome(s: dict[str, np.ndarray], ctx: _Ctx, incidents: list[Incident]) -> FunnelOutcome:
    """The funnel of every session of `s` under `incidents` (adds s["app_version"])."""
    n = len(s["hour"])
    dwell = s["dwell"]
    times = s["start_s"][:, None] + np.concatenate(
        [np.zeros((n, 1)), np.cumsum(dwell[:, :-1], 1)], 1
    )
    ends = times + dwell
    s["app_version"] = np.searchsorted(ctx.web_times, s["start_s"], side="right")
    dims = _session_dims(s, ctx.web_versions)

    def cohort_mask(cohort: dict[str, Any]) -> np.ndarray:
        mask = np.ones(n, dtype=bool)
        for dim, value in cohort.items():
            codes, vocab = dims[dim]
            mask &= np.isin(codes, [i for i, v in enumerate(vocab) if v == value])
        return mask

    fx = stage_effects(incidents, cohort_mask, times, ends, ctx.window.start)
    p = np.clip(s["p"] * fx.multiplier, 0.0, 1.0)
    stage = np.cumprod(s["u_stage"] < p, axis=1).sum(1)  # 0..7 (7 = reached payment attempt)
    fail_base = PROVIDER_FAIL[s["provider"]]
    fail_p = np.where(np.isnan(fx.failure_rate), fail_base, fx.failure_rate)
    up = s["u_pay"]
    f0, f1, f2 = (up[:, 0] < fail_p), (up[:, 1] < fail_p), (up[:, 2] < fail_p)
    r0, r1 = up[:, 3] < store.P_RETRY[0], up[:, 4] < store.P_RETRY[1]
    attempts = stage >= 7
    second = attempts & f0 & r0
    third = second & f1 & r1
    n_att = attempts.astype(np.int64) + second + third
    bought = attempts & (~f0 | (second & ~f1) | (third & ~f2))
    return FunnelOutcome(times, ends, cohort_mask, np.clip(s["p"], 0.0, 1.0), p, stage,
                         fail_base, fail_p, attempts & f0, n_att, bought, fx.latency_factor)


def _build_events(
    s: dict[str, np.ndarray], ctx: _Ctx, incidents: list[Incident], seed: int
) -> pa.Table:
    n = len(s["hour"])
    origin = ctx.window.start
    dwell = s["dwell"]
    funnel = funnel_outcome(s, ctx, incidents)
    times, ends, cohort_mask = funnel.times, funnel.ends, funnel.cohort_mask
    stage, fail_p, n_att, bought = funnel.stage, funnel.fail_p, funnel.n_att, funnel.bought

    count = {
        K_PAGE: s["n_pv"],
        K_PRODUCT: np.where(stage >= 1, s["n_prod"], 0),
        K_ADD: np.where(stage >= 2, s["n_add"], 0),
        K_REMOVE: np.where(stage >= 2, s["n_remove"], 0),
        K_CHECKOUT: (stage >= 3).astype(np.int64),
        K_SHIP: (stage >= 4).astype(np.int64),
        K_PAY: (stage >= 5).astype(np.int64),
        K_REVIEW: (stage >= 6).astype(np.int64),
        K_ATTEMPT: n_att,
        K_PURCHASE: bought.astype(np.int64),
        K_JS: s["js"].astype(np.int64),
    }
    salt = ctx.salt
    blocks: dict[str, list[np.ndarray]] = {
        k: []
        for k in (
            "sess",
            "kind",
            "j",
            "t",
            "page",
            "step",
            "sku",
            "qty",
            "revenue",
            "status",
            "latency",
            "error",
        )
    }
    # cart items: needed for revenue and for remove_from_cart
    item_sess, item_j = _expand(count[K_ADD])
    item_key = (
        s["key"][item_sess] * np.uint64(4096) + np.uint64(K_ADD * 256) + item_j.astype(np.uint64)
    )
    item_sku = _cart_sku(s["category"][item_sess], item_key, salt)
    item_qty = _quantity(item_key, salt)
    kept = item_j < (s["n_add"] - s["n_remove"])[item_sess]
    order_value = np.bincount(
        item_sess, weights=CATALOG.price[item_sku] * item_qty * kept, minlength=n
    )
    order_qty = np.bincount(item_sess, weights=item_qty * kept, minlength=n)
    last_attempt_t = np.zeros(n)

    for kind in range(11):
        sess, j = _expand(count[kind])
        m = len(sess)
        key = s["key"][sess] * np.uint64(4096) + np.uint64(kind * 256) + j.astype(np.uint64)
        v = _hash_u(key, salt + 1)
        page = np.full(m, -1)
        step = np.full(m, -1)
        sku = np.full(m, -1)
        qty = np.full(m, -1)
        revenue = np.full(m, np.nan)
        status = np.full(m, -1)
        latency = np.full(m, np.nan)
        error = np.full(m, -1)
        if kind == K_PAGE:
            t = times[sess, 0] + dwell[sess, 0] * (j + 0.8 * v * (j > 0)) / s["n_pv"][sess]
            w = _hash_u(key, salt + 2)
            landing = np.array([PT[c.landing] for c in store.CHANNELS])[s["channel"][sess]]
            browse = np.where(
                w < 0.25, PT["home"], np.where(w < 0.75, PT["category"], PT["search"])
            )
            page = np.where(j == 0, landing, browse)
        elif kind == K_PRODUCT:
            t = times[sess, 1] + dwell[sess, 1] * (j + 0.8 * v) / s["n_prod"][sess]
            w1, w2, w3 = (_hash_u(key, salt + k) for k in (2, 3, 4))
            cat = np.where(w1 < 0.75, s["category"][sess], _pick_cum(CATEGORY_CUM, w2))
            sku = CATALOG.sku_start[cat] + np.floor(CATALOG.sku_count[cat] * w3**1.6).astype(
                np.int64
            )
            page[:] = PT["product"]
        elif kind in (K_ADD, K_REMOVE):
            slots = (s["n_add"] + s["n_remove"])[sess]
            if kind == K_ADD:
                pos, src_j = j, j
                page[:] = PT["product"]
            else:
                pos, src_j = s["n_add"][sess] + j, s["n_add"][sess] - 1 - j
                page[:] = PT["cart"]
            t = times[sess, 2] + dwell[sess, 2] * (pos + 0.5 * v) / slots
            ikey = (
                s["key"][sess] * np.uint64(4096) + np.uint64(K_ADD * 256) + src_j.astype(np.uint64)
            )
            sku = _cart_sku(s["category"][sess], ikey, salt)
            qty = _quantity(ikey, salt)
        elif kind == K_CHECKOUT:
            t = times[sess, 3]
            page[:] = PT["cart"]
        elif kind in (K_SHIP, K_PAY, K_REVIEW):
            t = times[sess, kind - K_SHIP + 4]
            page[:] = PT["checkout"]
            step[:] = kind - K_SHIP
        elif kind == K_ATTEMPT:
            t = times[sess, 7] + dwell[sess, 7] * (j + 0.3 * v) / 3.0
            page[:] = PT["checkout"]
            ok = bought[sess] & (j == n_att[sess] - 1)
            status = np.where(
                ok, PAYMENT_STATUSES.index("success"), PAYMENT_STATUSES.index("failure")
            )
            prov = s["provider"][sess]
            u1, u2, u3, u4 = (_hash_u(key, salt + k) for k in (2, 3, 4, 5))
            z = np.sqrt(-2.0 * np.log(np.maximum(u1, 1e-12))) * np.cos(2 * np.pi * u2)
            latency = np.round(
                PROVIDER_LATENCY[prov]
                * np.exp(0.35 * z)
                * np.where(ok, 1.0, 1.3)
                * funnel.latency_factor[sess],
                1,
            )
            base_f = PROVIDER_FAIL[prov]
            inc_f = fail_p[sess]
            outage = (inc_f > base_f) & (u3 < (inc_f - base_f) / np.maximum(inc_f, 1e-9))
            normal_code = _pick_cum(PAY_ERR_CUM, u4)
            outage_code = len(PAY_ERR_VOCAB) + (u4 < 0.6).astype(np.int64)
            error = np.where(ok, -1, np.where(outage, outage_code, normal_code))
            np.maximum.at(last_attempt_t, sess, t + latency / 1000.0)
        elif kind == K_PURCHASE:
            t = last_attempt_t[sess] + 1.0 + 3.0 * v
            page[:] = PT["confirmation"]
            revenue = np.round(order_value[sess], 2)
            qty = order_qty[sess].astype(np.int64)
        else:  # K_JS
            end = ends[sess, np.minimum(stage[sess], 7)]
            t = times[sess, 0] + v * (end - times[sess, 0])
            w = _hash_u(key, salt + 2)
            page = np.array([PT["home"], PT["category"], PT["product"], PT["checkout"]])[
                np.minimum((w * 4).astype(np.int64), 3)
            ]
            error = (
                len(PAY_ERR_VOCAB)
                + len(store.OUTAGE_ERROR_CODES)
                + _pick_cum(JS_ERR_CUM, _hash_u(key, salt + 3))
            )
        for name, arr in (
            ("sess", sess),
            ("kind", np.full(m, kind)),
            ("j", j),
            ("t", t),
            ("page", page),
            ("step", step),
            ("sku", sku),
            ("qty", qty),
            ("revenue", revenue),
            ("status", status),
            ("latency", latency),
            ("error", error),
        ):
            blocks[name].append(arr)

    ev = {k: np.concatenate(v) for k, v in blocks.items()}
    t_us = np.int64(origin.value // 1000) + np.round(ev["t"] * 1e6).astype(np.int64)
    event_types = list(EVENT_TYPES)
    etype = KIND_EVENT_TYPE[ev["kind"]]

    # data-quality faults, on the arrays (before any string is built)
    plan = plan_event_faults(
        incidents,
        seed,
        t_us,
        is_type=lambda name: (
            etype == event_types.index(name) if name in event_types else np.zeros(len(etype), bool)
        ),
        cohort_mask=lambda cohort: cohort_mask(cohort)[ev["sess"]],
    )
    rows = np.concatenate([np.flatnonzero(~plan.drop), plan.duplicates, plan.extra_rows])
    ev = {k: a[rows] for k, a in ev.items()}
    t_us = t_us[rows]
    etype = etype[rows]
    n_extra = len(plan.extra_rows)
    if n_extra:
        for name in dict.fromkeys(plan.extra_types):
            if name not in event_types:
                event_types.append(name)
        extra_codes = np.array([event_types.index(t) for t in plan.extra_types], dtype=np.int64)
        etype[-n_extra:] = extra_codes
        ev["kind"][-n_extra:] = K_EXTRA + extra_codes  # distinct slot for the event id
        t_us[-n_extra:] += plan.extra_shift_us
    # the window ends at `end` for everyone: later events of running sessions are not yet
    # collected (a spill-over hour would look like a traffic collapse)
    inside = np.flatnonzero(t_us < np.int64(ctx.window.end.value // 1000))
    order = inside[np.argsort(t_us[inside], kind="stable")]
    ev = {k: a[order] for k, a in ev.items()}
    t_us, etype = t_us[order], etype[order]
    sess, kind = ev["sess"], ev["kind"]

    # string columns as codes into small vocabularies (-1 = null)
    has_sku = ev["sku"] >= 0
    is_purchase = kind == K_PURCHASE
    sku_codes = np.where(has_sku, ev["sku"], -1)
    ch = s["channel"][sess]
    coded: dict[str, tuple[list, np.ndarray]] = {
        "event_type": (event_types, etype),
        "page_type": (list(PAGE_TYPES), ev["page"]),
        "checkout_step": (list(CHECKOUT_STEPS), ev["step"]),
        "sku": (list(CATALOG.sku), sku_codes),
        "category": (
            list(CATALOG.category_names),
            np.where(has_sku, CATALOG.category[np.maximum(sku_codes, 0)], -1),
        ),
        "currency": (["USD"], np.where(has_sku | is_purchase, 0, -1)),
        "device_type": (list(store.DEVICES), s["device"][sess]),
        "os": (list(store.OSES), s["os"][sess]),
        "os_version": (OS_VERSION_VOCAB, s["os_version"][sess]),
        "browser": (list(store.BROWSERS), s["browser"][sess]),
        "browser_version": (BROWSER_VERSION_VOCAB, s["browser_version"][sess]),
        "app_version": (ctx.web_versions, s["app_version"][sess]),
        "country": (list(store.COUNTRY_CODES), s["country"][sess]),
        "region": (list(store.REGIONS), s["region"][sess]),
        "utm_source": ([c.source for c in store.CHANNELS], ch),
        "utm_medium": ([c.medium for c in store.CHANNELS], ch),
        "utm_campaign": ([c.campaign for c in store.CHANNELS], ch),
        "payment_provider": (
            list(store.PROVIDERS),
            np.where(kind == K_ATTEMPT, s["provider"][sess], -1),
        ),
        "payment_status": (list(PAYMENT_STATUSES), ev["status"]),
        "error_code": (ERROR_VOCAB, ev["error"]),
    }
    for field_name, inc in plan.nulls:
        if field_name not in coded:
            raise ValueError(
                f"null_field {inc.id}: field {field_name!r} cannot be nulled; "
                f"choose one of {sorted(coded)}"
            )
        hit = null_mask(t_us, inc, lambda cohort: cohort_mask(cohort)[sess])
        vocab, codes = coded[field_name]
        coded[field_name] = (vocab, np.where(hit, -1, codes))

    # ids
    hour_labels = pd.date_range(origin, periods=ctx.n_hours, freq="h").strftime("%y%m%d%H").tolist()
    k = _rank_in_hour(s["hour"])
    k_str = pc.utf8_lpad(pa.array(k).cast(pa.large_string()), width=6, padding="0")
    labels = pc.take(pa.array(hour_labels, pa.large_string()), pa.array(s["hour"]))
    session_ids = pc.binary_join_element_wise(_ls("s"), labels, k_str, _ls("-"))
    order_ids = pc.binary_join_element_wise(_ls("o"), labels, k_str, _ls("-"))
    user_ids = pc.binary_join_element_wise(
        _ls("u"),
        pc.utf8_lpad(pa.array(s["user"]).cast(pa.large_string()), width=6, padding="0"),
        _ls("_"),
    )
    slot = pa.array(kind * 1000 + ev["j"]).cast(pa.large_string())
    ev_session = pc.take(session_ids, pa.array(sess))
    event_id = pc.binary_join_element_wise(
        ev_session, pc.utf8_lpad(slot, width=5, padding="0"), _ls("-")
    )
    order_id = pc.if_else(
        pa.array(is_purchase),
        pc.take(order_ids, pa.array(sess)),
        pa.scalar(None, pa.large_string()),
    )
    price = np.where(has_sku, CATALOG.price[np.maximum(ev["sku"], 0)], np.nan)

    columns = {name: _take(vocab, codes) for name, (vocab, codes) in coded.items()}
    columns.update(
        {
            "event_id": event_id,
            "event_time": pa.array(t_us, type=pa.timestamp("us", tz="UTC")),
            "user_id": pc.take(user_ids, pa.array(sess)),
            "session_id": ev_session,
            "price": pa.array(price, from_pandas=True),
            "quantity": pa.array(ev["qty"].astype(np.int32), mask=ev["qty"] < 0),
            "order_id": order_id,
            "revenue": pa.array(ev["revenue"], from_pandas=True),
            "latency_ms": pa.array(ev["latency"], from_pandas=True),
        }
    )
    return pa.Table.from_arrays(
        [columns[f.name].cast(_FRAME_SCHEMA.field(f.name).type) for f in EVENT_ARROW_SCHEMA],
        schema=_FRAME_SCHEMA,
    )


def _cart_sku(category: np.ndarray, key: np.ndarray, salt: int) -> np.ndarray:
    w = _hash_u(key, salt + 7)
    return CATALOG.sku_start[category] + np.floor(CATALOG.sku_count[category] * w**1.6).astype(
        np.int64
    )


def _quantity(key: np.ndarray, salt: int) -> np.ndarray:
    w = _hash_u(key, salt + 8)
    return 1 + (w > 0.85).astype(np.int64) + (w > 0.97).astype(np.int64)


def _rank_in_hour(hour: np.ndarray) -> np.ndarray:
    order = np.argsort(hour, kind="stable")
    sorted_hours = hour[order]
    first = np.searchsorted(sorted_hours, sorted_hours, side="left")
    rank = np.empty(len(hour), dtype=np.int64)
    rank[order] = np.arange(len(hour)) - first
    return rank


# --------------------------------------------------------------------------------------
# Public API
# --------------------------------------------------------------------------------------


@dataclass
class PreparedStore:
    """Everything `simulate` decides before building events: the resolved incidents, the
    reference tables, the traffic model (`ctx.lam`: expected sessions per hour and country,
    `ctx.chan_p`: channel shares per hour) and every session's attributes and uniforms."""

    window: store.Window
    incidents: list[Incident]
    deploys: pd.DataFrame
    holidays: pd.DataFrame
    campaigns: pd.DataFrame
    ctx: _Ctx
    sessions: dict[str, np.ndarray]
    extra_labels: dict[str, dict[str, Any]]
    seed: int


def prepare(cfg: SimulationConfig) -> PreparedStore:
    """The store of `cfg` up to its sessions (no events): shared by `simulate` and the
    evaluation's oracle (simulator.oracle), which needs the same sessions' probabilities."""
    window = cfg.window()
    incidents = resolve_incidents(cfg.incident_specs(), window.start, window.end)
    seed = int(cfg.seed)
    holidays = store.build_holidays(window)
    campaigns = store.campaign_windows(window)
    for inc in incidents:  # a campaign whose launch is the incident: its traffic starts then
        if inc.type == "campaign_loss" and inc.params.get("starts_campaign"):
            launched = campaigns["campaign_name"] == inc.cohort["utm_campaign"]
            if not launched.any():
                raise ValueError(f"campaign_loss {inc.id}: unknown campaign "
                                 f"{inc.cohort['utm_campaign']!r}")
            campaigns.loc[launched, "start_time"] = inc.start
    routine = store.build_deploys(window, np.random.default_rng([seed, 2]))
    extra = incident_deploys(incidents)
    deploys = store.assign_versions(
        pd.concat([d for d in (routine, extra) if len(d)], ignore_index=True)
        if len(extra)
        else routine
    )
    web = deploys[deploys["service"] == "web"]
    web_times = ((web["deploy_time"] - window.start).dt.total_seconds()).to_numpy()
    web_versions = [store.initial_version("web"), *web["version"].tolist()]

    lam, chan_p, conv_cal = _traffic(window, float(cfg.sessions_per_hour), holidays, campaigns)
    expected = float(lam.sum())
    pool_total = int(max(200, expected / SESSIONS_PER_USER))
    pool_size = np.maximum(1, np.round(COUNTRY_SHARE * pool_total)).astype(np.int64)
    pool_offset = np.cumsum(pool_size) - pool_size
    ctx = _Ctx(
        window,
        lam.shape[0],
        lam,
        chan_p,
        conv_cal,
        pool_size,
        pool_offset,
        int(pool_size.sum()),
        web_times,
        web_versions,
        salt=int(np.random.default_rng([seed, 3]).integers(0, 2**62)),
    )

    rng = np.random.default_rng([seed, 1])
    counts = rng.poisson(lam).ravel()
    hc = np.repeat(np.arange(counts.size), counts)
    n_countries = lam.shape[1]
    parts = [_session_arrays(ctx, rng, hc // n_countries, hc % n_countries)]
    extra_labels: dict[str, dict[str, Any]] = {}
    for index, inc in enumerate(incidents):
        if inc.type == "bot_spike":
            bots = _bot_sessions(ctx, inc, index)
            extra_labels[inc.id] = {"bot_sessions": 0 if bots is None else len(bots["hour"])}
            if bots is not None:
                parts.append(bots)
    sessions = _concat(parts) if len(parts) > 1 else parts[0]
    return PreparedStore(window, incidents, deploys, holidays, campaigns, ctx, sessions,
                         extra_labels, seed)


def simulate(cfg: SimulationConfig) -> SimulationResult:
    """Generate the store's events, reference tables and incident labels for `cfg`."""
    prepared = prepare(cfg)
    incidents, deploys, seed = prepared.incidents, prepared.deploys, prepared.seed
    extra_labels = prepared.extra_labels
    table = _build_events(prepared.sessions, prepared.ctx, incidents, seed)
    events = table.to_pandas(types_mapper={pa.int32(): pd.Int32Dtype()}.get)
    late = late_deliveries(events, incidents, seed)
    for d in late:
        extra_labels.setdefault(d.incident_id, {})["rows"] = len(d.rows)
    labels = ground_truth(
        incidents, deploys, dict(zip(store.PROVIDERS, PROVIDER_FAIL.tolist())), extra_labels
    )
    reference = {"deploys": deploys, "campaigns": prepared.campaigns,
                 "holidays": prepared.holidays}
    return SimulationResult(events, reference, labels, late, cfg)


def write_simulation(
    result: SimulationResult, landing_dir: str | Path, ground_truth_path: str | Path | None = None
) -> dict[str, Any]:
    """Write the events (one Parquet file per event hour, late rows as `late.parquet` with
    the arrival time as mtime), the reference CSVs and the ground-truth JSON.

    Returns {"events": [paths], "late": [paths], "reference": [paths], "ground_truth": path}.
    """
    landing = Path(landing_dir)
    producer = result.config.producer if result.config else "simulator"
    events = result.events
    late_rows = np.zeros(len(events), dtype=bool)
    for d in result.late:
        late_rows[d.rows] = True
    written = write_events(events.loc[~late_rows], landing, producer)
    late_paths = []
    for d in result.late:
        if len(d.rows) == 0:
            continue
        path = hour_dir(landing, d.hour) / "late.parquet"
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.tmp")
        pq.write_table(
            to_arrow(events.iloc[d.rows].reset_index(drop=True)), tmp, compression="zstd"
        )
        os.chmod(tmp, LANDING_FILE_MODE)
        os.replace(tmp, path)
        stamp = d.arrives_at.timestamp()
        os.utime(path, (stamp, stamp))
        late_paths.append(path)
    reference = write_reference(result.reference, landing)
    out: dict[str, Any] = {
        "events": written,
        "late": late_paths,
        "reference": reference,
        "ground_truth": None,
    }
    if ground_truth_path is not None:
        gt = Path(ground_truth_path)
        gt.parent.mkdir(parents=True, exist_ok=True)
        gt.write_text(json.dumps(result.incidents, indent=2) + "\n")
        out["ground_truth"] = gt
    return out
