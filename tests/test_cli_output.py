"""What a person sees in the terminal: `funnelwatch run` prints one line per step and holds back
library chatter (GE progress bars, Dagster's beta/preview warnings and per-event lines, dbt's
line per node) unless `funnelwatch --verbose`; the command modules sit below funnelwatch.cli.

Real runs in subprocesses (the warning filters and the GE context are per process), on a
simulated hour in a temp folder."""

from __future__ import annotations

import os
import re
import subprocess
import sys

import pytest

from tests.conftest import REPO_ROOT
from tests.test_pipeline import DAY, _simulate

PROGRESS_BAR = re.compile(r"Calculating Metrics|\d+%\|")
CHOSEN_FEATURE_WARNINGS = ("BetaWarning", "PreviewWarning")
STEP_LINE = re.compile(
    r"^\[(\d+)/(\d+)\] (.+): (1 partition|built whole) \.\.\. \d+ s \(CPU \d+ s\)$",
    re.MULTILINE)
DBT_NODE_LINE = re.compile(r"\b\d+ of \d+ START\b")


def _funnelwatch(env, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "funnelwatch.cli", *args], env=env, cwd=REPO_ROOT,
        capture_output=True, text=True, timeout=600, check=False,
    )


@pytest.fixture
def run_env(paths, dbt_manifest, tmp_path):
    _simulate(paths["landing"])
    home = tmp_path / "dagster_home"
    home.mkdir()
    (home / "dagster.yaml").write_text((REPO_ROOT / "dagster_home" / "dagster.yaml").read_text())
    return {**os.environ, "DAGSTER_HOME": str(home),
            "FUNNELWATCH_FEEDBACK_DIR": str(tmp_path / "feedback")}


@pytest.mark.slow
def test_run_is_quiet_by_default_and_verbose_shows_everything(run_env):
    window = ["--start", f"{DAY}T10:00", "--end", f"{DAY}T11:00"]
    quiet = _funnelwatch(run_env, "run", *window)
    assert quiet.returncode == 0, quiet.stderr[-3000:]
    both = quiet.stdout + quiet.stderr
    assert not PROGRESS_BAR.search(both), both[-3000:]
    for warning in CHOSEN_FEATURE_WARNINGS:
        assert warning not in both
    # Dagster's per-event lines, dbt's line per node ("1 of 120 START ...")
    assert "STEP_SUCCESS" not in both and not DBT_NODE_LINE.search(both)
    steps = STEP_LINE.findall(quiet.stdout)
    # hourly_pipeline's 9 steps (ingest, reference, the unknown-values check, GE, dbt of the
    # models built whole, hourly dbt, mart GE, publish, detection), then the respond job's 2
    assert [(int(n), int(t)) for n, t, _, _ in steps] == [(i, 9) for i in range(1, 10)] + [
        (1, 2), (2, 2)], quiet.stdout
    assert {label for _, _, label, _ in steps} >= {
        "dbt build of the hourly models (staging, intermediate, marts)",
        "data-quality checks on raw events (GE)"}
    # the reference tables and the views and dimensions built whole say so
    whole = {label for _, _, label, scope in steps if scope == "built whole"}
    assert whole == {"ingest reference data (deploys, campaigns, holidays)",
                     "dbt build of the views and dimensions built whole"}, quiet.stdout
    # real warnings still reach the terminal
    assert "DEMO key" in quiet.stderr

    verbose = _funnelwatch(run_env, "--verbose", "run", *window)  # the same hour again
    assert verbose.returncode == 0, verbose.stderr[-3000:]
    loud = verbose.stdout + verbose.stderr
    assert PROGRESS_BAR.search(loud)
    for warning in CHOSEN_FEATURE_WARNINGS:
        assert warning in loud
    assert "STEP_SUCCESS" in loud and DBT_NODE_LINE.search(loud)
    assert STEP_LINE.search(verbose.stdout)


def test_command_modules_do_not_import_the_cli(tmp_path):
    """replay_commands registers on any Typer app and runs without funnelwatch.cli."""
    code = (
        "import sys, typer\n"
        "from typer.testing import CliRunner\n"
        "from funnelwatch.replay_commands import register\n"
        "app = typer.Typer()\n"
        "register(app)\n"
        "@app.command()\n"
        "def other(): pass\n"
        "out = CliRunner().invoke(app, ['replay', '--days', '0'])\n"
        "print(out.exit_code, 'funnelwatch.cli' in sys.modules)\n"
        "print(out.output)\n"
    )
    done = subprocess.run([sys.executable, "-c", code], cwd=REPO_ROOT, capture_output=True,
                          text=True, timeout=120, check=False)
    assert done.returncode == 0, done.stderr
    first, *rest = done.stdout.splitlines()
    assert first == "2 False", done.stdout
    assert "error: --days must be at least 1" in "\n".join(rest)


def test_bad_day_is_one_error_line():
    done = _funnelwatch(os.environ.copy(), "simulate", "--days", "1", "--end", "yesterday")
    assert done.returncode == 2
    assert done.stderr.strip().splitlines() == [
        "error: 'yesterday' is not an ISO date or time (e.g. 2026-11-02 or 2026-11-02T13:00)"]
    assert "Traceback" not in done.stderr
