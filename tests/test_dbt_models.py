"""The dbt project end to end: real `dbt build` runs on a small hand-built warehouse.

Seeded events (2024-05-01, UTC), three cohorts:

    A = desktop/Windows/Chrome/US/google/cpc/spring_sale
    B = mobile/iOS/Safari/DE/instagram/social/ig_sale
    C = (unknown)/Android/Chrome/US/(none)/(none)/(none)   (null attributes in raw)

    s1 (A) 10:05 page_view, 10:06 product_view shoes, 10:10 add_to_cart shoes
    s2 (A) 10:55 page_view, 10:56 product_view shoes, 10:58 add_to_cart shoes,      <- crosses
           11:01 checkout_start, 11:02-11:04 shipping/payment/review,                  the hour
           11:05 payment_attempt success, 11:05:30 + 11:05:31 purchase o1 120.0 (same order twice)
    s3 (B) 10:20 page_view, product_view bags, add_to_cart bags, checkout_start,
           shipping, payment, review, 10:27 payment_attempt FAILURE, 10:29 js_error
    s4 (B) 11:10 page_view, 11:11 product_view bags
    s5 (C) 12:00 page_view (null device/utm), 12:01 page_view (device mobile: ignored, first event wins)

dbt is started as a subprocess (~5-10 s each); the module makes five invocations.
"""

from __future__ import annotations

import json
import math
import os
import shutil
import subprocess
from pathlib import Path

import duckdb
import pandas as pd
import pytest

from funnelwatch.warehouse import ensure_raw_schema

REPO_ROOT = Path(__file__).resolve().parents[1]
PROJECT_DIR = REPO_ROOT / "dbt_project"
DBT = REPO_ROOT / ".venv" / "bin" / "dbt"

pytestmark = pytest.mark.timeout(300)

DIMS = ("device_type", "os", "browser", "country", "utm_source", "utm_medium", "utm_campaign")
A = dict(
    zip(DIMS, ("desktop", "Windows", "Chrome", "US", "google", "cpc", "spring_sale"), strict=True)
)
B = dict(
    zip(DIMS, ("mobile", "iOS", "Safari", "DE", "instagram", "social", "ig_sale"), strict=True)
)
C = dict(zip(DIMS, (None, "Android", "Chrome", "US", None, None, None), strict=True))
LEAF_A = ("desktop", "Windows", "Chrome", "US", "google", "cpc", "spring_sale")
LEAF_B = ("mobile", "iOS", "Safari", "DE", "instagram", "social", "ig_sale")
LEAF_C = ("(unknown)", "Android", "Chrome", "US", "(none)", "(none)", "(none)")
H10, H11, H12, H13 = (pd.Timestamp(f"2024-05-01 {h}:00", tz="UTC") for h in (10, 11, 12, 13))
BASE_VARS = {"cohort_min_sessions_per_hour": 0.5}
WINDOW_11 = {"window_start": "2024-05-01 11:00:00", "window_end": "2024-05-01 12:00:00"}
INCREMENTAL_TABLES = (
    "intermediate.int_session_hours",
    "intermediate.int_category_hourly",
    "marts.fct_funnel_hourly",
    "marts.fct_cohort_metrics_hourly",
)


def seed_events() -> pd.DataFrame:
    rows: list[dict] = []

    def ev(sid: str, hms: str, event_type: str, cohort: dict, **extra) -> None:
        rows.append(
            dict(
                event_id=f"{sid}-{len(rows)}",
                event_time=f"2024-05-01 {hms}+00:00",
                event_type=event_type,
                user_id=f"u-{sid}",
                session_id=sid,
                **cohort,
                **extra,
            )
        )

    ev("s1", "10:05:00", "page_view", A)
    ev("s1", "10:06:00", "product_view", A, category="shoes")
    ev("s1", "10:10:00", "add_to_cart", A, category="shoes")
    ev("s2", "10:55:00", "page_view", A)
    ev("s2", "10:56:00", "product_view", A, category="shoes")
    ev("s2", "10:58:00", "add_to_cart", A, category="shoes")
    ev("s2", "11:01:00", "checkout_start", A)
    for i, step in enumerate(("shipping", "payment", "review")):
        ev("s2", f"11:0{2 + i}:00", "checkout_step", A, checkout_step=step)
    ev("s2", "11:05:00", "payment_attempt", A, payment_status="success")
    ev("s2", "11:05:30", "purchase", A, order_id="o1", revenue=120.0)
    ev("s2", "11:05:31", "purchase", A, order_id="o1", revenue=120.0)
    ev("s3", "10:20:00", "page_view", B)
    ev("s3", "10:21:00", "product_view", B, category="bags")
    ev("s3", "10:22:00", "add_to_cart", B, category="bags")
    ev("s3", "10:23:00", "checkout_start", B)
    for i, step in enumerate(("shipping", "payment", "review")):
        ev("s3", f"10:2{4 + i}:00", "checkout_step", B, checkout_step=step)
    ev("s3", "10:27:00", "payment_attempt", B, payment_status="failure", error_code="declined")
    ev("s3", "10:29:00", "js_error", B, error_code="TypeError")
    ev("s4", "11:10:00", "page_view", B)
    ev("s4", "11:11:00", "product_view", B, category="bags")
    ev("s5", "12:00:00", "page_view", C)
    ev("s5", "12:01:00", "page_view", dict(C, device_type="mobile"))
    frame = pd.DataFrame(rows)
    frame["event_time"] = pd.to_datetime(frame["event_time"], utc=True).astype(
        "datetime64[us, UTC]"
    )
    frame["event_hour"] = frame["event_time"].dt.floor("h")
    frame["source_file"] = "test.jsonl"
    frame["ingested_at"] = pd.Timestamp("2024-05-01 13:00", tz="UTC")
    return frame


def connect(path: Path) -> duckdb.DuckDBPyConnection:
    con = duckdb.connect(str(path))
    con.execute("SET TimeZone = 'UTC'")
    return con


def create_warehouse(path: Path) -> None:
    with connect(path) as con:
        ensure_raw_schema(con)
        frame = seed_events()
        columns = [r[0] for r in con.execute("DESCRIBE raw.events").fetchall()]
        for column in columns:
            if column not in frame.columns:
                frame[column] = None
        con.register("seed", frame[columns])
        con.execute(f"INSERT INTO raw.events SELECT {', '.join(columns)} FROM seed")


def run_dbt(
    command: str,
    warehouse: Path,
    work: Path,
    dbt_vars: dict | None = None,
    select: str | None = None,
) -> tuple[subprocess.CompletedProcess, dict]:
    """Run dbt in a subprocess against `warehouse`; returns the process and run_results."""
    target = work / "target"
    args = [
        str(DBT),
        command,
        "--project-dir",
        str(PROJECT_DIR),
        "--profiles-dir",
        str(PROJECT_DIR),
        "--target-path",
        str(target),
        "--log-path",
        str(work / "logs"),
        "--vars",
        json.dumps({**BASE_VARS, **(dbt_vars or {})}),
    ]
    if select:
        args += ["--select", select]
    env = {
        **os.environ,
        "FUNNELWATCH_WAREHOUSE": str(warehouse),
        "DBT_SEND_ANONYMOUS_USAGE_STATS": "false",
        "DO_NOT_TRACK": "1",
    }
    proc = subprocess.run(
        args, cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=240, check=False
    )
    results_path = target / "run_results.json"
    results = json.loads(results_path.read_text()) if results_path.exists() else {}
    return proc, results


def statuses(results: dict) -> dict[str, str]:
    return {r["unique_id"]: r["status"] for r in results.get("results", [])}


def snapshot(path: Path) -> dict[str, pd.DataFrame]:
    with connect(path) as con:
        out = {}
        for table in INCREMENTAL_TABLES + ("marts.fct_sessions", "marts.dim_monitored_cohorts"):
            frame = con.execute(f"SELECT * FROM {table}").df()
            out[table] = frame.sort_values(list(frame.columns)).reset_index(drop=True)
        return out


def query(path: Path, sql: str) -> list[tuple]:
    with connect(path) as con:
        return con.execute(sql).fetchall()


def metric(path: Path, cohort: str, name: str, hour: pd.Timestamp) -> tuple | None:
    rows = query(
        path,
        f"""SELECT numerator, denominator, value FROM marts.fct_cohort_metrics_hourly
            WHERE cohort = '{cohort}' AND metric = '{name}' AND event_hour = '{hour.isoformat()}'""",
    )
    assert len(rows) <= 1
    return rows[0] if rows else None


def same(a: object, b: object) -> bool:
    if a is None or (isinstance(a, float) and math.isnan(a)):
        return b is None or (isinstance(b, float) and math.isnan(b))
    return a == pytest.approx(b)


# --------------------------------------------------------------------------------------
# fixtures: one full build, then windowed runs on the same file / on copies


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    work = tmp_path_factory.mktemp("dbt_full")
    warehouse = work / "warehouse.duckdb"
    create_warehouse(warehouse)
    proc, results = run_dbt("build", warehouse, work)
    assert proc.returncode == 0, proc.stdout[-5000:] + proc.stderr[-2000:]
    # a pristine copy, for the tests that change raw data
    pristine = work / "pristine.duckdb"
    shutil.copy(warehouse, pristine)
    return {
        "work": work,
        "warehouse": warehouse,
        "pristine": pristine,
        "results": results,
        "snapshot": snapshot(warehouse),
    }


@pytest.fixture(scope="module")
def window_runs(built):
    """Tamper with one row outside and one inside hour 11, then run the hour-11 window twice."""
    warehouse = built["warehouse"]
    with connect(warehouse) as con:
        con.execute(f"UPDATE marts.fct_funnel_hourly SET events = 999 WHERE event_hour = '{H10}'")
        con.execute(f"UPDATE marts.fct_funnel_hourly SET events = -5 WHERE event_hour = '{H11}'")
        con.execute(
            "UPDATE marts.fct_cohort_metrics_hourly SET value = 999 "
            f"WHERE event_hour = '{H12}' AND cohort = 'all' AND metric = 'sessions'"
        )
    first, _ = run_dbt("run", warehouse, built["work"], WINDOW_11)
    assert first.returncode == 0, first.stdout[-5000:]
    after_first = snapshot(warehouse)
    second, _ = run_dbt("run", warehouse, built["work"], WINDOW_11)
    assert second.returncode == 0, second.stdout[-5000:]
    return {"after_first": after_first, "after_second": snapshot(warehouse)}


@pytest.fixture(scope="module")
def emptied(built, tmp_path_factory):
    """Hour 11 loses all its events; hour 13 is loaded with zero events; rebuild 11:00-14:00."""
    work = tmp_path_factory.mktemp("dbt_emptied")
    warehouse = work / "warehouse.duckdb"
    shutil.copy(built["pristine"], warehouse)
    with connect(warehouse) as con:
        con.execute(f"DELETE FROM raw.events WHERE event_hour = '{H11}'")
        con.execute(
            "INSERT INTO raw.ingest_log (event_hour, files, rows_in, rows_loaded, "
            "rows_quarantined, duplicates_dropped, ingested_at) VALUES "
            f"('{H13}', [], 0, 0, 0, 0, '{H13}'::TIMESTAMPTZ + INTERVAL 1 HOUR)"
        )
    proc, results = run_dbt(
        "build",
        warehouse,
        work,
        {
            "window_start": "2024-05-01 11:00:00",
            "window_end": "2024-05-01 14:00:00",
            "cohort_min_sessions_per_hour": 0.1,
        },
    )
    assert proc.returncode == 0, proc.stdout[-5000:]
    return {"warehouse": warehouse, "results": results}


# --------------------------------------------------------------------------------------
# full build


def test_build_runs_data_tests_and_unit_tests(built):
    st = statuses(built["results"])
    unit = {k: v for k, v in st.items() if k.startswith("unit_test.")}
    data = {k: v for k, v in st.items() if k.startswith("test.")}
    assert len(unit) >= 4 and set(unit.values()) == {"pass"}, unit
    assert len(data) >= 50 and set(data.values()) == {"pass"}, data
    models = {k: v for k, v in st.items() if k.startswith("model.")}
    assert len(models) >= 15 and set(models.values()) == {"success"}


def test_schemas_are_exact(built):
    rows = query(
        built["warehouse"],
        "SELECT DISTINCT table_schema FROM information_schema.tables "
        "WHERE table_schema NOT IN ('raw', 'main')",
    )
    assert {r[0] for r in rows} == {"staging", "intermediate", "marts"}


def test_session_hours(built):
    rows = query(
        built["warehouse"],
        """SELECT session_id, strftime(event_hour, '%H'), device_type, utm_campaign, deepest_stage,
                  events, purchases, revenue, payment_failures, js_errors
           FROM intermediate.int_session_hours ORDER BY 1, 2""",
    )
    assert rows == [
        ("s1", "10", "desktop", "spring_sale", "add_to_cart", 3, 0, 0.0, 0, 0),
        ("s2", "10", "desktop", "spring_sale", "add_to_cart", 3, 0, 0.0, 0, 0),
        ("s2", "11", "desktop", "spring_sale", "purchase", 7, 1, 120.0, 0, 0),
        ("s3", "10", "mobile", "ig_sale", "payment_attempt", 9, 0, 0.0, 1, 1),
        ("s4", "11", "mobile", "ig_sale", "product_view", 2, 0, 0.0, 0, 0),
        ("s5", "12", "(unknown)", "(none)", "session", 2, 0, 0.0, 0, 0),
    ]


FUNNEL_COLUMNS = (
    "sessions, product_view_sessions, add_to_cart_sessions, checkout_start_sessions, "
    "shipping_step_sessions, payment_step_sessions, review_step_sessions, "
    "payment_attempt_sessions, purchase_sessions, payment_attempts, payment_failures, "
    "purchases, revenue, js_error_sessions, events"
)
EXPECTED_FUNNEL = {
    (H10, LEAF_A): (2, 2, 2, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0.0, 0, 6),
    (H10, LEAF_B): (1, 1, 1, 1, 1, 1, 1, 1, 0, 1, 1, 0, 0.0, 1, 9),
    (H11, LEAF_A): (1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 0, 1, 120.0, 0, 7),
    (H11, LEAF_B): (1, 1, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0.0, 0, 2),
    (H12, LEAF_C): (1, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0.0, 0, 2),
}


def funnel_rows(path: Path) -> dict:
    rows = query(
        path,
        f"""SELECT event_hour, device_type, os, browser, country, utm_source, utm_medium,
                   utm_campaign, {FUNNEL_COLUMNS} FROM marts.fct_funnel_hourly""",
    )
    return {(pd.Timestamp(r[0]), tuple(r[1:8])): tuple(r[8:]) for r in rows}


def test_fct_funnel_hourly_exact(built):
    assert funnel_rows(built["warehouse"]) == EXPECTED_FUNNEL


def test_fct_funnel_hourly_rates(built):
    rows = query(
        built["warehouse"],
        """SELECT strftime(event_hour, '%H'), device_type, product_view_rate, add_to_cart_rate,
                  checkout_start_rate, shipping_step_rate, payment_attempt_rate,
                  checkout_conversion_rate, session_conversion_rate, payment_failure_rate
           FROM marts.fct_funnel_hourly ORDER BY 1, 2""",
    )
    expected = [
        ("10", "desktop", 1.0, 1.0, 0.0, None, None, None, 0.0, None),
        ("10", "mobile", 1.0, 1.0, 1.0, 1.0, 1.0, 0.0, 0.0, 1.0),
        ("11", "desktop", 1.0, 1.0, 1.0, 1.0, 1.0, 1.0, 1.0, 0.0),
        ("11", "mobile", 1.0, 0.0, None, None, None, None, 0.0, None),
        ("12", "(unknown)", 0.0, None, None, None, None, None, 0.0, None),
    ]
    assert rows == expected


def test_fct_sessions(built):
    rows = query(
        built["warehouse"],
        """SELECT session_id, strftime(start_hour, '%H'), strftime(last_event_time, '%H:%M'),
                  device_type, deepest_stage, purchased, revenue
           FROM marts.fct_sessions ORDER BY 1""",
    )
    assert rows == [
        ("s1", "10", "10:10", "desktop", "add_to_cart", False, 0.0),
        ("s2", "10", "11:05", "desktop", "purchase", True, 120.0),
        ("s3", "10", "10:29", "mobile", "payment_attempt", False, 0.0),
        ("s4", "11", "11:11", "mobile", "product_view", False, 0.0),
        ("s5", "12", "12:01", "(unknown)", "session", False, 0.0),
    ]


def test_monitored_cohorts(built):
    rows = {
        r[0]: (r[1], r[2])
        for r in query(built["warehouse"], "SELECT * FROM marts.dim_monitored_cohorts")
    }
    # 3 loaded hours (10, 11, 12): A has 2+1 session-hours, B 1+1, C 1
    assert rows["all"] == ("", pytest.approx(6 / 3))
    assert rows["device_type=desktop"] == ("device_type", pytest.approx(1.0))
    assert rows["os=iOS&browser=Safari&utm_campaign=ig_sale"] == (
        "os,browser,utm_campaign",
        pytest.approx(2 / 3),
    )
    assert rows["browser=Chrome"] == ("browser", pytest.approx(4 / 3))
    assert rows["country=US&device_type=desktop"][0] == "country,device_type"
    assert rows["category=shoes"] == ("category", pytest.approx(2 / 3))
    # below 0.5 sessions per hour: not monitored
    assert "device_type=(unknown)" not in rows
    assert "utm_source=(none)" not in rows
    assert "os=Android" not in rows


def test_cohort_metrics_exact(built):
    wh = built["warehouse"]
    assert metric(wh, "all", "sessions", H10) == (3.0, None, 3.0)
    assert metric(wh, "all", "sessions", H11) == (2.0, None, 2.0)
    assert metric(wh, "all", "sessions", H12) == (1.0, None, 1.0)
    assert metric(wh, "all", "events", H10) == (15.0, None, 15.0)
    assert metric(wh, "all", "revenue", H11) == (120.0, None, 120.0)
    assert metric(wh, "all", "purchases", H11) == (1.0, None, 1.0)
    assert metric(wh, "all", "add_to_cart_rate", H11) == (1.0, 2.0, 0.5)
    assert metric(wh, "all", "session_conversion_rate", H11) == (1.0, 2.0, 0.5)
    assert metric(wh, "all", "checkout_start_rate", H10) == (1.0, 3.0, pytest.approx(1 / 3))
    key = "os=iOS&browser=Safari&utm_campaign=ig_sale"
    assert metric(wh, key, "payment_failure_rate", H10) == (1.0, 1.0, 1.0)
    assert metric(wh, key, "checkout_conversion_rate", H10) == (0.0, 1.0, 0.0)
    assert metric(wh, "os=Windows&browser=Chrome", "checkout_conversion_rate", H11) == (
        1.0,
        1.0,
        1.0,
    )
    # A has no session at 12:00: zero-filled counts, NULL rates
    assert metric(wh, "device_type=desktop", "sessions", H12) == (0.0, None, 0.0)
    assert metric(wh, "device_type=desktop", "revenue", H12) == (0.0, None, 0.0)
    assert metric(wh, "device_type=desktop", "product_view_rate", H12) == (0.0, 0.0, None)
    # category cohorts
    assert metric(wh, "category=shoes", "product_view_sessions", H10) == (2.0, None, 2.0)
    assert metric(wh, "category=shoes", "add_to_cart_rate", H10) == (2.0, 2.0, 1.0)
    assert metric(wh, "category=shoes", "product_view_sessions", H11) == (0.0, None, 0.0)
    assert metric(wh, "category=bags", "add_to_cart_rate", H11) == (0.0, 1.0, 0.0)
    # not monitored
    assert metric(wh, "device_type=(unknown)", "sessions", H12) is None


def test_cohort_metrics_complete_grid(built):
    wh = built["warehouse"]
    (n_cohorts,) = query(
        wh, "SELECT count(*) FROM marts.dim_monitored_cohorts WHERE cohort_dimensions != 'category'"
    )[0]
    (n_categories,) = query(
        wh, "SELECT count(*) FROM marts.dim_monitored_cohorts WHERE cohort_dimensions = 'category'"
    )[0]
    per_cohort = query(
        wh,
        """SELECT cohort, count(*), count(DISTINCT metric), count(DISTINCT event_hour)
           FROM marts.fct_cohort_metrics_hourly GROUP BY cohort""",
    )
    assert len(per_cohort) == n_cohorts + n_categories
    for cohort, n, metrics, hours in per_cohort:
        expected_metrics = 2 if cohort.startswith("category=") else 15
        assert (metrics, hours, n) == (expected_metrics, 3, expected_metrics * 3), cohort
    # the cohort keys follow the configured dimension order
    dims = query(wh, "SELECT DISTINCT cohort_dimensions FROM marts.fct_cohort_metrics_hourly")
    assert {d[0] for d in dims} >= {
        "",
        "device_type",
        "os,browser,utm_campaign",
        "country,device_type",
        "category",
    }


# --------------------------------------------------------------------------------------
# incremental windows


def test_window_run_touches_only_its_hours(built, window_runs):
    before = built["snapshot"]
    after = window_runs["after_first"]
    funnel = after["marts.fct_funnel_hourly"]
    hour = funnel["event_hour"]
    # the tampered row outside the window survived: hour 10 was not rebuilt
    assert set(funnel.loc[hour == H10, "events"]) == {999}
    tampered = after["marts.fct_cohort_metrics_hourly"]
    sel = (
        (tampered["event_hour"] == H12)
        & (tampered["cohort"] == "all")
        & (tampered["metric"] == "sessions")
    )
    assert tampered.loc[sel, "value"].tolist() == [999]
    # the tampered row inside the window was rebuilt to the same values as the full build
    for table in INCREMENTAL_TABLES:
        b, a = before[table], after[table]
        in_b, in_a = b[b["event_hour"] == H11], a[a["event_hour"] == H11]
        pd.testing.assert_frame_equal(in_b.reset_index(drop=True), in_a.reset_index(drop=True))
        assert len(in_a) > 0, table
    pd.testing.assert_frame_equal(before["marts.fct_sessions"], after["marts.fct_sessions"])


def test_rerunning_a_window_is_idempotent(window_runs):
    first, second = window_runs["after_first"], window_runs["after_second"]
    assert first.keys() == second.keys()
    for table in first:
        pd.testing.assert_frame_equal(first[table], second[table], obj=table)


def test_emptied_hour_becomes_zero(built, emptied):
    wh = emptied["warehouse"]
    st = statuses(emptied["results"])
    assert st and all(v in ("pass", "success") for v in st.values()), st  # window-scoped tests pass
    assert query(
        wh, f"SELECT count(*) FROM marts.fct_funnel_hourly WHERE event_hour = '{H11}'"
    ) == [(0,)]
    assert query(
        wh, f"SELECT count(*) FROM intermediate.int_session_hours WHERE event_hour = '{H11}'"
    ) == [(0,)]
    # other hours unchanged
    funnel = funnel_rows(wh)
    assert funnel == {k: v for k, v in EXPECTED_FUNNEL.items() if k[0] != H11}
    # monitored cohorts still report hour 11 (and hour 13, loaded with no events): zeros
    for hour in (H11, H13):
        assert metric(wh, "all", "sessions", hour) == (0.0, None, 0.0)
        assert metric(wh, "all", "revenue", hour) == (0.0, None, 0.0)
        assert metric(wh, "all", "session_conversion_rate", hour) == (0.0, 0.0, None)
        assert metric(wh, "device_type=mobile", "sessions", hour) == (0.0, None, 0.0)
        assert metric(
            wh, "os=iOS&browser=Safari&utm_campaign=ig_sale", "payment_failure_rate", hour
        ) == (0.0, 0.0, None)
        assert metric(wh, "category=bags", "product_view_sessions", hour) == (0.0, None, 0.0)
    assert metric(wh, "all", "sessions", H12) == (1.0, None, 1.0)
    assert metric(wh, "all", "sessions", H10) == (3.0, None, 3.0)
    # s4 (only in hour 11) is gone; s2 is no longer a buyer
    sessions = dict(query(wh, "SELECT session_id, purchased FROM marts.fct_sessions"))
    assert sessions == {"s1": False, "s2": False, "s3": False, "s5": False}


def test_data_tests_fail_on_bad_data(built, tmp_path):
    # The copy keeps the file name dbt built it under: DuckDB 1.5 binds the staging views to
    # that catalog name ("warehouse"), so a renamed copy has no "warehouse" catalog.
    warehouse = tmp_path / "warehouse.duckdb"
    shutil.copy(built["pristine"], warehouse)
    with connect(warehouse) as con:
        con.execute(
            """INSERT INTO raw.events (event_id, event_time, event_type, user_id, session_id,
                                       order_id, revenue, event_hour)
               VALUES ('bad-1', '2024-05-01 10:30:00+00', 'teleport', 'u', 'sx', NULL, NULL,
                       '2024-05-01 10:00:00+00'),
                      ('bad-2', '2024-05-01 10:31:00+00', 'purchase', 'u', 'sx', 'o9', -10,
                       '2024-05-01 10:00:00+00')"""
        )
    proc, results = run_dbt("test", warehouse, tmp_path, select="stg_clickstream__events")
    assert proc.returncode != 0
    failed = {k for k, v in statuses(results).items() if v == "fail"}
    assert any("accepted_values_stg_clickstream__events_event_type" in k for k in failed), failed
    assert any("value_between_stg_clickstream__events_revenue" in k for k in failed), failed
