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
