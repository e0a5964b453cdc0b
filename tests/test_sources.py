"""Source mappings: import source, check-source and quarantine replay, on the fixtures of
tests/fixtures_sources.py, with real DuckDB (in-memory and files in tmp dirs)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import duckdb
import pandas as pd
import pyarrow.parquet as pq
import pytest

from funnelwatch.config_files import ConfigError
from funnelwatch.ingest.loader import load_hour
from funnelwatch.sources.apply import import_source
from funnelwatch.sources.mapping import load_mapping
from funnelwatch.sources.profile import check_source
from funnelwatch.sources.replay import quarantine_summary, replay_hour
from funnelwatch.warehouse import connect
from tests.conftest import REPO_ROOT
from tests.fixtures_sources import (
    SEGMENT_ROWS,
    segment_call,
    write_segment_jsonl,
    write_snowplow_tsv,
)

SEGMENT = REPO_ROOT / "config" / "sources" / "segment.yml"
SNOWPLOW = REPO_ROOT / "config" / "sources" / "snowplow.yml"
KEY = "test-key"
H10, H11 = "2026-11-01T10:00", "2026-11-01T11:00"


def read_landing(landing: Path) -> pd.DataFrame:
    files = sorted(landing.rglob("*.parquet"))
    return pd.concat([pq.read_table(p).to_pandas() for p in files], ignore_index=True)


def landing_files(landing: Path) -> list[Path]:
    return sorted(p for p in landing.rglob("*") if p.is_file()) if landing.exists() else []


def mapping_variant(tmp_path: Path, old: str, new: str, base: Path = SEGMENT) -> Path:
    text = base.read_text()
    assert old in text, old
    path = tmp_path / f"variant-{abs(hash((old, new)))}.yml"
    path.write_text(text.replace(old, new, 1))
    return path


def test_shipped_mappings_load():
    segment, snowplow = load_mapping(SEGMENT), load_mapping(SNOWPLOW)
    assert segment.format == "jsonl" and snowplow.format == "tsv"
    assert len(snowplow.columns) == 131  # the canonical enriched-event columns
    assert snowplow.columns[:7] == ["app_id", "platform", "etl_tstamp", "collector_tstamp",
                                    "dvce_created_tstamp", "event", "event_id"]
    assert snowplow.columns[-1] == "true_tstamp"


def test_segment_every_row_accounted(tmp_path):
    feed = write_segment_jsonl(tmp_path / "segment.jsonl")
    landing = tmp_path / "landing"
    report = import_source(feed, SEGMENT, landing)
    assert report.source_rows == len(SEGMENT_ROWS) == 15
    assert report.skipped_rows == {"Products Searched": 1, "invalid_price": 1,
                                   "missing_event_time": 1, "unparseable_event_time": 1}
    assert report.events_written == 11
    assert report.source_rows == report.events_written + report.skipped_total
    assert report.unmapped_events == {"Wishlist Viewed": 1}
    assert report.hours == 2

    df = read_landing(landing).set_index("event_id")
    assert sorted(df.index) == sorted(f"msg-{n}" for n in (1, 2, 3, 4, 5, 6, 7, 8, 10, 11, 12))
    assert df.loc["msg-1", "event_type"] == "page_view"
    assert df.loc["msg-1", "page_type"] == "product"  # value map pdp -> product
    assert df.loc["msg-2", ["event_type", "sku", "category", "price"]].tolist() == [
        "product_view", "sku-1", "Hats", 19.99]
    assert df.loc["msg-3", ["event_type", "quantity"]].tolist() == ["add_to_cart", 2]
    assert df.loc["msg-6", ["event_type", "checkout_step"]].tolist() == ["checkout_step",
                                                                         "shipping"]
    # the event's constant wins over properties.step = 2
    assert df.loc["msg-7", ["event_type", "checkout_step"]].tolist() == ["checkout_step",
                                                                         "payment"]
    assert df.loc["msg-8", ["event_type", "order_id", "revenue", "currency"]].tolist() == [
        "purchase", "o-1", 39.98, "USD"]
    assert df.loc["msg-2", ["user_id", "session_id", "device_type", "os", "os_version",
                            "browser", "browser_version", "country", "utm_source",
                            "utm_medium", "utm_campaign"]].tolist() == [
        "anon-1", "1001", "desktop", "Windows", "10", "Chrome", "120.0.6099.71", "US",
        "newsletter", "email", "black_friday"]
    assert df.loc["msg-10", "event_time"] == pd.Timestamp("2026-11-01T11:30:00Z")
    assert df.loc["msg-11", "page_type"] == "landing"  # unknown: ingest keeps it as other
    assert df.loc["msg-12", "event_type"] == "Wishlist Viewed"

    # ingest: every written row is loaded or quarantined, the unknown page type is `other`
    con = duckdb.connect()
    first, second = load_hour(con, landing, H10, KEY), load_hour(con, landing, H11, KEY)
    assert (first.rows_in, first.rows_loaded, first.rows_quarantined) == (8, 8, 0)
    assert (second.rows_in, second.rows_loaded, second.rows_quarantined) == (3, 2, 1)
    assert second.quarantine_reasons == {"unknown_event_type": 1}
    assert second.unknown_values == {"page_type": {"landing": 1}}


def test_naive_times_use_the_mapping_timezone(tmp_path):
    feed = write_segment_jsonl(tmp_path / "s.jsonl", [
        segment_call(1, "Product Viewed", "2026-11-01T11:30:00"),          # naive: Berlin
        segment_call(2, "Product Viewed", "2026-11-01T11:30:00+00:00"),    # zoned: as it is
        segment_call(3, "Product Viewed", "1761996600000"),               # epoch ms
    ])
    berlin = mapping_variant(tmp_path, "timezone: UTC", "timezone: Europe/Berlin")
    import_source(feed, berlin, tmp_path / "landing")
    times = read_landing(tmp_path / "landing").set_index("event_id")["event_time"]
    assert times["msg-1"] == pd.Timestamp("2026-11-01T10:30:00Z")  # CET = UTC+1
    assert times["msg-2"] == pd.Timestamp("2026-11-01T11:30:00Z")
    assert times["msg-3"] == pd.Timestamp("2025-11-01T11:30:00Z")


def test_snowplow_every_row_accounted(tmp_path):
    columns = load_mapping(SNOWPLOW).columns
    feed = write_snowplow_tsv(tmp_path / "enriched.tsv", columns)
    landing = tmp_path / "landing"
    report = import_source(feed, SNOWPLOW, landing)
    assert report.source_rows == 8
    assert report.skipped_rows == {"page_ping": 1, "transaction_item": 1}
    assert report.events_written == 6 == report.source_rows - report.skipped_total
    assert report.unmapped_events == {}
    df = read_landing(landing).set_index("event_id")
    assert df["event_type"].to_dict() == {
        "sp-1": "page_view", "sp-2": "product_view", "sp-3": "add_to_cart",
        "sp-4": "purchase", "sp-7": "js_error", "sp-8": "page_view"}
    assert df.loc["sp-3", ["sku", "category", "price", "quantity", "currency"]].tolist() == [
        "sku-7", "Shoes", 49.5, 1, "EUR"]
    assert df.loc["sp-3", "event_time"] == pd.Timestamp("2026-11-01T10:02:00.123Z")
    assert df.loc["sp-4", ["order_id", "revenue", "currency"]].tolist() == ["T-1", 49.5, "EUR"]
    assert df.loc["sp-1", ["user_id", "session_id", "device_type", "os", "browser",
                           "browser_version", "country", "region", "utm_source",
                           "utm_medium", "utm_campaign"]].tolist() == [
        "duid-1", "dsid-1", "desktop", "Windows", "Firefox", "120.0", "DE", "BE", "google",
        "cpc", "winter"]
    assert df.loc["sp-8", "device_type"] == "Game Console"
    con = duckdb.connect()
    loaded = [load_hour(con, landing, h, KEY) for h in (H10, H11)]
    assert [r.rows_loaded for r in loaded] == [4, 2]
    assert loaded[1].unknown_values == {"device_type": {"Game Console": 1}}


@pytest.mark.parametrize(
    ("old", "new", "message"),
    [
        # a value map target that is not a contract value (typo)
        ("{pdp: product,", "{pdp: prodcut,",
         ("segment.yml: values.page_type.pdp: expected one of 'home', 'category', 'search', "
          "'product', 'cart', 'checkout', 'confirmation' or 'other', got 'prodcut'")),
        # an event type the contract does not have
        ("Product Added: add_to_cart", "Product Added: add_to_basket",
         "segment.yml: events.Product Added.type: expected one of"),
        # a value map for a field that has no value set
        ("  page_type: {pdp", "  page_kind: {pdp",
         ("segment.yml: values.page_kind: unknown key (expected one of: page_type, "
          "checkout_step, device_type, payment_status)")),
        # a contract field that does not exist
        ("  sku: [", "  skuu: [", "segment.yml: fields.skuu: unknown key (expected one of:"),
        ("timezone: UTC", "timezone: Mars/Olympus",
         "segment.yml: timezone: unknown time zone 'Mars/Olympus'"),
    ],
)
def test_bad_mapping_one_line_and_nothing_written(tmp_path, old, new, message):
    feed = write_segment_jsonl(tmp_path / "segment.jsonl")
    mapping = mapping_variant(tmp_path, old, new)
    mapping = mapping.rename(tmp_path / "segment.yml")
    with pytest.raises(ConfigError) as caught:
        import_source(feed, mapping, tmp_path / "landing")
    assert message in str(caught.value)
    assert "\n" not in str(caught.value)
    assert landing_files(tmp_path / "landing") == []


def test_missing_feed_field_and_wrong_format(tmp_path):
    feed = write_segment_jsonl(tmp_path / "segment.jsonl")
    mapping = mapping_variant(tmp_path, "event_id: messageId", "event_id: message_id")
    with pytest.raises(ConfigError) as caught:
        import_source(feed, mapping, tmp_path / "landing")
    assert str(caught.value).endswith("if the feed only sometimes has it)")
    assert f": fields.event_id: feed field 'message_id' is not in {feed} (it has: " in str(
        caught.value)
    # a JSON lines feed read with the TSV mapping
    with pytest.raises(ValueError, match=r"segment.jsonl: cannot read it as tsv \(mapping "
                                         r"'snowplow'\)"):
        import_source(feed, SNOWPLOW, tmp_path / "landing")
    csv = tmp_path / "not.jsonl"
    csv.write_text("a,b\n1,2\n")
    with pytest.raises(ValueError, match="cannot read it as jsonl"):
        import_source(csv, SEGMENT, tmp_path / "landing")
    assert landing_files(tmp_path / "landing") == []


def test_check_source_with_mapping(tmp_path):
    feed = write_segment_jsonl(tmp_path / "segment.jsonl")
    profile = check_source(feed, SEGMENT)
    assert profile.sample_rows == 15 and profile.problem is None
    fields = {name: rows for name, _, rows in profile.fields}
    assert fields["event_id"] == 15 and fields["event_time"] == 14 and fields["app_version"] == 0
    events = {name: becomes for name, _, becomes in profile.events}
    assert events["Wishlist Viewed"] == "not mapped: quarantined as unknown_event_type"
    assert events["Products Searched"] == "dropped (drop)"
    assert events["Order Completed"] == "purchase"
    values = {(f, v): b for f, v, _, b in profile.values}
    assert values[("page_type", "pdp")] == "product (value map)"
    assert values[("page_type", "landing")].startswith("other")
    outcome = {(o, w): n for o, n, w in profile.outcome}
    assert outcome[("loaded", "valid events")] == 10
    assert outcome[("quarantined", "unknown_event_type")] == 1
    assert outcome[("  loaded with `other`", "page_type 1")] == 1
    skipped = sum(n for (o, _), n in outcome.items() if o == "skipped at import")
    assert 10 + 1 + skipped == 15  # every sampled row accounted for
    table = profile.table()
    assert "| Wishlist Viewed | 1 | not mapped: quarantined as unknown_event_type |" in table
    # a sample: the first rows only
    assert check_source(feed, SEGMENT, limit=3).sample_rows == 3


def test_check_source_reports_missing_field(tmp_path):
    feed = write_segment_jsonl(tmp_path / "segment.jsonl")
    mapping = mapping_variant(tmp_path, "event_id: messageId", "event_id: message_id")
    profile = check_source(feed, mapping)
    assert ("event_id", "message_id", None) in profile.fields
    assert "fields.event_id: feed field 'message_id' is not in" in profile.problem
    assert "| event_id | message_id | MISSING |" in profile.table()


def test_check_source_proposes_a_mapping(tmp_path):
    feed = write_segment_jsonl(tmp_path / "segment.jsonl")
    profile = check_source(feed)
    proposed = profile.mapping
    assert proposed.format == "jsonl" and list(proposed.event_name) == ["event"]
    sources = {n: s.paths for n, s in proposed.field_sources().items()}
    assert sources["event_id"] == ["messageId"] and sources["event_time"] == ["timestamp"]
    assert sources["user_id"] == ["anonymousId"]
    assert sources["session_id"] == ["context.sessionId"]
    assert sources["utm_campaign"] == ["context.campaign.name"]
    assert proposed.events["Product Viewed"].type == "product_view"
    assert proposed.drop == ["Products Searched"]
    assert "#   Wishlist Viewed (1 rows)" in profile.proposal_yaml
    # the proposal is a valid mapping file
    path = tmp_path / "proposed.yml"
    path.write_text(profile.proposal_yaml)
    assert load_mapping(path) == proposed


def test_quarantine_replay_after_fixing_the_mapping(tmp_path):
    feed = write_segment_jsonl(tmp_path / "segment.jsonl")
    landing = tmp_path / "landing"
    import_source(feed, SEGMENT, landing)
    con = connect(tmp_path / "warehouse.duckdb")
    before = load_hour(con, landing, H11, KEY)
    assert before.quarantine_reasons == {"unknown_event_type": 1}
    loaded_ids = {r[0] for r in con.execute("SELECT event_id FROM raw.events").fetchall()}
    assert quarantine_summary(con)[0][1:] == ("unknown_event_type", 1)

    fixed = mapping_variant(tmp_path, "  Order Completed: purchase\n",
                            "  Order Completed: purchase\n  Wishlist Viewed: product_view\n")
    result = replay_hour(con, landing, H11, KEY, load_mapping(fixed))
    assert (result.quarantined_before, result.quarantined_after) == (1, 0)
    assert (result.loaded_before, result.loaded_after) == (2, 3)
    assert result.rows_in_before == result.rows_in_after == 3  # nothing lost, nothing twice
    assert result.rows_changed == 1
    assert quarantine_summary(con) == []
    rows = con.execute("SELECT event_id, event_type, user_id, session_id FROM raw.events "
                       "WHERE event_hour = $h ORDER BY event_id", {"h": H11 + ":00+00"}).fetchall()
    assert [r[0] for r in rows] == ["msg-10", "msg-11", "msg-12"]
    assert rows[2][1] == "product_view"
    # ids hashed once: the replayed row has the same pseudonyms as its session's other rows
    assert {r[2] for r in rows} == {rows[0][2]} and {r[3] for r in rows} == {rows[0][3]}
    assert rows[0][2] != "anon-1"
    assert loaded_ids <= {r[0] for r in con.execute("SELECT event_id FROM raw.events")
                          .fetchall()}
    folder = landing / "events" / "date=2026-11-01" / "hour=11"
    assert (folder / "replaced" / "segment.parquet").is_file()  # the original is kept
    assert [p.name for p in folder.glob("*.parquet")] == result.files_written

    # a second replay finds nothing to change and keeps the counts
    again = replay_hour(con, landing, H11, KEY, load_mapping(fixed))
    assert (again.rows_changed, again.rows_in_after, again.loaded_after) == (0, 3, 3)


def test_quarantine_replay_rows_that_still_break_stay(tmp_path):
    rows = [segment_call(1, "Product Viewed", "2026-11-01T10:00:00Z"),
            segment_call(2, "Wishlist Viewed", "2026-11-01T10:01:00Z"),
            segment_call(3, "Gift Wrapped", "2026-11-01T10:02:00Z")]
    landing = tmp_path / "landing"
    import_source(write_segment_jsonl(tmp_path / "s.jsonl", rows), SEGMENT, landing)
    con = connect(tmp_path / "warehouse.duckdb")
    assert load_hour(con, landing, H10, KEY).rows_quarantined == 2
    fixed = mapping_variant(tmp_path, "  Order Completed: purchase\n",
                            "  Order Completed: purchase\n  Wishlist Viewed: product_view\n")
    result = replay_hour(con, landing, H10, KEY, load_mapping(fixed))
    assert (result.loaded_after, result.quarantined_after) == (2, 1)
    assert result.reasons_after == {"unknown_event_type": 1}
    assert result.rows_in_after == 3
    (left,) = con.execute("SELECT event_type FROM raw.events_quarantine").fetchall()
    assert left == ("Gift Wrapped",)


def run_cli(*args: str, env: dict | None = None, cwd: Path = REPO_ROOT):
    import os

    return subprocess.run([sys.executable, "-m", "funnelwatch.cli", *args], cwd=cwd,
                          capture_output=True, text=True, env={**os.environ, **(env or {})},
                          check=False)


def test_cli_import_check_and_quarantine(tmp_path):
    feed = write_segment_jsonl(tmp_path / "segment.jsonl")
    landing, warehouse = tmp_path / "landing", tmp_path / "wh.duckdb"
    env = {"FUNNELWATCH_LANDING": str(landing), "FUNNELWATCH_WAREHOUSE": str(warehouse)}
    done = run_cli("import", "source", str(feed), "--mapping", str(SEGMENT), env=env)
    assert done.returncode == 0, done.stderr
    assert "events written            11" in done.stdout
    bad = mapping_variant(tmp_path, "{pdp: product,", "{pdp: prodcut,")
    failed = run_cli("import", "source", str(feed), "--mapping", str(bad), env=env)
    assert failed.returncode == 2
    assert failed.stderr.count("\n") == 1 and "values.page_type.pdp" in failed.stderr
    assert "Traceback" not in failed.stderr

    proposal = tmp_path / "proposed.yml"
    checked = run_cli("check-source", str(feed), "--write-mapping", str(proposal), env=env)
    assert checked.returncode == 0, checked.stderr
    assert "| Wishlist Viewed | 1 |" in checked.stdout and proposal.is_file()

    with connect(warehouse) as con:
        load_hour(con, landing, H11, KEY)
    listed = run_cli("quarantine", "list", env=env)
    assert "| 2026-11-01 11:00 | unknown_event_type | 1 |" in listed.stdout
    neither = run_cli("quarantine", "replay", env=env)
    assert neither.returncode == 2 and "give either --hour H or --all" in neither.stderr
    fixed = mapping_variant(tmp_path, "  Order Completed: purchase\n",
                            "  Order Completed: purchase\n  Wishlist Viewed: product_view\n")
    replayed = run_cli("quarantine", "replay", "--all", "--mapping", str(fixed),
                       env={**env, "FUNNELWATCH_PSEUDONYMIZATION_KEY": KEY})
    assert replayed.returncode == 0, replayed.stderr
    assert "2026-11-01 11:00: quarantined 1 -> 0, loaded 2 -> 3" in replayed.stdout
    assert run_cli("quarantine", "list", env=env).stdout.strip() == "no quarantined rows"


def test_csv_and_parquet_feeds_with_derived_ids(tmp_path):
    """A flat CSV feed (header row) and the same rows as Parquet with a struct column; no
    event id in the feed: ids are derived from the row and its occurrence."""
    import pyarrow as pa

    rows = [
        ("2026-11-01 10:00:00", "view", "u1", "s1", "p1", "9.5", "Paris"),
        ("2026-11-01 10:00:00", "view", "u1", "s1", "p1", "9.5", "Paris"),  # identical row
        ("2026-11-01 10:05:00", "cart", "u1", "s1", "p1", "9.5", "Paris"),
        ("2026-11-01 10:06:00", "wishlist", "u1", "s1", "p1", "9.5", "Paris"),
    ]
    header = "time,kind,uid,sid,product,price,city"
    csv_feed = tmp_path / "flat.csv"
    csv_feed.write_text("\n".join([header, *(",".join(r) for r in rows)]) + "\n")
    mapping = tmp_path / "flat.yml"
    mapping.write_text(
        "name: flat\nformat: csv\ntimezone: Europe/Paris\nevent_name: kind\n"
        "fields: {event_time: time, user_id: uid, session_id: sid, sku: product, "
        "price: price, region: city}\n"
        "events: {view: product_view, cart: add_to_cart}\n")
    report = import_source(csv_feed, mapping, tmp_path / "landing")
    assert (report.source_rows, report.events_written) == (4, 4)
    assert report.unmapped_events == {"wishlist": 1}
    df = read_landing(tmp_path / "landing")
    assert df["event_id"].nunique() == 4 and df["event_id"].str.startswith("flat-").all()
    assert df["event_time"].min() == pd.Timestamp("2026-11-01T09:00:00Z")  # CET
    again = tmp_path / "again"
    import_source(csv_feed, mapping, again)
    assert sorted(read_landing(again)["event_id"]) == sorted(df["event_id"])  # deterministic

    table = pa.table({
        "time": [pd.Timestamp(r[0], tz="UTC") for r in rows],
        "kind": [r[1] for r in rows],
        "who": [{"uid": r[2], "sid": r[3]} for r in rows],
        "price": [float(r[5]) for r in rows],
    })
    parquet_feed = tmp_path / "nested.parquet"
    pq.write_table(table, parquet_feed)
    nested = tmp_path / "nested.yml"
    nested.write_text(
        "name: nested\nformat: parquet\nevent_name: kind\n"
        "fields: {event_time: time, user_id: who.uid, session_id: who.sid, price: price}\n"
        "events: {view: product_view, cart: add_to_cart}\ndrop: [wishlist]\n")
    report = import_source(parquet_feed, nested, tmp_path / "landing2")
    assert (report.events_written, report.skipped_rows) == (3, {"wishlist": 1})
    df = read_landing(tmp_path / "landing2")
    assert set(df["user_id"]) == {"u1"} and set(df["session_id"]) == {"s1"}
    assert df["event_time"].min() == pd.Timestamp("2026-11-01T10:00:00Z")  # zoned: as it is


def test_quarantine_replay_of_a_collectors_jsonl_file(tmp_path):
    """A collector's JSON-lines landing file (not written by import source): the replayed file
    keeps every row, the fixed one included, and ingest hashes the ids once."""
    import json

    folder = tmp_path / "landing" / "events" / "date=2026-11-01" / "hour=10"
    folder.mkdir(parents=True)
    base = {"user_id": "u1", "session_id": "s1", "price": "2.5"}
    lines = [{**base, "event_id": "e1", "event_time": "2026-11-01T10:00:00Z",
              "event_type": "page_view"},
             {**base, "event_id": "e2", "event_time": "2026-11-01T10:01:00Z",
              "event_type": "Product Viewed"},
             {**base, "event_id": "e3", "event_time": "2026-11-01T10:02:00Z",
              "event_type": "checkout_step", "checkout_step": "2"}]
    (folder / "collector.jsonl").write_text("".join(json.dumps(x) + "\n" for x in lines))
    con = connect(tmp_path / "wh.duckdb")
    first = load_hour(con, tmp_path / "landing", H10, KEY)
    assert (first.rows_loaded, first.quarantine_reasons) == (2, {"unknown_event_type": 1})
    result = replay_hour(con, tmp_path / "landing", H10, KEY, load_mapping(SEGMENT))
    assert (result.rows_in_after, result.loaded_after, result.quarantined_after) == (3, 3, 0)
    rows = dict(con.execute("SELECT event_id, event_type FROM raw.events").fetchall())
    assert rows == {"e1": "page_view", "e2": "product_view", "e3": "checkout_step"}
    # only the quarantined row was remapped: e3's valid step '2' stays as it came (`other`)
    (step,) = con.execute("SELECT checkout_step FROM raw.events WHERE event_id = 'e3'"
                          ).fetchone()
    assert step == "other"
    assert (folder / "replaced" / "collector.jsonl").is_file()
    assert len({u for (u,) in con.execute("SELECT user_id FROM raw.events").fetchall()}) == 1


def test_snowplow_bad_input_one_line_nothing_written(tmp_path):
    columns = load_mapping(SNOWPLOW).columns
    feed = write_snowplow_tsv(tmp_path / "enriched.tsv", columns)
    landing = tmp_path / "landing"
    typo = mapping_variant(tmp_path, "session_id: domain_sessionid",
                           "session_id: domain_sessionidd", base=SNOWPLOW)
    with pytest.raises(ConfigError, match=r": fields.session_id: feed field "
                                          r"'domain_sessionidd' is not in "):
        import_source(feed, typo, landing)
    # an older enriched format with one column less
    short = tmp_path / "short.tsv"
    short.write_text("".join("\t".join(line.split("\t")[:-1]) + "\n"
                             for line in feed.read_text().splitlines()))
    with pytest.raises(ValueError) as caught:
        import_source(short, SNOWPLOW, landing)
    assert str(caught.value).startswith(f"{short}: cannot read it as tsv (mapping 'snowplow'): ")
    assert "\n" not in str(caught.value)
    assert landing_files(landing) == []
