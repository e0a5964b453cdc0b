"""The analyst access boundary (issue 18): the analyst's connection reads the snapshot and
nothing else, through the public function and the `funnelwatch sql` command alike, and the
files the pipeline creates have the modes docs/security.md promises.

The snapshot is published by the real hourly pipeline over two simulated hours, once per
module. Each escape is tried on a connection that then still answers a mart query.
"""

from __future__ import annotations

import os
import stat
import subprocess
import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner

from funnelwatch.cli import app
from funnelwatch.landing import event_files, landed_hours
from funnelwatch.publish import (
    QueryRefused,
    check_analyst_query,
    open_analyst_connection,
    open_snapshot,
    publish_marts,
)
from tests.fixtures_pipeline import build_with_hourly_pipeline

MART_QUERY = "SELECT count(*) FROM fct_cohort_metrics_hourly"


@pytest.fixture(scope="module")
def built(tmp_path_factory, dbt_manifest):
    """Landing, warehouse and snapshot of the hourly pipeline over DAY 00:00 and 01:00."""
    paths, _ = build_with_hourly_pipeline(tmp_path_factory.mktemp("boundary"), hours=2)
    first_hour = next(landed_hours(paths["landing"]))
    paths["landing_file"] = event_files(paths["landing"], first_hour)[0]
    return paths


@pytest.fixture
def analyst_env(built, monkeypatch):
    monkeypatch.setenv("FUNNELWATCH_PUBLISH_DIR", str(built["publish"]))
    return built


def _escapes(paths: dict, tmp: Path) -> list[tuple[str, str, Path | None]]:
    """(statement, what the refusal must say, a file it must not have created)."""
    parts = paths["publish"] / "parts"
    return [
        ("SELECT * FROM read_csv('/etc/passwd')", "cannot read or write files outside", None),
        (f"SELECT * FROM read_parquet('{paths['landing_file']}')",
         "cannot read or write files outside", None),
        (f"SELECT * FROM read_parquet('{parts}/../../../landing/**/*.parquet')",
         "cannot read or write files outside", None),
        (f"ATTACH '{paths['warehouse']}' AS pipeline (READ_ONLY)",
         "cannot open other databases", None),
        (f"COPY (SELECT 1) TO '{tmp / 'x.csv'}'", "COPY", tmp / "x.csv"),
        (f"COPY (SELECT 1) TO '{parts / 'x.csv'}'", "COPY", parts / "x.csv"),
        (f"COPY fct_cohort_metrics_hourly TO '{parts / 'y.parquet'}'", "COPY",
         parts / "y.parquet"),
        (f"EXPLAIN ANALYZE COPY (SELECT 1) TO '{parts / 'z.csv'}'", "COPY", parts / "z.csv"),
        (f"SELECT 1; EXPORT DATABASE '{parts / 'export'}'", "EXPORT", parts / "export"),
        (f"PREPARE leak AS COPY (SELECT 1) TO '{parts / 'p.csv'}'", "prepared statements",
         parts / "p.csv"),
        ("INSTALL httpfs", "extensions", None),
        ("LOAD httpfs", "extensions", None),
        ("SET enable_external_access = true", "settings are locked", None),
        ("SET allowed_directories = ['/']", "settings are locked", None),
        ("SET lock_configuration = false", "settings are locked", None),
        ("RESET lock_configuration", "settings are locked", None),
        ("SET temp_directory = '/tmp'", "settings are locked", None),
    ]


def test_every_escape_is_refused_by_the_public_function(built, tmp_path):
    con = open_analyst_connection(built["publish"])
    try:
        for statement, says, not_created in _escapes(built, tmp_path):
            with pytest.raises(QueryRefused, match=says) as refused:
                con.execute(statement)
            message = str(refused.value)
            assert message.startswith("refused: the analyst snapshot") and "\n" not in message
            if not_created is not None:
                assert not not_created.exists(), statement
            # the connection keeps working, and keeps its locks, after each refusal
            assert con.execute(MART_QUERY).fetchone()[0] > 0, statement
        settings = dict(con.execute(
            "SELECT name, value FROM duckdb_settings() WHERE name IN "
            "('enable_external_access', 'lock_configuration', 'allowed_directories')"
        ).fetchall())
    finally:
        con.close()
    assert settings == {
        "enable_external_access": "false",
        "lock_configuration": "true",
        "allowed_directories": f"[{built['publish'].resolve() / 'parts'}{os.sep}]",
    }


def test_normal_analyst_work_still_runs(built):
    with open_analyst_connection(built["publish"]) as con:
        rows = con.execute(
            "SELECT metric, cohort, value FROM fct_cohort_metrics_hourly "
            "WHERE metric = $metric ORDER BY event_hour, cohort LIMIT 5",
            {"metric": "checkout_conversion_rate"},
        ).fetchall()
        assert len(rows) == 5
        assert {r[0] for r in con.execute("SHOW TABLES").fetchall()} >= {
            "fct_cohort_metrics_hourly", "fct_funnel_hourly", "snapshot_info"}
        assert con.execute("EXPLAIN ANALYZE " + MART_QUERY).fetchall()
        con.execute("SET threads = 1")  # tuning a query is allowed on the locked connection
        con.execute("USE memory")
        con.execute("CREATE TABLE mine AS SELECT * FROM snapshot.fct_funnel_hourly LIMIT 3")
        assert con.execute("SELECT count(*) FROM mine").fetchone() == (3,)
        frame = con.execute("SELECT * FROM snapshot.fct_funnel_hourly").df()
        assert not frame.empty
    # the older name opens the same boundary
    with open_snapshot(built["publish"]) as con, pytest.raises(QueryRefused):
        con.execute("SELECT * FROM read_csv('/etc/passwd')")


def test_statement_types_come_from_duckdbs_parser():
    # A COPY in a string or a comment is not a COPY; a COPY after a SELECT is.
    check_analyst_query("SELECT 'COPY (SELECT 1) TO ''x.csv''' AS text -- EXPORT DATABASE 'y'")
    check_analyst_query("SELECT 1 AS copy")
    with pytest.raises(QueryRefused, match="COPY"):
        check_analyst_query("SELECT 1;\n  copy (SELECT 1) to 'x.csv'")
    with pytest.raises(QueryRefused, match="COPY"):
        check_analyst_query("EXPLAIN (ANALYZE, FORMAT json) COPY (SELECT 1) TO 'x.csv'")


def _one_line_refusal(result, says: str) -> None:
    assert result.exit_code == 2, result.output
    assert result.exception is None or isinstance(result.exception, SystemExit)
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("error: refused: the analyst snapshot") and says in lines[0]
    assert "Traceback" not in result.output


def test_every_escape_is_refused_by_funnelwatch_sql(analyst_env, tmp_path):
    runner = CliRunner()
    for statement, says, not_created in _escapes(analyst_env, tmp_path):
        _one_line_refusal(runner.invoke(app, ["sql", statement]), says)
        if not_created is not None:
            assert not not_created.exists(), statement
    ok = runner.invoke(app, ["sql", MART_QUERY])
    assert ok.exit_code == 0, ok.output
    assert int(ok.stdout.split()[-1]) > 0


def test_the_shell_refuses_in_one_line_and_goes_on(analyst_env, tmp_path):
    escapes = _escapes(analyst_env, tmp_path)
    script = "".join(f"{statement};\n{MART_QUERY};\n" for statement, _, _ in escapes)
    result = CliRunner().invoke(app, ["sql"], input=script)
    assert result.exit_code == 0, result.output
    errors = result.stderr.strip().splitlines()
    assert len(errors) == len(escapes), result.stderr
    for line, (_, says, _) in zip(errors, escapes, strict=True):
        assert line.startswith("error: refused: the analyst snapshot") and says in line
    answers = [line for line in result.stdout.splitlines() if line.strip().isdigit()]
    assert len(answers) == len(escapes) and all(int(a) > 0 for a in answers)
    assert "Traceback" not in result.output


def test_a_real_funnelwatch_sql_process_prints_one_line(analyst_env):
    funnelwatch = Path(sys.executable).parent / "funnelwatch"
    done = subprocess.run([str(funnelwatch), "sql", "SELECT * FROM read_csv('/etc/passwd')"],
                          check=False, capture_output=True, text=True, env=os.environ.copy())
    assert done.returncode == 2
    assert done.stdout == ""
    assert done.stderr.strip().splitlines() == [(
        "error: refused: the analyst snapshot cannot read or write files outside its own "
        "published parts (Permission Error: Cannot access file \"/etc/passwd\" - file system "
        "operations are disabled by configuration)"
    )]


# ------------------------------------------------------------------------------ file modes


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def test_published_files_are_readable_by_all_and_writable_by_the_pipeline_only(built):
    publish = built["publish"]
    assert _mode(publish) == 0o755
    assert _mode(publish / "analytics.duckdb") == 0o644
    assert _mode(publish / "manifest.json") == 0o644
    folders = [p for p in (publish / "parts").rglob("*") if p.is_dir()]
    files = list((publish / "parts").rglob("part-*.parquet"))
    assert folders and files
    assert {_mode(p) for p in [publish / "parts", *folders]} == {0o755}
    assert {_mode(p) for p in files} == {0o644}


def test_publish_keeps_those_modes_under_a_private_umask(built, tmp_path, monkeypatch):
    # A deployment runs the pipeline with umask 077; the snapshot must still be readable.
    # A relative folder, too: the views must name absolute files the boundary allows.
    monkeypatch.chdir(tmp_path)
    old = os.umask(0o077)
    try:
        publish_marts(built["warehouse"], "published")
    finally:
        os.umask(old)
    publish = tmp_path / "published"
    assert _mode(publish) == 0o755 and _mode(publish / "analytics.duckdb") == 0o644
    assert {_mode(p) for p in (publish / "parts").rglob("*") if p.is_dir()} == {0o755}
    assert {_mode(p) for p in (publish / "parts").rglob("*.parquet")} == {0o644}
    with open_analyst_connection("published") as con:
        assert con.execute(MART_QUERY).fetchone()[0] > 0


def test_warehouse_and_landing_are_private_to_the_pipeline(built):
    assert _mode(built["warehouse"]) == 0o600
    wal = built["warehouse"].with_name(built["warehouse"].name + ".wal")
    assert not wal.exists() or _mode(wal) == 0o600
    # the warehouse folder can be passed through to reach published/, not listed
    assert _mode(built["warehouse"].parent) == 0o711
    assert _mode(built["landing"]) == 0o700
    landed = [p for p in built["landing"].rglob("*") if p.is_file()]
    assert landed and {_mode(p) for p in landed} == {0o600}
