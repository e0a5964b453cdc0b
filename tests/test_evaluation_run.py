"""`funnelwatch evaluate` end to end, as a user runs it: a small suite through the real
pipeline (simulate, ingest, data-quality gate, dbt, detection), matched with its labels."""

from __future__ import annotations

import subprocess
import sys

import pytest

from funnelwatch.evaluation.runner import ROOT, collect, load_suite


@pytest.mark.slow
def test_evaluate_smoke_suite_finds_the_labelled_break(tmp_path, dbt_manifest):
    out, report = tmp_path / "runs", tmp_path / "evaluation.md"
    command = [sys.executable, "-m", "funnelwatch.cli", "evaluate", "--suite", "smoke",
               "--out", str(out), "--report", str(report)]
    completed = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=900,
                               check=False)
    assert completed.returncode == 0, completed.stdout[-3000:] + completed.stderr[-3000:]
    text = report.read_text()
    assert "## Headline" in text and "checkout-break" in text

    _, runs = load_suite("smoke")
    outcome = collect(runs[0], out / runs[0].key)
    incident = outcome.incidents.set_index("id").loc["checkout-break"]
    assert incident["detected"], outcome.flagged.head(20).to_string()
    assert incident["hours_to_detect"] <= 2.0
    assert outcome.days == pytest.approx(2.0, abs=0.05)  # 4 days minus the 48 h cold start

    # a finished run is reused: a second call only re-scores, it does not simulate again
    completed = subprocess.run([*command, "--rescore"], cwd=ROOT, capture_output=True,
                               text=True, timeout=900, check=False)
    assert completed.returncode == 0, completed.stderr[-3000:]
    assert "re-running detection" in completed.stdout and "simulate + pipeline" not in completed.stdout


def test_unknown_suite_is_a_clear_error(tmp_path):
    completed = subprocess.run(
        [sys.executable, "-m", "funnelwatch.cli", "evaluate", "--suite", "nope", "--out",
         str(tmp_path)], cwd=ROOT, capture_output=True, text=True, timeout=120, check=False)
    assert completed.returncode == 2
    assert "no evaluation suite 'nope'" in completed.stderr
