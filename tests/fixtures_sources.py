"""Builders of tiny feed fixtures for the source mappings, written into a test's tmp dir.

`write_segment_jsonl` writes Segment track/page calls (JSON lines), `write_snowplow_tsv`
Snowplow enriched events (headerless TSV, the canonical columns). Each row's comment says what
the mapping must make of it; tests/test_sources.py asserts exactly that.
"""

from __future__ import annotations

import json
from pathlib import Path

CHROME_UA = ("Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 (KHTML, like Gecko) "
             "Chrome/120.0.6099.71 Safari/537.36")
SEGMENT_CONTEXT = {
    "userAgent": CHROME_UA,
    "locale": "en-US",
    "os": {"name": "Windows", "version": "10"},
    "device": {"type": "computer"},
    "campaign": {"source": "newsletter", "medium": "email", "name": "black_friday"},
    "sessionId": 1001,
}


def segment_call(n: int, event: str | None, ts: str | None, properties: dict | None = None,
                 call: str = "track", context: dict | None = None, **extra) -> dict:
    row = {"type": call, "messageId": f"msg-{n}", "anonymousId": "anon-1",
           "context": SEGMENT_CONTEXT if context is None else context,
           "properties": properties or {}}
    if event is not None:
        row["event"] = event
    if ts is not None:
        row["timestamp"] = ts
    row.update(extra)
    return row


SEGMENT_ROWS: list[dict] = [
    # page call, page_type pdp -> product (value map)
    segment_call(1, None, "2026-11-01T10:00:00.000Z", {"page_type": "pdp"}, call="page"),
    segment_call(2, "Product Viewed", "2026-11-01T10:01:00.000Z",
                 {"product_id": "sku-1", "category": "Hats", "price": 19.99}),
    segment_call(3, "Product Added", "2026-11-01T10:02:00.000Z",
                 {"product_id": "sku-1", "price": 19.99, "quantity": 2}),
    segment_call(4, "Product Removed", "2026-11-01T10:03:00.000Z",
                 {"product_id": "sku-1", "quantity": 1}),
    segment_call(5, "Checkout Started", "2026-11-01T10:04:00.000Z", {"order_id": "o-1"}),
    # step 1 -> shipping (value map)
    segment_call(6, "Checkout Step Completed", "2026-11-01T10:05:00.000Z", {"step": 1}),
    # a constant of the event: checkout_step payment
    segment_call(7, "Payment Info Entered", "2026-11-01T10:06:00.000Z", {"step": 2}),
    segment_call(8, "Order Completed", "2026-11-01T10:07:00.000Z",
                 {"order_id": "o-1", "total": 39.98, "currency": "USD"}),
    # dropped: not a funnel step
    segment_call(9, "Products Searched", "2026-11-01T10:08:00.000Z", {"query": "hat"}),
    # naive time: in the mapping's time zone (UTC in segment.yml); logged-in user
    segment_call(10, "Product Viewed", "2026-11-01T11:30:00", {"product_id": "sku-2"},
                 userId="user-9"),
    # a page type the contract does not know: written as it is, ingest keeps it as `other`
    segment_call(11, None, "2026-11-01T11:31:00.000Z", {"page_type": "landing"}, call="page"),
    # an event name the mapping does not know: written, ingest quarantines it
    segment_call(12, "Wishlist Viewed", "2026-11-01T11:32:00.000Z"),
    # skipped: no time
    segment_call(13, "Product Viewed", None),
    # skipped: a time that does not parse
    segment_call(14, "Product Viewed", "yesterday"),
    # skipped: a price that is not a number
    segment_call(15, "Product Viewed", "2026-11-01T11:33:00.000Z", {"price": "abc"}),
]


def write_segment_jsonl(path: Path, rows: list[dict] | None = None) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    rows = SEGMENT_ROWS if rows is None else rows
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path


def snowplow_row(columns: list[str], **values: str) -> str:
    unknown = set(values) - set(columns)
    assert not unknown, unknown
    return "\t".join(values.get(c, "") for c in columns)


def _unstruct(schema: str, data: dict) -> str:
    return json.dumps({"schema": "iglu:com.snowplowanalytics.snowplow/unstruct_event/"
                       "jsonschema/1-0-0", "data": {"schema": schema, "data": data}})


def snowplow_rows(columns: list[str]) -> list[str]:
    common = {"app_id": "shop", "platform": "web", "domain_userid": "duid-1",
              "domain_sessionid": "dsid-1", "dvce_type": "Computer", "os_family": "Windows",
              "br_family": "Firefox", "br_version": "120.0", "geo_country": "DE",
              "geo_region": "BE", "mkt_source": "google", "mkt_medium": "cpc",
              "mkt_campaign": "winter"}

    def row(n: int, event: str, name: str, ts: str, **values: str) -> str:
        return snowplow_row(columns, event=event, event_name=name, event_id=f"sp-{n}",
                            collector_tstamp=ts, derived_tstamp=ts, **{**common, **values})

    add = _unstruct("iglu:com.snowplowanalytics.snowplow/add_to_cart/jsonschema/1-0-0",
                    {"sku": "sku-7", "category": "Shoes", "unitPrice": 49.5, "quantity": 1,
                     "currency": "EUR"})
    return [
        row(1, "page_view", "page_view", "2026-11-01 10:00:00.000", page_urlpath="/"),
        # a structured event: its action names it
        row(2, "struct", "event", "2026-11-01 10:01:00.000", se_category="ecommerce",
            se_action="view_product"),
        # a self-describing add_to_cart: the product is in unstruct_event's JSON
        row(3, "unstruct", "add_to_cart", "2026-11-01 10:02:00.123", unstruct_event=add),
        row(4, "transaction", "transaction", "2026-11-01 10:05:00.000", tr_orderid="T-1",
            tr_total="49.50", tr_currency="EUR"),
        # dropped: the transaction row already carries the order
        row(5, "transaction_item", "transaction_item", "2026-11-01 10:05:00.000",
            ti_orderid="T-1", ti_sku="sku-7", ti_price="49.50", ti_quantity="1"),
        # dropped: page pings are not funnel steps
        row(6, "page_ping", "page_ping", "2026-11-01 10:06:00.000"),
        row(7, "unstruct", "application_error", "2026-11-01 11:00:00.000"),
        # a device class the value map does not know: written, ingest keeps it as `other`
        row(8, "page_view", "page_view", "2026-11-01 11:01:00.000", dvce_type="Game Console"),
    ]


def write_snowplow_tsv(path: Path, columns: list[str]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(line + "\n" for line in snowplow_rows(columns)), encoding="utf-8")
    return path
