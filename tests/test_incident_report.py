"""Incident reports (funnelwatch/incidents/report.py) and the `funnelwatch incidents` /
`funnelwatch incident ID` commands, on a real DuckDB file in a temp dir."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from datetime import UTC, datetime, timedelta

import duckdb
import pytest
from typer.testing import CliRunner

from funnelwatch.incidents.report import band_chart_png, render_report, report_metadata
from funnelwatch.incidents.store import ensure_incident_schema
from tests.fixtures_incidents import (
    COHORT,
    INCIDENT_ID,
    METRIC,
    START,
    WHERE,
    incident_row,
    insert_incident,
    seed_incident_warehouse,
)

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


@pytest.fixture
def warehouse(paths):
    path = paths["warehouse"]
    seed_incident_warehouse(path, [
        (0, "opened", "4 anomalous points, severity 85"),
        (1, "alerted", "pagerduty-checkout, slack-checkout"),
        (2, "updated", "root cause: deploy payment-widget 1.14.0"),
    ])
    with duckdb.connect(str(path)) as con:
        insert_incident(con, incident_row(
            incident_id="inc-20261123-0300-sessions", state="resolved", metric="sessions",
            cohort="country=AU", title="sessions spiked in country=AU", direction="up",
            severity=40.0, started_at=START + timedelta(hours=3),
            last_anomaly_at=START + timedelta(hours=4),
            resolved_at=datetime.now(UTC) - timedelta(days=1), where_cohort=None,
            funnel_step=None, top_cause=None, rca=None, lost_orders=None, revenue_at_risk=None,
        ))
    return path


def _row(path, incident_id=INCIDENT_ID) -> dict:
    with duckdb.connect(str(path), read_only=True) as con:
        cur = con.execute("SELECT * FROM incidents.incidents WHERE incident_id = $i",
                          {"i": incident_id})
        names = [d[0] for d in cur.description]
        return dict(zip(names, cur.fetchone(), strict=True))


def test_render_report_files_and_content(warehouse, tmp_path):
    out = tmp_path / "reports"
    with duckdb.connect(str(warehouse), read_only=True) as con:
        files = render_report(con, _row(warehouse), out,
                              playbook="https://wiki.example.com/playbooks/checkout")
    folder = out / INCIDENT_ID
    assert files.markdown_path == folder / "report.md" and files.markdown_path.exists()
    assert files.html_path == folder / "report.html" and files.html_path.exists()
    assert set(files.png_paths) == {"band", "funnel", "revenue"}
    for path in files.png_paths.values():
        assert path.parent == folder
        assert path.read_bytes()[:8] == PNG_MAGIC
    md = files.markdown_path.read_text()
    assert md == files.markdown
    assert COHORT in md and WHERE in md
    assert "deploy payment-widget 1.14.0" in md
    assert "~32 orders" in md and "$2,880" in md
    assert "fell 18%" in md  # the planted drop: 0.82 x expected
    assert "(band.png)" in md and "(funnel.png)" in md and "(revenue.png)" in md
    assert "alerted" in md and "pagerduty-checkout" in md  # the timeline
    assert "https://wiki.example.com/playbooks/checkout" in md
    assert "<script>" not in md
    html_text = files.html_path.read_text()
    assert html_text.count('src="data:image/png;base64,') == 3
    assert "<script>" not in html_text
    assert "&lt;script&gt;alert(&#x27;x&#x27;)&lt;/script&gt; &amp; only on iOS" in html_text
    assert "band.png" not in html_text  # self-contained
    meta = report_metadata(files)
    assert meta["report"].count("data:image/png;base64,") == 1
    assert "(funnel.png)" not in meta["report"]
    assert meta["report_path"] == str(files.markdown_path)
    assert files.ui_markdown == meta["report"]
    assert meta["summary"].startswith(f"{METRIC} of {COHORT} fell 18%")
    with duckdb.connect(str(warehouse), read_only=True) as con:
        assert band_chart_png(con, _row(warehouse))[:8] == PNG_MAGIC
        assert band_chart_png(con, {**_row(warehouse), "cohort": None}) is None


def test_report_without_cohort_or_rca(warehouse, tmp_path):
    row = _row(warehouse)
    row.update(cohort=None)
    with duckdb.connect(str(warehouse), read_only=True) as con:
        files = render_report(con, row, tmp_path / "r")
    for text in (files.markdown, files.html):
        assert COHORT not in text and WHERE not in text and "Safari" not in text
    assert "band" not in files.png_paths
    row = _row(warehouse)
    row.update(rca=None, lost_orders=None, revenue_at_risk=None, top_cause=None)
    with duckdb.connect(str(warehouse), read_only=True) as con:
        files = render_report(con, row, tmp_path / "r2")
    assert set(files.png_paths) == {"band"}
    assert "no likely cause" in files.markdown
    assert "No funnel breakdown" in files.markdown


# --- CLI ---------------------------------------------------------------------------------------------


@pytest.fixture
def cli():
    from funnelwatch.cli import app

    runner = CliRunner()
    return lambda *args: runner.invoke(app, list(args))


def test_cli_lists_and_shows(warehouse, cli, tmp_path, monkeypatch):
    result = cli("incidents")
    assert result.exit_code == 0, result.output
    assert INCIDENT_ID in result.output and "deploy payment-widget 1.14.0" in result.output
    assert "inc-20261123-0300-sessions" in result.output  # resolved yesterday
    assert result.output.index(INCIDENT_ID) < result.output.index("inc-20261123-0300-sessions")
    only_resolved = cli("incidents", "--state", "resolved")
    assert only_resolved.exit_code == 0 and INCIDENT_ID not in only_resolved.output

    monkeypatch.setenv("FUNNELWATCH_REPORTS_DIR", str(tmp_path / "rep"))
    shown = cli("incident", INCIDENT_ID)
    assert shown.exit_code == 0, shown.output
    assert "deploy payment-widget 1.14.0" in shown.output and "~32 orders" in shown.output
    assert "opened" in shown.output  # timeline
    assert (tmp_path / "rep" / INCIDENT_ID / "report.md").exists()
    html_path = cli("incident", INCIDENT_ID, "--html")
    assert html_path.exit_code == 0
    assert html_path.output.strip() == str(tmp_path / "rep" / INCIDENT_ID / "report.html")

    unknown = cli("incident", "inc-20261129-1400-checkot")
    assert unknown.exit_code == 2
    assert INCIDENT_ID in unknown.output  # the closest id


def test_cli_prints_stored_report_with_live_timeline(warehouse, cli, tmp_path):
    stored = tmp_path / "stored" / INCIDENT_ID
    stored.mkdir(parents=True)
    (stored / "report.md").write_text("# stored report\n")
    (stored / "report.html").write_text("<html></html>")
    with duckdb.connect(str(warehouse)) as con:
        con.execute("UPDATE incidents.incidents SET report_path = $p WHERE incident_id = $i",
                    {"p": str(stored / "report.md"), "i": INCIDENT_ID})
    shown = cli("incident", INCIDENT_ID)
    assert shown.exit_code == 0, shown.output
    assert shown.output.startswith("# stored report")
    assert "Timeline (now)" in shown.output and "pagerduty-checkout" in shown.output
    assert cli("incident", INCIDENT_ID, "--html").output.strip() == str(stored / "report.html")


def test_cli_defaults_reports_dir_beside_warehouse(warehouse, cli, monkeypatch):
    monkeypatch.delenv("FUNNELWATCH_REPORTS_DIR", raising=False)
    shown = cli("incident", INCIDENT_ID)
    assert shown.exit_code == 0, shown.output
    assert (warehouse.parent / "reports" / INCIDENT_ID / "report.md").exists()


def test_cli_no_incidents(paths, cli):
    paths["warehouse"].parent.mkdir(parents=True)
    with duckdb.connect(str(paths["warehouse"])) as con:
        ensure_incident_schema(con)
    result = cli("incidents")
    assert result.exit_code == 0 and "no incidents" in result.output.lower()
    with duckdb.connect(str(paths["warehouse"])) as con:
        con.execute("DROP SCHEMA incidents CASCADE")
    result = cli("incidents")
    assert result.exit_code == 0 and "has not run" in result.output


def test_cli_busy_warehouse(warehouse, cli):
    holder = subprocess.Popen(
        [sys.executable, "-c", textwrap.dedent(f"""
            import duckdb, sys, time
            con = duckdb.connect({str(warehouse)!r})
            print("locked", flush=True)
            time.sleep(60)
        """)],
        stdout=subprocess.PIPE, text=True,
    )
    try:
        assert holder.stdout.readline().strip() == "locked"
        for args in (("incidents",), ("incident", INCIDENT_ID)):
            result = cli(*args)
            assert result.exit_code == 2, result.output
            assert "busy" in result.output and "try again" in result.output.lower()
    finally:
        holder.kill()
        holder.wait()


@pytest.mark.parametrize("rca", [
    {},
    "not json",
    {"error": "ValueError: boom"},
    {"where": None, "funnel": "x", "hypotheses": [None, {"rank": None}], "impact": None},
    {"where": [{"cohort": WHERE}], "funnel": [{"step": "purchase"}],
     "hypotheses": [{"title": "deploy x", "at": "2026-11-29T13:55:00"}],
     "impact": {"per_hour": [{"event_hour": "2026-11-29T14:00:00", "revenue_at_risk": 5}]}},
])
def test_report_tolerates_partial_rca(rca, tmp_path):
    with duckdb.connect(str(tmp_path / "w.duckdb")) as con:  # no detection / incident schema
        row = incident_row(rca=rca if isinstance(rca, str) else json.dumps(rca), started_at=None,
                        lost_orders=None, revenue_at_risk=None, top_cause=None)
        files = render_report(con, row, tmp_path / "out")
    assert files.markdown.startswith("# ") and files.html_path.exists()
    for path in files.png_paths.values():
        assert path.read_bytes()[:8] == PNG_MAGIC
