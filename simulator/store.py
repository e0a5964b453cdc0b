"""The store model: catalog, cohorts, traffic seasonality, the calendar and deploys.

Everything here is plain data plus small helpers that turn the data into probability tables.
`simulator.generate` draws sessions from these tables; nothing in this module loops over
events. Shares are fractions that sum to 1 within a table; conversion multipliers are
relative to an average session (1.0).
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass

import numpy as np
import pandas as pd

from funnelwatch.contract import DEVICE_TYPES

# --------------------------------------------------------------------------------------
# Catalog: ~200 SKUs in 8 categories. Fixed (not seeded by the simulation seed) so SKUs and
# prices are the same in every run.
# --------------------------------------------------------------------------------------

# name, number of SKUs, median price (USD), lognormal sigma, share of browsing interest
CATEGORIES: tuple[tuple[str, int, float, float, float], ...] = (
    ("electronics", 30, 160.0, 0.7, 0.20),
    ("apparel", 35, 45.0, 0.5, 0.20),
    ("home", 25, 60.0, 0.6, 0.13),
    ("beauty", 25, 24.0, 0.5, 0.12),
    ("sports", 25, 55.0, 0.6, 0.11),
    ("toys", 20, 30.0, 0.5, 0.09),
    ("books", 20, 16.0, 0.3, 0.08),
    ("kitchen", 20, 40.0, 0.5, 0.07),
)
CATALOG_SEED = 20261101


@dataclass(frozen=True)
class Catalog:
    sku: np.ndarray  # object array of SKU strings
    category: np.ndarray  # int category index per SKU
    price: np.ndarray  # float unit price per SKU
    category_names: tuple[str, ...]
    category_share: np.ndarray  # browsing interest per category (sums to 1)
    sku_start: np.ndarray  # first SKU index of each category
    sku_count: np.ndarray  # number of SKUs per category

    def frame(self) -> pd.DataFrame:
        return pd.DataFrame(
            {
                "sku": self.sku,
                "category": [self.category_names[c] for c in self.category],
                "price": self.price,
            }
        )


def build_catalog() -> Catalog:
    rng = np.random.default_rng(CATALOG_SEED)
    skus, cats, prices, starts, counts = [], [], [], [], []
    for ci, (name, n, median, sigma, _) in enumerate(CATEGORIES):
        starts.append(len(skus))
        counts.append(n)
        for j in range(n):
            skus.append(f"SKU-{name[:3].upper()}-{j + 1:03d}")
        cats.extend([ci] * n)
        raw = median * np.exp(sigma * rng.standard_normal(n))
        prices.extend(np.round(np.maximum(raw, 2.0), 0) - 0.01)  # "$39.99" pricing
    share = np.array([c[4] for c in CATEGORIES])
    return Catalog(
        sku=np.array(skus, dtype=object),
        category=np.array(cats, dtype=np.int64),
        price=np.array(prices, dtype=np.float64),
        category_names=tuple(c[0] for c in CATEGORIES),
        category_share=share / share.sum(),
        sku_start=np.array(starts, dtype=np.int64),
        sku_count=np.array(counts, dtype=np.int64),
    )


# --------------------------------------------------------------------------------------
# Cohorts
# --------------------------------------------------------------------------------------

# code, share of traffic, UTC offset in hours (no DST), conversion multiplier, regions
COUNTRIES: tuple[tuple[str, float, int, float, tuple[str, ...]], ...] = (
    (
        "US",
        0.42,
        -5,
        1.10,
        ("California", "Texas", "New York", "Florida", "Illinois", "Washington"),
    ),
    ("GB", 0.12, 0, 1.05, ("England", "Scotland", "Wales", "Northern Ireland")),
    ("DE", 0.09, 1, 1.00, ("Bavaria", "Berlin", "North Rhine-Westphalia", "Hesse")),
    ("FR", 0.07, 1, 0.95, ("Ile-de-France", "Auvergne-Rhone-Alpes", "Occitanie")),
    ("CA", 0.07, -5, 1.00, ("Ontario", "Quebec", "British Columbia", "Alberta")),
    ("AU", 0.05, 11, 1.00, ("New South Wales", "Victoria", "Queensland")),
    ("NL", 0.04, 1, 1.05, ("North Holland", "South Holland", "Utrecht")),
    ("ES", 0.05, 1, 0.90, ("Madrid", "Catalonia", "Andalusia")),
    ("IT", 0.05, 1, 0.90, ("Lombardy", "Lazio", "Campania")),
    ("BR", 0.04, -3, 0.70, ("Sao Paulo", "Rio de Janeiro", "Minas Gerais")),
)
COUNTRY_CODES = tuple(c[0] for c in COUNTRIES)
REGIONS: tuple[str, ...] = tuple(r for c in COUNTRIES for r in c[4])

DEVICES = ("desktop", "mobile", "tablet")
assert set(DEVICES) <= set(DEVICE_TYPES)
DEVICE_CONV = np.array([1.25, 0.80, 1.00])
# checkout steps (shipping/payment/review) are harder on small screens
DEVICE_CHECKOUT = np.array([1.03, 0.97, 1.00])

OSES = ("Windows", "macOS", "Linux", "iOS", "Android")
OS_CONV = np.array([1.00, 1.15, 0.90, 1.10, 0.85])
OS_GIVEN_DEVICE = np.array(
    [
        [0.68, 0.27, 0.05, 0.00, 0.00],  # desktop
        [0.00, 0.00, 0.00, 0.55, 0.45],  # mobile
        [0.00, 0.00, 0.00, 0.65, 0.35],  # tablet
    ]
)
OS_VERSIONS: dict[str, tuple[tuple[str, float], ...]] = {
    "Windows": (("11", 0.62), ("10", 0.38)),
    "macOS": (("15.1", 0.45), ("14.7", 0.35), ("13.6", 0.20)),
    "Linux": (("6.8", 0.6), ("6.5", 0.4)),
    "iOS": (("18.1", 0.45), ("18.0", 0.20), ("17.6", 0.25), ("16.7", 0.10)),
    "Android": (("15", 0.25), ("14", 0.40), ("13", 0.22), ("12", 0.13)),
}

BROWSERS = ("Chrome", "Safari", "Firefox", "Edge", "Samsung Internet")
BROWSER_CONV = np.array([1.00, 1.00, 0.95, 0.95, 0.85])
BROWSER_GIVEN_OS = np.array(
    [
        [0.68, 0.00, 0.10, 0.22, 0.00],  # Windows
        [0.38, 0.55, 0.07, 0.00, 0.00],  # macOS
        [0.70, 0.00, 0.30, 0.00, 0.00],  # Linux
        [0.15, 0.85, 0.00, 0.00, 0.00],  # iOS
        [0.78, 0.00, 0.05, 0.00, 0.17],  # Android
    ]
)
BROWSER_VERSIONS: dict[str, tuple[tuple[str, float], ...]] = {
    "Chrome": (("131.0", 0.35), ("130.0", 0.45), ("129.0", 0.20), ("120.0", 0.0)),  # 120: bots
    "Safari": (("18.1", 0.50), ("18.0", 0.25), ("17.6", 0.25)),
    "Firefox": (("132.0", 0.6), ("131.0", 0.3), ("128.0", 0.1)),
    "Edge": (("130.0", 0.7), ("129.0", 0.3)),
    "Samsung Internet": (("26.0", 0.6), ("25.0", 0.4)),
}
# base rate of sessions with a js_error event, per browser
BROWSER_JS_ERROR = np.array([0.012, 0.018, 0.015, 0.012, 0.035])
JS_ERROR_CODES: tuple[tuple[str, float], ...] = (
    ("TypeError", 0.40),
    ("ChunkLoadError", 0.20),
    ("NetworkError", 0.20),
    ("ReferenceError", 0.10),
    ("ResizeObserverLoopError", 0.10),
)


@dataclass(frozen=True)
class Channel:
    """A traffic source: one utm_source/utm_medium/utm_campaign combination."""

    key: str
    source: str | None
    medium: str | None
    campaign: str | None
    weight: float  # share of traffic while active (renormalised over active channels)
    conv: float  # conversion multiplier
    mobile: float  # share of mobile sessions (tablets take 6% / 3%, the rest desktop)
    ios_boost: float  # multiplier on the iOS share of mobile/tablet sessions
    landing: str  # page_type of the first page view


CHANNELS: tuple[Channel, ...] = (
    Channel("direct", None, None, None, 0.28, 1.20, 0.50, 1.0, "home"),
    Channel("organic", "google", "organic", None, 0.30, 1.00, 0.55, 1.0, "search"),
    Channel("brand_search", "google", "cpc", "brand_search", 0.13, 1.40, 0.50, 1.0, "home"),
    Channel(
        "newsletter", "newsletter", "email", "weekly_newsletter", 0.05, 1.50, 0.55, 1.1, "category"
    ),
    Channel("fb_retarget", "facebook", "social", "fb_retarget", 0.08, 1.25, 0.70, 1.0, "product"),
    Channel("ig_sale", "instagram", "social", "ig_sale", 0.20, 0.90, 0.92, 1.5, "category"),
)
CHANNEL_KEYS = tuple(c.key for c in CHANNELS)
NEWSLETTER_SEND_WEEKDAY = 1  # Tuesday: newsletter traffic x3 on send day
NEWSLETTER_SEND_BOOST = 3.0

# name, share, base failure rate, median latency ms
PAYMENT_PROVIDERS: tuple[tuple[str, float, float, float], ...] = (
    ("stripe", 0.45, 0.030, 450.0),
    ("adyen", 0.25, 0.035, 520.0),
    ("paypal", 0.20, 0.040, 900.0),
    ("klarna", 0.10, 0.060, 750.0),
)
PROVIDERS = tuple(p[0] for p in PAYMENT_PROVIDERS)
PAYMENT_ERROR_CODES: tuple[tuple[str, float], ...] = (
    ("card_declined", 0.45),
    ("insufficient_funds", 0.20),
    ("authentication_failed", 0.15),
    ("processing_error", 0.10),
    ("timeout", 0.10),
)
OUTAGE_ERROR_CODES: tuple[str, ...] = ("provider_unavailable", "gateway_timeout")

# --------------------------------------------------------------------------------------
# Funnel: base continuation probabilities between stages (before cohort multipliers).
# --------------------------------------------------------------------------------------
P_PRODUCT_VIEW = 0.62  # page_view -> product_view
P_ADD_TO_CART = 0.14  # product_view -> add_to_cart (x cohort, campaign, calendar)
P_CHECKOUT_START = 0.45  # add_to_cart -> checkout_start (x sqrt(cohort))
P_SHIPPING = 0.86  # checkout_start -> step shipping
P_PAYMENT = 0.82  # shipping -> step payment
P_REVIEW = 0.90  # payment -> step review
P_ATTEMPT = 0.96  # review -> payment_attempt
P_RETRY = (0.60, 0.40)  # retry after a 1st / 2nd failed attempt
P_REMOVE = 0.30  # remove_from_cart when the cart holds >= 2 items

# mean dwell seconds per event, by stage: page, product, cart, checkout_start, shipping,
# payment, review, payment attempt
STAGE_DWELL = np.array([25.0, 45.0, 20.0, 30.0, 60.0, 50.0, 30.0, 20.0])

# --------------------------------------------------------------------------------------
# Traffic: local-time diurnal and weekly profiles (each normalised to mean 1), growth.
# --------------------------------------------------------------------------------------
_DIURNAL = np.array(
    [
        0.55,
        0.35,
        0.25,
        0.20,
        0.20,
        0.25,
        0.40,
        0.60,
        0.80,
        0.95,
        1.05,
        1.10,
        1.20,
        1.15,
        1.10,
        1.10,
        1.15,
        1.25,
        1.40,
        1.60,
        1.80,
        1.75,
        1.40,
        0.95,
    ]
)
DIURNAL = _DIURNAL / _DIURNAL.mean()
_WEEKLY = np.array([0.96, 0.94, 0.95, 0.97, 0.98, 1.07, 1.13])  # Mon..Sun
WEEKLY = _WEEKLY / _WEEKLY.mean()
GROWTH_PER_DAY = 0.002  # +0.2% a day, compounding from the window start

# --------------------------------------------------------------------------------------
# Calendar: holidays and promotions (expected surges, not anomalies)
# --------------------------------------------------------------------------------------
# name -> (traffic multiplier, conversion multiplier)
BLACK_FRIDAY = ("Black Friday", 2.5, 1.30)
CYBER_MONDAY = ("Cyber Monday", 2.2, 1.25)
PROMOTION_EFFECT = (1.6, 1.20)
HOLIDAY_EFFECT = (1.10, 1.00)
SPECIAL_HOLIDAY_EFFECT = {
    "Thanksgiving": (0.80, 1.0),
    "Christmas Day": (0.60, 0.9),
    "New Year's Day": (0.80, 1.0),
}


def _nth_weekday(year: int, month: int, weekday: int, n: int) -> dt.date:
    first = dt.date(year, month, 1)
    return first + dt.timedelta(days=(weekday - first.weekday()) % 7 + 7 * (n - 1))


def _last_weekday(year: int, month: int, weekday: int) -> dt.date:
    nxt = dt.date(year + (month == 12), month % 12 + 1, 1)
    last = nxt - dt.timedelta(days=1)
    return last - dt.timedelta(days=(last.weekday() - weekday) % 7)


def black_friday(year: int) -> dt.date:
    """The 4th Friday of November."""
    return _nth_weekday(year, 11, 4, 4)


# (name, country, date rule)
NATIONAL_HOLIDAYS: tuple[tuple[str, str, object], ...] = (
    ("New Year's Day", "ALL", lambda y: dt.date(y, 1, 1)),
    ("Australia Day", "AU", lambda y: dt.date(y, 1, 26)),
    ("King's Day", "NL", lambda y: dt.date(y, 4, 27)),
    ("Memorial Day", "US", lambda y: _last_weekday(y, 5, 0)),
    ("Festa della Repubblica", "IT", lambda y: dt.date(y, 6, 2)),
    ("Canada Day", "CA", lambda y: dt.date(y, 7, 1)),
    ("Independence Day", "US", lambda y: dt.date(y, 7, 4)),
    ("Bastille Day", "FR", lambda y: dt.date(y, 7, 14)),
    ("Brazilian Independence Day", "BR", lambda y: dt.date(y, 9, 7)),
    ("German Unity Day", "DE", lambda y: dt.date(y, 10, 3)),
    ("Fiesta Nacional de Espana", "ES", lambda y: dt.date(y, 10, 12)),
    ("Armistice Day", "FR", lambda y: dt.date(y, 11, 11)),
    ("Republic Proclamation Day", "BR", lambda y: dt.date(y, 11, 15)),
    ("Thanksgiving", "US", lambda y: _nth_weekday(y, 11, 3, 4)),
    ("Christmas Day", "ALL", lambda y: dt.date(y, 12, 25)),
    ("Boxing Day", "GB", lambda y: dt.date(y, 12, 26)),
)


def promotion_name(day: dt.date) -> str:
    season = {
        12: "winter",
        1: "winter",
        2: "winter",
        3: "spring",
        4: "spring",
        5: "spring",
        6: "summer",
        7: "summer",
        8: "summer",
    }.get(day.month, "autumn")
    return f"{season}_sale"


@dataclass(frozen=True)
class Window:
    start: pd.Timestamp  # tz-aware UTC, inclusive
    end: pd.Timestamp  # tz-aware UTC, exclusive

    @property
    def days(self) -> float:
        return (self.end - self.start) / pd.Timedelta(days=1)


def build_holidays(window: Window) -> pd.DataFrame:
    """The holidays reference table: the days that some affected country's local time
    touches during the window.

    Black Friday and Cyber Monday (promotions, ALL countries) when they fall in the window,
    one mid-window promotion (`<season>_sale`) when the window is at least 10 days long, and
    the national holidays of the store's countries.
    """
    first = (window.start - pd.Timedelta(hours=12)).date()
    last = (window.end + pd.Timedelta(hours=12)).date()
    rows: list[tuple[dt.date, str, str, str]] = []
    for year in range(first.year, last.year + 1):
        bf = black_friday(year)
        rows.append((bf, BLACK_FRIDAY[0], "ALL", "promotion"))
        rows.append((bf + dt.timedelta(days=3), CYBER_MONDAY[0], "ALL", "promotion"))
        for name, country, rule in NATIONAL_HOLIDAYS:
            rows.append((rule(year), name, country, "holiday"))  # type: ignore[operator]
    if window.days >= 10:
        mid = (window.start + pd.Timedelta(days=int(window.days) // 2)).date()
        rows.append((mid, promotion_name(mid), "ALL", "promotion"))
    spans = {
        c[0]: (
            (window.start + pd.Timedelta(hours=c[2])).date(),
            (window.end - pd.Timedelta(microseconds=1) + pd.Timedelta(hours=c[2])).date(),
        )
        for c in COUNTRIES
    }

    def touches(day: dt.date, country: str) -> bool:
        codes = spans if country == "ALL" else [country]
        return any(spans[c][0] <= day <= spans[c][1] for c in codes if c in spans)

    rows = [r for r in rows if touches(r[0], r[2])]
    rows.sort(key=lambda r: (r[0], r[1]))
    return pd.DataFrame(rows, columns=["holiday_date", "name", "country", "kind"])


def calendar_effects(
    holidays: pd.DataFrame, local_dates: np.ndarray, country: int
) -> tuple[np.ndarray, np.ndarray]:
    """Traffic and conversion multipliers for a country on the given local dates."""
    traffic = np.ones(len(local_dates))
    conv = np.ones(len(local_dates))
    code = COUNTRY_CODES[country]
    for row in holidays.itertuples(index=False):
        if row.country not in ("ALL", code):
            continue
        if row.name == BLACK_FRIDAY[0]:
            t, c = BLACK_FRIDAY[1:]
        elif row.name == CYBER_MONDAY[0]:
            t, c = CYBER_MONDAY[1:]
        elif row.kind == "promotion":
            t, c = PROMOTION_EFFECT
        else:
            t, c = SPECIAL_HOLIDAY_EFFECT.get(row.name, HOLIDAY_EFFECT)
        hit = local_dates == np.datetime64(row.holiday_date, "D")
        traffic[hit] *= t
        conv[hit] *= c
    return traffic, conv


def campaign_windows(window: Window) -> pd.DataFrame:
    """The campaigns reference table: always-on campaigns span the window with a margin;
    ig_sale runs from day 2 to two days before the end (the whole window if it is shorter
    than 5 days)."""
    margin = pd.Timedelta(days=28)
    ig_start, ig_end = window.start, window.end
    if window.days >= 5:
        ig_start = window.start.normalize() + pd.Timedelta(days=2)
        ig_end = window.end.normalize() - pd.Timedelta(days=2)
    rows = []
    for ch in CHANNELS:
        if ch.campaign is None:
            continue
        if ch.key == "ig_sale":
            rows.append((ch.campaign, ig_start, ig_end, ch.medium))
        else:
            channel = "cpc" if ch.medium == "cpc" else ch.medium
            rows.append((ch.campaign, window.start - margin, window.end + margin, channel))
    frame = pd.DataFrame(rows, columns=["campaign_name", "start_time", "end_time", "channel"])
    for c in ("start_time", "end_time"):
        frame[c] = pd.to_datetime(frame[c], utc=True).astype("datetime64[us, UTC]")
    return frame


# --------------------------------------------------------------------------------------
# Deploys: 1-3 a weekday, one on weekend days, during working hours UTC.
# --------------------------------------------------------------------------------------
DEPLOY_SERVICES: tuple[tuple[str, float, str], ...] = (
    # service, share, first version
    ("web", 0.45, "4.18.0"),
    ("checkout", 0.20, "2.7.0"),
    ("payment-widget", 0.15, "1.12.0"),
    ("search", 0.20, "3.4.0"),
)
DEPLOY_DESCRIPTIONS: dict[str, tuple[str, ...]] = {
    "web": (
        "homepage banner refresh",
        "product page image lazy-loading",
        "footer links update",
        "bump frontend dependencies",
        "category page filter fix",
        "analytics SDK patch",
    ),
    "checkout": (
        "address form validation tweak",
        "shipping options refactor",
        "order summary copy change",
        "tax calculation fix",
    ),
    "payment-widget": (
        "card form styling fix",
        "update provider SDKs",
        "saved cards list performance",
    ),
    "search": (
        "ranking model refresh",
        "synonyms update",
        "autocomplete latency fix",
        "index rebuild",
    ),
}


def build_deploys(window: Window, rng: np.random.Generator) -> pd.DataFrame:
    """Routine deploys (no versions yet; see `assign_versions`)."""
    days = pd.date_range(window.start.normalize(), window.end, freq="D", tz="UTC")
    services = [s[0] for s in DEPLOY_SERVICES]
    shares = np.array([s[1] for s in DEPLOY_SERVICES])
    rows = []
    for day in days:
        weekend = day.weekday() >= 5
        n = 1 if weekend else int(rng.integers(1, 4))
        minutes = np.sort(rng.integers(8 * 60, 18 * 60, size=n))
        picks = rng.choice(len(services), size=n, p=shares)
        bumps = rng.random(n)
        descr = rng.random(n)
        for m, s, b, d in zip(minutes, picks, bumps, descr):
            t = day + pd.Timedelta(minutes=int(m))
            if not (window.start <= t < window.end):
                continue
            options = DEPLOY_DESCRIPTIONS[services[s]]
            rows.append(
                (t, services[s], "minor" if b < 0.12 else "patch", options[int(d * len(options))])
            )
    return pd.DataFrame(rows, columns=["deploy_time", "service", "bump", "description"])


def assign_versions(deploys: pd.DataFrame) -> pd.DataFrame:
    """Give every deploy a semantic version, increasing per service in time order.

    `deploys` has columns deploy_time, service, bump ('minor'|'patch'), description; the
    description may contain '{version}', filled in here.
    """
    first = {s: tuple(int(x) for x in v.split(".")) for s, _, v in DEPLOY_SERVICES}
    current = dict(first)
    out = deploys.sort_values(["deploy_time", "service"], kind="mergesort").reset_index(drop=True)
    versions, descriptions = [], []
    for row in out.itertuples(index=False):
        major, minor, patch = current.get(row.service, (1, 0, 0))
        major, minor, patch = (
            (major, minor + 1, 0) if row.bump == "minor" else (major, minor, patch + 1)
        )
        current[row.service] = (major, minor, patch)
        version = f"{major}.{minor}.{patch}"
        versions.append(version)
        descriptions.append(str(row.description).replace("{version}", version))
    out["version"] = versions
    out["description"] = descriptions
    out["deploy_time"] = pd.to_datetime(out["deploy_time"], utc=True).astype("datetime64[us, UTC]")
    return out[["deploy_time", "service", "version", "description"]]


def initial_version(service: str) -> str:
    for s, _, v in DEPLOY_SERVICES:
        if s == service:
            return v
    return "1.0.0"
