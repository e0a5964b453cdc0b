"""Incidents from anomaly points: grouping, state, timeline, alerts through the outbox to a
real local HTTP server, and the sensors (real Dagster instance, build_sensor_context).

The anomaly points are written into a real DuckDB file with the detection table's schema;
nothing of ours is mocked."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import dagster as dg
import duckdb
import pandas as pd
import pytest

from funnelwatch.alerting import parse_routing
from funnelwatch.detection.store import ensure_detection_schema, replace_window
from funnelwatch.incidents.alerts import deliver, enqueue_incident_alerts
from funnelwatch.incidents.lifecycle import (
    IncidentPolicy,
    acknowledge,
    compatible,
    process_hour,
    process_window,
)
from tests.test_alerting import http_server  # noqa: F401 - a fixture: a real local HTTP server

H0 = datetime(2026, 11, 20, 10, tzinfo=UTC)


def hour(n: int) -> datetime:
    return H0 + timedelta(hours=n)


def point(n, metric, cohort, *, flagged=True, severity=75.0, value=0.2, expected=0.5,
          lower=0.4, upper=0.6, direction="down"):
    return {"event_hour": hour(n), "metric": metric, "cohort": cohort, "value": value,
            "expected": expected, "lower": lower, "upper": upper, "severity": severity,
            "direction": direction, "is_anomaly": flagged}


def normal(n, metric, cohort):
    return point(n, metric, cohort, flagged=False, severity=0.0, value=0.5, direction="none")


@pytest.fixture
def con(tmp_path):
    connection = duckdb.connect(str(tmp_path / "warehouse.duckdb"))
    connection.execute("SET TimeZone = 'UTC'")
    ensure_detection_schema(connection)
    yield connection
    connection.close()


def write(con, points):
    frame = pd.DataFrame(points)
    for start in sorted(frame["event_hour"].unique()):
        start = pd.Timestamp(start).to_pydatetime()
        replace_window(con, start, start + timedelta(hours=1),
                       frame[frame["event_hour"] == start])


def incidents(con):
    return con.execute("SELECT * FROM incidents.incidents ORDER BY started_at, incident_id").df()


def test_compatible_cohorts():
    assert compatible("all", "os=iOS&browser=Safari")
    assert compatible("os=Linux&browser=Chrome", "utm_source=facebook")
    assert compatible("os=iOS", "os=iOS&browser=Safari")
    assert not compatible("os=iOS", "os=Android&browser=Chrome")


def test_unlocalised_points_merge_only_when_their_cohorts_are_nested(con):
    # no localiser: the bots' cohort and its campaign are nested (one incident); an iOS
    # checkout drop and an unexplained JS-error blip in one country are problems of their own,
    # though no dimension of theirs differs from the bots' (the old, looser rule merged them)
    write(con, [
        point(0, "sessions", "os=Linux&browser=Chrome&utm_campaign=fb_retarget", severity=98,
              direction="up"),
        point(0, "sessions", "utm_campaign=fb_retarget", severity=80, direction="up"),
        point(0, "checkout_conversion_rate", "os=iOS&browser=Safari", severity=70),
        point(0, "js_error_session_rate", "country=AU", severity=55, direction="up"),
    ])
    result = process_hour(con, hour(0))
    frame = incidents(con)
    assert result.points == 4
    assert len(frame) == 3, frame[["metric", "cohort"]]
    bots = frame[frame["metric"] == "sessions"].iloc[0]
    assert bots["cohort"] == "os=Linux&browser=Chrome&utm_campaign=fb_retarget"
    assert bots["anomaly_count"] == 2 and bots["severity"] == 98
    assert bots["title"] == "sessions rose in os=Linux&browser=Chrome&utm_campaign=fb_retarget"
    ios = frame[frame["metric"] == "checkout_conversion_rate"].iloc[0]
    assert ios["incident_id"].startswith("inc-2026112010-") and ios["state"] == "open"
    # an unexplained store-wide point joins an unlocalised incident on its own metric only
    write(con, [point(1, "js_error_session_rate", "all", severity=60, direction="up"),
                point(1, "checkout_conversion_rate", "all", severity=65)])
    process_hour(con, hour(1))
    members = con.execute("SELECT incident_id, metric, cohort FROM incidents.members "
                          "WHERE event_hour = $h", {"h": hour(1)}).df()
    by_metric = dict(zip(members["metric"], members["incident_id"], strict=True))
    assert by_metric["checkout_conversion_rate"] == ios["incident_id"]
    au = frame[frame["metric"] == "js_error_session_rate"].iloc[0]["incident_id"]
    assert by_metric["js_error_session_rate"] == au


def test_ongoing_incident_updates_escalates_resolves_and_reopens(con):
    m, c = "checkout_conversion_rate", "device_type=mobile"
    write(con, [point(0, m, c, severity=60), point(1, m, c, severity=65),
                point(2, m, c, severity=92),
                # hour 3 is unflagged but still outside its band: not recovered
                point(3, m, c, flagged=False, severity=40, value=0.3),
                normal(4, m, c), normal(5, m, c), normal(6, m, c),
                point(8, m, c, severity=70)])
    results = process_window(con, hour(0), hour(9), IncidentPolicy(recovery_hours=3))
    frame = incidents(con)
    assert len(frame) == 1, "an ongoing incident updates instead of opening new ones"
    inc = frame.iloc[0]
    assert [bool(r.opened) for r in results][:1] == [True]
    assert results[1].updated == [inc["incident_id"]]
    assert results[2].escalated == [inc["incident_id"]]
    assert results[5].resolved == [], "hour 3 was outside the band: 3 good hours end at hour 6"
    assert results[6].resolved == [inc["incident_id"]]
    assert results[8].reopened == [inc["incident_id"]]
    assert inc["state"] == "open" and inc["alert_key"] == f"{inc['incident_id']}-r1"
    assert inc["anomaly_count"] == 4 and inc["severity"] == 92
    kinds = con.execute(
        "SELECT kind FROM incidents.timeline WHERE incident_id = $i ORDER BY event_time, "
        "recorded_at", {"i": inc["incident_id"]}).fetchall()
    assert [k for (k,) in kinds] == ["opened", "updated", "escalated", "resolved", "reopened"]


def test_processing_an_hour_again_gives_the_same_incidents(con):
    write(con, [point(0, "sessions", "all", severity=80, direction="up"),
                point(1, "sessions", "all", severity=85, direction="up")])
    process_window(con, hour(0), hour(2))
    before = incidents(con).drop(columns=["updated_at"])
    members = con.execute("SELECT count(*) FROM incidents.members").fetchone()[0]
    process_hour(con, hour(1))
    process_hour(con, hour(1))
    after = incidents(con).drop(columns=["updated_at"])
    pd.testing.assert_frame_equal(before, after)
    assert con.execute("SELECT count(*) FROM incidents.members").fetchone()[0] == members == 2
    assert con.execute("SELECT count(*) FROM incidents.timeline").fetchone()[0] == 2


def test_a_failing_root_cause_analysis_is_recorded_not_lost(con):
    write(con, [point(0, "sessions", "all", severity=80, direction="up")])

    def broken_analysis(con, **kwargs):
        raise RuntimeError("marts missing")

    process_hour(con, hour(0), analyse=broken_analysis)
    inc = incidents(con).iloc[0]
    assert inc["state"] == "open"
    assert "RuntimeError: marts missing" in inc["rca"]


ROUTING = {
    "channels": {"hook": {"type": "webhook", "url_env": "FW_TEST_HOOK_URL"}},
    "rules": [{"name": "all", "min_severity": 0, "channels": ["hook"]}],
}


def sent_notifications(server, path="/hook"):
    return [r["json"]["notification"] for r in server.delivered(path)]


def test_alerts_go_through_the_outbox_once_and_survive_a_channel_outage(
        con, http_server, monkeypatch):  # noqa: F811 - the imported fixture
    monkeypatch.setenv("FW_TEST_HOOK_URL", f"{http_server.base}/hook")
    routing = parse_routing(ROUTING)
    m, c = "checkout_conversion_rate", "all"
    write(con, [point(0, m, c, severity=90), normal(1, m, c), normal(2, m, c),
                normal(3, m, c)])
    process_window(con, hour(0), hour(1))
    now = hour(1)
    http_server.failures["/hook"] = [503]  # the receiver is down for the first attempt
    run = enqueue_incident_alerts(con, routing, now)
    assert [(a, ch) for _, a, ch in run.enqueued] == [("trigger", "hook")]
    attempts, missing = deliver(con, routing, now)
    assert [a.status for a in attempts] == ["failed"] and missing == []
    # A re-run enqueues nothing new; the failed row is retried after its backoff.
    assert enqueue_incident_alerts(con, routing, now).enqueued == []
    assert deliver(con, routing, now)[0] == []
    attempts, _ = deliver(con, routing, now + timedelta(minutes=2))
    assert [a.status for a in attempts] == ["sent"]
    sent = sent_notifications(http_server)
    assert len(sent) == 1 and sent[0]["action"] == "trigger"
    assert "Lost orders" in sent[0]["summary"]
    # Recovery resolves the incident; the resolve goes out with the same dedup key.
    process_window(con, hour(1), hour(4))
    inc = incidents(con).iloc[0]
    assert inc["state"] == "resolved"
    run = enqueue_incident_alerts(con, routing, hour(4))
    assert [(a, ch) for _, a, ch in run.enqueued] == [("resolve", "hook")]
    deliver(con, routing, hour(4))
    keys = [n["dedup_key"] for n in sent_notifications(http_server)]
    assert keys == [inc["alert_key"], inc["alert_key"]]
    timeline = [k for (k,) in con.execute(
        "SELECT kind FROM incidents.timeline ORDER BY recorded_at").fetchall()]
    assert timeline.count("alerted") == 2


def test_backfilled_incidents_do_not_page(con, http_server, monkeypatch):  # noqa: F811
    monkeypatch.setenv("FW_TEST_HOOK_URL", f"{http_server.base}/hook")
    routing = parse_routing(ROUTING)
    write(con, [point(0, "sessions", "all", severity=90, direction="up")])
    process_window(con, hour(0), hour(1))
    run = enqueue_incident_alerts(con, routing, hour(0) + timedelta(days=3))
    assert run.enqueued == [] and len(run.skipped_backfill) == 1
    assert enqueue_incident_alerts(con, routing, hour(0) + timedelta(days=3)).skipped_backfill == []


def test_acknowledge_sends_an_acknowledge(con, http_server, monkeypatch):  # noqa: F811
    monkeypatch.setenv("FW_TEST_HOOK_URL", f"{http_server.base}/hook")
    routing = parse_routing(ROUTING)
    write(con, [point(0, "sessions", "all", severity=90, direction="up")])
    process_window(con, hour(0), hour(1))
    enqueue_incident_alerts(con, routing, hour(1))
    inc_id = incidents(con).iloc[0]["incident_id"]
    assert acknowledge(con, inc_id, "alice", hour(1))
    assert not acknowledge(con, inc_id, "alice", hour(1)), "only open incidents"
    with pytest.raises(KeyError):
        acknowledge(con, "inc-nope", "alice", hour(1))
    run = enqueue_incident_alerts(con, routing, hour(1))
    assert [(a, ch) for _, a, ch in run.enqueued] == [("acknowledge", "hook")]
    deliver(con, routing, hour(1))
    assert [n["action"] for n in sent_notifications(http_server)] == [
        "trigger", "acknowledge"]


# --- sensors ------------------------------------------------------------------------------


def test_anomalies_sensor_launches_respond_runs_with_a_cursor():
    from orchestration.detect.assets import cohort_anomalies
    from orchestration.respond.assets import incidents as incidents_asset
    from orchestration.respond.sensors import anomalies_sensor

    with dg.instance_for_test() as instance:
        def scored(key, minor):
            instance.report_runless_asset_event(dg.AssetMaterialization(
                asset_key=cohort_anomalies.key, partition=key,
                metadata={"anomalies_critical": 0, "anomalies_major": 0,
                          "anomalies_minor": minor}))

        scored("2026-11-20-10:00", 2)
        scored("2026-11-20-11:00", 0)
        context = dg.build_sensor_context(instance=instance)
        requests = anomalies_sensor(context)
        assert [r.partition_key for r in requests] == ["2026-11-20-10:00"]
        assert requests[0].job_name in (None, "respond_to_anomalies")
        cursor = context.cursor
        # Nothing new: skip, cursor unchanged.
        again = dg.build_sensor_context(instance=instance, cursor=cursor)
        assert isinstance(anomalies_sensor(again), dg.SkipReason)
        # A quiet hour still runs while incidents are open (so they can resolve).
        instance.report_runless_asset_event(dg.AssetMaterialization(
            asset_key=incidents_asset.key, partition="2026-11-20-10:00",
            metadata={"open_incidents": 1}))
        scored("2026-11-20-12:00", 0)
        later = dg.build_sensor_context(instance=instance, cursor=cursor)
        assert [r.partition_key for r in anomalies_sensor(later)] == ["2026-11-20-12:00"]
        assert int(later.cursor) > int(cursor)


def test_run_failure_sensor_reports_to_ops(tmp_path, http_server, monkeypatch):  # noqa: F811
    from orchestration.resources import WarehouseResource
    from orchestration.respond.resources import AlertingSettings
    from orchestration.respond.sensors import pipeline_failure_to_ops

    monkeypatch.setenv("FUNNELWATCH_SLACK_OPS_WEBHOOK_URL", f"{http_server.base}/ops")

    @dg.op
    def explode():
        raise RuntimeError("dbt build failed: model fct_sessions")

    @dg.job
    def failing_job():
        explode()

    with dg.instance_for_test() as instance:
        result = failing_job.execute_in_process(instance=instance, raise_on_error=False)
        assert not result.success
        failure = next(e for e in result.all_events if e.event_type_value == "PIPELINE_FAILURE")
        context = dg.build_run_status_sensor_context(
            sensor_name="pipeline_failure_to_ops", dagster_event=failure,
            dagster_instance=instance, dagster_run=result.dagster_run,
            resources={
                "alerting": AlertingSettings(ops_outbox_path=str(tmp_path / "ops.duckdb")),
                "warehouse": WarehouseResource(path=str(tmp_path / "w.duckdb"),
                                               publish_dir=str(tmp_path)),
            },
        ).for_run_failure()
        pipeline_failure_to_ops(context)
    sent = http_server.delivered("/ops")
    assert len(sent) == 1
    text = str(sent[0]["json"])
    assert "failing_job" in text and "dbt build failed" in text
    with duckdb.connect(str(tmp_path / "ops.duckdb"), read_only=True) as ops:
        statuses = ops.execute("SELECT channel, status FROM alerting.outbox ORDER BY channel"
                               ).fetchall()
    # The bus has no URL configured here: its row waits, pending, instead of being lost.
    assert statuses == [("slack-ops", "sent"), ("webhook-incident-bus", "pending")]


def test_a_store_wide_drop_is_one_incident_even_when_a_cohort_is_flagged_first(con):
    # An earlier incident in one cohort is still open; then the whole store drops: the
    # `all` point joins it (compatible), and the cohorts it contains follow, instead of one
    # incident per OS.
    write(con, [point(0, "shipping_step_rate", "os=Windows&browser=Chrome", severity=60)])
    process_hour(con, hour(0))
    write(con, [
        point(1, "shipping_step_rate", "os=iOS", severity=70),
        point(1, "shipping_step_rate", "os=Android", severity=66),
        point(1, "shipping_step_rate", "all", severity=64),
        point(1, "shipping_step_rate", "os=Windows&browser=Chrome", severity=62),
    ])
    result = process_hour(con, hour(1))
    assert result.opened == []
    frame = incidents(con)
    assert len(frame) == 1 and frame.iloc[0]["anomaly_count"] == 5
    # Without a containing cohort, incompatible cohorts stay apart.
    write(con, [point(9, "sessions", "os=iOS", severity=80, direction="up"),
                point(9, "sessions", "os=Android", severity=75, direction="up")])
    assert len(process_hour(con, hour(9)).opened) == 2


def test_a_store_wide_change_joins_only_a_localised_problem_on_its_metric():
    from funnelwatch.incidents.lifecycle import same_problem

    # an unlocalised small-cohort incident (it collects many metrics) never absorbs `all`
    assert not same_problem("all", True, "os=Android&utm_campaign=ig_sale", False, True)
    assert same_problem("all", True, "device_type=mobile", True, True)
    assert not same_problem("all", True, "device_type=mobile", True, False)
    # nothing localised: nested cohorts, and the whole store only on a shared metric
    assert same_problem("all", False, "os=iOS", False, True)
    assert not same_problem("all", False, "os=iOS", False, False)
    assert same_problem("os=iOS", False, "browser=Safari&os=iOS", False, False)
    assert not same_problem("country=AU", False, "device_type=desktop&os=Windows", False, True)


def test_a_store_wide_answer_must_move_the_way_the_flagged_series_did():
    from funnelwatch.incidents.lifecycle import _moves

    newsletter_down = {"cohort": "utm_campaign=weekly_newsletter", "z": -5.4}
    assert not _moves(newsletter_down, "up")  # bots' sessions rose: not this answer
    assert _moves(newsletter_down, "down")
    assert _moves(newsletter_down, None) and _moves({"z": None}, "up")


def test_bot_traffic_absorbs_only_what_bots_do_where_the_bots_are():
    from types import SimpleNamespace

    from funnelwatch.incidents.lifecycle import _bots_explain

    def inc(cause, metric, where, direction="down"):
        return SimpleNamespace(cause=cause, metric=metric, where_cohort=where,
                               direction=direction)

    bots = inc(("bot_traffic", "utm_campaign=fb_retarget"), "sessions",
               "utm_campaign=fb_retarget", "up")
    # the store's add-to-cart rate diluted; more sessions in a category of the bots' pages
    assert _bots_explain(bots, inc(("none", None), "add_to_cart_rate", "all"))
    assert _bots_explain(inc(("none", None), "sessions", "category=apparel", "up"), bots)
    # fewer sessions, a payment step, another campaign, or a known cause: not the bots
    assert not _bots_explain(bots, inc(("none", None), "sessions", "all", "down"))
    assert not _bots_explain(bots, inc(("none", None), "payment_step_rate", "all"))
    assert not _bots_explain(bots, inc(("none", None), "add_to_cart_rate",
                                       "utm_campaign=ig_sale"))
    assert not _bots_explain(bots, inc(("deploy", "2.9.0"), "add_to_cart_rate", "all"))


def test_one_deploy_seen_in_cohorts_that_are_not_nested_is_one_change():
    from types import SimpleNamespace

    from funnelwatch.incidents.lifecycle import _common_where, _one_change

    def inc(cause):
        return SimpleNamespace(cause=cause)

    assert _one_change(inc(("deploy", "2.9.0")), inc(("deploy", "2.9.0")))
    assert not _one_change(inc(("deploy", "2.9.0")), inc(("deploy", "2.8.1")))
    assert not _one_change(inc(("none", None)), inc(("none", None)))
    # an unexplained drop beside it (the same step: _same_cause's part) is that deploy's too
    assert _one_change(inc(("none", None)), inc(("deploy", "2.9.0")))
    assert not _one_change(inc(("campaign", "ig_sale")), inc(("none", None)))
    assert _common_where("utm_campaign=ig_sale", "device_type=desktop") == "all"
    assert _common_where("country=US&os=iOS", "country=US&device_type=mobile") == "country=US"
    assert _common_where(None, "os=iOS") == "all"
