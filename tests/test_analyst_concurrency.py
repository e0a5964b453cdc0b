"""Analysts query while the pipeline writes: no lock errors, and the data is not stale."""

from __future__ import annotations

import os
import subprocess
import sys
import time

import duckdb
import pytest

from funnelwatch.publish import open_snapshot
from tests.conftest import REPO_ROOT
from tests.test_pipeline import DAY, _simulate


def _run_hours(env, hours: tuple[int, ...], log) -> subprocess.Popen:
    """`funnelwatch run` for each hour in turn, one Dagster run each, as the schedule would.
    Output goes to a file: Dagster logs a lot, and an unread pipe would block the writer."""
    commands = [
        f"{sys.executable} -m funnelwatch.cli run --start {DAY}T{h:02d}:00 --end {DAY}T{h + 1:02d}:00"
        for h in hours
    ]
    return subprocess.Popen(
        ["bash", "-c", " && ".join(commands)],
        env=env, cwd=REPO_ROOT, stdout=log, stderr=subprocess.STDOUT,
    )


@pytest.mark.slow
def test_analyst_reads_while_the_pipeline_writes(paths, dbt_manifest, tmp_path):
    _simulate(paths["landing"])
    home = tmp_path / "dagster_home"
    home.mkdir()
    (home / "dagster.yaml").write_text((REPO_ROOT / "dagster_home" / "dagster.yaml").read_text())
    env = {**os.environ, "DAGSTER_HOME": str(home)}

    log_path = tmp_path / "writer.log"
    log = open(log_path, "w")  # noqa: SIM115 - the writer subprocesses write to it for the whole test
    first = _run_hours(env, (0,), log)
    assert first.wait(timeout=300) == 0, log_path.read_text()[-3000:]

    # The writer processes three more hours, one run each, while we keep querying.
    writer = _run_hours(env, (1, 2, 3), log)
    seen_hours, published, queries, held = set(), set(), 0, open_snapshot(paths["publish"])
    try:
        while writer.poll() is None:
            con = open_snapshot(paths["publish"])  # a fresh analyst connection each time
            try:
                rows = con.execute(
                    "SELECT DISTINCT strftime(event_hour, '%H') FROM fct_funnel_hourly").fetchall()
                published.add(con.execute("SELECT published_at FROM snapshot_info").fetchone()[0])
            finally:
                con.close()
            seen_hours |= {r[0] for r in rows}
            # a connection opened before the swaps keeps answering from its snapshot
            assert held.execute("SELECT count(*) FROM fct_funnel_hourly").fetchone()[0] > 0
            queries += 1
            time.sleep(0.2)
    finally:
        held.close()
        writer.wait(timeout=600)
        log.close()
    assert writer.returncode == 0, log_path.read_text()[-3000:]
    assert queries > 10
    # not stale: the analyst saw new snapshots appear while the writer ran
    assert len(published) >= 2
    final = open_snapshot(paths["publish"])
    try:
        hours = {r[0] for r in final.execute(
            "SELECT DISTINCT strftime(event_hour, '%H') FROM fct_funnel_hourly").fetchall()}
    finally:
        final.close()
    assert hours == {"00", "01", "02", "03"}
    # the warehouse itself is locked by no one now and holds the same hours
    con = duckdb.connect(str(paths["warehouse"]), read_only=True)
    assert con.execute("SELECT count(DISTINCT event_hour) FROM marts.fct_funnel_hourly").fetchone()[0] == 4
    con.close()
