"""Incident feedback: spool -> incidents.feedback, the HTTP endpoint, the CLI, how feedback
changes scoring (apply_feedback, score_window) and its offline effect (feedback_effect).
Real DuckDB files in tmp_path, a real HTTP server on a free port, a real child process holding
the warehouse's write lock. The HTTP endpoint is the incident page's app
(funnelwatch/incidents/page.py) on a real uvicorn server in a thread."""

from __future__ import annotations

import json
import subprocess
import sys
import time
import urllib.error
import urllib.request
from datetime import UTC, datetime

import duckdb
import numpy as np
import pandas as pd
import pytest
from typer.testing import CliRunner

from funnelwatch.evaluation import feedback_effect, scoring
from funnelwatch.incidents import feedback as fb
from funnelwatch.incidents.page import make_server, serve_in_thread
from funnelwatch.incidents.store import ensure_incident_schema

T0 = pd.Timestamp("2026-11-20 10:00", tz="UTC")


def _warehouse(path, incidents=("inc-ios", "inc-all")) -> duckdb.DuckDBPyConnection:
    path.parent.mkdir(parents=True, exist_ok=True)
    con = duckdb.connect(str(path))
    ensure_incident_schema(con)
    rows = {"inc-ios": ("sessions", "os=iOS"), "inc-all": ("checkout_conversion_rate", "all")}
    for inc in incidents:
        metric, cohort = rows[inc]
        con.execute(
            """INSERT INTO incidents.incidents (incident_id, state, category, title, metric,
                   cohort, started_at, last_anomaly_at, alert_version, severity)
               VALUES ($i, 'open', 'business', $i, $m, $c, $s, $l, 1, 70)""",
            {"i": inc, "m": metric, "c": cohort, "s": T0, "l": T0 + pd.Timedelta(hours=2)})
        con.execute(
            "INSERT INTO incidents.members VALUES ($i, $h, $m, $c, 70, 'down')",
            {"i": inc, "h": T0, "m": metric, "c": cohort})
    return con


def test_submit_then_ingest_stores_feedback_resolves_and_is_idempotent(tmp_path):
    con = _warehouse(tmp_path / "w.duckdb")
    spool = tmp_path / "spool"
    fid = fb.submit(spool, "inc-ios", "false_alarm", note="bot test traffic", author="ann")
    assert (spool / f"{fid}.json").is_file() and not list(spool.glob(".*"))  # no temp left
    result = fb.ingest_spool(con, spool)
    assert (result.applied, result.rejected, result.feedback_ids) == (1, 0, [fid])

    row = con.execute("SELECT incident_id, label, metric, cohort, window_start, window_end, "
                      "author, note, applied_at FROM incidents.feedback").fetchall()
    assert len(row) == 1
    inc_id, label, metric, cohort, ws, we, author, note, applied = row[0]
    assert (inc_id, label, metric, cohort, author, note) == (
        "inc-ios", "false_alarm", "sessions", "os=iOS", "ann", "bot test traffic")
    assert pd.Timestamp(ws) == T0 and pd.Timestamp(we) == T0 + pd.Timedelta(hours=3)
    assert applied is not None
    state, feedback, resolved_at, version = con.execute(
        "SELECT state, feedback, resolved_at, alert_version FROM incidents.incidents "
        "WHERE incident_id = 'inc-ios'").fetchone()
    assert (state, feedback, version) == ("resolved", "false_alarm", 2) and resolved_at
    kinds = [r[0] for r in con.execute(
        "SELECT kind FROM incidents.timeline WHERE incident_id = 'inc-ios' ORDER BY kind")
        .fetchall()]
    assert kinds == ["feedback", "resolved"]
    assert fb.spool_status(spool) == {"pending": 0, "processed": 1, "rejected": 0}

    # Re-ingest: nothing pending; a file that reappears (crash before the move) is a duplicate.
    assert fb.ingest_spool(con, spool).applied == 0
    (spool / "processed" / f"{fid}.json").rename(spool / f"{fid}.json")
    again = fb.ingest_spool(con, spool)
    assert (again.applied, again.duplicates) == (0, 1)
    assert con.execute("SELECT count(*) FROM incidents.feedback").fetchone()[0] == 1
    assert con.execute("SELECT count(*) FROM incidents.timeline").fetchone()[0] == 2


def test_true_keeps_the_incident_open_and_is_a_labelled_example(tmp_path):
    con = _warehouse(tmp_path / "w.duckdb")
    spool = tmp_path / "spool"
    fb.submit(spool, "inc-all", "true", author="bo")
    assert fb.ingest_spool(con, spool).applied == 1
    assert con.execute("SELECT state, feedback FROM incidents.incidents "
                       "WHERE incident_id = 'inc-all'").fetchone() == ("open", "true")
    examples = fb.labelled_examples(con)
    assert list(examples["incident_id"]) == ["inc-all"]
    assert list(examples["metric"]) == ["checkout_conversion_rate"]
    assert fb.active_feedback(con, T0, T0 + pd.Timedelta(days=1)).empty  # no scoring change


def test_bad_submissions_are_rejected_with_a_reason_and_never_lost(tmp_path):
    con = _warehouse(tmp_path / "w.duckdb")
    spool = tmp_path / "spool"
    spool.mkdir()
    bad_label = {"feedback_id": "fb-bad-label", "incident_id": "inc-ios", "label": "maybe"}
    (spool / "fb-bad-label.json").write_text(json.dumps(bad_label))
    (spool / "broken.json").write_text("{not json")
    unknown = fb.submit(spool, "inc-nope", "false_alarm")
    good = fb.submit(spool, "inc-all", "expected", until="2026-11-21T00:00")
    result = fb.ingest_spool(con, spool)
    assert (result.applied, result.rejected) == (1, 3)
    rejected = spool / "rejected"
    assert json.loads((rejected / "fb-bad-label.json").read_text()) == bad_label  # as sent
    assert (rejected / "broken.json").read_text() == "{not json"
    assert "label must be one of" in (rejected / "fb-bad-label.json.reason.txt").read_text()
    assert "not valid" in (rejected / "broken.json.reason.txt").read_text() or \
        "Expecting" in (rejected / "broken.json.reason.txt").read_text()
    assert "unknown incident 'inc-nope'" in (rejected / f"{unknown}.json.reason.txt").read_text()
    # The good one: 'expected' with until extends the window to it.
    we = con.execute("SELECT window_end FROM incidents.feedback WHERE feedback_id = $f",
                     {"f": good}).fetchone()[0]
    assert pd.Timestamp(we) == pd.Timestamp("2026-11-21", tz="UTC")
    assert con.execute("SELECT count(*) FROM incidents.feedback").fetchone()[0] == 1


def test_submit_validates_before_writing(tmp_path):
    spool = tmp_path / "spool"
    with pytest.raises(ValueError, match="label must be one of true, false_alarm, expected"):
        fb.submit(spool, "inc-ios", "False")
    with pytest.raises(ValueError, match="until applies only"):
        fb.submit(spool, "inc-ios", "false_alarm", until="2026-11-21")
    with pytest.raises(ValueError, match="ISO"):
        fb.submit(spool, "inc-ios", "expected", until="next tuesday")
    with pytest.raises(ValueError, match="bad incident id"):
        fb.submit(spool, "../etc", "true")
    assert fb.pending(spool) == []


def _post(url, body: bytes, token=None):
    request = urllib.request.Request(url, data=body, method="POST",
                                     headers={"Content-Type": "application/json"})
    if token:
        request.add_header("Authorization", f"Bearer {token}")
    try:
        with urllib.request.urlopen(request, timeout=5) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as err:
        return err.code, json.loads(err.read())


def test_http_endpoint_queues_feedback_and_checks_input_and_token(tmp_path, monkeypatch):
    monkeypatch.setenv("FUNNELWATCH_FEEDBACK_TOKEN", "s3cret")
    spool = tmp_path / "spool"
    server = make_server("127.0.0.1", 0, spool)  # the token is read here, from the env
    monkeypatch.delenv("FUNNELWATCH_FEEDBACK_TOKEN")
    serve_in_thread(server)
    base = f"http://127.0.0.1:{server.server_address[1]}"
    try:
        with urllib.request.urlopen(f"{base}/health", timeout=5) as response:
            assert response.status == 200 and json.loads(response.read())["status"] == "ok"
        url = f"{base}/incidents/inc-ios/feedback"
        good = json.dumps({"label": "false_alarm", "note": "known noise"}).encode()
        assert _post(url, good)[0] == 401
        assert _post(url, good, token="wrong")[0] == 401
        status, body = _post(url, good, token="s3cret")
        assert status == 202 and body["status"] == "queued"
        doc = json.loads((spool / f"{body['feedback_id']}.json").read_text())
        assert doc["incident_id"] == "inc-ios" and doc["label"] == "false_alarm"
        status, body = _post(url, b"{nope", token="s3cret")
        assert status == 400 and "JSON" in body["error"]
        status, body = _post(url, json.dumps({"label": "meh"}).encode(), token="s3cret")
        assert status == 400 and "label must be one of" in body["error"]
        status, body = _post(url, json.dumps({"label": "true", "note": "x" * 20000}).encode(),
                             token="s3cret")
        assert status == 400 and "too large" in body["error"]
        assert len(fb.pending(spool)) == 1
    finally:
        server.shutdown()
        server.server_close()

    open_server = make_server("127.0.0.1", 0, spool, token="")  # no token: no auth
    serve_in_thread(open_server)
    try:
        url = f"http://127.0.0.1:{open_server.server_address[1]}/incidents/inc-all/feedback"
        assert _post(url, json.dumps({"label": "true"}).encode())[0] == 202
    finally:
        open_server.shutdown()
        open_server.server_close()


def _rules(rows, **params) -> fb.FeedbackRules:
    return fb.rules_from_feedback(pd.DataFrame(rows), **params)


def test_false_alarms_raise_the_series_threshold_within_bounds():
    rules = fb.no_feedback()
    assert list(rules.threshold([0, 1, 2, 5])) == [50, 60, 60, 60]  # STEP 10, CAP 60
    custom = _rules([], step=5, cap=65)
    assert list(custom.threshold([0, 1, 2, 3, 9])) == [50, 55, 60, 65, 65]

    fa = lambda end: {"label": "false_alarm", "metric": "sessions", "cohort": "os=iOS",
                      "window_start": T0, "window_end": end}
    rules = _rules([fa(T0), fa(T0 + pd.Timedelta(hours=5))], step=5, cap=65)
    hours = pd.to_datetime(["2026-11-20 09:00", "2026-11-20 12:00", "2026-11-20 12:00",
                            "2026-11-21 00:00", "2026-11-21 00:00", "2026-11-21 00:00",
                            "2026-12-30 00:00"], utc=True)
    scored = pd.DataFrame({
        "ts": hours,
        "metric": ["sessions"] * 5 + ["purchases", "sessions"],
        "cohort": ["os=iOS"] * 5 + ["os=iOS", "os=iOS"],
        "severity": [52.0, 54.0, 56.0, 59.0, 61.0, 52.0, 52.0],
        "is_anomaly": [True, True, True, True, True, True, True],
        "why": ["w"] * 7,
    })
    out, cleared = fb.apply_feedback(scored, rules)
    # before any feedback: kept; 1 false alarm (55): 54 cleared, 56 kept; 2 (60): 59 cleared,
    # 61 kept; another metric: kept; after the TTL (28 days): kept.
    assert list(out["is_anomaly"]) == [True, False, True, False, True, True, True]
    assert cleared == 2
    assert out.loc[1, "why"].startswith("w; feedback: 1 false alarm(s)")
    assert "severity 60" in out.loc[3, "why"]
    assert list(scored["is_anomaly"]).count(False) == 0  # the input is not changed
    assert out.loc[1, "severity"] == 54.0  # kept for context


def test_expected_suppresses_the_cohort_and_cohorts_inside_it_during_its_window():
    rules = _rules([{"label": "expected", "metric": "sessions", "cohort": "os=iOS",
                     "window_start": T0, "window_end": T0 + pd.Timedelta(hours=3)}])
    cohorts = ["os=iOS", "os=iOS&browser=Safari", "browser=Safari&os=iOS&utm_source=x",
               "all", "os=Android", "os=iOS"]
    scored = pd.DataFrame({
        "event_hour": [T0 + pd.Timedelta(hours=1)] * 5 + [T0 + pd.Timedelta(hours=3)],
        "metric": "sessions", "cohort": cohorts, "severity": 90.0, "is_anomaly": True,
        "why": None,
    })
    out, cleared = fb.apply_feedback(scored, rules)
    # os=iOS and two cohorts inside it; not the parent 'all', not Android, not after the window
    assert list(out["is_anomaly"]) == [False, False, False, True, True, True]
    assert cleared == 3
    assert out.loc[0, "why"].startswith("feedback: expected sessions in os=iOS 2026-11-20 10:00")
    other_metric = scored.assign(metric="purchases")
    assert fb.apply_feedback(other_metric, rules)[1] == 0
    assert fb.cohort_inside("os=iOS&browser=Safari", "all")
    assert not fb.cohort_inside("os=iOSX", "os=iOS")


def test_active_feedback_reads_the_table_and_tolerates_no_schema(tmp_path):
    fresh = duckdb.connect(str(tmp_path / "fresh.duckdb"))
    assert fb.active_feedback(fresh, T0, T0 + pd.Timedelta(hours=1)).empty
    con = _warehouse(tmp_path / "w.duckdb")
    spool = tmp_path / "spool"
    fb.submit(spool, "inc-ios", "false_alarm")
    fb.submit(spool, "inc-all", "expected", until="2026-11-22")
    fb.ingest_spool(con, spool)
    window = (T0 + pd.Timedelta(days=1), T0 + pd.Timedelta(days=1, hours=1))
    rules = fb.active_feedback(con, *window)
    assert rules.thresholds(window[0]).to_dict("records") == [
        {"metric": "sessions", "cohort": "os=iOS", "false_alarms": 1, "min_severity": 60.0}]
    assert list(rules.expected["cohort"]) == ["all"]
    # A correction wins: the iOS incident was true after all.
    time.sleep(0.01)
    fb.submit(spool, "inc-ios", "true")
    fb.ingest_spool(con, spool)
    assert fb.active_feedback(con, *window).false_alarms.empty
    # Long after: the false alarm and the expected window no longer apply.
    assert fb.active_feedback(con, T0 + pd.Timedelta(days=60), T0 + pd.Timedelta(days=61)).empty


def _mart(con, hours: int, spike_at: pd.Timestamp):
    con.execute("CREATE SCHEMA IF NOT EXISTS marts")
    ts = pd.date_range(spike_at - pd.Timedelta(hours=hours), spike_at, freq="h", tz="UTC")
    rng = np.random.default_rng(3)
    rows = []
    for cohort, level in (("all", 2000.0), ("os=iOS", 800.0), ("os=Android", 900.0)):
        values = rng.poisson(level, len(ts)).astype(float)
        if cohort != "os=Android":
            values[-1] = level * 3  # a traffic spike in the scored hour
        rows.append(pd.DataFrame({"event_hour": ts, "metric": "sessions", "cohort": cohort,
                                  "cohort_dimensions": "all" if cohort == "all" else "os",
                                  "numerator": np.nan, "denominator": np.nan,
                                  "value": values}))
    frame = pd.concat(rows, ignore_index=True)  # noqa: F841 - read by DuckDB below
    con.execute("CREATE TABLE marts.fct_cohort_metrics_hourly AS SELECT * FROM frame")


def test_score_window_applies_feedback_after_planned_suppression(tmp_path):
    from detectors import Ensemble
    from funnelwatch.detection.run import score_window

    spike = pd.Timestamp("2026-11-27 12:00", tz="UTC")
    con = duckdb.connect(str(tmp_path / "w.duckdb"))
    _mart(con, 24 * 8, spike)
    make = lambda: Ensemble(use_prophet=False, prophet_top_n=0)
    window = (spike.to_pydatetime(), (spike + pd.Timedelta(hours=1)).to_pydatetime())
    before = score_window(con, *window, make, persist_models=False)
    flagged = before.scored[before.scored["is_anomaly"].astype(bool)]
    assert set(flagged["cohort"]) == {"all", "os=iOS"} and before.feedback_cleared == 0

    # Someone says the iOS traffic is expected (an app campaign); the store as a whole still is
    # news: 'all' is not inside os=iOS.
    ensure_incident_schema(con)
    con.execute("""INSERT INTO incidents.feedback (feedback_id, incident_id, label, metric,
                       cohort, window_start, window_end, submitted_at)
                   VALUES ('fb-1', 'inc-x', 'expected', 'sessions', 'os=iOS', $s, $e, now())""",
                {"s": spike - pd.Timedelta(hours=1), "e": spike + pd.Timedelta(hours=6)})
    after = score_window(con, *window, make, persist_models=False)
    flagged = after.scored[after.scored["is_anomaly"].astype(bool)]
    assert set(flagged["cohort"]) == {"all"} and after.feedback_cleared == 1
    ios = after.scored[after.scored["cohort"] == "os=iOS"].iloc[0]
    assert "feedback: expected sessions in os=iOS" in ios["why"]


def test_cli_feedback_applies_at_once_or_queues_when_the_warehouse_is_busy(paths, tmp_path,
                                                                          monkeypatch):
    from funnelwatch.cli import app

    spool = tmp_path / "feedback"
    monkeypatch.setenv("FUNNELWATCH_FEEDBACK_DIR", str(spool))
    runner = CliRunner()
    # No warehouse yet: queued.
    result = runner.invoke(app, ["feedback", "inc-ios", "false_alarm", "--note", "n"])
    assert result.exit_code == 0, result.output
    assert "queued" in result.output and len(fb.pending(spool)) == 1

    _warehouse(paths["warehouse"]).close()
    # The pipeline holds the warehouse (another process with the write lock): still queued.
    holder = subprocess.Popen(
        [sys.executable, "-c",
         ("import duckdb, sys, time; c = duckdb.connect(sys.argv[1]); print('ok', flush=True);"
          " time.sleep(60)"), str(paths["warehouse"])],
        stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "ok"
        result = runner.invoke(app, ["feedback", "inc-all", "true", "--author", "cy"])
        assert result.exit_code == 0, result.output
        assert "queued" in result.output and len(fb.pending(spool)) == 2
    finally:
        holder.kill()
        holder.wait()
    # Free again: this one and the two queued ones are applied.
    result = runner.invoke(app, ["feedback", "inc-all", "expected", "--until", "2026-11-22"])
    assert result.exit_code == 0, result.output
    assert "applied" in result.output and "2 other queued submission(s) applied" in result.output
    with duckdb.connect(str(paths["warehouse"]), read_only=True) as con:
        assert con.execute("SELECT count(*) FROM incidents.feedback").fetchone()[0] == 3

    result = runner.invoke(app, ["feedback", "inc-ios", "nonsense"])
    assert result.exit_code == 2 and "label must be one of" in result.output
    result = runner.invoke(app, ["feedback", "inc-unknown", "true"])
    assert result.exit_code == 1 and "unknown incident" in result.output
    assert fb.spool_status(spool)["rejected"] == 1


# --- the offline effect: a synthetic run where one series has false alarms, then a true incident


def _synthetic_run():
    series = ("checkout_conversion_rate", "country=GB")
    day = pd.Timestamp("2026-11-20", tz="UTC")
    rows = [
        (day + pd.Timedelta(hours=10), *series, 55.0),  # false alarm
        (day + pd.Timedelta(days=2, hours=10), *series, 57.0),  # the same noise again: repeat
        (day + pd.Timedelta(days=3, hours=4), *series, 52.0),  # and again
        (day + pd.Timedelta(days=4, hours=9), *series, 78.0),  # the real drop, 3 hours
        (day + pd.Timedelta(days=4, hours=10), *series, 74.0),
        (day + pd.Timedelta(days=4, hours=11), *series, 58.0),
        (day + pd.Timedelta(days=4, hours=10), "checkout_conversion_rate", "all", 53.0),
        (day + pd.Timedelta(days=6, hours=3), "sessions", "os=iOS", 54.0),  # unrelated false
    ]
    flagged = pd.DataFrame(rows, columns=["event_hour", "metric", "cohort", "severity"])
    truth = scoring.truth_frame([{
        "id": "gb-checkout-drop", "type": "checkout_conversion_drop", "kind": "business",
        "start": "2026-11-24T09:00:00Z", "end": "2026-11-24T12:00:00Z",
        "metric": "checkout_conversion_rate", "cohort": {"country": "GB"}, "magnitude": -0.3,
    }])
    return flagged, truth


def test_feedback_effect_cuts_repeat_false_alerts_without_hiding_the_true_incident():
    flagged, truth = _synthetic_run()
    result = feedback_effect.evaluate_run("synthetic", flagged, truth)
    assert (result["false_alerts_before"], result["false_alerts_after"]) == (4, 2)
    assert (result["repeat_false_before"], result["repeat_false_after"]) == (2, 0)
    assert result["true_hidden"] == []
    assert result["true_on_fed_series"] == [
        {"incident": "gb-checkout-drop", "detected_before": True, "detected_after": True}]
    assert result["points_cleared"] == 3  # two repeats and the incident's weakest hour (58)
    section = feedback_effect.markdown_section({
        "params": feedback_effect.params(), "runs": [result],
        "totals": feedback_effect.totals([result])})
    assert "| synthetic | 4 -> 2 | 2 -> 0 |" in section
    assert "synthetic:gb-checkout-drop: detected True -> True" in section


def test_feedback_effect_on_a_run_folder(tmp_path):
    """The folder reader (the warehouse read-only), with and without the what-if threshold."""
    flagged, _ = _synthetic_run()
    folder = tmp_path / "run"
    (folder / "warehouse").mkdir(parents=True)
    (folder / "ground_truth.json").write_text(json.dumps([{
        "id": "gb-checkout-drop", "type": "checkout_conversion_drop", "kind": "business",
        "start": "2026-11-24T09:00:00Z", "end": "2026-11-24T12:00:00Z",
        "metric": "checkout_conversion_rate", "cohort": {"country": "GB"}, "magnitude": -0.3}]))
    frame = flagged.assign(value=0.0, expected=0.0, why="", is_anomaly=True)
    frame = pd.concat([frame, pd.DataFrame({  # scored but below the alert threshold
        "event_hour": [pd.Timestamp("2026-11-27 05:00", tz="UTC")], "metric": ["sessions"],
        "cohort": ["os=iOS"], "severity": [45.0], "value": [0.0], "expected": [0.0],
        "why": [""], "is_anomaly": [False]})], ignore_index=True)
    with duckdb.connect(str(folder / "warehouse" / "funnelwatch.duckdb")) as con:
        con.execute("CREATE SCHEMA detection")
        con.execute("CREATE TABLE detection.anomalies AS SELECT * FROM frame")
    result = feedback_effect.evaluate_folders({"run": folder}, what_if_threshold=40.0)
    assert result["totals"]["repeat_false_before"] == 2
    assert result["totals"]["repeat_false_after"] == 0
    assert result["what_if_totals"]["false_alerts_before"] == 5
    assert "What-if, alert threshold 40" in feedback_effect.markdown_section(result)


def test_settings_feedback_dir(monkeypatch, tmp_path):
    from funnelwatch.settings import Settings

    monkeypatch.delenv("FUNNELWATCH_FEEDBACK_DIR", raising=False)
    monkeypatch.chdir(tmp_path)
    assert Settings.from_env(export=False).feedback_dir == tmp_path / "data" / "feedback"
    monkeypatch.setenv("FUNNELWATCH_FEEDBACK_DIR", str(tmp_path / "fb"))
    assert Settings.from_env(export=False).feedback_dir == tmp_path / "fb"


def test_feedback_effect_from_the_runners_outcomes():
    """What the evaluation runner holds (RunOutcome: flagged points, matched incidents) gives
    the same result as the frames themselves."""
    from funnelwatch.evaluation.runner import RunOutcome, RunSpec

    flagged, truth = _synthetic_run()
    events, incidents = scoring.match(flagged, truth)
    incidents.insert(0, "run", "synthetic-seed1")
    spec = RunSpec("synthetic", "none", 1, datetime(2026, 12, 1, tzinfo=UTC), 14, 1500)
    outcome = RunOutcome(spec, events, incidents, flagged, 12.0, pd.DataFrame(), (0.1, 0.3))
    result = feedback_effect.evaluate_outcomes([outcome])
    expected = feedback_effect.evaluate_run("synthetic-seed1", flagged, truth)
    assert result["runs"] == [expected] and result["what_if_runs"] == []
    assert "What-if" not in feedback_effect.markdown_section(result)
