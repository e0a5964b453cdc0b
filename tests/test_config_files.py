"""Config files (funnelwatch/config_files.py): every YAML config the code reads loads into a
pydantic model, and whatever is wrong comes out as ONE line naming the file, the key path and
what was expected. Each bad file below is a shipped file with one thing broken."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import dagster as dg
import pytest

from funnelwatch.alerting.routing import DEFAULT_ROUTING_PATH, load_routing, parse_routing
from funnelwatch.config_check import check_pipeline_configs
from funnelwatch.config_files import ConfigError
from funnelwatch.dbt_vars import DEFAULT_COHORTS_PATH, CohortConfig, load_cohort_config
from funnelwatch.evaluation.runner import SUITE_DIR, load_suite
from orchestration.respond.resources import AlertingSettings
from simulator.incidents import SCENARIO_DIR, load_incidents

REPO_ROOT = Path(__file__).resolve().parents[1]
ROUTING = DEFAULT_ROUTING_PATH.read_text()
COHORTS = DEFAULT_COHORTS_PATH.read_text()
SUITE = (SUITE_DIR / "default.yaml").read_text()
SCENARIO = (SCENARIO_DIR / "default.yaml").read_text()


def broken(text: str, old: str, new: str) -> str:
    assert old in text, f"the shipped file no longer holds {old!r}"
    return text.replace(old, new, 1)


def error_of(load, tmp_path: Path, monkeypatch, name: str, text: str) -> str:
    """The error line of loading `text` as the file `name` (shown relative to the cwd)."""
    monkeypatch.chdir(tmp_path)
    (tmp_path / name).write_text(text)
    with pytest.raises(ConfigError) as caught:
        load(name)
    message = str(caught.value)
    assert "\n" not in message and "Traceback" not in message
    return message


def test_shipped_config_files_load():
    check_pipeline_configs()  # config/cohorts.yml and config/alert_routing.yml
    assert load_routing().rules and load_cohort_config().dimensions
    for suite in SUITE_DIR.glob("*.yaml"):
        assert load_suite(suite)[1], suite
    for scenario in SCENARIO_DIR.glob("*.yaml"):
        assert load_incidents(scenario), scenario


# --- config/alert_routing.yml -------------------------------------------------------------------

ROUTING_CASES = {
    "typo'd key": (
        ("    channels: [slack-checkout]\n", "    chanels: [slack-checkout]\n"),
        ("alert_routing.yml: rules[2].chanels: unknown key (expected one of: name, channels, "
        "min_severity, metric, cohort, team, actions, playbook, quiet_hours, mute, "
        "snooze_until, stop) (also rules[2].channels: required key is missing)"),
    ),
    "wrong type": (
        ("min_severity: 80", "min_severity: high"),
        "alert_routing.yml: rules[1].min_severity: expected a number, got 'high'",
    ),
    "missing key": (
        ("    url_env: FUNNELWATCH_SLACK_OPS_WEBHOOK_URL\n", ""),
        "alert_routing.yml: channels.slack-ops.url_env: required key is missing",
    ),
    "YAML syntax": (
        ("  slack-growth:\n", "  slack-growth\n"),
        ("alert_routing.yml: line 27, column 9: not valid YAML (mapping values are not allowed "
        "here)"),
    ),
    "secret in the file": (
        ("url_env: FUNNELWATCH_SLACK_OPS_WEBHOOK_URL", "url: https://hooks.example.com/x"),
        ("alert_routing.yml: channels.slack-ops: 'url' is a secret; name an environment "
        "variable with url_env instead"),
    ),
    "unknown channel type": (
        ("type: webhook", "type: teams"),
        ("alert_routing.yml: channels.webhook-incident-bus: unknown 'type' 'teams' (expected "
        "one of: 'slack', 'webhook', 'pagerduty', 'email')"),
    ),
    "channel key typo": (
        ("    starttls: true\n", "    start_tls: true\n"),
        ("alert_routing.yml: channels.email-analytics.start_tls: unknown key (expected one of: "
        "type, timeout_s, host, port, from, to, starttls, ssl, username_env, password_env)"),
    ),
    "unquoted yes in a string": (
        ("    description: Payments and checkout funnel", "    description: yes"),
        ("alert_routing.yml: teams.checkout.description: expected a string, got True (YAML "
        "reads unquoted yes/no/on/off as true/false: quote the value)"),
    ),
    "bad time": (
        ('start: "22:00"', 'start: "25:00"'),
        ("alert_routing.yml: teams.growth.quiet_hours.start: expected a time like '22:00', "
        "got '25:00'"),
    ),
    "bad day": (
        ("days: [mon,", "days: [mom,"),
        ("alert_routing.yml: teams.analytics.quiet_hours.days[0]: unknown day 'mom' (expected "
        "one of: mon, tue, wed, thu, fri, sat, sun)"),
    ),
    "bad action": (
        ("actions: [trigger, resolve]", "actions: [trigger, resolved]"),
        ("alert_routing.yml: rules[4].actions[1]: expected one of 'trigger', 'acknowledge' or "
        "'resolve', got 'resolved'"),
    ),
    "undefined team": (
        ("team: ops", "team: opz"),
        ("alert_routing.yml: rules[0].team: undefined team 'opz' (defined under teams: "
        "checkout, growth, analytics, ops)"),
    ),
    "duplicate key": (
        ("\nteams:\n", "\nrules: []\nteams:\n"),
        "alert_routing.yml: line 77, column 1: not valid YAML (duplicate key 'rules')",
    ),
}


@pytest.mark.parametrize("case", ROUTING_CASES)
def test_routing_file_errors_are_one_line(case, tmp_path, monkeypatch):
    (old, new), expected = ROUTING_CASES[case]
    text = broken(ROUTING, old, new)
    assert error_of(load_routing, tmp_path, monkeypatch, "alert_routing.yml", text) == expected


def test_routing_document_errors_name_the_source():
    with pytest.raises(ConfigError, match=r"^routing config: critical_severity: expected a "
                                          r"number <= 100, got 180$"):
        parse_routing({"critical_severity": 180})
    with pytest.raises(ConfigError, match=r"^routing config: top level: expected a mapping"):
        parse_routing(["rules"])


def test_bad_routing_file_fails_the_dagster_step_with_its_line(tmp_path, monkeypatch):
    """What a step or sensor calling the resource sees: a dg.Failure whose description is the
    line, not a traceback of the loader."""
    monkeypatch.chdir(tmp_path)
    (tmp_path / "routing.yml").write_text(broken(ROUTING, "min_severity: 80", "min_severity: x"))
    with pytest.raises(dg.Failure) as caught:
        AlertingSettings(routing_path="routing.yml").routing()
    assert caught.value.description == (
        "routing.yml: rules[1].min_severity: expected a number, got 'x'")


# --- config/cohorts.yml ---------------------------------------------------------------------

COHORT_CASES = {
    "typo'd key": (
        ("min_sessions_per_hour: 20", "min_session_per_hour: 20"),
        ("cohorts.yml: min_session_per_hour: unknown key (expected one of: dimensions, "
        "combinations, min_sessions_per_hour, monitor_window_days, session_lookback_hours)"),
    ),
    "wrong type": (
        ("monitor_window_days: 7", "monitor_window_days: seven"),
        "cohorts.yml: monitor_window_days: expected a whole number, got 'seven'",
    ),
    "out of range": (
        ("session_lookback_hours: 3", "session_lookback_hours: -1"),
        "cohorts.yml: session_lookback_hours: expected a number >= 0, got -1",
    ),
    "a string, not a list": (
        ("dimensions: [device_type, os, browser, country, utm_source, utm_campaign, category]",
         "dimensions: os"),
        "cohorts.yml: dimensions: expected a list, got 'os'",
    ),
    "unknown dimension": (
        ("country, utm_source", "countyr, utm_source"),
        ("cohorts.yml: dimensions[3]: unknown cohort dimension 'countyr'; allowed: "
        "device_type, os, browser, country, utm_source, utm_medium, utm_campaign, category"),
    ),
    "single-only dimension in a combination": (
        ("  - [os, browser]\n", "  - [os, category]\n"),
        ("cohorts.yml: combinations[1]: ['category'] can only be monitored as a single "
        "dimension, not in combination ['os', 'category']; combinable: device_type, os, "
        "browser, country, utm_source, utm_medium, utm_campaign"),
    ),
    "YAML syntax": (
        ("  - [device_type, os]", "  - [device_type, os"),
        "cohorts.yml: line 16, column 5: not valid YAML (expected ',' or ']', but got '[')",
    ),
}


@pytest.mark.parametrize("case", COHORT_CASES)
def test_cohort_file_errors_are_one_line(case, tmp_path, monkeypatch):
    (old, new), expected = COHORT_CASES[case]
    text = broken(COHORTS, old, new)
    assert error_of(load_cohort_config, tmp_path, monkeypatch, "cohorts.yml", text) == expected


def test_cohort_file_has_no_required_key(tmp_path):
    """Every cohort key has a default (an empty file is the defaults): the missing-key case of
    the other configs does not exist here."""
    path = tmp_path / "cohorts.yml"
    path.write_text("# nothing set\n")
    assert load_cohort_config(path) == CohortConfig()
    path.unlink()
    with pytest.raises(ConfigError, match="cohorts.yml: no such file$"):
        load_cohort_config(path)


# --- evaluation suites --------------------------------------------------------------------------

SUITE_CASES = {
    "typo'd key": (
        ("    seeds: [11]", "    seed: [11]"),
        ("suite.yaml: runs[1].seed: unknown key (expected one of: name, scenario, seeds, end, "
        "days, sessions_per_hour)"),
    ),
    "wrong type": (
        ("  days: 14", "  days: two weeks"),
        "suite.yaml: defaults.days: expected a whole number, got 'two weeks'",
    ),
    "missing key": (
        ("  sessions_per_hour: 1500\n", ""),
        "suite.yaml: runs[0]: missing sessions_per_hour (required in the run or in defaults)",
    ),
    "YAML syntax": (
        ("    seeds: [42, 7]", "    seeds: [42, 7"),
        "suite.yaml: line 22, column 9: not valid YAML (expected ',' or ']', but got ':')",
    ),
    "unknown calibration run": (
        ("calibrated_on: [incidents-seed42]", "calibrated_on: [incidents-seed4]"),
        ("suite.yaml: calibrated_on: names unknown runs ['incidents-seed4'] (known: "
        "incidents-seed42, incidents-seed7, magnitudes-seed11, explain-seed13, quiet-seed5)"),
    ),
}


@pytest.mark.parametrize("case", SUITE_CASES)
def test_suite_file_errors_are_one_line(case, tmp_path, monkeypatch):
    (old, new), expected = SUITE_CASES[case]
    text = broken(SUITE, old, new)
    assert error_of(load_suite, tmp_path, monkeypatch, "suite.yaml", text) == expected


def test_suite_without_runs_names_the_key(tmp_path, monkeypatch):
    assert error_of(load_suite, tmp_path, monkeypatch, "suite.yaml", "name: x\n") == (
        "suite.yaml: runs: required key is missing")


# --- simulator scenarios --------------------------------------------------------------------

SCENARIO_CASES = {
    "typo'd key": (
        ("    duration_hours: 72", "    duration: 72"),
        ("scenario.yaml: incidents[0].duration: unknown key (expected one of: type, start, "
        "duration_hours, cohort, magnitude, params, id, kind, metric, description)"),
    ),
    "wrong type": (
        ("    duration_hours: 72", "    duration_hours: three days"),
        "scenario.yaml: incidents[0].duration_hours: expected a number, got 'three days'",
    ),
    "missing key": (
        ("    type: stock_out\n", ""),
        "scenario.yaml: incidents[1].type: required key is missing",
    ),
    "unknown incident type": (
        ("    type: stock_out\n", "    type: stockout\n"),
        ("scenario.yaml: incidents[1].type: unknown incident type 'stockout'; known: "
        "cohort_checkout_drop, checkout_conversion_drop, tracking_outage, bot_spike, "
        "campaign_loss, stock_out, payment_provider_errors, late_hour, duplicate_events, "
        "null_field, unknown_event_type"),
    ),
    "YAML syntax": (
        ("  - id: adyen-errors", "  - id: adyen-errors:"),
        ("scenario.yaml: line 32, column 21: not valid YAML (mapping values are not allowed "
        "here)"),
    ),
}


@pytest.mark.parametrize("case", SCENARIO_CASES)
def test_scenario_file_errors_are_one_line(case, tmp_path, monkeypatch):
    (old, new), expected = SCENARIO_CASES[case]
    text = broken(SCENARIO, old, new)
    assert error_of(load_incidents, tmp_path, monkeypatch, "scenario.yaml", text) == expected


def test_scenario_that_is_only_a_list(tmp_path, monkeypatch):
    text = "- {type: stock_out, start: day 1 00:00, colour: red}\n"
    assert error_of(load_incidents, tmp_path, monkeypatch, "list.yaml", text).startswith(
        "list.yaml: incidents[0].colour: unknown key (expected one of: type, start, ")


# --- the command line -----------------------------------------------------------------------


def funnelwatch(args: list[str], cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "funnelwatch.cli", *args], cwd=cwd,
                          capture_output=True, text=True, timeout=300, check=False)


def test_cli_prints_the_line_not_a_traceback(tmp_path):
    (tmp_path / "suite.yaml").write_text(broken(SUITE, "  days: 14", "  days: two weeks"))
    (tmp_path / "scenario.yaml").write_text(broken(SCENARIO, "    duration_hours: 72",
                                                   "    duration: 72"))
    evaluate = funnelwatch(["evaluate", "--suite", "suite.yaml", "--out", "runs"], tmp_path)
    assert evaluate.returncode == 2 and "Traceback" not in evaluate.stderr
    assert evaluate.stderr.strip() == (
        "error: suite.yaml: defaults.days: expected a whole number, got 'two weeks'")
    simulate = funnelwatch(["simulate", "--days", "1", "--scenario", "scenario.yaml",
                            "--landing", "landing"], tmp_path)
    assert simulate.returncode == 2 and "Traceback" not in simulate.stderr
    assert simulate.stderr.strip() == (
        "error: cannot load scenario 'scenario.yaml': scenario.yaml: incidents[0].duration: "
        "unknown key (expected one of: type, start, duration_hours, cohort, magnitude, "
        "params, id, kind, metric, description)")
