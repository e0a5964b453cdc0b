"""Ingest of one hour: accounting, quarantine, duplicates, idempotence, bad files, privacy."""

from __future__ import annotations

import json

import pandas as pd
import pyarrow.parquet as pq
import pytest

from funnelwatch.contract import EVENT_FIELDS, to_arrow
from funnelwatch.ingest.contract_doc import contract_markdown
from funnelwatch.ingest.loader import (
    DUPLICATE_ID_WINDOW,
    LandingChangedError,
    assert_files_unchanged,
    landing_rows,
    load_hour,
)
from funnelwatch.ingest.pseudonymize import hmac_sha256_hex
from funnelwatch.ingest.validation import blank_sql
from funnelwatch.landing import hour_dir, write_events
from funnelwatch.warehouse import connect

HOUR = "2026-11-02T13:00:00+00:00"
KEY = "test-key"


def _events(n: int, hour: str = HOUR, prefix: str = "e") -> pd.DataFrame:
    start = pd.Timestamp(hour)
    return pd.DataFrame(
        {
            "event_id": [f"{prefix}{i}" for i in range(n)],
            "event_time": [start + pd.Timedelta(seconds=10 * i) for i in range(n)],
            "event_type": ["page_view"] * n,
            "user_id": [f"user-{i % 3}" for i in range(n)],
            "session_id": [f"sess-{i % 4}" for i in range(n)],
            "device_type": ["mobile"] * n,
            "price": [1.5] * n,
        }
    )


def _count(con, sql, params=None):
    return con.execute(sql, params or []).fetchone()[0]


def test_accounting_quarantine_duplicates(tmp_path):
    landing = tmp_path / "landing"
    good = _events(10)
    bad = _events(4, prefix="b")
    bad.loc[0, "event_type"] = "wishlist_add"  # unknown type
    bad.loc[1, "event_time"] = pd.Timestamp(HOUR) + pd.Timedelta(hours=2)  # wrong hour
    bad.loc[2, "session_id"] = None  # required
    bad.loc[3, "device_type"] = "fridge"  # not an accepted value: kept as `other`
    dupes = good.iloc[:3].copy()  # same event_ids again, another file
    write_events(good, landing, "a")
    # written straight into the 13:00 folder, as a faulty collector would (wrong-hour row too)
    pq.write_table(to_arrow(pd.concat([bad, dupes])), hour_dir(landing, HOUR) / "b.parquet")
    con = connect(tmp_path / "w.duckdb")

    result = load_hour(con, landing, HOUR, KEY)

    assert (result.rows_in, result.rows_loaded) == (17, 11)
    assert (result.rows_quarantined, result.duplicates_dropped) == (3, 3)
    assert result.rows_in == result.rows_loaded + result.rows_quarantined + result.duplicates_dropped
    assert result.quarantine_reasons == {
        "unknown_event_type": 1,
        "event_time_outside_hour": 1,
        "missing_session_id": 1,
    }
    # an unknown device type is kept as `other`, with its raw value, not quarantined
    assert _count(con, "SELECT count(DISTINCT event_id) FROM raw.events") == 11
    reasons = dict(con.execute("SELECT event_id, reason FROM raw.events_quarantine").fetchall())
    assert reasons["b0"] == "unknown_event_type" and reasons["b1"] == "event_time_outside_hour"
    # the first copy (file a) of each duplicate is kept: only the `other` device row is from b
    from_b = con.execute("SELECT event_id, device_type, unmapped_values FROM raw.events "
                         "WHERE source_file LIKE '%/b.parquet'").fetchall()
    assert from_b == [("b3", "other", {"device_type": "fridge"})]
    log = con.execute("SELECT rows_in, rows_loaded, rows_quarantined, duplicates_dropped "
                      "FROM raw.ingest_log").fetchall()
    assert log == [(17, 11, 3, 3)]


# Values around the edges of blank_sql's shortcut: empty, spaces, a tab (trim keeps it), an
# ideographic space (trim strips it), printable ASCII from '!' to '~', DEL, non-ASCII.
EDGE_VALUES = ["", "   ", "\t", "\u3000", "\u3000 \u3000", " a", "a ", "!", "~", "~x",
               "\x7f", "é", "\u3000x", "page_view"]


def test_blank_is_exactly_trim_empty(tmp_path):
    """The rules' cheap blank test (no trim of a value starting with a printable character)
    says what `trim(x) = ''` says, value by value."""
    con = connect(tmp_path / "w.duckdb")
    con.execute("CREATE TABLE v AS SELECT unnest($values) AS x", {"values": EDGE_VALUES})
    rows = con.execute(f"SELECT x, {blank_sql('x')}, trim(x) = '' FROM v").fetchall()
    assert [(x, fast) for x, fast, _ in rows] == [(x, slow) for x, _, slow in rows]
    assert {x for x, fast, _ in rows if fast} == {"", "   ", "\u3000", "\u3000 \u3000"}


def test_blank_required_values_are_quarantined_and_others_loaded(tmp_path):
    landing = tmp_path / "landing"
    frame = _events(len(EDGE_VALUES))
    frame["session_id"] = EDGE_VALUES
    write_events(frame, landing, "a")
    con = connect(tmp_path / "w.duckdb")
    result = load_hour(con, landing, HOUR, KEY)
    assert result.quarantine_reasons == {"missing_session_id": 4}
    assert result.rows_loaded == len(EDGE_VALUES) - 4


def test_a_parquet_file_replaced_during_a_load_is_caught(tmp_path):
    """Each step of a load reads the Parquet files anew; a file replaced between two steps (a
    re-delivery under the same name) must not be half-loaded. A text file is parsed once, so
    a later change to it does not matter."""
    landing = tmp_path / "landing"
    (parquet,) = write_events(_events(5), landing, "a")
    text = hour_dir(landing, HOUR) / "b.jsonl"
    _events(3, prefix="t").to_json(text, orient="records", lines=True, date_format="iso")
    con = connect(tmp_path / "w.duckdb")
    rows = landing_rows(con, [parquet, text], parse_text_once=True)
    assert_files_unchanged(rows)
    _events(4, prefix="t").to_json(text, orient="records", lines=True, date_format="iso")
    assert_files_unchanged(rows)
    write_events(_events(6), landing, "a")  # replaced, as write_events replaces a file
    with pytest.raises(LandingChangedError, match="a.parquet"):
        assert_files_unchanged(rows)


def test_a_feed_with_its_own_value_names_loses_no_row(tmp_path):
    """A feed that names descriptive values its own way (page_type=pdp,
    payment_status=succeeded|failed) keeps every row: the values are `other`, the raw value is
    kept beside it and counted per field in the ingest log."""
    landing = tmp_path / "landing"
    frame = _events(12)
    frame["event_type"] = ["product_view"] * 6 + ["payment_attempt"] * 6
    frame["page_type"] = ["pdp"] * 5 + ["Product "] + [None] * 6  # a known value, other case
    frame["payment_status"] = [None] * 6 + ["succeeded"] * 4 + ["failed", "FAILURE"]
    write_events(frame, landing, "a")
    con = connect(tmp_path / "w.duckdb")

    result = load_hour(con, landing, HOUR, KEY)

    assert (result.rows_in, result.rows_loaded, result.rows_quarantined) == (12, 12, 0)
    assert result.unknown_values == {
        "page_type": {"pdp": 5},
        "payment_status": {"succeeded": 4, "failed": 1},
    }
    assert result.rows_with_unknown_values == 10
    by_id = {
        event_id: rest for event_id, *rest in con.execute(
            "SELECT event_id, page_type, payment_status, unmapped_values FROM raw.events"
        ).fetchall()
    }
    by_id = {k: tuple(v) for k, v in by_id.items()}
    assert by_id["e0"] == ("other", None, {"page_type": "pdp"})
    assert by_id["e5"] == ("Product ", None, None)  # known: staging normalises it
    assert by_id["e6"] == (None, "other", {"payment_status": "succeeded"})
    assert by_id["e11"] == (None, "FAILURE", None)
    logged = con.execute("SELECT unknown_values FROM raw.ingest_log").fetchone()[0]
    assert json.loads(logged) == result.unknown_values


def test_quarantined_rows_keep_their_raw_values(tmp_path):
    landing = tmp_path / "landing"
    frame = _events(2)
    frame["event_type"] = ["wishlist_add", "checkout_step"]  # unknown type; step missing
    frame["page_type"] = ["pdp", "pdp"]
    write_events(frame, landing, "a")
    con = connect(tmp_path / "w.duckdb")
    result = load_hour(con, landing, HOUR, KEY)
    assert result.quarantine_reasons == {"unknown_event_type": 1, "missing_checkout_step": 1}
    assert con.execute("SELECT DISTINCT page_type FROM raw.events_quarantine").fetchall() == [
        ("pdp",)]


def test_a_warehouse_from_before_unmapped_values_gets_the_column(tmp_path):
    con = connect(tmp_path / "w.duckdb")
    con.execute("CREATE SCHEMA raw")
    cols = ", ".join(f"{f.name} {f.duckdb_type}" for f in EVENT_FIELDS)
    con.execute(f"CREATE TABLE raw.events ({cols}, event_hour TIMESTAMPTZ, source_file VARCHAR, "
                "ingested_at TIMESTAMPTZ)")
    con.execute("CREATE TABLE raw.ingest_log (event_hour TIMESTAMPTZ, files VARCHAR[], "
                "rows_in BIGINT, rows_loaded BIGINT, rows_quarantined BIGINT, "
                "duplicates_dropped BIGINT, ingested_at TIMESTAMPTZ)")
    landing = tmp_path / "landing"
    frame = _events(3)
    frame["page_type"] = "pdp"
    write_events(frame, landing, "a")
    assert load_hour(con, landing, HOUR, KEY).rows_loaded == 3
    assert _count(con, "SELECT count(*) FROM raw.events WHERE unmapped_values IS NOT NULL") == 3


def test_rerun_replaces_the_hour_and_leaves_others(tmp_path):
    landing = tmp_path / "landing"
    other_hour = "2026-11-02T14:00:00+00:00"
    write_events(_events(5), landing, "a")
    write_events(_events(7, hour=other_hour, prefix="o"), landing, "a")
    con = connect(tmp_path / "w.duckdb")
    load_hour(con, landing, HOUR, KEY)
    load_hour(con, landing, other_hour, KEY)
    load_hour(con, landing, HOUR, KEY)  # re-run: no duplicates
    assert _count(con, "SELECT count(*) FROM raw.events") == 12

    write_events(_events(8), landing, "a")  # the hour's file was re-delivered, larger
    load_hour(con, landing, HOUR, KEY)
    per_hour = dict(con.execute(
        "SELECT strftime(event_hour, '%H'), count(*) FROM raw.events GROUP BY 1").fetchall())
    assert per_hour == {"13": 8, "14": 7}


def test_ids_are_pseudonymised_with_the_key(tmp_path):
    landing = tmp_path / "landing"
    write_events(_events(4), landing, "a")
    con = connect(tmp_path / "w.duckdb")
    load_hour(con, landing, HOUR, KEY)
    users = {r[0] for r in con.execute("SELECT DISTINCT user_id FROM raw.events").fetchall()}
    assert users == {hmac_sha256_hex(f"user-{i}", KEY) for i in range(3)}
    sessions = {r[0] for r in con.execute("SELECT DISTINCT session_id FROM raw.events").fetchall()}
    assert "sess-0" not in sessions and hmac_sha256_hex("sess-0", KEY) in sessions
    # no raw id anywhere in the warehouse file
    assert b"user-1" not in (tmp_path / "w.duckdb").read_bytes()


@pytest.mark.parametrize(
    "name, content, line",
    [
        ("bad.jsonl", '{"event_id": "x"}\n{not json\n', 2),
        ("bad.csv", ("event_id,event_time,event_type,user_id,session_id\n"
                    "a,2026-11-02 13:00:00,page_view,u,s\nb,2026-11-02 13:00:01,page_view,u\n"), 3),
        ("bad.parquet", "PAR1 this is not parquet", None),
    ],
)
def test_malformed_file_is_set_aside_naming_file_and_line(tmp_path, name, content, line):
    """One unreadable file beside a good one: the good file loads, the bad one is recorded with
    its reason and line and left where it is; a fixed file re-loads the hour exactly."""
    landing = tmp_path / "landing"
    write_events(_events(5), landing, "a")
    con = connect(tmp_path / "w.duckdb")
    load_hour(con, landing, HOUR, KEY)
    bad = hour_dir(landing, HOUR) / name
    bad.write_text(content)

    result = load_hour(con, landing, HOUR, KEY)

    (rejected,) = result.rejected_files
    assert rejected.path == bad and rejected.line == line
    assert str(bad) in str(rejected) and (f"line {line}" in str(rejected) if line else True)
    assert result.files == [str(hour_dir(landing, HOUR) / "a.parquet")]
    assert (result.rows_in, result.rows_loaded) == (5, 5)
    assert _count(con, "SELECT count(*) FROM raw.events") == 5
    assert con.execute("SELECT file, line FROM raw.rejected_files").fetchall() == [
        (str(bad), line)]
    assert bad.exists() and (hour_dir(landing, HOUR) / "a.parquet").exists()

    bad.unlink()  # the operator lands the fixed file
    write_events(_events(3, prefix="f"), landing, "fixed")
    result = load_hour(con, landing, HOUR, KEY)
    assert result.rejected_files == [] and result.rows_loaded == 8
    assert _count(con, "SELECT count(*) FROM raw.rejected_files") == 0


def test_an_event_id_loaded_in_another_hour_is_quarantined(tmp_path):
    landing = tmp_path / "landing"
    other = "2026-11-02T14:00:00+00:00"
    write_events(_events(4), landing, "a")
    write_events(_events(3, hour=other), landing, "a")  # e0..e2 again, at 14:xx
    con = connect(tmp_path / "w.duckdb")
    load_hour(con, landing, HOUR, KEY)

    result = load_hour(con, landing, other, KEY)

    assert (result.rows_in, result.rows_loaded, result.rows_quarantined) == (3, 0, 3)
    assert result.quarantine_reasons == {"duplicate_event_id_other_hour": 3}
    assert _count(con, "SELECT count(*) FROM raw.events") == 4
    # re-running the first hour keeps its own events (they are not "another hour's")
    assert load_hour(con, landing, HOUR, KEY).rows_loaded == 4


def test_the_other_hour_look_up_stops_at_the_duplicate_id_window(tmp_path):
    landing = tmp_path / "landing"
    inside = (pd.Timestamp(HOUR) + DUPLICATE_ID_WINDOW).isoformat()
    outside = (pd.Timestamp(HOUR) + DUPLICATE_ID_WINDOW + pd.Timedelta(hours=1)).isoformat()
    write_events(_events(4), landing, "a")
    write_events(_events(3, hour=inside), landing, "a")  # e0..e2 again, 7 days later
    write_events(_events(2, hour=outside), landing, "a")  # e0..e1 again, 7 days + 1 h later
    con = connect(tmp_path / "w.duckdb")
    load_hour(con, landing, HOUR, KEY)

    assert load_hour(con, landing, inside, KEY).quarantine_reasons == {
        "duplicate_event_id_other_hour": 3}
    # an id seen only outside the window is a new event to this hour (the look-up stops there)
    result = load_hour(con, landing, outside, KEY)
    assert (result.rows_loaded, result.rows_quarantined) == (2, 0)


def test_text_files_with_bad_values_are_quarantined_not_failed(tmp_path):
    landing = tmp_path / "landing"
    folder = hour_dir(landing, HOUR)
    folder.mkdir(parents=True)
    rows = [
        {"event_id": "j1", "event_time": "2026-11-02T13:10:00Z", "event_type": "add_to_cart",
         "user_id": "u", "session_id": "s", "price": "12.5", "quantity": "2"},
        {"event_id": "j2", "event_time": "2026-11-02T13:11:00Z", "event_type": "add_to_cart",
         "user_id": "u", "session_id": "s", "price": "twelve"},
        {"event_id": "j3", "event_time": "yesterday", "event_type": "page_view",
         "user_id": "u", "session_id": "s", "unexpected_column": 1},
    ]
    (folder / "collector.jsonl").write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    con = connect(tmp_path / "w.duckdb")
    result = load_hour(con, landing, HOUR, KEY)
    assert result.rows_loaded == 1
    assert result.quarantine_reasons == {"invalid_price": 1, "invalid_event_time": 1}
    price, quantity = con.execute("SELECT price, quantity FROM raw.events").fetchone()
    assert (price, quantity) == (12.5, 2)


def test_empty_hour_clears_the_partition(tmp_path):
    landing = tmp_path / "landing"
    write_events(_events(3), landing, "a")
    con = connect(tmp_path / "w.duckdb")
    load_hour(con, landing, HOUR, KEY)
    (hour_dir(landing, HOUR) / "a.parquet").unlink()
    result = load_hour(con, landing, HOUR, KEY)
    assert (result.rows_in, result.files) == (0, [])
    assert _count(con, "SELECT count(*) FROM raw.events") == 0


def test_nanosecond_and_naive_times_are_normalised(tmp_path):
    """pandas 3 writes ns timestamps; naive times are UTC by contract."""
    landing = tmp_path / "landing"
    folder = hour_dir(landing, HOUR)
    folder.mkdir(parents=True)
    frame = _events(2)
    frame["event_time"] = frame["event_time"].dt.tz_localize(None).astype("datetime64[ns]")
    frame.to_parquet(folder / "naive_ns.parquet")
    con = connect(tmp_path / "w.duckdb")
    result = load_hour(con, landing, HOUR, KEY)
    assert result.rows_loaded == 2
    hour = con.execute("SELECT min(date_trunc('hour', event_time)) FROM raw.events").fetchone()[0]
    assert pd.Timestamp(hour) == pd.Timestamp(HOUR)


def test_contract_doc_is_generated_from_code():
    from tests.conftest import REPO_ROOT

    assert (REPO_ROOT / "docs" / "event_contract.md").read_text() == contract_markdown()


def test_large_hour_loads_every_row(tmp_path):
    """Several DuckDB row groups in one transaction (guards a DuckDB 2.0 statistics bug that
    made a large staged insert invisible to the queries after it)."""
    n = 400_000
    start = pd.Timestamp(HOUR)
    frame = pd.DataFrame(
        {
            "event_id": pd.RangeIndex(n).astype(str),
            "event_time": start + pd.to_timedelta(pd.RangeIndex(n) % 3_600_000, unit="ms"),
            "event_type": "page_view",
            "user_id": "u",
            "session_id": "s",
        }
    )
    landing = tmp_path / "landing"
    write_events(frame, landing, "big")
    con = connect(tmp_path / "w.duckdb")
    result = load_hour(con, landing, HOUR, KEY)
    assert (result.rows_in, result.rows_loaded) == (n, n)
    assert _count(con, "SELECT count(*) FROM raw.events WHERE event_time IS NOT NULL") == n
