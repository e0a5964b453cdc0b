"""REES46 multi-category store events (CSV, optionally .csv.gz) -> contract events.

Columns: event_time,event_type,product_id,category_id,category_code,brand,price,user_id,
user_session; event_time is text like "2019-10-01 00:00:00 UTC". Rules (docs/importers.md):

- view -> product_view, cart -> add_to_cart, remove_from_cart -> remove_from_cart,
  purchase -> purchase (one event per purchase row: REES46 has one row per product bought).
- sku = product_id, category = category_code, else category_id; session_id = user_session.
- purchase: order_id = 'rees46-' + md5(user_session | product_id | event_time)[:16],
  revenue = price, quantity = 1. REES46 does not state a currency, so none is set.
- Rows with no session, no user, an unparseable time or an unknown event_type are skipped and
  counted by reason (an unknown event_type is counted under its own name).
"""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path

import duckdb

from funnelwatch.contract import EVENT_TYPES
from funnelwatch.importers import (
    ImportReport,
    _add_counts,
    _check_columns,
    _connect,
    _LandingWriter,
    _sql_list,
    _Timer,
)

PRODUCER = "rees46"
EVENT_MAP: dict[str, str] = {
    "view": "product_view",
    "cart": "add_to_cart",
    "remove_from_cart": "remove_from_cart",
    "purchase": "purchase",
}
COLUMNS: tuple[str, ...] = (
    "event_time",
    "event_type",
    "product_id",
    "category_id",
    "category_code",
    "brand",
    "price",
    "user_id",
    "user_session",
)
assert set(EVENT_MAP.values()) <= set(EVENT_TYPES)
_ONE_DAY = timedelta(days=1)

# event_id: a hash of the whole raw row plus its occurrence number among identical rows.
# REES46 has no event id and repeats identical rows (same user, product, type and second);
# those stay separate events (nothing is silently merged) and, since identical rows cannot be
# told apart, numbering them in any order gives the same ids on every import.
_CONVERT_SQL = """
CREATE OR REPLACE TEMP TABLE r AS
WITH src AS (
  SELECT {cols},
    try_cast(trim(event_time) AS TIMESTAMPTZ) AS ts,
    nullif(trim(user_session), '') AS session,
    nullif(trim(user_id), '') AS uid,
    try_cast(price AS DOUBLE) AS price_d
  FROM read_csv(?, header = true, all_varchar = true, auto_detect = true)
)
SELECT *,
  CASE
    WHEN event_type IS NULL OR trim(event_type) = '' THEN 'missing_event_type'
    WHEN event_type NOT IN {mapped} THEN event_type
    WHEN ts IS NULL THEN 'unparseable_event_time'
    WHEN session IS NULL THEN 'missing_user_session'
    WHEN uid IS NULL THEN 'missing_user_id'
    WHEN event_type = 'purchase' AND (price_d IS NULL OR price_d < 0) THEN 'purchase_without_price'
  END AS skip_reason,
  row_number() OVER (PARTITION BY {cols}) AS occ
FROM src
"""

_EVENTS_SQL = """
SELECT
  'rees46-' || md5(concat_ws('|', {cols_coalesced}, occ)) AS event_id,
  ts AS event_time,
  CASE event_type {event_type_cases} END AS event_type,
  uid AS user_id,
  session AS session_id,
  nullif(trim(product_id), '') AS sku,
  coalesce(nullif(trim(category_code), ''), nullif(trim(category_id), '')) AS category,
  price_d AS price,
  CAST(CASE WHEN event_type IN ('cart', 'remove_from_cart', 'purchase') THEN 1 END
       AS INTEGER) AS quantity,
  CASE WHEN event_type = 'purchase' THEN 'rees46-' || substr(md5(concat_ws('|',
    session, coalesce(product_id, ''), CAST(ts AS VARCHAR))), 1, 16) END AS order_id,
  CASE WHEN event_type = 'purchase' THEN price_d END AS revenue
FROM r
WHERE skip_reason IS NULL AND ts >= ? AND ts < ?
ORDER BY ts, event_id
"""


def _columns(con: duckdb.DuckDBPyConnection, path: Path) -> list[str]:
    try:
        rel = con.execute(
            "DESCRIBE SELECT * FROM read_csv(?, header = true, all_varchar = true)", [str(path)]
        )
        return [row[0] for row in rel.fetchall()]
    except duckdb.Error as exc:
        raise ValueError(f"{path}: not a readable CSV file ({exc})") from exc


def import_rees46(src: Path | str, landing: Path | str) -> ImportReport:
    """Import a REES46 events CSV (.csv or .csv.gz) into the landing folder.

    The whole file is converted in DuckDB first; only then are the events written, one UTC
    day at a time (bounded memory), so a bad file leaves nothing in the landing folder.
    """
    src = Path(src)
    if not src.exists():
        raise ValueError(f"{src}: no such file")
    if not src.is_file():
        raise ValueError(f"{src}: expected a REES46 .csv or .csv.gz file, found a folder")
    report = ImportReport(source=str(src), producer=PRODUCER, source_files=1)
    writer = _LandingWriter(landing, PRODUCER)
    with _Timer() as timer, _connect() as con:
        found = _columns(con, src)
        missing = [c for c in COLUMNS if c not in found]
        if missing:
            raise ValueError(
                f"{src}: not a REES46 events CSV: missing column(s) {missing} (found {found})"
            )
        cols = ", ".join(COLUMNS)
        try:
            con.execute(_CONVERT_SQL.format(cols=cols, mapped=_sql_list(EVENT_MAP)), [str(src)])
        except duckdb.Error as exc:
            raise ValueError(f"{src}: cannot convert as a REES46 CSV: {exc}") from exc
        report.source_rows = con.execute("SELECT count(*) FROM r").fetchone()[0]
        _add_counts(
            report.skipped_rows,
            con.execute(
                "SELECT skip_reason, count(*) FROM r WHERE skip_reason IS NOT NULL GROUP BY 1"
            ).fetchall(),
        )
        days = [
            d
            for (d,) in con.execute(
                "SELECT DISTINCT date_trunc('day', ts) AS d FROM r "
                "WHERE skip_reason IS NULL ORDER BY d"
            ).fetchall()
        ]
        events_sql = _EVENTS_SQL.format(
            cols_coalesced=", ".join(f"coalesce({c}, '')" for c in COLUMNS),
            event_type_cases=" ".join(f"WHEN '{k}' THEN '{v}'" for k, v in EVENT_MAP.items()),
        )
        for day in days:
            frame = con.execute(events_sql, [day, day + _ONE_DAY]).df()
            writer.write(_check_columns(frame))
            _add_counts(report.events_by_type, frame["event_type"].value_counts().items())
    writer.fill(report)
    report.seconds = timer.seconds
    return report
