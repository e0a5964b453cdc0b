"""Tests of the GA4 and REES46 importers.

Fixture tests build tiny source files in tmp_path (tests/fixtures_importers.py) and always
run. Tests marked `shared_data` read ../shared/data and skip when it is absent; the full
25-day GA4 import is also marked `slow`.
"""

from __future__ import annotations

import time
from pathlib import Path

import duckdb
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from funnelwatch.contract import (
    CHECKOUT_STEPS,
    DEVICE_TYPES,
    EVENT_ARROW_SCHEMA,
    EVENT_TYPES,
    PAGE_TYPES,
    to_arrow,
)
from funnelwatch.importers import ImportReport, import_ga4, import_rees46

try:
    from tests import fixtures_importers as fx
except ImportError:  # tests/ is not a package: pytest put tests/ itself on sys.path
    import fixtures_importers as fx

SHARED = Path(__file__).resolve().parents[1].parent / "shared" / "data"
needs_shared = pytest.mark.skipif(
    not (SHARED / "ga4").is_dir() or not (SHARED / "rees46").is_dir(),
    reason=f"shared data folder {SHARED} is absent (real-data importer tests need it)",
)


def read_landing(landing: Path) -> pd.DataFrame:
    files = sorted((landing / "events").glob("date=*/hour=*/*.parquet"))
    if not files:
        return pd.DataFrame(columns=list(EVENT_ARROW_SCHEMA.names) + ["file"])
    frames = []
    for f in files:
        table = pq.read_table(f)
        assert table.schema.equals(EVENT_ARROW_SCHEMA), f
        frame = table.to_pandas()
        frame["file"] = f.relative_to(landing).as_posix()
        frames.append(frame)
    return pd.concat(frames, ignore_index=True).sort_values(["event_time", "event_id"])


def ts(iso: str) -> pd.Timestamp:
    return pd.Timestamp(iso, tz="UTC")


def landing_files(landing: Path) -> list[Path]:
    return sorted(p for p in landing.rglob("*") if p.is_file()) if landing.exists() else []


# --- GA4 fixture tests ---------------------------------------------------------------------


@pytest.fixture
def ga4_day1(tmp_path) -> Path:
    return fx.write_ga4_day1(tmp_path / "ga4")


def test_ga4_report_counts(ga4_day1, tmp_path):
    report = import_ga4(ga4_day1, tmp_path / "landing")
    assert isinstance(report, ImportReport)
    assert report.source_rows == 19
    assert report.skipped_rows == {
        "duplicate_purchase": 1,
        "missing_ga_session_id": 1,
        "scroll": 1,
        "session_start": 1,
        "user_engagement": 1,
    }
    assert report.events_written == 14
    assert report.source_rows == report.events_written + sum(report.skipped_rows.values())
    assert report.hours == 4
    assert [p.relative_to(tmp_path / "landing").as_posix() for p in report.files] == [
        "events/date=2020-10-31/hour=23/ga4.parquet",
        "events/date=2020-11-01/hour=10/ga4.parquet",
        "events/date=2020-11-01/hour=11/ga4.parquet",
        "events/date=2020-11-01/hour=12/ga4.parquet",
    ]
    text = str(report)
    assert "19" in text and "14" in text and "session_start" in text and "4 hour" in text


def test_ga4_mapped_rows(ga4_day1, tmp_path):
    landing = tmp_path / "landing"
    import_ga4(ga4_day1, landing)
    df = read_landing(landing)
    cols = [
        "event_time",
        "event_type",
        "session_id",
        "page_type",
        "checkout_step",
        "sku",
        "price",
        "quantity",
        "order_id",
        "revenue",
        "currency",
    ]
    got = [tuple(None if pd.isna(v) else v for v in row) for row in df[cols].itertuples(False)]
    s1, s2, s3 = "u1-111", "u2-222", "u3-333"
    N = None
    assert got == [
        (ts("2020-10-31T23:59:59.999999"), "page_view", s3, "other", N, N, N, N, N, N, N),
        (ts("2020-10-31T23:59:59.999999"), "page_view", s3, "other", N, N, N, N, N, N, N),
        (ts("2020-11-01T10:59:59"), "page_view", s1, "home", N, N, N, N, N, N, N),
        (ts("2020-11-01T11:00:05"), "product_view", s1, "category", N, "SKU-B", 12.5, N, N, N, N),
        (ts("2020-11-01T11:00:10"), "product_view", s1, "product", N, "SKU-A", 10.0, N, N, N, N),
        (ts("2020-11-01T11:00:20"), "add_to_cart", s1, "product", N, "SKU-A", 10.0, 2, N, N, N),
        (ts("2020-11-01T11:00:30"), "checkout_start", s1, "cart", N, N, N, N, N, N, N),
        (ts("2020-11-01T11:00:40"), "checkout_step", s1, "checkout", "shipping", N, N, N, N, N, N),
        (ts("2020-11-01T11:00:50"), "checkout_step", s1, "checkout", "payment", N, N, N, N, N, N),
        (
            ts("2020-11-01T11:01:00.25"),
            "purchase",
            s1,
            "confirmation",
            N,
            N,
            N,
            2,
            "T1",
            20.0,
            "USD",
        ),
        (ts("2020-11-01T12:30:00"), "page_view", s2, "cart", N, N, N, N, N, N, N),
        (ts("2020-11-01T12:31:00"), "product_view", s2, "search", N, N, N, N, N, N, N),
        (ts("2020-11-01T12:32:00"), "remove_from_cart", s2, "cart", N, "SKU-C", 30.0, 1, N, N, N),
        (ts("2020-11-01T12:33:00"), "purchase", s2, "confirmation", N, N, N, 1, "987", 30.0, "USD"),
    ]
    # times are tz-aware UTC microseconds, in the hour folder of their UTC hour
    assert str(df["event_time"].dtype) == "datetime64[us, UTC]"
    for t, f in zip(df["event_time"], df["file"]):
        assert f == f"events/date={t:%Y-%m-%d}/hour={t:%H}/ga4.parquet"
    # product_view carries the category of the item
    assert df.loc[df.sku == "SKU-B", "category"].tolist() == ["Apparel"]


def test_ga4_session_attributes(ga4_day1, tmp_path):
    landing = tmp_path / "landing"
    import_ga4(ga4_day1, landing)
    df = read_landing(landing)
    by_session = df.groupby("session_id")
    # session attributes are constant within a session
    for col in ["user_id", "utm_source", "utm_medium", "utm_campaign", "device_type", "country"]:
        assert (by_session[col].nunique(dropna=False) == 1).all(), col
    first = by_session.first()
    # u1: params of the (skipped) session_start apply to all its events
    assert tuple(first.loc["u1-111", ["utm_source", "utm_medium", "utm_campaign"]]) == (
        "google",
        "cpc",
        "black_friday",
    )
    # u2: no params -> the user's traffic_source
    assert tuple(first.loc["u2-222", ["utm_source", "utm_medium", "utm_campaign"]]) == (
        "newsletter",
        "email",
        "nov_newsletter",
    )
    # u3: obfuscated values stay as they are
    assert first.loc["u3-333", "utm_source"] == "<Other>"
    assert first.loc["u3-333", "country"] == "(data deleted)"
    assert first.loc["u1-111", "user_id"] == "u1"
    assert first.loc["u1-111", "device_type"] == "desktop"
    assert first.loc["u2-222", "device_type"] == "other"  # 'smart tv'
    assert first.loc["u3-333", "device_type"] == "mobile"
    row = df[df.session_id == "u1-111"].iloc[0]
    assert (row.os, row.os_version, row.browser, row.browser_version, row.country, row.region) == (
        "Windows",
        "Windows 10",
        "Chrome",
        "86.0",
        "United States",
        "Ohio",
    )


def test_ga4_event_ids_deterministic_and_unique(ga4_day1, tmp_path):
    import_ga4(ga4_day1, tmp_path / "a")
    import_ga4(ga4_day1, tmp_path / "b")
    a, b = read_landing(tmp_path / "a"), read_landing(tmp_path / "b")
    assert a["event_id"].is_unique
    assert a["event_id"].str.startswith("ga4-").all()
    assert a["event_id"].tolist() == b["event_id"].tolist()
    # the two identical u3 rows are two events with two ids
    assert a.loc[a.session_id == "u3-333", "event_id"].nunique() == 2
    # re-import into the same landing replaces, never duplicates
    import_ga4(ga4_day1, tmp_path / "a")
    assert len(read_landing(tmp_path / "a")) == 14


def test_ga4_folder_merges_shared_hours_and_dedupes_orders(tmp_path):
    src = tmp_path / "ga4"
    fx.write_ga4_day1(src)
    fx.write_ga4_day2(src)
    landing = tmp_path / "landing"
    report = import_ga4(src, landing)
    assert report.source_files == 2
    assert report.source_rows == 19 + 3
    assert report.skipped_rows["duplicate_purchase"] == 2  # the day-2 T1 is a duplicate too
    assert report.events_written == 16
    assert report.hours == 5
    df = read_landing(landing)
    assert len(df) == 16
    # 12:50 came from the second file and shares hour 12 with day 1's rows: both are kept
    hour12 = df[df.file == "events/date=2020-11-01/hour=12/ga4.parquet"]
    assert len(hour12) == 5
    assert (df.event_type == "purchase").sum() == 2
    assert df.loc[df.event_type == "purchase", "order_id"].is_unique


def test_ga4_order_id_fallbacks(tmp_path):
    rows = [
        fx.event("u1", 1, "2020-11-01T10:00:00", "purchase", ecommerce=fx.ecommerce(None, 5.0, 1)),
        fx.event(
            "u1", 1, "2020-11-01T10:00:01", "purchase", ecommerce=fx.ecommerce("(not set)", 6.0, 1)
        ),
    ]
    src = fx.write_ga4(rows, tmp_path / "x.parquet")
    import_ga4(src, tmp_path / "a")
    import_ga4(src, tmp_path / "b")
    a, b = read_landing(tmp_path / "a"), read_landing(tmp_path / "b")
    assert len(a) == 2
    assert a["order_id"].str.startswith("ga4-noid-").all()
    assert a["order_id"].is_unique  # two orders without id are not merged into one
    assert a["order_id"].tolist() == b["order_id"].tolist()


def test_ga4_minimal_schema_missing_optional_columns(tmp_path):
    """Only the required columns: optional structs (device, geo, items...) become nulls."""
    table = pa.table(
        {
            "event_timestamp": pa.array([fx.us("2020-11-01T10:00:00")], pa.int64()),
            "event_name": ["page_view"],
            "user_pseudo_id": ["u9"],
            "event_params": pa.array(
                [[fx.param("ga_session_id", 5), fx.param("page_location", fx.STORE + "/")]],
                fx.GA4_SCHEMA.field("event_params").type,
            ),
        }
    )
    pq.write_table(table, tmp_path / "min.parquet")
    report = import_ga4(tmp_path / "min.parquet", tmp_path / "landing")
    df = read_landing(tmp_path / "landing")
    assert report.events_written == 1
    assert df.iloc[0].session_id == "u9-5" and df.iloc[0].page_type == "home"
    assert pd.isna(df.iloc[0].device_type) and pd.isna(df.iloc[0].utm_source)


def test_ga4_bad_input(tmp_path):
    landing = tmp_path / "landing"
    with pytest.raises(ValueError, match="no such file"):
        import_ga4(tmp_path / "nope", landing)
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match="no .parquet files"):
        import_ga4(tmp_path / "empty", landing)
    bad = tmp_path / "bad.parquet"
    pq.write_table(pa.table({"event_name": ["page_view"], "user_pseudo_id": ["u"]}), bad)
    with pytest.raises(ValueError, match=r"bad\.parquet.*event_timestamp"):
        import_ga4(bad, landing)
    junk = tmp_path / "junk.parquet"
    junk.write_text("not parquet at all")
    with pytest.raises(ValueError, match=r"junk\.parquet.*not a readable Parquet"):
        import_ga4(junk, landing)
    wrong_ts = tmp_path / "ts.parquet"
    pq.write_table(
        pa.table(
            {
                "event_timestamp": ["yesterday"],
                "event_name": ["x"],
                "user_pseudo_id": ["u"],
                "event_params": pa.array([[]], fx.GA4_SCHEMA.field("event_params").type),
            }
        ),
        wrong_ts,
    )
    with pytest.raises(ValueError, match=r"ts\.parquet.*event_timestamp must be integer"):
        import_ga4(wrong_ts, landing)
    assert landing_files(landing) == []
    # a folder with one bad file among good ones: nothing is written at all
    folder = tmp_path / "mixed"
    fx.write_ga4_day1(folder)
    (folder / "events_20201102.parquet").write_bytes(bad.read_bytes())
    with pytest.raises(ValueError, match=r"events_20201102\.parquet.*event_timestamp"):
        import_ga4(folder, landing)
    assert landing_files(landing) == []


# --- REES46 fixture tests ------------------------------------------------------------------


@pytest.mark.parametrize("gz", [False, True])
def test_rees46_mapping(tmp_path, gz):
    src = fx.write_rees46_csv(tmp_path / ("r.csv.gz" if gz else "r.csv"), gz=gz)
    landing = tmp_path / "landing"
    report = import_rees46(src, landing)
    assert report.source_rows == 10
    assert report.skipped_rows == {
        "missing_user_session": 1,
        "unparseable_event_time": 1,
        "wishlist": 1,
    }
    assert report.events_written == 7
    assert report.hours == 3
    assert [p.relative_to(landing).as_posix() for p in report.files] == [
        f"events/date=2019-10-01/hour={h}/rees46.parquet" for h in ("00", "01", "02")
    ]
    df = read_landing(landing).sort_values(["event_time", "sku", "event_id"])
    cols = [
        "event_time",
        "event_type",
        "user_id",
        "session_id",
        "sku",
        "category",
        "price",
        "quantity",
        "revenue",
    ]
    got = [tuple(None if pd.isna(v) else v for v in row) for row in df[cols].itertuples(False)]
    N = None
    phone = "electronics.smartphone"
    assert got == [
        (ts("2019-10-01T00:00:00"), "product_view", "1", "s1", "1001", phone, 500.0, N, N),
        (ts("2019-10-01T00:00:00"), "product_view", "1", "s1", "1001", phone, 500.0, N, N),
        (ts("2019-10-01T00:05:00"), "add_to_cart", "1", "s1", "1001", phone, 500.0, 1, N),
        (
            ts("2019-10-01T00:06:00"),
            "remove_from_cart",
            "1",
            "s1",
            "1002",
            "2053013555631882999",
            20.5,
            1,
            N,
        ),
        (ts("2019-10-01T01:10:00"), "purchase", "1", "s1", "1001", phone, 500.0, 1, 500.0),
        (
            ts("2019-10-01T01:10:00"),
            "purchase",
            "1",
            "s1",
            "1002",
            "2053013555631882999",
            20.5,
            1,
            20.5,
        ),
        (ts("2019-10-01T02:59:59"), "product_view", "2", "s2", "1003", "kids.toys", 9.99, N, N),
    ]
    assert str(df["event_time"].dtype) == "datetime64[us, UTC]"
    purchases = df[df.event_type == "purchase"]
    assert purchases["order_id"].str.startswith("rees46-").all()
    assert purchases["order_id"].is_unique
    assert df["order_id"].notna().sum() == 2
    assert df["event_id"].is_unique  # the identical view rows got two ids


def test_rees46_deterministic_ids(tmp_path):
    src = fx.write_rees46_csv(tmp_path / "r.csv")
    import_rees46(src, tmp_path / "a")
    import_rees46(src, tmp_path / "b")
    a, b = read_landing(tmp_path / "a"), read_landing(tmp_path / "b")
    assert a["event_id"].tolist() == b["event_id"].tolist()
    assert a["order_id"].tolist() == b["order_id"].tolist()


def test_rees46_bad_input(tmp_path):
    landing = tmp_path / "landing"
    with pytest.raises(ValueError, match="no such file"):
        import_rees46(tmp_path / "missing.csv", landing)
    other = tmp_path / "other.csv"
    other.write_text("a,b,c\n1,2,3\n")
    with pytest.raises(ValueError, match=r"other\.csv.*missing column\(s\).*event_time"):
        import_rees46(other, landing)
    with pytest.raises(ValueError, match="found a folder"):
        import_rees46(tmp_path, landing)
    assert landing_files(landing) == []


# --- real data (../shared/data) ------------------------------------------------------------


def check_contract_rows(df: pd.DataFrame) -> None:
    table = to_arrow(df.drop(columns=["file"]))
    assert table.schema.equals(EVENT_ARROW_SCHEMA)
    assert df["event_id"].is_unique
    assert df[["event_id", "event_time", "event_type", "user_id", "session_id"]].notna().all().all()
    assert set(df.event_type) <= set(EVENT_TYPES)
    assert set(df.page_type.dropna()) <= set(PAGE_TYPES)
    assert set(df.device_type.dropna()) <= set(DEVICE_TYPES)
    assert set(df.checkout_step.dropna()) <= set(CHECKOUT_STEPS)
    purchases = df[df.event_type == "purchase"]
    assert purchases[["order_id", "revenue"]].notna().all().all()
    assert (purchases.revenue >= 0).all()
    assert (df.price.dropna() >= 0).all() and (df.quantity.dropna() >= 0).all()


@pytest.mark.shared_data
@needs_shared
def test_real_ga4_one_day(tmp_path):
    src = SHARED / "ga4" / "events_20201101.parquet"
    landing = tmp_path / "landing"
    start = time.perf_counter()
    report = import_ga4(src, landing)
    elapsed = time.perf_counter() - start
    print(f"\n{report}\nGA4 one day: {elapsed:.2f} s")
    df = read_landing(landing)
    check_contract_rows(df)

    con = duckdb.connect()
    con.execute("SET TimeZone = 'UTC'")
    (rows,) = con.execute("SELECT count(*) FROM read_parquet(?)", [str(src)]).fetchone()
    by_name = dict(
        con.execute(
            "SELECT event_name, count(*) FROM read_parquet(?) GROUP BY 1", [str(src)]
        ).fetchall()
    )
    assert report.source_rows == rows
    assert report.events_written == len(df)
    # every GA4 event is either mapped or counted as skipped
    mapped = {
        "page_view",
        "view_item",
        "add_to_cart",
        "remove_from_cart",
        "begin_checkout",
        "add_shipping_info",
        "add_payment_info",
        "purchase",
    }
    for name, n in by_name.items():
        if name not in mapped:
            assert report.skipped_rows[name] == n
    counts = df.event_type.value_counts()
    assert counts["page_view"] == by_name["page_view"]
    assert counts["checkout_start"] == by_name["begin_checkout"]
    assert (df.checkout_step == "shipping").sum() == by_name["add_shipping_info"]
    assert (df.checkout_step == "payment").sum() == by_name["add_payment_info"]
    # one product view per view_item in this sample (never a view per carousel item)
    assert counts["product_view"] == by_name["view_item"]
    # purchases = distinct transactions; every real transaction id is an order id
    txns = {
        t
        for (t,) in con.execute(
            "SELECT DISTINCT coalesce(nullif(ecommerce.transaction_id, '(not set)'), "
            "CAST(list_filter(event_params, lambda p: p.key = 'transaction_id')[1]"
            ".value.int_value AS VARCHAR)) FROM read_parquet(?) WHERE event_name = 'purchase'",
            [str(src)],
        ).fetchall()
        if t is not None
    }
    orders = df.loc[df.event_type == "purchase", "order_id"]
    assert orders.is_unique
    assert txns <= set(orders)
    assert counts["purchase"] == by_name["purchase"] - report.skipped_rows.get(
        "duplicate_purchase", 0
    )
    # all in the day's 24 UTC hours; sessions per hour plausible
    assert report.hours == 24
    assert (df.event_time.dt.strftime("%Y-%m-%d") == "2020-11-01").all()
    per_hour = df.groupby(df.event_time.dt.floor("h"))["session_id"].nunique()
    assert per_hour.between(10, 5000).all(), per_hour
    # a session's attributes are constant
    assert (df.groupby("session_id")["utm_source"].nunique(dropna=False) == 1).all()
    assert elapsed < 30


@pytest.mark.shared_data
@needs_shared
def test_real_rees46_head(tmp_path):
    src = SHARED / "rees46" / "2019-Oct_head.csv"
    landing = tmp_path / "landing"
    report = import_rees46(src, landing)
    print(f"\n{report}")
    df = read_landing(landing)
    check_contract_rows(df)
    raw = pd.read_csv(src, dtype=str)
    assert report.source_rows == len(raw) == 17434
    assert report.events_written + sum(report.skipped_rows.values()) == len(raw)
    assert report.events_written == len(df)
    assert report.skipped_rows == {}  # the head has no bad or unknown rows
    expected = raw.event_type.map(
        {
            "view": "product_view",
            "cart": "add_to_cart",
            "remove_from_cart": "remove_from_cart",
            "purchase": "purchase",
        }
    ).value_counts()
    assert df.event_type.value_counts().to_dict() == expected.to_dict()
    purchases = df[df.event_type == "purchase"]
    assert purchases.order_id.is_unique and (purchases.revenue == purchases.price).all()
    assert df.event_time.min() == ts("2019-10-01T00:00:00")
    assert df.event_time.max() < ts("2019-10-01T03:00:00")
    assert report.hours == 3
    assert df.session_id.nunique() == raw.user_session.nunique()


@pytest.mark.slow
@pytest.mark.shared_data
@needs_shared
def test_real_ga4_full_export(tmp_path):
    landing = tmp_path / "landing"
    start = time.perf_counter()
    report = import_ga4(SHARED / "ga4", landing)
    elapsed = time.perf_counter() - start
    print(f"\n{report}\nGA4 25 days: {elapsed:.1f} s")
    assert report.source_files == 25
    assert report.source_rows == 1_133_405
    assert report.source_rows == (
        sum(report.events_by_type.values()) + sum(report.skipped_rows.values())
    )
    df = read_landing(landing)
    assert len(df) == report.events_written
    check_contract_rows(df)
    assert elapsed < 120
