"""The event contract: the one definition of a clickstream event in funnelwatch.

Every producer (the simulator, the GA4 and REES46 importers, a real collector) writes events
in this shape, and ingest validates every row against it. `docs/event_contract.md` is
generated from it and ingest's rules (`funnelwatch/ingest/contract_doc.py`, `funnelwatch
contract`) and a test keeps the two equal. This module is the bottom layer: it imports nothing
of funnelwatch.

Times are UTC with microsecond precision everywhere: pandas 3 produces nanosecond
timestamps, for which some DuckDB functions have no overload, so `normalise_times` is
applied at every boundary where a DataFrame meets the warehouse or a landing file.
"""

from __future__ import annotations

from dataclasses import dataclass

import pandas as pd
import pyarrow as pa

EVENT_TYPES: tuple[str, ...] = (
    "page_view",
    "product_view",
    "add_to_cart",
    "remove_from_cart",
    "checkout_start",
    "checkout_step",
    "payment_attempt",
    "purchase",
    "js_error",
)
# A value outside a descriptive field's set is kept as OTHER_VALUE (the raw value is kept
# beside it, in `raw.events.unmapped_values`) and counted, never quarantined: every real feed
# has its own names, and one unknown value must not cost the row.
OTHER_VALUE = "other"
CHECKOUT_STEPS: tuple[str, ...] = ("shipping", "payment", "review", OTHER_VALUE)
DEVICE_TYPES: tuple[str, ...] = ("desktop", "mobile", "tablet", OTHER_VALUE)
PAGE_TYPES: tuple[str, ...] = (
    "home",
    "category",
    "search",
    "product",
    "cart",
    "checkout",
    "confirmation",
    OTHER_VALUE,
)
PAYMENT_STATUSES: tuple[str, ...] = ("success", "failure", OTHER_VALUE)
# The descriptive fields with a closed set of values, compared case- and space-insensitively.
DESCRIPTIVE_VALUE_SETS: dict[str, tuple[str, ...]] = {
    "page_type": PAGE_TYPES,
    "checkout_step": CHECKOUT_STEPS,
    "device_type": DEVICE_TYPES,
    "payment_status": PAYMENT_STATUSES,
}


@dataclass(frozen=True)
class Field:
    name: str
    duckdb_type: str
    arrow_type: pa.DataType
    required: bool
    description: str


_TS = pa.timestamp("us", tz="UTC")

EVENT_FIELDS: tuple[Field, ...] = (
    Field("event_id", "VARCHAR", pa.string(), True, "Unique id of the event (producer-assigned)."),
    Field("event_time", "TIMESTAMPTZ", _TS, True, "When the event happened, UTC, microseconds."),
    Field("event_type", "VARCHAR", pa.string(), True, f"One of: {', '.join(EVENT_TYPES)}."),
    Field(
        "user_id",
        "VARCHAR",
        pa.string(),
        True,
        "The user. Pseudonymised at ingest with a keyed hash (HMAC-SHA256); raw ids never "
        "reach the warehouse.",
    ),
    Field(
        "session_id",
        "VARCHAR",
        pa.string(),
        True,
        "The session. Pseudonymised at ingest like user_id (GA4 session ids embed the user).",
    ),
    Field(
        "page_type",
        "VARCHAR",
        pa.string(),
        False,
        f"One of: {', '.join(PAGE_TYPES)} (another value is kept as `other`).",
    ),
    Field(
        "checkout_step",
        "VARCHAR",
        pa.string(),
        False,
        f"For checkout_step events, one of: {', '.join(CHECKOUT_STEPS)} (another value is kept "
        "as `other`).",
    ),
    Field("sku", "VARCHAR", pa.string(), False, "Product SKU (product_view, cart, purchase)."),
    Field("category", "VARCHAR", pa.string(), False, "Product category of the SKU."),
    Field("price", "DOUBLE", pa.float64(), False, "Unit price, >= 0, in `currency`."),
    Field("quantity", "INTEGER", pa.int32(), False, "Units, >= 0."),
    Field("order_id", "VARCHAR", pa.string(), False, "Order id; required on purchase."),
    Field("revenue", "DOUBLE", pa.float64(), False, "Order revenue, >= 0; required on purchase."),
    Field("currency", "VARCHAR", pa.string(), False, "ISO 4217 code, e.g. USD."),
    Field(
        "device_type",
        "VARCHAR",
        pa.string(),
        False,
        f"One of: {', '.join(DEVICE_TYPES)} (another value is kept as `other`).",
    ),
    Field("os", "VARCHAR", pa.string(), False, "Operating system, e.g. iOS, Android, Windows."),
    Field("os_version", "VARCHAR", pa.string(), False, "Operating system version."),
    Field("browser", "VARCHAR", pa.string(), False, "Browser, e.g. Safari, Chrome."),
    Field("browser_version", "VARCHAR", pa.string(), False, "Browser version."),
    Field("app_version", "VARCHAR", pa.string(), False, "Version of the store front-end build."),
    Field("country", "VARCHAR", pa.string(), False, "Country (ISO 3166-1 alpha-2 preferred)."),
    Field("region", "VARCHAR", pa.string(), False, "Region or state within the country."),
    Field("utm_source", "VARCHAR", pa.string(), False, "Session traffic source."),
    Field("utm_medium", "VARCHAR", pa.string(), False, "Session traffic medium."),
    Field("utm_campaign", "VARCHAR", pa.string(), False, "Session campaign name."),
    Field("payment_provider", "VARCHAR", pa.string(), False, "Payment provider of the attempt."),
    Field(
        "payment_status",
        "VARCHAR",
        pa.string(),
        False,
        f"For payment_attempt events, one of: {', '.join(PAYMENT_STATUSES)} (another value is "
        "kept as `other`).",
    ),
    Field("latency_ms", "DOUBLE", pa.float64(), False, "Latency of the request, >= 0 ms."),
    Field("error_code", "VARCHAR", pa.string(), False, "Error code (js_error, failed payment)."),
)

EVENT_COLUMNS: tuple[str, ...] = tuple(f.name for f in EVENT_FIELDS)
REQUIRED_COLUMNS: tuple[str, ...] = tuple(f.name for f in EVENT_FIELDS if f.required)
EVENT_ARROW_SCHEMA: pa.Schema = pa.schema([(f.name, f.arrow_type) for f in EVENT_FIELDS])
TIME_COLUMNS: tuple[str, ...] = ("event_time",)


# Reference data the detection and root-cause layers correlate with (deploys, campaigns,
# holidays). Landed as CSV files under <landing>/reference/.
@dataclass(frozen=True)
class ReferenceTable:
    name: str
    columns: tuple[tuple[str, str, str], ...]  # (name, duckdb type, description)
    description: str


REFERENCE_TABLES: tuple[ReferenceTable, ...] = (
    ReferenceTable(
        "deploys",
        (
            ("deploy_time", "TIMESTAMPTZ", "When the deploy went live, UTC."),
            ("service", "VARCHAR", "Deployed service, e.g. web, checkout, payment-widget."),
            ("version", "VARCHAR", "Version deployed."),
            ("description", "VARCHAR", "What changed."),
        ),
        "Deploys of the store's services.",
    ),
    ReferenceTable(
        "campaigns",
        (
            ("campaign_name", "VARCHAR", "Campaign name, as in utm_campaign."),
            ("start_time", "TIMESTAMPTZ", "Campaign start, UTC."),
            ("end_time", "TIMESTAMPTZ", "Campaign end, UTC."),
            ("channel", "VARCHAR", "Marketing channel, e.g. social, email, cpc."),
        ),
        "Marketing campaigns.",
    ),
    ReferenceTable(
        "holidays",
        (
            ("holiday_date", "DATE", "The calendar date."),
            ("name", "VARCHAR", "Holiday or promotion name, e.g. Black Friday."),
            ("country", "VARCHAR", "Country it applies to, or ALL."),
            ("kind", "VARCHAR", "holiday or promotion."),
        ),
        "Holidays and promotions: expected surges, not anomalies.",
    ),
)


def reference_table(name: str) -> ReferenceTable:
    for table in REFERENCE_TABLES:
        if table.name == name:
            return table
    raise KeyError(f"unknown reference table {name!r}; known: {[t.name for t in REFERENCE_TABLES]}")


def normalise_times(frame: pd.DataFrame, columns: tuple[str, ...] = TIME_COLUMNS) -> pd.DataFrame:
    """Return `frame` with the given time columns as tz-aware UTC microsecond timestamps.

    Naive times are taken to be UTC. This is the boundary rule of the whole project.
    """
    out = frame.copy()
    for column in columns:
        if column not in out.columns:
            continue
        values = pd.to_datetime(out[column], utc=True)
        out[column] = values.astype("datetime64[us, UTC]")
    return out


def to_arrow(frame: pd.DataFrame) -> pa.Table:
    """Convert a DataFrame of events to an Arrow table with exactly the contract's schema.

    Missing optional columns become nulls; extra columns are dropped; a missing required
    column raises ValueError naming it.
    """
    missing = [c for c in REQUIRED_COLUMNS if c not in frame.columns]
    if missing:
        raise ValueError(f"events are missing required contract columns: {missing}")
    frame = normalise_times(frame)
    arrays = []
    for field in EVENT_FIELDS:
        if field.name in frame.columns:
            arrays.append(pa.array(frame[field.name], type=field.arrow_type, from_pandas=True))
        else:
            arrays.append(pa.nulls(len(frame), type=field.arrow_type))
    return pa.Table.from_arrays(arrays, schema=EVENT_ARROW_SCHEMA)
