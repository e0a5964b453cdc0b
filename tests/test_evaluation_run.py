"""`funnelwatch evaluate` end to end, as a user runs it: a small suite through the real
pipeline (simulate, ingest, data-quality gate, dbt, detection), matched with its labels."""

from __future__ import annotations

import subprocess
import sys
from datetime import UTC, datetime
from pathlib import Path

import dagster as dg
import duckdb
import pandas as pd
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
    # against the oracle: the 50% store-wide break is visible in its first hour and caught
    assert "## Against the oracle" in text and "## End to end" in text

    _, runs = load_suite("smoke")
    outcome = collect(runs[0], out / runs[0].key)
    incident = outcome.incidents.set_index("id").loc["checkout-break"]
    assert incident["detected"], outcome.flagged.head(20).to_string()
    assert incident["hours_to_detect"] <= 2.0
    against = outcome.oracle.set_index("id").loc["checkout-break"]
    assert against["visible"] and against["detected"] and against["delay_partitions"] <= 1
    # The oracle counts what the marts count: its checkout starts and purchases over the
    # break's hours are the mart's within a few percent (the mart counts session-hours, so a
    # session that spans two hours counts in both).
    oracle_hours = outcome.oracle_hours[outcome.oracle_hours["id"] == "checkout-break"]
    with duckdb.connect(str(out / runs[0].key / "warehouse" / "funnelwatch.duckdb"),
                        read_only=True) as con:
        purchases, starts = con.execute(
            """SELECT sum(numerator), sum(denominator) FROM marts.fct_cohort_metrics_hourly
               WHERE metric = 'checkout_conversion_rate' AND cohort = 'all'
                 AND event_hour >= $start AND event_hour < $end
            """, {"start": datetime(2026, 11, 19, 12, tzinfo=UTC),
                  "end": datetime(2026, 11, 19, 16, tzinfo=UTC)}).fetchone()
    assert oracle_hours["units"].sum() == pytest.approx(starts, rel=0.08)
    assert oracle_hours["observed"].sum() == pytest.approx(purchases, rel=0.08)
    from funnelwatch.evaluation.incident_eval import end_to_end

    e2e = end_to_end(outcome.incident_rows, outcome.labels, outcome.spec.key).set_index("id")
    assert e2e.loc["checkout-break", "opened"] >= 1
    assert e2e.loc["checkout-break", "where_answer"] == "all"
    assert outcome.days == pytest.approx(2.0, abs=0.05)  # 4 days minus the 48 h cold start

    # The checkout fast lane over the same run: the break alerts within the incident (a 50%
    # drop at the demo volume takes its 60-minute window and more; docs/fastlane.md), and
    # it adds no false page.
    from funnelwatch.evaluation.fastlane_eval import evaluate_run

    assert "## Checkout fast lane (5-minute slots)" in text
    folder = out / runs[0].key
    fast = evaluate_run(folder, folder / "warehouse" / "funnelwatch.duckdb", outcome.labels)
    row = fast["timing"].set_index("id").loc["checkout-break"]
    assert 0 < row["fast_lane_min"] <= 4 * 60 and 0 < row["hourly_lane_min"] <= 2 * 60
    assert fast["false_pages_both"] <= fast["false_pages_hourly"]
    assert (folder / "fastlane_eval.duckdb").is_file()

    # The break became one incident with its root cause, impact and report, and the
    # evaluation report scores it.
    assert "## Incidents" in text and "## Root cause" in text and "## Feedback" in text
    folder = out / runs[0].key
    warehouse = folder / "warehouse" / "funnelwatch.duckdb"
    with duckdb.connect(str(warehouse), read_only=True) as con:
        found = con.execute(
            """SELECT incident_id, where_cohort, funnel_step, lost_orders, report_path, state
               FROM incidents.incidents
               WHERE started_at < $end AND last_anomaly_at >= $start
               ORDER BY severity DESC""",
            {"start": datetime(2026, 11, 19, 12, tzinfo=UTC),
             "end": datetime(2026, 11, 19, 16, tzinfo=UTC)}).fetchall()
    assert found, "the labelled break opened no incident"
    inc_id, where, step, lost, report_path, state = found[0]
    assert where == "all" and step == "shipping_step"
    assert lost > 0 and Path(report_path).is_file() and state == "resolved"

    # The respond assets for one partition, as the sensor launches them: re-materialising
    # the hour changes nothing.
    from orchestration.definitions import defs
    from orchestration.resources import WarehouseResource
    from orchestration.respond.resources import AlertingSettings, IncidentSettings

    respond = [a for a in defs.assets if getattr(a, "group_names_by_key", None)
               and set(a.group_names_by_key.values()) == {"respond"}]
    resources = {
        "warehouse": WarehouseResource(path=str(warehouse), publish_dir=str(tmp_path / "pub")),
        "incident_settings": IncidentSettings(reports_dir=str(tmp_path / "reports"),
                                              feedback_dir=str(tmp_path / "feedback")),
        "alerting": AlertingSettings(ops_outbox_path=str(tmp_path / "ops.duckdb")),
    }
    for _ in range(2):
        result = dg.materialize(respond, partition_key="2026-11-19-13:00", resources=resources,
                                instance=dg.DagsterInstance.ephemeral())
        assert result.success
    meta = result.asset_materializations_for_node("incidents")[0].metadata
    assert meta["anomaly_points"].value > 0 and "open_incidents" in meta
    with duckdb.connect(str(warehouse), read_only=True) as con:
        again = con.execute("SELECT count(*) FROM incidents.incidents WHERE incident_id = $i",
                            {"i": inc_id}).fetchone()[0]
    assert again == 1

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


def test_the_oracle_of_a_suite_run_rebuilds_its_store():
    """oracle_eval.run_oracle rebuilds a run's store from its RunSpec (no pipeline): the smoke
    suite's 50% store-wide break is visible from its first hour; planned traffic is listed."""
    from funnelwatch.evaluation.oracle_eval import run_oracle

    _, runs = load_suite("smoke")
    seen = run_oracle(runs[0])
    row = seen.incidents.set_index("id").loc["checkout-break"]
    assert row["visible"] and str(row["oracle_hour"]) == "2026-11-19 12:00:00+00:00"
    assert row["oracle_z"] < -10 and len(seen.hours) == 4
    assert "newsletter send" in set(seen.planned["name"])
    # by the fast lane's 5-minute slot the same break shows later than its first slot (a few
    # checkouts per slot) but inside its first hour
    slot = seen.slots.set_index("id").loc["checkout-break"]
    assert slot["visible"] and slot["hours"] == 48
    assert pd.Timestamp("2026-11-19 12:05+00") <= slot["oracle_hour"] < pd.Timestamp("2026-11-19 13:00+00")


def test_default_suite_runs_the_explain_scenario_in_its_window():
    from simulator import load_incidents
    from simulator.incidents import resolve_incidents

    _, runs = load_suite("default")
    explain = [r for r in runs if r.scenario == "explain"]
    assert len(explain) == 1 and explain[0].days == 14
    resolved = resolve_incidents(load_incidents("explain"), pd.Timestamp(explain[0].start),
                                 pd.Timestamp(explain[0].end))
    assert {i.type for i in resolved} >= {"campaign_loss", "bot_spike", "checkout_conversion_drop"}


@pytest.mark.slow
def test_the_demo_store_on_another_weekday_gives_the_same_incidents(tmp_path, dbt_manifest):
    """The demo (default scenario, seed 42, 1,500 sessions/h, 14 days) ending on a Saturday
    instead of the default suite's Tuesday: the newsletter, the campaign calendar and the
    holidays fall on other days of the window, and the incidents must not change with them
    (issue 14 §4; `make evaluate EVALUATE_SUITE=demo-dates` runs three weekdays). The seeded
    iOS Safari x ig_sale case has one incident naming its where, step and deploy; the bot
    spike is one incident, bot traffic on utm_campaign=fb_retarget; the newsletter opens none.

    Not asserted, because not reached (docs/evaluation.md): that the seeded case's incident is
    the only one about it (on this date a store-wide add-to-cart incident on Thanksgiving
    evening overlaps it and, more severe, is what the end-to-end table scores; a single-hour
    incident in its cohort the day before blames an older deploy), and that no false incident
    overlaps planned traffic at all (small conversion changes in the days the ig_sale campaign
    brings new traffic)."""
    from funnelwatch.evaluation.incident_eval import answering, end_to_end, first_cause

    _, runs = load_suite("demo-dates")
    spec = next(r for r in runs if r.name == "demo-sat")
    suite = tmp_path / "demo-sat.yaml"
    suite.write_text(
        "name: demo-sat\nruns:\n  - name: demo-sat\n    scenario: default\n"
        f"    end: \"{spec.end:%Y-%m-%d}\"\n    days: {spec.days}\n"
        f"    sessions_per_hour: {spec.sessions_per_hour}\n    seeds: [{spec.seed}]\n")
    out = tmp_path / "runs"
    command = [sys.executable, "-m", "funnelwatch.cli", "evaluate", "--suite", str(suite),
               "--out", str(out), "--report", str(tmp_path / "evaluation.md")]
    completed = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=2400,
                               check=False)
    assert completed.returncode == 0, completed.stdout[-3000:] + completed.stderr[-3000:]
    outcome = collect(spec, out / spec.key)
    e2e = end_to_end(outcome.incident_rows, outcome.labels, spec.key).set_index("id")
    label = next(x for x in outcome.labels if x["id"] == "ios-safari-ig-sale-payment-drop")
    about = answering(outcome.incident_rows, label).to_dict("records")
    named = [r for r in about if r["where_cohort"] == "browser=Safari&os=iOS&utm_campaign=ig_sale"
             and r["funnel_step"] == "review_step" and first_cause(r) == ("deploy", "1.13.0")]
    assert len(named) == 1, [(r["incident_id"], r["where_cohort"], r["funnel_step"],
                              first_cause(r)) for r in about]
    bots = e2e.loc["fb-retarget-bots"]
    assert bots["opened"] == 1 and bots["where_answer"] == "utm_campaign=fb_retarget"
    assert bots["cause_ok"], bots.to_dict()
    assert bots["cause_answer"] == "bot_traffic:utm_campaign=fb_retarget"
    # the newsletter's sends (its first in the window has no week before to compare) are
    # context: no business incident names its campaign
    business = outcome.incident_rows
    names = business["where_cohort"].fillna("") + " " + business["cohort"].fillna("")
    assert not names.str.contains("utm_campaign=weekly_newsletter").any(), business[
        names.str.contains("weekly_newsletter")][["incident_id", "cohort", "where_cohort"]]
