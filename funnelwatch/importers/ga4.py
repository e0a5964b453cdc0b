"""GA4 BigQuery raw export (Parquet, nested schema) -> contract events in the landing folder.

One source file (one GA4 daily table) is converted at a time in DuckDB, so memory is bounded
by the largest day. Rules (see docs/importers.md for the tables and the reasoning):

- session_id = user_pseudo_id || '-' || ga_session_id (event param); user_id = user_pseudo_id.
- event_timestamp (microseconds since epoch, UTC) -> event_time TIMESTAMPTZ (UTC, us).
- view_item/add_to_cart/remove_from_cart: one event per item the event is about. The items
  that carry a `quantity` are those items; if none does and the list has exactly one item, it
  is that item; otherwise (an empty list, or a product *list* such as the 12-item category
  carousels of the Google Merchandise Store sample) one event without a SKU. GA4 event
  counts are thereby kept: a view_item is one product view, not twelve.
- purchase is order-level; duplicate purchases of one transaction are dropped (counted).
- Attribution (utm_*) is a session attribute: the session's first non-null `source` /
  `medium` / `campaign` event param, else the user's traffic_source.
- event_id = 'ga4-' + md5(user_pseudo_id | event_timestamp | event_name |
  event_bundle_sequence_id | occurrence | item index): see `_EVENT_ID_SQL`.
"""

from __future__ import annotations

from pathlib import Path

import duckdb
import pyarrow as pa
import pyarrow.parquet as pq

from funnelwatch.contract import CHECKOUT_STEPS, DEVICE_TYPES, EVENT_TYPES, PAGE_TYPES
from funnelwatch.importers import (
    ImportReport,
    _add_counts,
    _check_columns,
    _connect,
    _LandingWriter,
    _sql_list,
    _Timer,
)

PRODUCER = "ga4"

# GA4 event_name -> contract event_type. Every other GA4 event is skipped, counted by name.
EVENT_MAP: dict[str, str] = {
    "page_view": "page_view",
    "view_item": "product_view",
    "add_to_cart": "add_to_cart",
    "remove_from_cart": "remove_from_cart",
    "begin_checkout": "checkout_start",
    "add_shipping_info": "checkout_step",
    "add_payment_info": "checkout_step",
    "purchase": "purchase",
}
# GA4 has no review step and no payment_attempt event; none is invented.
CHECKOUT_STEP_MAP: dict[str, str] = {
    "add_shipping_info": CHECKOUT_STEPS[0],  # shipping
    "add_payment_info": CHECKOUT_STEPS[1],  # payment
}
ITEM_EVENTS: tuple[str, ...] = ("view_item", "add_to_cart", "remove_from_cart")
QUANTITY_EVENTS: tuple[str, ...] = ("add_to_cart", "remove_from_cart")
PARAMS: tuple[str, ...] = (
    "ga_session_id",
    "page_location",
    "page_title",
    "source",
    "medium",
    "campaign",
    "transaction_id",
    "currency",
)
REQUIRED_COLUMNS: tuple[str, ...] = (
    "event_timestamp",
    "event_name",
    "user_pseudo_id",
    "event_params",
)
NOT_SET = ("", "(not set)")

assert set(EVENT_MAP.values()) <= set(EVENT_TYPES)
assert set(CHECKOUT_STEP_MAP.values()) <= set(CHECKOUT_STEPS)

# Page type from the page URL and title: generic URL keywords first, then the conventions of
# the Google Merchandise Store sample ("<Category> | <Parent> | Google Merchandise Store"
# titles for category pages; product pages under /Google+Redesign/ with multi-word slugs).
# `lp` is the lower-cased path without scheme/host/query, `q` the query string, `t` the
# lower-cased title.
_PAGE_TYPE_SQL = r"""
CASE
  WHEN page_location IS NULL AND page_title IS NULL THEN NULL
  WHEN t LIKE '%page unavailable%' OR t LIKE '%page not found%' OR t LIKE '%non disponible%'
    THEN 'other'
  WHEN regexp_matches(lp, 'ordercompleted|order-?confirm|thank-?you|/confirmation')
    OR t LIKE '%checkout confirmation%' OR t LIKE '%order confirm%' THEN 'confirmation'
  WHEN regexp_matches(lp, '/(yourinfo|payment|revieworder|checkout|shipping)(\.html)?/?$')
    OR regexp_matches(lp, '/checkout/') OR t LIKE 'checkout%' OR t = 'payment method'
    THEN 'checkout'
  WHEN regexp_matches(lp, '/(basket|cart)(\.html)?/?$') OR t LIKE '%shopping cart%' THEN 'cart'
  WHEN regexp_matches(lp, 'search') OR regexp_matches(q, '(^|&)(q|s|search|query)=')
    OR t LIKE '%search results%' THEN 'search'
  WHEN lp IN ('', '/', '/home', '/index.html', '/home.html', '/store.html') OR t = 'home'
    THEN 'home'
  WHEN regexp_matches(lp, '/(product|products|p|item|dp)/') THEN 'product'
  WHEN t LIKE '%|%' OR regexp_matches(lp, '/(category|categories|collections?|c)/')
    THEN 'category'
  WHEN regexp_matches(lp, '^/google[+ ][^/]*/.') THEN
    CASE WHEN regexp_matches(regexp_extract(lp, '([^/]+)/?$', 1), '[+ ]') THEN 'product'
         ELSE 'category' END
  ELSE 'other'
END"""
for _pt in ("other", "confirmation", "checkout", "cart", "search", "home", "product", "category"):
    assert _pt in PAGE_TYPES

# Why this event_id: (user_pseudo_id, event_timestamp, event_name, event_bundle_sequence_id)
# identifies a GA4 event (it is unique over all 1.13 M rows of the sample). `occ` numbers rows
# that share that key, in file order, so two distinct rows never collapse into one id - but
# the id does not depend on where a row sits in the file, so a re-export in another row order
# yields the same ids (unless the key collides, where only file order can tell rows apart).
# `item_idx` is the item's position in `items` (0 = event-level), so expanded items differ.
_EVENT_ID_SQL = (
    "'ga4-' || md5(concat_ws('|', user_pseudo_id, ts_us, event_name, "
    "coalesce(CAST(bundle AS VARCHAR), ''), occ, item_idx))"
)


# --- schema inspection ---------------------------------------------------------------------


def _field_type(schema: pa.Schema, path: str) -> pa.DataType | None:
    """Type at a dotted path (lists are descended into), or None if absent."""
    parts = path.split(".")
    if parts[0] not in schema.names:
        return None
    typ = schema.field(parts[0]).type
    for name in parts[1:]:
        while pa.types.is_list(typ) or pa.types.is_large_list(typ):
            typ = typ.value_type
        if not pa.types.is_struct(typ) or typ.get_field_index(name) < 0:
            return None
        typ = typ.field(name).type
    return typ


def _read_schema(path: Path) -> pa.Schema:
    try:
        schema = pq.read_schema(path)
    except Exception as exc:
        raise ValueError(f"{path}: not a readable Parquet file ({exc})") from exc
    missing = [c for c in REQUIRED_COLUMNS if c not in schema.names]
    if missing:
        raise ValueError(
            f"{path}: not a GA4 BigQuery export: missing column(s) {missing} "
            f"(has {schema.names[:12]}{'...' if len(schema.names) > 12 else ''})"
        )
    if not pa.types.is_integer(schema.field("event_timestamp").type):
        raise ValueError(
            f"{path}: event_timestamp must be integer microseconds since epoch, "
            f"found {schema.field('event_timestamp').type}"
        )
    if (
        _field_type(schema, "event_params.key") is None
        or _field_type(schema, "event_params.value") is None
    ):
        raise ValueError(f"{path}: event_params is not a list of {{key, value}} structs")
    return schema


def _expr(schema: pa.Schema, path: str, sql_type: str) -> str:
    """`path` if the export has that (nested) column, else a typed NULL."""
    if _field_type(schema, path) is None:
        return f"CAST(NULL AS {sql_type})"
    return path


def _convert_sql(schema: pa.Schema) -> str:
    """SQL creating temp table `g`: one row per source event, with every derived field."""
    members = [
        m
        for m in ("string_value", "int_value", "double_value", "float_value")
        if _field_type(schema, f"event_params.value.{m}") is not None
    ]
    if not members:
        raise ValueError("event_params.value has none of string/int/double/float_value")

    def value_sql(struct: str) -> str:
        """The param's value as text, whichever member holds it."""
        parts = [f"CAST({struct}.{m} AS VARCHAR)" for m in members]
        return f"nullif(coalesce({', '.join(parts)}), '')"

    param_structs = ",\n    ".join(
        f"list_filter(event_params, lambda p: p.key = '{k}')[1].value AS v_{k}" for k in PARAMS
    )
    param_values = ",\n    ".join(f"{value_sql(f'v_{k}')} AS {k}" for k in PARAMS)

    def item(field: str, sql_type: str) -> str:
        if _field_type(schema, f"items.{field}") is None:
            return f"CAST(NULL AS {sql_type})"
        return f"x.{field}"

    if _field_type(schema, "items") is None:
        items_sql = (
            "CAST([] AS STRUCT(item_id VARCHAR, category VARCHAR, price DOUBLE, "
            "price_in_usd DOUBLE, quantity BIGINT)[])"
        )
    else:
        # Only item events need the items; purchases are order-level. Skipping the others
        # avoids carrying the 12-item lists of every non-item event through the query.
        items_sql = (
            f"CASE WHEN event_name IN {_sql_list(ITEM_EVENTS)} THEN "
            "list_transform(items, lambda x: {"
            f"'item_id': CAST({item('item_id', 'VARCHAR')} AS VARCHAR), "
            f"'category': CAST({item('item_category', 'VARCHAR')} AS VARCHAR), "
            f"'price': CAST({item('price', 'DOUBLE')} AS DOUBLE), "
            f"'price_in_usd': CAST({item('price_in_usd', 'DOUBLE')} AS DOUBLE), "
            f"'quantity': CAST({item('quantity', 'BIGINT')} AS BIGINT)}}) END"
        )
    e = lambda path, typ="VARCHAR": _expr(schema, path, typ)
    mapped = _sql_list(EVENT_MAP)
    not_set = _sql_list(NOT_SET)
    return f"""
CREATE OR REPLACE TEMP TABLE g AS
WITH src AS (
  SELECT
    file_row_number AS rn,
    CAST(event_timestamp AS BIGINT) AS ts_us,
    CAST(event_name AS VARCHAR) AS event_name,
    nullif(CAST(user_pseudo_id AS VARCHAR), '') AS user_pseudo_id,
    {e("event_bundle_sequence_id", "BIGINT")} AS bundle,
    {param_structs},
    {e("device.category")} AS device_category,
    {e("device.operating_system")} AS os,
    {e("device.operating_system_version")} AS os_version,
    {e("device.web_info.browser")} AS browser,
    {e("device.web_info.browser_version")} AS browser_version,
    {e("geo.country")} AS country,
    {e("geo.region")} AS region,
    {e("traffic_source.source")} AS t_source,
    {e("traffic_source.medium")} AS t_medium,
    {e("traffic_source.name")} AS t_campaign,
    {e("ecommerce.transaction_id")} AS ecom_txn,
    {e("ecommerce.purchase_revenue_in_usd", "DOUBLE")} AS revenue_usd,
    {e("ecommerce.total_item_quantity", "BIGINT")} AS total_qty,
    {items_sql} AS items
  FROM read_parquet(?, file_row_number = true)
),
vals AS (
  SELECT * EXCLUDE ({", ".join(f"v_{k}" for k in PARAMS)}),
    {param_values}
  FROM src
),
derived AS (
  SELECT *,
    user_pseudo_id || '-' || ga_session_id AS session_id,
    CASE WHEN event_name = 'purchase' THEN coalesce(
      CASE WHEN trim(ecom_txn) NOT IN {not_set} THEN trim(ecom_txn) END,
      CASE WHEN trim(transaction_id) NOT IN {not_set} THEN trim(transaction_id) END,
      'ga4-noid-' || substr(md5(concat_ws('|', user_pseudo_id, ga_session_id, ts_us, rn)), 1, 16)
    ) END AS order_id,
    CASE
      WHEN event_name IS NULL THEN 'missing_event_name'
      WHEN event_name NOT IN {mapped} THEN event_name
      WHEN ts_us IS NULL THEN 'missing_event_timestamp'
      WHEN user_pseudo_id IS NULL THEN 'missing_user_pseudo_id'
      WHEN ga_session_id IS NULL THEN 'missing_ga_session_id'
    END AS base_reason,
    row_number() OVER (
      PARTITION BY user_pseudo_id, ts_us, event_name, bundle ORDER BY rn) AS occ,
    lower(regexp_replace(regexp_replace(page_location, '^[A-Za-z][A-Za-z0-9+.-]*://[^/]*', ''),
                         '[?#].*$', '')) AS lp,
    coalesce(regexp_extract(page_location, '\\?([^#]*)', 1), '') AS q,
    lower(trim(page_title)) AS t
  FROM vals
),
ranked AS (
  SELECT *,
    CASE WHEN event_name = 'purchase' AND base_reason IS NULL THEN row_number() OVER (
      PARTITION BY event_name = 'purchase' AND base_reason IS NULL, order_id
      ORDER BY ts_us, rn) END AS purchase_rank
  FROM derived
)
SELECT * EXCLUDE (lp, q, t, base_reason, purchase_rank),
  coalesce(base_reason,
    CASE WHEN purchase_rank > 1 OR order_id IN (SELECT order_id FROM seen_orders)
         THEN 'duplicate_purchase' END) AS skip_reason,
  {_PAGE_TYPE_SQL} AS page_type
FROM ranked
"""


_SESSIONS_SQL = """
CREATE OR REPLACE TEMP TABLE sess AS
SELECT s.session_id,
  coalesce(c.p_source, s.p_source) AS p_source,
  coalesce(c.p_medium, s.p_medium) AS p_medium,
  coalesce(c.p_campaign, s.p_campaign) AS p_campaign,
  coalesce(c.t_source, s.t_source) AS t_source,
  coalesce(c.t_medium, s.t_medium) AS t_medium,
  coalesce(c.t_campaign, s.t_campaign) AS t_campaign
FROM (
  SELECT session_id,
    first(source ORDER BY ts_us, rn) FILTER (WHERE source IS NOT NULL) AS p_source,
    first(medium ORDER BY ts_us, rn) FILTER (WHERE medium IS NOT NULL) AS p_medium,
    first(campaign ORDER BY ts_us, rn) FILTER (WHERE campaign IS NOT NULL) AS p_campaign,
    first(t_source ORDER BY ts_us, rn) FILTER (WHERE t_source IS NOT NULL) AS t_source,
    first(t_medium ORDER BY ts_us, rn) FILTER (WHERE t_medium IS NOT NULL) AS t_medium,
    first(t_campaign ORDER BY ts_us, rn) FILTER (WHERE t_campaign IS NOT NULL) AS t_campaign
  FROM g
  WHERE session_id IS NOT NULL AND ts_us IS NOT NULL
  GROUP BY session_id
) s
LEFT JOIN carry c USING (session_id)
"""


def _events_sql() -> str:
    item_events = _sql_list(ITEM_EVENTS)
    qty_events = _sql_list(QUANTITY_EVENTS)
    event_type = (
        "CASE event_name "
        + " ".join(f"WHEN '{k}' THEN '{v}'" for k, v in EVENT_MAP.items())
        + " END"
    )
    step = (
        "CASE event_name "
        + " ".join(f"WHEN '{k}' THEN '{v}'" for k, v in CHECKOUT_STEP_MAP.items())
        + " END"
    )
    devices = _sql_list(d for d in DEVICE_TYPES if d != "other")
    return f"""
WITH ev AS (
  SELECT g.*, unnest(
    CASE WHEN event_name IN {item_events} THEN
      CASE
        WHEN len(list_filter(items, lambda x: x.quantity IS NOT NULL)) > 0 THEN
          list_filter(list_transform(items, lambda x, i: {{'it': x, 'idx': i}}),
                      lambda y: y.it.quantity IS NOT NULL)
        WHEN len(items) = 1 THEN [{{'it': items[1], 'idx': 1}}]
        ELSE [{{'it': NULL, 'idx': 0}}]
      END
    ELSE [{{'it': NULL, 'idx': 0}}] END) AS u
  FROM g
  WHERE skip_reason IS NULL
),
flat AS (
  SELECT * EXCLUDE (u), u.it AS item, CAST(u.idx AS BIGINT) AS item_idx FROM ev
)
SELECT
  {_EVENT_ID_SQL} AS event_id,
  make_timestamptz(ts_us) AS event_time,
  {event_type} AS event_type,
  user_pseudo_id AS user_id,
  session_id,
  page_type,
  {step} AS checkout_step,
  item.item_id AS sku,
  item.category AS category,
  coalesce(item.price_in_usd, item.price) AS price,
  CAST(CASE WHEN event_name IN {qty_events} THEN item.quantity
            WHEN event_name = 'purchase' THEN total_qty END AS INTEGER) AS quantity,
  order_id,
  CASE WHEN event_name = 'purchase' THEN revenue_usd END AS revenue,
  CASE WHEN event_name = 'purchase' THEN 'USD'
       WHEN item.price_in_usd IS NOT NULL THEN 'USD'
       WHEN item.price IS NOT NULL THEN currency END AS currency,
  CASE WHEN device_category IS NULL THEN NULL
       WHEN lower(device_category) IN {devices} THEN lower(device_category)
       ELSE 'other' END AS device_type,
  os, os_version, browser, browser_version, country, region,
  coalesce(sess.p_source, sess.t_source) AS utm_source,
  coalesce(sess.p_medium, sess.t_medium) AS utm_medium,
  coalesce(sess.p_campaign, sess.t_campaign) AS utm_campaign
FROM flat LEFT JOIN sess USING (session_id)
ORDER BY ts_us, rn, item_idx
"""


# --- the import ------------------------------------------------------------------------------


def _source_files(src: Path) -> list[Path]:
    if not src.exists():
        raise ValueError(f"{src}: no such file or folder")
    if src.is_dir():
        files = sorted(p for p in src.iterdir() if p.is_file() and p.suffix == ".parquet")
        if not files:
            raise ValueError(f"{src}: folder holds no .parquet files (GA4 export expected)")
        return files
    if src.suffix != ".parquet":
        raise ValueError(f"{src}: expected a .parquet file or a folder of them")
    return [src]


def import_ga4(src: Path | str, landing: Path | str) -> ImportReport:
    """Import a GA4 BigQuery raw export (a .parquet file or a folder of daily files).

    Every file's schema is checked before anything is written: a file that is not a GA4
    export raises ValueError naming it and the landing folder is left untouched. Files are then
    converted one at a time, in name order (events_YYYYMMDD = date order), and a file is
    written only after its whole conversion succeeded.
    """
    src = Path(src)
    files = _source_files(src)
    schemas = {path: _read_schema(path) for path in files}
    report = ImportReport(source=str(src), producer=PRODUCER, source_files=len(files))
    writer = _LandingWriter(landing, PRODUCER)
    with _Timer() as timer, _connect() as con:
        con.execute("CREATE TEMP TABLE seen_orders (order_id VARCHAR)")
        con.execute(
            "CREATE TEMP TABLE carry (session_id VARCHAR, p_source VARCHAR, p_medium VARCHAR, "
            "p_campaign VARCHAR, t_source VARCHAR, t_medium VARCHAR, t_campaign VARCHAR)"
        )
        for path in files:
            frame, rows, skipped = _convert_file(con, path, schemas[path])
            writer.write(_check_columns(frame))
            report.source_rows += rows
            _add_counts(report.skipped_rows, skipped)
            _add_counts(report.events_by_type, frame["event_type"].value_counts().items())
            con.execute(
                "INSERT INTO seen_orders SELECT DISTINCT order_id FROM g "
                "WHERE event_name = 'purchase' AND skip_reason IS NULL"
            )
            con.execute("CREATE OR REPLACE TEMP TABLE carry AS SELECT * FROM sess")
    writer.fill(report)
    report.seconds = timer.seconds
    return report


def _convert_file(con: duckdb.DuckDBPyConnection, path: Path, schema: pa.Schema):
    try:
        sql = _convert_sql(schema)
    except ValueError as exc:
        raise ValueError(f"{path}: not a GA4 export: {exc}") from exc
    try:
        con.execute(sql, [str(path)])
        con.execute(_SESSIONS_SQL)
        frame = con.execute(_events_sql()).df()
        rows = con.execute("SELECT count(*) FROM g").fetchone()[0]
        skipped = con.execute(
            "SELECT skip_reason, count(*) FROM g WHERE skip_reason IS NOT NULL GROUP BY 1"
        ).fetchall()
    except duckdb.Error as exc:
        raise ValueError(f"{path}: cannot convert as a GA4 export: {exc}") from exc
    return frame, rows, skipped
