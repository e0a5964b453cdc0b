"""CLI commands that open the warehouse (incidents, incident, ack, summary, erase-user,
retention) wait a little for a writer (the fast lane holds it a few seconds every 5 minutes)
and then fail clearly. A real second process holds the lock."""

from __future__ import annotations

import subprocess
import sys
import time

import pytest
import typer

from funnelwatch import warehouse as warehouse_module
from funnelwatch.cli import _top_anomalies_text
from funnelwatch.command_support import open_warehouse as open_for_command
from funnelwatch.privacy.erasure import open_warehouse
from funnelwatch.warehouse import WarehouseBusyError

HOLD = """
import sys, time, duckdb
con = duckdb.connect(sys.argv[1])
con.execute("CREATE TABLE IF NOT EXISTS t (x INTEGER)")
print("locked", flush=True)
time.sleep(float(sys.argv[2]))
con.close()
"""


def hold_lock(path, seconds: float) -> subprocess.Popen:
    writer = subprocess.Popen([sys.executable, "-c", HOLD, str(path), str(seconds)],
                              stdout=subprocess.PIPE, text=True)
    assert writer.stdout.readline().strip() == "locked"
    return writer


def test_a_reader_waits_for_a_short_write_and_then_reads(tmp_path):
    path = tmp_path / "warehouse.duckdb"
    writer = hold_lock(path, 2.0)
    started = time.monotonic()
    with open_for_command(path, read_only=True, wait_seconds=30) as con:
        assert con.execute("SELECT count(*) FROM t").fetchone() == (0,)
    assert writer.wait(timeout=30) == 0
    assert time.monotonic() - started >= 1.0, "it did wait for the writer"


def test_a_reader_gives_up_with_a_clear_message_when_the_write_lasts(tmp_path, capsys):
    path = tmp_path / "warehouse.duckdb"
    writer = hold_lock(path, 20.0)
    try:
        with pytest.raises(typer.Exit) as exit_info, open_for_command(path, read_only=True, wait_seconds=1):
            pass
        assert exit_info.value.exit_code == 2
        assert "is busy" in capsys.readouterr().err
    finally:
        writer.kill()
        writer.wait()


def test_a_writer_command_waits_for_a_short_write_and_then_writes(tmp_path):
    """What `ack`, `erase-user` and `retention` open: the warehouse for writing."""
    path = tmp_path / "warehouse.duckdb"
    writer = hold_lock(path, 2.0)
    started = time.monotonic()
    con = open_warehouse(path)
    with con:
        con.execute("INSERT INTO t VALUES (1)")
        assert con.execute("SELECT count(*) FROM t").fetchall() == [(1,)]
    assert writer.wait(timeout=30) == 0
    assert time.monotonic() - started >= 1.0, "it did wait for the writer"


def test_ack_and_summary_give_up_clearly_when_the_write_lasts(tmp_path, monkeypatch):
    from typer.testing import CliRunner

    from funnelwatch.cli import app

    path = tmp_path / "warehouse.duckdb"
    monkeypatch.setenv("FUNNELWATCH_WAREHOUSE", str(path))
    monkeypatch.setattr(warehouse_module, "LOCK_WAIT_SECONDS", 1.0)
    writer = hold_lock(path, 20.0)
    try:
        result = CliRunner().invoke(app, ["ack", "inc-1"])
        assert result.exit_code == 2
        assert "is busy" in result.output and "waited 1 s" in result.output
        # summary prints what the snapshot has and says the warehouse part is busy
        busy, _ = _top_anomalies_text(path, hours=24)
        assert "is busy" in busy
        with pytest.raises(WarehouseBusyError, match="Nothing was changed"):
            open_warehouse(path)
    finally:
        writer.kill()
        writer.wait()
