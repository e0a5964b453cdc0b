"""Privacy: retention, erasure of one person, the analyst view, the minimum cohort size, keys.

The warehouse is built once per module by the real hourly pipeline (simulated day, 6 hours,
dbt and all); each test that changes data works on its own copy.
"""

from __future__ import annotations

import csv
import json
import shutil
import subprocess
import sys
from datetime import UTC, datetime, timedelta
from pathlib import Path

import dagster as dg
import duckdb
import pandas as pd
import pytest
import typer
from typer.testing import CliRunner

from funnelwatch.ingest.loader import load_hour
from funnelwatch.ingest.pseudonymize import hmac_sha256_hex
from funnelwatch.landing import event_files, landed_hours
from funnelwatch.privacy import (
    mask_cohort,
    min_cohort_sessions,
    pseudonymization_keys,
    small_cohorts,
)
from funnelwatch.privacy.erasure import (
    STATUS_ALREADY,
    STATUS_ERASED,
    STATUS_UNKNOWN,
    ErasureError,
    WarehouseBusyError,
    erase_user,
    rebuild_windows,
    rewrite_landing,
    scan_landing,
)
from funnelwatch.publish import open_snapshot
from tests.fixtures_pipeline import build_with_hourly_pipeline, pipeline_paths
from tests.test_pipeline import DAY

KEY = "privacy-test-key"
HOURS = 6  # DAY 00:00 .. 05:00 are loaded
START = pd.Timestamp(DAY, tz="UTC")


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    """A warehouse built by the hourly pipeline over the first 6 hours of a simulated day
    (the landing folder holds the whole day)."""
    base = tmp_path_factory.mktemp("privacy")
    paths, events = build_with_hourly_pipeline(
        base, HOURS, env={"FUNNELWATCH_PSEUDONYMIZATION_KEY": KEY})
    events = events.assign(event_time=pd.to_datetime(events["event_time"], utc=True))
    return {"base": base, "paths": paths, "events": events}


def _copy(built, tmp_path: Path) -> dict:
    target = tmp_path / "copy"
    shutil.copytree(built["base"], target)
    return pipeline_paths(target)


def _pick_user(events: pd.DataFrame) -> str:
    """A user with several events in the loaded hours, in more than one hour if possible."""
    loaded = events[events["event_time"] < START + pd.Timedelta(hours=HOURS)]
    per_user = loaded.groupby("user_id").agg(
        hours=("event_time", lambda t: t.dt.floor("h").nunique()), n=("event_id", "size"))
    return per_user.sort_values(["hours", "n"], ascending=False).index[0]


def _all_landing_rows(landing: Path) -> pd.DataFrame:
    frames = []
    for hour in landed_hours(landing):
        for path in event_files(landing, hour):
            if path.suffix == ".parquet":
                frames.append(pd.read_parquet(path, columns=["user_id", "session_id"]))
            elif path.suffix == ".jsonl":
                frames.append(pd.read_json(path, lines=True, dtype=str)[["user_id", "session_id"]])
            else:
                frames.append(pd.read_csv(path, dtype=str)[["user_id", "session_id"]])
    return pd.concat(frames, ignore_index=True)


def _text_columns(con) -> list[tuple[str, str, str]]:
    return con.execute(
        """SELECT c.table_schema, c.table_name, c.column_name FROM information_schema.columns c
           JOIN information_schema.tables t USING (table_schema, table_name)
           WHERE t.table_type = 'BASE TABLE'
             AND (c.data_type IN ('VARCHAR', 'JSON') OR c.data_type LIKE 'VARCHAR[]%')
           ORDER BY ALL"""
    ).fetchall()


def _occurrences(con, needles: list[str], skip: set[str] = frozenset()) -> dict[str, int]:
    """Rows of every text column of every table that contain any of `needles`."""
    found = {}
    for schema, table, column in _text_columns(con):
        if f"{schema}.{table}" in skip:
            continue
        n = con.execute(
            f'SELECT count(*) FROM {schema}.{table} WHERE '
            f'list_bool_or([contains(CAST("{column}" AS VARCHAR), x) for x in $n])',
            {"n": needles},
        ).fetchone()[0]
        if n:
            found[f"{schema}.{table}.{column}"] = n
    return found


def _sessions_per_hour(con) -> dict:
    funnel = dict(con.execute(
        "SELECT event_hour, sum(sessions) FROM marts.fct_funnel_hourly GROUP BY 1").fetchall())
    cohort = dict(con.execute(
        "SELECT event_hour, value FROM marts.fct_cohort_metrics_hourly "
        "WHERE cohort = 'all' AND metric = 'sessions'").fetchall())
    return {"funnel": funnel, "cohort_all": cohort}


# ------------------------------------------------------------------------------ erasure


@pytest.mark.slow
def test_erase_user_removes_them_everywhere_and_rebuilds_the_marts(built, tmp_path):
    paths = _copy(built, tmp_path)
    events = built["events"]
    user = _pick_user(events)
    theirs = events[events["user_id"] == user]
    raw_sessions = sorted(theirs["session_id"].unique())
    user_hash = hmac_sha256_hex(user, KEY)
    session_hashes = [hmac_sha256_hex(s, KEY) for s in raw_sessions]

    with duckdb.connect(str(paths["warehouse"])) as con:
        assert con.execute("SELECT count(*) FROM raw.events WHERE user_id = ?",
                           [user_hash]).fetchone()[0] > 0
        before = _sessions_per_hour(con)
        # a data-quality result that lists one of their event ids as a sample failing value
        their_event_id = con.execute("SELECT event_id FROM raw.events WHERE user_id = ? LIMIT 1",
                                     [user_hash]).fetchone()[0]
        con.execute(
            "INSERT INTO quality.check_results VALUES ($h, 'events_unique_event_id', false, "
            "'test', $e, now())",
            {"h": START.to_pydatetime(), "e": json.dumps(
                {"partial_unexpected_list": [their_event_id, "other-event"]})})
        # the scan below does see them before the erasure (raw.events, session tables)
        seen = _occurrences(con, [user_hash, *session_hashes])
        assert {"raw.events.user_id", "raw.events.session_id",
                "intermediate.int_session_hours.session_id"} <= set(seen)
        their_events = con.execute("SELECT count(*) FROM raw.events WHERE user_id = ?",
                                   [user_hash]).fetchone()[0]
        their_session_hours = dict(con.execute(
            "SELECT event_hour, count(*) FROM intermediate.int_session_hours "
            "WHERE list_contains($s, session_id) GROUP BY 1", {"s": session_hashes}).fetchall())
        tables_before = {t: con.execute(f"SELECT count(*) FROM {t}").fetchone()[0]
                         for t in ("marts.fct_funnel_hourly", "marts.fct_cohort_metrics_hourly")}
    assert their_session_hours
    landing_before = _all_landing_rows(paths["landing"])

    record = erase_user(paths["warehouse"], paths["landing"], user, keys=[KEY],
                        reason=f"ticket PRIV-1 for {user}", publish_dir=paths["publish"])
    assert record.status == STATUS_ERASED, record.message
    loaded = theirs[theirs["event_time"] < START + pd.Timedelta(hours=HOURS)]
    assert record.sessions == loaded["session_id"].nunique()
    assert record.rows_removed["raw.events"] == their_events
    assert record.rows_removed["intermediate.int_session_hours"] == sum(
        their_session_hours.values())
    assert {h.replace(tzinfo=UTC) for h in record.hours_rebuilt} >= {
        h.replace(tzinfo=UTC) for h in their_session_hours}

    with duckdb.connect(str(paths["warehouse"]), read_only=True) as con:
        # nothing of them in any table: ids, hashes or raw, in any text column
        needles = [user, user_hash, *raw_sessions, *session_hashes]
        assert _occurrences(con, needles + [their_event_id], skip={"privacy.erasures"}) == {}
        assert con.execute("SELECT count(*) FROM quality.check_results WHERE "
                           "contains(CAST(evidence AS VARCHAR), '[erased]') "
                           "AND contains(CAST(evidence AS VARCHAR), 'other-event')"
                           ).fetchone()[0] == 1
        # the erasure record holds the hash, never the raw id
        rows = con.execute("SELECT * FROM privacy.erasures").fetchall()
        assert len(rows) == 1
        assert _occurrences(con, [user, *raw_sessions]) == {}
        rec = con.execute("SELECT user_hash, status, reason, completed_at, sessions, "
                          "rows_removed, hours_rebuilt FROM privacy.erasures").fetchone()
        assert rec[0] == user_hash and rec[1] == "erased" and rec[3] is not None
        assert rec[2] == "ticket PRIV-1 for [erased id]"
        assert json.loads(rec[5])["raw.events"] > 0 and rec[6]

        # the marts no longer count them: exactly their session-hours less, elsewhere equal
        after = _sessions_per_hour(con)
        for series in ("funnel", "cohort_all"):
            assert set(after[series]) == set(before[series])
            for hour, n in before[series].items():
                assert after[series][hour] == n - their_session_hours.get(hour, 0), (series, hour)
        for table, n in tables_before.items():
            assert con.execute(f"SELECT count(*) FROM {table}").fetchone()[0] <= n

    # the landing files no longer hold them (all 24 hours were scanned, 6 loaded)
    landing_after = _all_landing_rows(paths["landing"])
    assert not (landing_after["user_id"] == user).any()
    assert not landing_after["session_id"].isin(raw_sessions).any()
    removed = landing_before["user_id"].eq(user) | landing_before["session_id"].isin(raw_sessions)
    assert len(landing_after) == len(landing_before) - removed.sum()
    assert record.landing_rows_removed == removed.sum()

    # the analyst snapshot was republished from the rebuilt marts
    snap = open_snapshot(paths["publish"])
    try:
        published = dict(snap.execute(
            "SELECT event_hour, sum(sessions) FROM fct_funnel_hourly GROUP BY 1").fetchall())
    finally:
        snap.close()
    assert published == after["funnel"]

    # a second erasure is a no-op with a clear message
    again = erase_user(paths["warehouse"], paths["landing"], user, keys=[KEY])
    assert again.status == STATUS_ALREADY and "already erased" in again.message
    with duckdb.connect(str(paths["warehouse"]), read_only=True) as con:
        assert con.execute("SELECT count(*) FROM privacy.erasures").fetchone()[0] == 1

    # re-loading an affected hour from landing does not bring them back
    hour = min(their_session_hours)
    with duckdb.connect(str(paths["warehouse"])) as con:
        con.execute("SET TimeZone = 'UTC'")
        load_hour(con, paths["landing"], hour, KEY)
        assert con.execute("SELECT count(*) FROM raw.events WHERE user_id = ? OR "
                           "list_contains(?, session_id)", [user_hash, session_hashes]
                           ).fetchone()[0] == 0
        assert con.execute("SELECT count(*) FROM raw.events WHERE event_hour = ?",
                           [hour]).fetchone()[0] > 0


def test_unknown_user_changes_nothing(built, tmp_path):
    paths = _copy(built, tmp_path)

    def state():
        with duckdb.connect(str(paths["warehouse"]), read_only=True) as con:
            tables = [f"{s}.{t}" for s, t in con.execute(
                "SELECT table_schema, table_name FROM information_schema.tables "
                "WHERE table_type = 'BASE TABLE' ORDER BY ALL").fetchall()]
            return {t: con.execute(f"SELECT count(*) FROM {t}").fetchone()[0] for t in tables}

    before = state()
    landing = sorted((p, p.stat().st_mtime_ns) for p in paths["landing"].rglob("*") if p.is_file())
    record = erase_user(paths["warehouse"], paths["landing"], "no-such-user", keys=[KEY])
    assert record.status == STATUS_UNKNOWN
    assert "no data for this user id" in record.message
    assert state() == before and "privacy.erasures" not in before
    assert sorted((p, p.stat().st_mtime_ns)
                  for p in paths["landing"].rglob("*") if p.is_file()) == landing


def test_erasure_tries_retired_keys(built, tmp_path):
    """After a rotation, ids loaded under the old key are found only if the old key is listed.
    (rebuild=False: the marts rebuild is covered by the slow test.)"""
    paths = _copy(built, tmp_path)
    user = _pick_user(built["events"])
    only_new = erase_user(paths["warehouse"], paths["landing"], user, keys=["rotated-key"],
                          scan_all_landing=False, rebuild=False)
    # with scan_all_landing=False only the hours the warehouse has them in are read: none
    assert only_new.status == STATUS_UNKNOWN
    # scanning the landing finds them by raw id in hours loaded under a key we were not given
    with pytest.raises(ErasureError, match="FUNNELWATCH_PSEUDONYMIZATION_OLD_KEYS"):
        erase_user(paths["warehouse"], paths["landing"], user, keys=["rotated-key"])
    assert (_all_landing_rows(paths["landing"])["user_id"] == user).any()  # nothing changed
    both = erase_user(paths["warehouse"], paths["landing"], user,
                      keys=["rotated-key", KEY], rebuild=False)
    assert both.status == STATUS_ERASED and both.rows_removed["raw.events"] > 0
    assert both.user_hashes == [hmac_sha256_hex(user, "rotated-key"), hmac_sha256_hex(user, KEY)]
    with duckdb.connect(str(paths["warehouse"]), read_only=True) as con:
        assert con.execute("SELECT count(*) FROM raw.events WHERE user_id = ?",
                           [hmac_sha256_hex(user, KEY)]).fetchone()[0] == 0


def test_failed_rebuild_is_recorded_and_resumed(built, tmp_path, monkeypatch):
    """If dbt fails, the ids are already gone, the record says rebuild_pending, and the next
    erasure of the same id resumes the rebuild (dbt replaced by a recorder here)."""
    from funnelwatch.privacy import erasure

    paths = _copy(built, tmp_path)
    user = _pick_user(built["events"])

    def failing(*args, **kwargs):
        raise erasure.ErasureError("dbt build failed (simulated)")

    monkeypatch.setattr(erasure, "run_dbt_build", failing)
    with pytest.raises(ErasureError, match="run the erasure again to resume"):
        erase_user(paths["warehouse"], paths["landing"], user, keys=[KEY])
    with duckdb.connect(str(paths["warehouse"]), read_only=True) as con:
        assert con.execute("SELECT status FROM privacy.erasures").fetchall() == [
            ("rebuild_pending",)]
        assert con.execute("SELECT count(*) FROM raw.events WHERE user_id = ?",
                           [hmac_sha256_hex(user, KEY)]).fetchone()[0] == 0
    calls = []
    monkeypatch.setattr(erasure, "run_dbt_build",
                        lambda wh, start, end, select=None: calls.append((start, end, select)))
    resumed = erase_user(paths["warehouse"], paths["landing"], user, keys=[KEY])
    assert resumed.status == STATUS_ERASED and resumed.hours_rebuilt
    assert calls and calls[-1][2] == "dim_monitored_cohorts"  # put back as of the newest hour
    with duckdb.connect(str(paths["warehouse"]), read_only=True) as con:
        assert con.execute("SELECT status, completed_at IS NOT NULL FROM privacy.erasures"
                           ).fetchall() == [("erased", True)]
    again = erase_user(paths["warehouse"], paths["landing"], user, keys=[KEY])
    assert again.status == STATUS_ALREADY


def test_keys_from_environment(monkeypatch):
    monkeypatch.setenv("FUNNELWATCH_PSEUDONYMIZATION_KEY", "new")
    monkeypatch.setenv("FUNNELWATCH_PSEUDONYMIZATION_OLD_KEYS", " old1, ,old2,new")
    assert pseudonymization_keys() == ["new", "old1", "old2"]
    monkeypatch.delenv("FUNNELWATCH_PSEUDONYMIZATION_KEY")
    monkeypatch.delenv("FUNNELWATCH_PSEUDONYMIZATION_OLD_KEYS")
    from funnelwatch.ingest.pseudonymize import DEMO_KEY

    assert pseudonymization_keys() == [DEMO_KEY]


def _hold_lock(path: Path) -> subprocess.Popen:
    holder = ("import duckdb, sys, time; c = duckdb.connect(sys.argv[1]); "
              "print('locked', flush=True); time.sleep(60)")
    proc = subprocess.Popen([sys.executable, "-c", holder, str(path)],
                            stdout=subprocess.PIPE, text=True)
    assert proc.stdout.readline().strip() == "locked"
    return proc


def test_busy_warehouse_is_a_clear_error_exit_2(built, tmp_path, monkeypatch):
    paths = _copy(built, tmp_path)
    # the commands wait LOCK_WAIT_SECONDS for the lock (tests/test_warehouse_lock_wait.py)
    monkeypatch.setattr("funnelwatch.warehouse.LOCK_WAIT_SECONDS", 1.0)
    proc = _hold_lock(paths["warehouse"])
    try:
        with pytest.raises(WarehouseBusyError, match="busy"):
            erase_user(paths["warehouse"], paths["landing"], "anyone", keys=[KEY])
        app = typer.Typer()
        from funnelwatch.privacy.commands import register

        register(app)
        monkeypatch.setenv("FUNNELWATCH_WAREHOUSE", str(paths["warehouse"]))
        monkeypatch.setenv("FUNNELWATCH_LANDING", str(paths["landing"]))
        monkeypatch.setenv("FUNNELWATCH_PUBLISH_DIR", str(paths["publish"]))
        result = CliRunner().invoke(app, ["erase-user", "anyone"])
        assert result.exit_code == 2 and "busy" in result.output
        result = CliRunner().invoke(app, ["retention", "--days", "1"])
        assert result.exit_code == 2 and "busy" in result.output
    finally:
        proc.kill()
        proc.wait()


def test_cli_commands(built, tmp_path, monkeypatch):
    paths = _copy(built, tmp_path)
    monkeypatch.setenv("FUNNELWATCH_WAREHOUSE", str(paths["warehouse"]))
    monkeypatch.setenv("FUNNELWATCH_LANDING", str(paths["landing"]))
    monkeypatch.setenv("FUNNELWATCH_PUBLISH_DIR", str(paths["publish"]))
    monkeypatch.setenv("FUNNELWATCH_PSEUDONYMIZATION_KEY", KEY)
    app = typer.Typer()

    @app.callback()
    def main():  # a group, so commands are invoked by name
        pass

    from funnelwatch.privacy.commands import register

    register(app)
    result = CliRunner().invoke(app, ["erase-user", "no-such-user", "--reason", "test"])
    assert result.exit_code == 1 and "no data for this user id" in result.output
    result = CliRunner().invoke(app, ["retention", "--days", "1", "--dry-run"])
    assert result.exit_code == 0, result.output
    assert "would delete 0 hour(s)" in result.output
    with duckdb.connect(str(paths["warehouse"]), read_only=True) as con:
        n = con.execute("SELECT count(*) FROM raw.events").fetchone()[0]
    assert n > 0


# ------------------------------------------------------------------------------ landing formats


def test_landing_rewrite_keeps_other_people_in_every_format(tmp_path):
    """Parquet, JSON lines and CSV landing files are rewritten without the person (atomically),
    files left empty are removed, and the rewritten files still load."""
    landing = tmp_path / "landing"
    hour = datetime(2026, 11, 2, 3, tzinfo=UTC)
    folder = landing / "events" / "date=2026-11-02" / "hour=03"
    folder.mkdir(parents=True)
    base = {"event_type": "page_view", "page_type": "home", "device_type": "mobile"}
    rows = []
    for i in range(6):
        user = "alice" if i % 3 == 0 else f"u{i}"
        session = "s-alice" if user == "alice" else f"s{i}"
        rows.append({"event_id": f"e{i}", "event_time": f"2026-11-02T03:0{i}:00Z",
                     "user_id": user, "session_id": session, **base})
    # a row of alice's session without a user id (found through the session)
    rows.append({"event_id": "e9", "event_time": "2026-11-02T03:09:00Z", "user_id": None,
                 "session_id": "s-alice", **base})
    frame = pd.DataFrame(rows)
    frame.assign(event_time=pd.to_datetime(frame["event_time"])).to_parquet(folder / "a.parquet")
    with open(folder / "b.jsonl", "w") as out:
        out.writelines(json.dumps(row) + "\n" for row in rows)
    with open(folder / "c.csv", "w", newline="") as out:
        writer = csv.DictWriter(out, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    only_alice = pd.DataFrame([rows[0]])
    only_alice.assign(event_time=pd.to_datetime(only_alice["event_time"])).to_parquet(
        folder / "d.parquet")

    found = scan_landing(landing, "alice", [hmac_sha256_hex("s-alice", KEY)], [KEY], {hour})
    assert {p.name for p in found} == {"a.parquet", "b.jsonl", "c.csv", "d.parquet"}
    rewritten, removed = rewrite_landing(found, "alice")
    assert len(rewritten) == 4
    assert removed == 3 * 3 + 1
    assert not (folder / "d.parquet").exists()
    assert sorted(p.name for p in folder.iterdir()) == ["a.parquet", "b.jsonl", "c.csv"]

    con = duckdb.connect()
    con.execute("SET TimeZone = 'UTC'")
    result = load_hour(con, landing, hour, KEY)
    assert result.rows_in == 3 * 4
    users = {r[0] for r in con.execute("SELECT user_id FROM raw.events").fetchall()}
    assert hmac_sha256_hex("alice", KEY) not in users
    sessions = {r[0] for r in con.execute("SELECT session_id FROM raw.events").fetchall()}
    assert hmac_sha256_hex("s-alice", KEY) not in sessions
    assert not list(folder.glob(".*"))  # no temporary file left behind


def test_rebuild_windows_merge_close_hours():
    h = datetime(2026, 11, 2, tzinfo=UTC)
    hours = [h, h + timedelta(hours=1), h + timedelta(hours=3), h + timedelta(hours=10)]
    assert rebuild_windows(hours) == [
        (h, h + timedelta(hours=4)), (h + timedelta(hours=10), h + timedelta(hours=11))]
    assert rebuild_windows(hours, max_gap_hours=1) == [
        (h, h + timedelta(hours=2)), (h + timedelta(hours=3), h + timedelta(hours=4)),
        (h + timedelta(hours=10), h + timedelta(hours=11))]


# ------------------------------------------------------------------------------ retention


def test_retention_asset_deletes_old_hours_and_keeps_marts(built, tmp_path):
    from orchestration.maintain.assets import raw_events_retention
    from orchestration.resources import LandingResource, WarehouseResource
    from orchestration.settings import RetentionSettings

    paths = _copy(built, tmp_path)
    marts = ("marts.fct_funnel_hourly", "marts.fct_cohort_metrics_hourly")

    def marts_now():
        with duckdb.connect(str(paths["warehouse"]), read_only=True) as con:
            return {t: con.execute(f"SELECT * FROM {t} ORDER BY ALL").fetchall() for t in marts}

    before = marts_now()
    # as of DAY+1 03:00 with 1 day: hours before DAY 03:00 expire (00, 01, 02)
    resources = {
        "warehouse": WarehouseResource(path=str(paths["warehouse"]),
                                       publish_dir=str(paths["publish"])),
        "landing": LandingResource(path=str(paths["landing"])),
        "retention": RetentionSettings(
            days=1, relative_to="now", as_of=(START + pd.Timedelta(days=1, hours=3)).isoformat()),
    }
    cutoff = (START + pd.Timedelta(hours=3)).to_pydatetime()
    result = dg.materialize([raw_events_retention], resources=resources,
                            instance=dg.DagsterInstance.ephemeral())
    assert result.success
    meta = result.asset_materializations_for_node("raw_events_retention")[0].metadata
    assert meta["hours_deleted"].value == 3
    assert meta["oldest_kept_hour"].value == f"{cutoff:%Y-%m-%d %H:00}"
    assert meta["rows_deleted/raw.events"].value > 0
    assert meta["rows_deleted/intermediate.int_session_hours"].value > 0
    assert meta["landing_hours_deleted"].value == 3

    with duckdb.connect(str(paths["warehouse"]), read_only=True) as con:
        con.execute("SET TimeZone = 'UTC'")
        for table, column in (("raw.events", "event_hour"), ("raw.events_quarantine", "event_hour"),
                              ("intermediate.int_session_hours", "event_hour"),
                              ("marts.fct_sessions", "start_hour")):
            assert con.execute(f"SELECT count(*) FROM {table} WHERE {column} < ?",
                               [cutoff]).fetchone()[0] == 0, table
        assert con.execute("SELECT min(event_hour) FROM raw.events").fetchone()[0] == cutoff
    assert marts_now() == before  # the marts are kept
    assert min(landed_hours(paths["landing"])) == cutoff
    assert len(list(landed_hours(paths["landing"]))) == 24 - 3

    again = dg.materialize([raw_events_retention], resources=resources,
                           instance=dg.DagsterInstance.ephemeral())
    meta = again.asset_materializations_for_node("raw_events_retention")[0].metadata
    assert meta["rows_deleted"].value == 0 and meta["hours_deleted"].value == 0  # idempotent
    assert marts_now() == before


def test_retention_relative_to_newest_hour_and_dry_run(built, tmp_path):
    from funnelwatch.privacy.retention import apply_retention

    paths = _copy(built, tmp_path)
    with duckdb.connect(str(paths["warehouse"])) as con:
        con.execute("SET TimeZone = 'UTC'")
        n = con.execute("SELECT count(*) FROM raw.events").fetchone()[0]
        # the newest loaded hour is DAY 05:00: one day before its end keeps everything
        result = apply_retention(con, days=1, landing_root=paths["landing"])
        assert result.total_rows == 0 and result.landing_hours_deleted == []
        # a dry run as of a later time counts but changes nothing
        later = (START + pd.Timedelta(days=30)).to_pydatetime()
        dry = apply_retention(con, days=1, landing_root=paths["landing"], relative_to="now",
                              now=later, dry_run=True)
        assert dry.rows_deleted["raw.events"] == n and len(dry.hours_deleted) == HOURS
        assert len(dry.landing_hours_deleted) == 24
        assert con.execute("SELECT count(*) FROM raw.events").fetchone()[0] == n
    assert len(list(landed_hours(paths["landing"]))) == 24


# ------------------------------------------------------------------------------ analyst view


def test_analyst_snapshot_has_no_ids_and_is_read_only(built):
    publish = built["paths"]["publish"]
    con = open_snapshot(publish)
    try:
        columns = con.execute(
            "SELECT table_name, column_name FROM information_schema.columns "
            "WHERE table_catalog = 'snapshot'").fetchall()
        tables = {t for t, _ in columns}
        assert "fct_funnel_hourly" in tables and "fct_sessions" not in tables
        id_columns = [(t, c) for t, c in columns
                      if c.lower() in ("user_id", "session_id") or "user" in c.lower()
                      or c.lower().endswith("session_id")]
        assert id_columns == []
        for statement in ("CREATE TABLE x (a INT)", "DROP VIEW fct_funnel_hourly",
                          "DELETE FROM snapshot_info"):
            with pytest.raises(duckdb.Error, match="read-only|read only"):
                con.execute(statement)
    finally:
        con.close()
    direct = duckdb.connect(str(publish / "analytics.duckdb"), read_only=True)
    try:
        with pytest.raises(duckdb.Error):
            direct.execute("CREATE TABLE x (a INT)")
    finally:
        direct.close()


# ------------------------------------------------------------------------------ min cohort size


def test_small_cohorts_and_masking(built, monkeypatch):
    with duckdb.connect(str(built["paths"]["warehouse"]), read_only=True) as con:
        con.execute("SET TimeZone = 'UTC'")
        start, end = START.to_pydatetime(), (START + pd.Timedelta(hours=HOURS)).to_pydatetime()
        small = small_cohorts(con, start, end, min_sessions=20)
        sizes = dict(con.execute(
            "SELECT cohort, min(value) FROM marts.fct_cohort_metrics_hourly "
            "WHERE metric IN ('sessions', 'product_view_sessions') GROUP BY 1").fetchall())
    assert small, "a 120-sessions/h store has cohorts under 20 sessions/h"
    assert "all" not in small
    for cohort, size in sizes.items():
        if cohort != "all":
            assert (cohort in small) == (size < 20), cohort
    cohort, size = next(iter(small.items()))
    assert mask_cohort(cohort, size, 20) == "(cohort of fewer than 20 sessions)"
    assert mask_cohort("os=iOS", 25, 20) == "os=iOS"
    assert mask_cohort("all", 3, 20) == "all"
    monkeypatch.setenv("FUNNELWATCH_MIN_COHORT_SESSIONS", "50")
    assert min_cohort_sessions() == 50
    assert mask_cohort("os=iOS", 25) == "(cohort of fewer than 50 sessions)"
