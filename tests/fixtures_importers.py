"""Builders of tiny importer fixtures, written into a test's tmp dir (no data in the repo).

`write_ga4_day1/2` write GA4-BigQuery-export-shaped Parquet files (the nested schema of
`bq extract --destination_format=PARQUET`: event_params list of {key, value{string_value,
int_value, float_value, double_value}}, device/geo/traffic_source/ecommerce structs, items
list); `write_rees46_csv` writes a REES46-shaped CSV. Each builder documents what the importer
must make of its rows; the tests assert exactly that.
"""

from __future__ import annotations

import gzip
from datetime import UTC, datetime
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

VALUE = pa.struct(
    [
        ("string_value", pa.string()),
        ("int_value", pa.int64()),
        ("float_value", pa.float64()),
        ("double_value", pa.float64()),
    ]
)
ITEM = pa.struct(
    [
        ("item_id", pa.string()),
        ("item_name", pa.string()),
        ("item_category", pa.string()),
        ("price_in_usd", pa.float64()),
        ("price", pa.float64()),
        ("quantity", pa.int64()),
        ("item_list_index", pa.string()),
    ]
)
GA4_SCHEMA = pa.schema(
    [
        ("event_date", pa.string()),
        ("event_timestamp", pa.int64()),
        ("event_name", pa.string()),
        ("event_params", pa.list_(pa.struct([("key", pa.string()), ("value", VALUE)]))),
        ("event_previous_timestamp", pa.int64()),
        ("event_bundle_sequence_id", pa.int64()),
        ("user_id", pa.string()),
        ("user_pseudo_id", pa.string()),
        (
            "device",
            pa.struct(
                [
                    ("category", pa.string()),
                    ("operating_system", pa.string()),
                    ("operating_system_version", pa.string()),
                    ("language", pa.string()),
                    (
                        "web_info",
                        pa.struct([("browser", pa.string()), ("browser_version", pa.string())]),
                    ),
                ]
            ),
        ),
        (
            "geo",
            pa.struct(
                [
                    ("continent", pa.string()),
                    ("country", pa.string()),
                    ("region", pa.string()),
                    ("city", pa.string()),
                ]
            ),
        ),
        (
            "traffic_source",
            pa.struct([("medium", pa.string()), ("name", pa.string()), ("source", pa.string())]),
        ),
        ("platform", pa.string()),
        (
            "ecommerce",
            pa.struct(
                [
                    ("total_item_quantity", pa.int64()),
                    ("purchase_revenue_in_usd", pa.float64()),
                    ("purchase_revenue", pa.float64()),
                    ("unique_items", pa.int64()),
                    ("transaction_id", pa.string()),
                ]
            ),
        ),
        ("items", pa.list_(ITEM)),
    ]
)

STORE = "https://shop.example.com"


def us(iso: str) -> int:
    """Microseconds since epoch of an ISO UTC time ('2020-11-01T11:00:05.123456')."""
    dt = datetime.fromisoformat(iso).replace(tzinfo=UTC)
    return int(dt.timestamp()) * 1_000_000 + dt.microsecond


def param(key: str, value) -> dict:
    v = {"string_value": None, "int_value": None, "float_value": None, "double_value": None}
    if isinstance(value, bool) or value is None:
        raise TypeError(value)
    if isinstance(value, int):
        v["int_value"] = value
    elif isinstance(value, float):
        v["double_value"] = value
    else:
        v["string_value"] = value
    return {"key": key, "value": v}


def item(item_id: str, price: float, quantity: int | None = None, category="Apparel") -> dict:
    return {
        "item_id": item_id,
        "item_name": f"Item {item_id}",
        "item_category": category,
        "price_in_usd": None,
        "price": price,
        "quantity": quantity,
        "item_list_index": None,
    }


USERS = {
    # user -> device, geo, traffic_source (the user's first acquisition)
    "u1": (
        {
            "category": "desktop",
            "operating_system": "Windows",
            "operating_system_version": "Windows 10",
            "language": "en-us",
            "web_info": {"browser": "Chrome", "browser_version": "86.0"},
        },
        {"continent": "Americas", "country": "United States", "region": "Ohio", "city": "X"},
        {"medium": "(none)", "name": "(direct)", "source": "(direct)"},
    ),
    "u2": (
        {
            "category": "smart tv",  # not desktop/mobile/tablet -> device_type 'other'
            "operating_system": "<Other>",
            "operating_system_version": "<Other>",
            "language": "de",
            "web_info": {"browser": "Safari", "browser_version": "14.0"},
        },
        {"continent": "Europe", "country": "Germany", "region": "Berlin", "city": "Berlin"},
        {"medium": "email", "name": "nov_newsletter", "source": "newsletter"},
    ),
    "u3": (
        {
            "category": "mobile",
            "operating_system": "iOS",
            "operating_system_version": "iOS 14.2",
            "language": "en-gb",
            "web_info": {"browser": "Safari", "browser_version": "14.0"},
        },
        {"continent": "Europe", "country": "(data deleted)", "region": "(not set)", "city": ""},
        {"medium": "<Other>", "name": "<Other>", "source": "<Other>"},
    ),
}


def event(
    user: str,
    session: int | None,
    iso: str,
    name: str,
    *,
    path: str = "/",
    title: str = "Home",
    params: list[dict] = (),
    items: list[dict] | None = None,
    ecommerce: dict | None = None,
    bundle: int = 1,
) -> dict:
    device, geo, traffic = USERS[user]
    event_params = [param("page_location", STORE + path), param("page_title", title)]
    if session is not None:
        event_params.insert(0, param("ga_session_id", session))
    event_params += list(params)
    return {
        "event_date": iso[:10].replace("-", ""),
        "event_timestamp": us(iso),
        "event_name": name,
        "event_params": event_params,
        "event_previous_timestamp": None,
        "event_bundle_sequence_id": bundle,
        "user_id": None,
        "user_pseudo_id": user,
        "device": device,
        "geo": geo,
        "traffic_source": traffic,
        "platform": "WEB",
        "ecommerce": ecommerce
        or {
            "total_item_quantity": None,
            "purchase_revenue_in_usd": None,
            "purchase_revenue": None,
            "unique_items": None,
            "transaction_id": None,
        },
        "items": items if items is not None else [],
    }


def ecommerce(txn: str | None, revenue: float, quantity: int) -> dict:
    return {
        "total_item_quantity": quantity,
        "purchase_revenue_in_usd": revenue,
        "purchase_revenue": revenue,
        "unique_items": 1,
        "transaction_id": txn,
    }


ATTRIBUTION = [param("source", "google"), param("medium", "cpc"), param("campaign", "black_friday")]


def ga4_day1_events() -> list[dict]:
    """2020-11-01: u1 walks the whole funnel; u2 is a second session; u3 has edge cases.

    Expected (see tests): 19 source rows; skipped: session_start 1, user_engagement 1, scroll 1,
    duplicate_purchase 1, missing_ga_session_id 1; 14 events.
    """
    p = "/Google+Redesign/Apparel"
    return [
        # --- u1, session 111: first event carries the session's attribution params
        event("u1", 111, "2020-11-01T10:59:58", "session_start", params=ATTRIBUTION),
        event("u1", 111, "2020-11-01T10:59:59", "page_view"),  # home
        # a product *list*: only SKU-B carries a quantity -> one product_view for SKU-B
        event(
            "u1",
            111,
            "2020-11-01T11:00:05",
            "view_item",
            path=p,
            title="Apparel | Google Merchandise Store",
            items=[item("SKU-A", 10.0), item("SKU-B", 12.5, 1), item("SKU-C", 30.0)],
        ),
        # a single item without quantity -> product_view SKU-A on a product page
        event(
            "u1",
            111,
            "2020-11-01T11:00:10",
            "view_item",
            path=p + "/Google+Tee+Blue",
            title="Google Tee Blue",
            items=[item("SKU-A", 10.0)],
        ),
        event(
            "u1",
            111,
            "2020-11-01T11:00:20",
            "add_to_cart",
            path=p + "/Google+Tee+Blue",
            title="Google Tee Blue",
            items=[item("SKU-A", 10.0, 2)],
        ),
        event(
            "u1",
            111,
            "2020-11-01T11:00:30",
            "begin_checkout",
            path="/basket.html",
            title="Shopping Cart",
        ),
        event(
            "u1",
            111,
            "2020-11-01T11:00:40",
            "add_shipping_info",
            path="/yourinfo.html",
            title="Checkout Your Information",
        ),
        event(
            "u1",
            111,
            "2020-11-01T11:00:50",
            "add_payment_info",
            path="/payment.html",
            title="Payment Method",
        ),
        event(
            "u1",
            111,
            "2020-11-01T11:01:00.250000",
            "purchase",
            path="/ordercompleted.html",
            title="Checkout Confirmation",
            items=[item("SKU-A", 10.0, 2)],
            ecommerce=ecommerce("T1", 20.0, 2),
        ),
        # the same transaction fired again 20 ms later -> skipped as duplicate_purchase
        event(
            "u1",
            111,
            "2020-11-01T11:01:00.270000",
            "purchase",
            path="/ordercompleted.html",
            title="Checkout Confirmation",
            items=[item("SKU-A", 10.0, 2)],
            ecommerce=ecommerce("T1", 20.0, 2),
        ),
        event("u1", 111, "2020-11-01T11:02:00", "user_engagement"),
        # --- u2, session 222: no attribution params -> traffic_source fallback
        event(
            "u2",
            222,
            "2020-11-01T12:30:00",
            "page_view",
            path="/basket.html",
            title="Shopping Cart",
        ),
        event(
            "u2",
            222,
            "2020-11-01T12:31:00",
            "view_item",
            path="/asearch.html?q=mug",
            title="Store search results",
            items=[],
        ),  # no items -> product_view, no sku
        event(
            "u2",
            222,
            "2020-11-01T12:32:00",
            "remove_from_cart",
            path="/basket.html",
            title="Shopping Cart",
            items=[item("SKU-C", 30.0, 1)],
        ),
        # transaction_id '(not set)' in ecommerce, real id in the event param
        event(
            "u2",
            222,
            "2020-11-01T12:33:00",
            "purchase",
            path="/ordercompleted.html",
            title="Checkout Confirmation",
            params=[param("transaction_id", 987)],
            ecommerce=ecommerce("(not set)", 30.0, 1),
        ),
        event("u2", 222, "2020-11-01T12:35:00", "scroll"),
        event("u2", None, "2020-11-01T12:36:00", "page_view"),  # no ga_session_id
        # --- u3, session 333: last microsecond of 2020-10-31, and two identical rows
        event(
            "u3",
            333,
            "2020-10-31T23:59:59.999999",
            "page_view",
            path="/signin.html",
            title="Log In",
        ),
        event(
            "u3",
            333,
            "2020-10-31T23:59:59.999999",
            "page_view",
            path="/signin.html",
            title="Log In",
        ),
    ]


def ga4_day2_events() -> list[dict]:
    """2020-11-02 file: u2's session continues in the same UTC hour as day 1's rows (a
    non-UTC daily table), with attribution params now; T1 is purchased again (duplicate)."""
    return [
        event("u2", 222, "2020-11-01T12:50:00", "page_view", params=ATTRIBUTION),
        event(
            "u1",
            444,
            "2020-11-02T09:00:00",
            "purchase",
            path="/ordercompleted.html",
            title="Checkout Confirmation",
            ecommerce=ecommerce("T1", 20.0, 2),
        ),
        event("u1", 444, "2020-11-02T09:05:00", "page_view"),
    ]


def write_ga4(rows: list[dict], path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(pa.Table.from_pylist(rows, schema=GA4_SCHEMA), path)
    return path


def write_ga4_day1(folder: Path) -> Path:
    return write_ga4(ga4_day1_events(), Path(folder) / "events_20201101.parquet")


def write_ga4_day2(folder: Path) -> Path:
    return write_ga4(ga4_day2_events(), Path(folder) / "events_20201102.parquet")


REES46_HEADER = (
    "event_time,event_type,product_id,category_id,category_code,brand,price,user_id,user_session"
)
REES46_ROWS = [
    "2019-10-01 00:00:00 UTC,view,1001,2053013555631882655,electronics.smartphone,apple,500.00,1,s1",
    # an identical row: kept as a second event with its own id
    "2019-10-01 00:00:00 UTC,view,1001,2053013555631882655,electronics.smartphone,apple,500.00,1,s1",
    "2019-10-01 00:05:00 UTC,cart,1001,2053013555631882655,electronics.smartphone,apple,500.00,1,s1",
    # no category_code -> category_id is the category
    "2019-10-01 00:06:00 UTC,remove_from_cart,1002,2053013555631882999,,,20.50,1,s1",
    "2019-10-01 01:10:00 UTC,purchase,1001,2053013555631882655,electronics.smartphone,apple,500.00,1,s1",
    "2019-10-01 01:10:00 UTC,purchase,1002,2053013555631882999,,,20.50,1,s1",
    "2019-10-01 01:11:00 UTC,view,1003,2053013555631882111,kids.toys,lego,9.99,2,",  # no session
    "not a time,view,1003,2053013555631882111,kids.toys,lego,9.99,2,s2",  # unparseable
    "2019-10-01 01:12:00 UTC,wishlist,1003,2053013555631882111,kids.toys,lego,9.99,2,s2",
    "2019-10-01 02:59:59 UTC,view,1003,2053013555631882111,kids.toys,lego,9.99,2,s2",
]


def write_rees46_csv(path: Path, gz: bool = False) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    text = "\n".join([REES46_HEADER, *REES46_ROWS]) + "\n"
    if gz:
        with gzip.open(path, "wt", encoding="utf-8") as f:
            f.write(text)
    else:
        path.write_text(text, encoding="utf-8")
    return path
