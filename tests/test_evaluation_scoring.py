"""The evaluation's matching rules on hand-made detections with known answers."""

import pandas as pd
import pytest

from funnelwatch.evaluation import scoring
from funnelwatch.evaluation.report import cohort_key, min_detectable_drop

T0 = pd.Timestamp("2026-11-20 00:00", tz="UTC")


def hour(h: float) -> pd.Timestamp:
    return T0 + pd.Timedelta(hours=h)


def flagged(*rows):
    return pd.DataFrame(
        [{"event_hour": hour(h), "metric": m, "cohort": c, "severity": s} for h, m, c, s in rows]
    )


TRUTH = scoring.truth_frame([
    {"id": "checkout", "type": "checkout_conversion_drop", "kind": "business",
     "start": str(hour(10)), "end": str(hour(14)), "metric": "checkout_conversion_rate",
     "cohort": {}, "magnitude": -0.2},
    {"id": "bots", "type": "bot_spike", "kind": "business", "start": str(hour(30.5)),
     "end": str(hour(33)), "metric": "sessions", "cohort": {"utm_campaign": "x"}, "magnitude": 4.0},
    {"id": "nulls", "type": "null_field", "kind": "data_quality", "start": str(hour(50)),
     "end": str(hour(52)), "metric": "events", "cohort": {}, "magnitude": None},
])


def test_events_merge_hours_within_the_gap_and_split_beyond_it():
    rows = flagged((10, "checkout_conversion_rate", "all", 80), (11, "purchases", "all", 60),
                   (13, "checkout_conversion_rate", "all", 70), (20, "sessions", "all", 55))
    events = scoring.alert_events(rows)
    assert list(events["start"]) == [hour(10), hour(20)]
    assert list(events["end"]) == [hour(14), hour(21)]
    assert list(events["points"]) == [3, 1]
    assert events.loc[0, "metric"] == "checkout_conversion_rate"  # the most severe point names it
    assert list(events["category"]) == ["checkout", "traffic"]


def test_match_true_false_and_data_quality_verdicts():
    rows = flagged(
        (11, "checkout_conversion_rate", "all", 80),  # inside the checkout incident (late hour)
        (30, "sessions", "utm_campaign=x", 90),  # the bot spike, in the hour it starts (06:30)
        (40, "add_to_cart_rate", "all", 60),  # nothing happened: false
        (51, "checkout_conversion_rate", "country=US", 65),  # during the null-country fault
    )
    special = pd.DataFrame({"day": [pd.Timestamp("2026-11-21")], "name": ["Black Friday"]})
    events, incidents = scoring.match(rows, TRUTH, dq_hours=[hour(50)], special_days=special)
    assert list(events["verdict"]) == ["true", "true", "false", "data_quality_fault"]
    assert events.loc[2, "special_day"] == "Black Friday"  # hour 40 = Nov 21 16:00
    by_id = incidents.set_index("id")
    assert by_id.loc["checkout", "detected"] and not by_id.loc["checkout", "first_partition"]
    assert by_id.loc["checkout", "hours_to_detect"] == pytest.approx(2.0)  # 12:00 - 10:00
    assert by_id.loc["bots", "first_partition"]  # start 06:30 floored to the 06:00 partition
    assert by_id.loc["bots", "hours_to_detect"] == pytest.approx(0.5)  # 07:00 - 06:30
    assert by_id.loc["nulls", "detected"]  # by the data-quality gate, not by an alert
    head = scoring.summary(events, incidents, days=2.0)
    assert head["false_alerts"] == 1 and head["false_alerts_per_day"] == 0.5
    assert head["alerts_from_dq_faults"] == 1 and head["false_alerts_on_special_days"] == 1
    assert head["precision"] == pytest.approx(2 / 3) and head["recall"] == 1.0


def test_missed_incident_and_per_type_table():
    rows = flagged((40, "sessions", "all", 60))  # a false traffic alert; checkout drop missed
    events, incidents = scoring.match(rows, TRUTH, dq_hours=[])
    table = scoring.per_type(events, incidents).set_index("type")
    assert table.loc["checkout_conversion_drop", "recall"] == 0.0
    assert table.loc["null_field", "recall"] == 0.0  # the gate flagged nothing
    assert table.loc["bot_spike", "precision"] == 0.0  # the only traffic alert was false


def test_no_detections_at_all():
    events, incidents = scoring.match(flagged(), TRUTH, dq_hours=[])
    assert events.empty and not incidents["detected"].any()
    assert scoring.summary(events, incidents, days=1.0)["false_alerts_per_day"] == 0.0


def test_cohort_key_and_power_bound():
    assert cohort_key({}) == "all"
    assert cohort_key({"os": "iOS", "browser": "Safari"}) == "browser=Safari&os=iOS"
    # 60 checkout starts an hour at p=0.57: a one-hour test cannot see less than ~60%
    assert min_detectable_drop(60, 0.57) > 0.5
    assert min_detectable_drop(10_000, 0.57) < 0.05


def test_a_point_shows_an_incident_only_in_a_compatible_cohort_and_metric():
    truth = scoring.truth_frame([
        {"id": "ios", "type": "cohort_checkout_drop", "kind": "business", "start": str(hour(10)),
         "end": str(hour(14)), "metric": "checkout_conversion_rate",
         "cohort": {"os": "iOS", "browser": "Safari"}, "magnitude": -0.2},
    ])
    assert scoring.cohort_compatible("all", {"os": "iOS"})
    assert scoring.cohort_compatible("os=iOS&utm_campaign=ig_sale", {"os": "iOS", "browser": "Safari"})
    assert not scoring.cohort_compatible("os=Android", {"os": "iOS"})
    rows = flagged((11, "checkout_conversion_rate", "os=Android", 90),  # wrong cohort
                   (12, "sessions", "os=iOS", 90))  # a metric a checkout break does not move
    events, incidents = scoring.match(rows, truth)
    assert list(events["verdict"]) == ["false", "false"] and not incidents["detected"].any()
    rows = flagged((11, "payment_step_rate", "os=iOS", 70))
    events, incidents = scoring.match(rows, truth)
    assert list(events["verdict"]) == ["true"] and incidents["detected"].all()


def test_an_unrelated_alert_during_an_incident_is_its_own_false_event():
    rows = flagged((10, "checkout_conversion_rate", "all", 80),
                   (11, "js_error_session_rate", "browser=Firefox", 60))  # same hours, errors
    events, _ = scoring.match(rows, TRUTH)
    assert sorted(zip(events["category"], events["verdict"])) == [("checkout", "true"),
                                                                   ("errors", "false")]


def test_a_quiet_run_has_no_incidents_and_every_alert_is_false():
    truth = scoring.truth_frame([])
    assert str(truth["start"].dtype).startswith("datetime64")
    events, incidents = scoring.match(flagged((5, "sessions", "all", 70)), truth)
    assert incidents.empty and list(events["verdict"]) == ["false"]
    both = pd.concat([incidents, scoring.match(flagged(), TRUTH)[1]], ignore_index=True)
    assert str(both["start"].dtype).startswith("datetime64")


# --------------------------------------------------------------------------------------
# Against the oracle (oracle_eval) and end to end on incidents (incident_eval)
# --------------------------------------------------------------------------------------

def _oracle_rows():
    from simulator.oracle import INCIDENT_COLUMNS

    rows = [
        # seen by the oracle at hour 11, we alert at 12: delay 1
        {"id": "checkout", "metric": "checkout_conversion_rate", "direction": -1, "hours": 4,
         "units": 400.0, "oracle_z": -9.0, "peak_z": 9.0, "visible": True, "oracle_hour": hour(11),
         "oracle_note": ""},
        # the data never shows it (cumulative z below 4): not counted against efficiency
        {"id": "bots", "metric": "sessions", "direction": 1, "hours": 3, "units": 50.0,
         "oracle_z": 2.0, "peak_z": 2.0, "visible": False, "oracle_hour": pd.NaT, "oracle_note": ""},
    ]
    return pd.DataFrame(rows, columns=INCIDENT_COLUMNS)


def test_oracle_efficiency_and_delay():
    from funnelwatch.evaluation import oracle_eval

    # detection: the checkout drop at hour 12, an unrelated false alert, nothing for the bots
    events, incidents = scoring.match(
        flagged((12, "checkout_conversion_rate", "all", 50), (40, "sessions", "all", 40)), TRUTH)
    incidents.insert(0, "run", "r1")
    rows = oracle_eval.per_incident(_oracle_rows(), incidents)
    by_id = rows.set_index("id")
    assert by_id.loc["checkout", "delay_partitions"] == 1.0
    assert not by_id.loc["bots", "visible"] and not by_id.loc["bots", "detected"]
    head = oracle_eval.headline(rows, events, days=2.0)
    assert head["visible"] == 1 and head["efficiency"] == 1.0 and head["max_delay"] == 1.0
    assert head["false_alerts_per_day"] == 0.5 and head["precision"] == 0.5
    assert head["recall"] == 0.5  # the old figure, context: the invisible bots count as missed
    table = oracle_eval.headline_table(head).set_index("measure")["met"]
    assert table["efficiency: visible incidents detected"] == "yes"
    assert table["false business alerts per day (all monitored series)"] == "no"

    # missed: efficiency 0, no delay
    events, incidents = scoring.match(flagged((40, "sessions", "all", 40)), TRUTH)
    incidents.insert(0, "run", "r1")
    head = oracle_eval.headline(oracle_eval.per_incident(_oracle_rows(), incidents), events, 2.0)
    assert head["efficiency"] == 0.0 and pd.isna(head["median_delay"])

    # a quiet run (no business incident at all): nothing visible, its false alerts still count
    events, incidents = scoring.match(flagged((40, "sessions", "all", 40)), TRUTH.iloc[:0])
    head = oracle_eval.headline(oracle_eval.per_incident(_oracle_rows(), incidents), events, 2.0)
    assert head["visible"] == 0 and pd.isna(head["efficiency"])
    assert head["false_alerts_per_day"] == 0.5


def test_cumulative_z_and_first_visible_hour():
    from simulator.oracle import cumulative_z, first_visible

    z = cumulative_z([10, 10, 10], [20, 20, 20], [4, 4, 4])  # -5, -20/sqrt(8), -30/sqrt(12)
    assert z[0] == pytest.approx(-5.0) and z[2] == pytest.approx(-30 / 12 ** 0.5)
    hours = [hour(0), hour(1), hour(2)]
    assert first_visible(hours, z, -1) == hour(0)
    assert pd.isna(first_visible(hours, z, 1))  # a rise is not what this incident does
    assert pd.isna(first_visible(hours, cumulative_z([1, 2], [1, 2], [0, 0]), -1))  # no variance


LABELS = [
    {"id": "ios", "type": "cohort_checkout_drop", "kind": "business", "start": str(hour(10)),
     "end": str(hour(14)), "cohort": {"os": "iOS"}, "expected_where": "os=iOS",
     "expected_step": "review_step", "expected_cause": {"kind": "deploy", "ref": "1.13.0"}},
    {"id": "store", "type": "checkout_conversion_drop", "kind": "business", "start": str(hour(30)),
     "end": str(hour(34)), "cohort": {}, "expected_where": "all", "expected_step": "shipping_step",
     "expected_cause": {"kind": "none", "ref": None}},
    {"id": "bots", "type": "bot_spike", "kind": "business", "start": str(hour(50)),
     "end": str(hour(52)), "cohort": {"country": "US"}, "expected_where": "country=US",
     "expected_step": None, "expected_cause": {"kind": "bot_traffic", "ref": None}},
]


def _incident(ident, start, last, cohort, where, step, hypotheses, severity=50.0):
    import json

    return {"incident_id": ident, "started_at": hour(start), "last_anomaly_at": hour(last),
            "cohort": cohort, "where_cohort": where, "funnel_step": step, "severity": severity,
            "rca": json.dumps({"hypotheses": hypotheses})}


def test_end_to_end_counts_incidents_per_problem_and_scores_where_step_cause():
    from funnelwatch.evaluation import incident_eval

    incidents = pd.DataFrame([
        # the iOS drop: right answer, but a second incident opened in the same hour
        _incident("a", 10, 13, "os=iOS", "os=iOS", "review_step",
                  [{"kind": "deploy", "ref": "1.13.0"}], severity=80),
        _incident("b", 10, 11, "os=iOS&browser=Safari", "os=iOS&browser=Safari", "review_step",
                  [{"kind": "web", "ref": "4.18.1"}]),
        # the store-wide drop: localised to mobile, and blames a deploy instead of nothing
        _incident("c", 31, 33, "all", "device_type=mobile", "shipping_step",
                  [{"kind": "deploy", "ref": "2.8.0"}]),
        # the bots: right cohort and cause (any campaign), no step expected
        _incident("d", 50, 51, "country=US", "country=US", "add_to_cart",
                  [{"kind": "bot_traffic", "ref": "fb_retarget"}]),
        # a false incident on a newsletter day, and one with no planned traffic near it
        _incident("e", 70, 72, "all", "utm_campaign=weekly_newsletter", None, []),
        _incident("f", 90, 91, "os=Android", "os=Android", None, []),
    ])
    rows = incident_eval.end_to_end(incidents, LABELS, "r1").set_index("id")
    assert rows.loc["ios", "opened"] == 2 and rows.loc["ios", "opened_first_hour"] == 2
    assert rows.loc["ios", "incident"] == "a" and rows.loc["ios", "where_ok"]
    assert rows.loc["ios", "step_ok"] and rows.loc["ios", "cause_ok"]
    assert not rows.loc["store", "where_ok"] and rows.loc["store", "step_ok"]
    assert not rows.loc["store", "cause_ok"] and rows.loc["store", "cause_truth"] == "no known cause"
    assert rows.loc["bots", "cause_ok"] and rows.loc["bots", "step_ok"] is None

    false = incident_eval.false_incidents(incidents, LABELS)
    assert list(false["incident_id"]) == ["e", "f"]
    planned = pd.DataFrame({"start": [hour(60)], "end": [hour(84)],
                            "cohort": ["utm_campaign=weekly_newsletter"], "name": ["newsletter send"]})
    from_planned = incident_eval.from_planned_traffic(false, planned)
    assert list(from_planned["incident_id"]) == ["e"]

    summary = incident_eval.end_to_end_summary(rows.reset_index(), len(false), len(from_planned),
                                               days=4.0, visible_ids={("r1", "ios"), ("r1", "store")})
    assert summary["incidents_per_problem"] == pytest.approx(4 / 3)
    assert summary["problems_with_several_in_first_hour"] == 1
    assert summary["visible_with_incident"] == 2
    assert summary["where_top1"] == 0.5 and summary["cause_top1"] == 0.5 and summary["step_top1"] == 1.0
    assert summary["cause_top1_all"] == pytest.approx(2 / 3)
    assert summary["false_incidents_per_day"] == 0.5 and summary["false_from_planned_traffic"] == 1


def test_no_hypothesis_is_no_known_cause_and_a_missed_problem_has_no_answer():
    from funnelwatch.evaluation import incident_eval

    assert incident_eval.first_cause(None) == ("none", None)
    assert incident_eval.first_cause({"rca": '{"hypotheses": [{"kind": "none", "ref": null}]}'}) \
        == ("none", None)
    assert incident_eval.cause_ok({"kind": "none", "ref": None}, "none", None)
    assert not incident_eval.cause_ok({"kind": "deploy", "ref": "1.2.0"}, "deploy", "1.3.0")
    rows = incident_eval.end_to_end(pd.DataFrame(), LABELS, "r1")
    assert len(rows) == 3 and rows["incident"].isna().all() and (rows["opened"] == 0).all()


def test_labels_written_before_the_expected_fields_get_them_from_type_and_cause():
    from simulator.incidents import expected_answers

    old = {"id": "x", "type": "cohort_checkout_drop", "kind": "business", "drop_after": "payment",
           "cohort": {"os": "iOS", "browser": "Safari"}, "cause": {"type": "deploy", "ref": "1.13.0"}}
    assert expected_answers(old) == {"expected_where": "browser=Safari&os=iOS",
                                     "expected_step": "review_step",
                                     "expected_cause": {"kind": "deploy", "ref": "1.13.0"}}
    no_cause = {"type": "checkout_conversion_drop", "drop_after": "checkout_start", "cohort": {},
                "cause": {"type": "unknown", "ref": None}}
    assert expected_answers(no_cause)["expected_cause"] == {"kind": "none", "ref": None}
    assert expected_answers({"type": "stock_out", "cohort": {"category": "electronics"},
                             "cause": {"type": "stock", "ref": "electronics"}})["expected_step"] \
        == "add_to_cart"


def test_fast_lane_delay_against_the_oracle_minute():
    from funnelwatch.evaluation.oracle_eval import oracle_minutes

    timing = pd.DataFrame({"id": ["a", "b"], "start": [hour(10), hour(20)],
                           "fast_lane_min": [25.0, None]})
    slots = pd.DataFrame({"id": ["a", "b"], "oracle_hour": [hour(10) + pd.Timedelta(minutes=15),
                                                            pd.NaT]})
    out = oracle_minutes(timing, slots).set_index("id")
    assert out.loc["a", "oracle_min"] == 20.0 and out.loc["a", "fast_vs_oracle_min"] == 5.0
    assert pd.isna(out.loc["b", "oracle_min"]) and pd.isna(out.loc["b", "fast_vs_oracle_min"])
    assert oracle_minutes(timing, pd.DataFrame())["oracle_min"].isna().all()


def test_end_to_end_reads_incidents_without_a_root_cause_and_runs_with_none_visible():
    from funnelwatch.evaluation import incident_eval

    # where_cohort is NULL (NaN through pandas) before root cause ran
    incidents = pd.DataFrame([_incident("g", 70, 72, "utm_campaign=weekly_newsletter",
                                        float("nan"), None, [])])
    false = incident_eval.false_incidents(incidents, LABELS)
    planned = pd.DataFrame({"start": [hour(60)], "end": [hour(84)],
                            "cohort": ["utm_campaign=weekly_newsletter"], "name": ["send"]})
    assert list(incident_eval.from_planned_traffic(false, planned)["incident_id"]) == ["g"]
    rows = incident_eval.end_to_end(incidents, LABELS, "r1")
    assert len(incident_eval.answering(incidents, LABELS[0])) <= 1  # NaN where: no crash
    masked = incidents.assign(where_cohort="(cohort of fewer than 20 sessions)")
    assert len(incident_eval.answering(masked, LABELS[0])) <= 1  # a masked where: no crash
    summary = incident_eval.end_to_end_summary(rows, len(false), 1, days=4.0, visible_ids=set())
    assert summary["visible_with_incident"] == 0 and summary["where_top1"] != summary["where_top1"]


def test_two_problems_at_once_are_each_scored_by_the_incident_that_names_their_cohort():
    """A GB checkout deploy and an iOS Safari payment deploy in the same hours, one incident
    each: the GB incident (more severe) also intersects the iOS Safari label's cohort, but
    the incident that names iOS Safari answers that label; a label no incident names is
    still answered by the most severe one that intersects it."""
    from funnelwatch.evaluation import incident_eval

    labels = [
        {"id": "gb", "type": "checkout_conversion_drop", "kind": "business",
         "start": str(hour(10)), "end": str(hour(14)), "cohort": {"country": "GB"},
         "expected_where": "country=GB", "expected_step": "shipping_step",
         "expected_cause": {"kind": "deploy", "ref": "2.8.0"}},
        {"id": "ios", "type": "cohort_checkout_drop", "kind": "business",
         "start": str(hour(10)), "end": str(hour(14)), "cohort": {"os": "iOS", "browser": "Safari"},
         "expected_where": "browser=Safari&os=iOS", "expected_step": "review_step",
         "expected_cause": {"kind": "deploy", "ref": "1.13.0"}},
    ]
    gb = _incident("gb-inc", 10, 13, "country=GB", "country=GB", "shipping_step",
                   [{"kind": "deploy", "ref": "2.8.0"}], severity=70)
    ios = _incident("ios-inc", 11, 13, "os=iOS", "browser=Safari&os=iOS", "review_step",
                    [{"kind": "deploy", "ref": "1.13.0"}], severity=65)
    rows = incident_eval.end_to_end(pd.DataFrame([gb, ios]), labels, "r1").set_index("id")
    assert rows.loc["gb", "incident"] == "gb-inc" and rows.loc["ios", "incident"] == "ios-inc"
    assert rows["where_ok"].all() and rows["cause_ok"].all()
    rows = incident_eval.end_to_end(pd.DataFrame([gb]), labels, "r1").set_index("id")
    assert rows.loc["ios", "incident"] == "gb-inc" and not rows.loc["ios", "where_ok"]
