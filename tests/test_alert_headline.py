"""The alert's first line (funnelwatch/incidents/headline.py) and that every channel shows it."""

from __future__ import annotations

import json
from datetime import UTC, datetime

from funnelwatch.alerting import Notification
from funnelwatch.alerting.channels import Email, JsonWebhook, PagerDuty, SlackWebhook
from funnelwatch.incidents.alerts import notification_for
from funnelwatch.incidents.headline import alert_headline, cohort_label, metric_change

STEPS = ("shipping_step", "payment_step", "review_step", "payment_attempt", "purchase")
DEPLOY_LINE = (
    "checkout conversion -18% on iOS Safari x ig_sale since 14:00 UTC, ~40 orders/h lost, "
    "likely cause: deploy payment-widget 1.13.2 at 13:52 (explains 92%)"
)


def _rca(**over) -> dict:
    funnel = [{"step": s, "cohort_rate": 0.9, "cohort_expected_rate": 0.9} for s in STEPS]
    funnel[2] = {"step": "review_step", "cohort_rate": 0.82 * 0.9, "cohort_expected_rate": 0.9}
    rca = {
        "metric": "checkout_conversion_rate",
        "onset": "2026-11-21T14:00:00+00:00",
        "where": [{"cohort": "browser=Safari&os=iOS&utm_campaign=ig_sale", "deviation": -0.4}],
        "funnel": [{"step": "add_to_cart", "cohort_rate": 0.1, "cohort_expected_rate": 0.2},
                   *funnel],
        "hypotheses": [{"rank": 1, "kind": "deploy", "ref": "1.13.2",
                        "title": "deploy payment-widget 1.13.2",
                        "at": "2026-11-21T13:52:00+00:00", "contribution": 0.92}],
        "impact": {"lost_orders": 120.0, "per_hour": [{}, {}, {}]},
    }
    return {**rca, **over}


def _incident(rca: dict | None, **over) -> dict:
    return {
        "incident_id": "inc-7", "alert_key": "fw:inc-7:1", "state": "open", "severity": 88.0,
        "title": "checkout_conversion_rate dropped", "metric": "checkout_conversion_rate",
        "cohort": "all", "where_cohort": "browser=Safari&os=iOS&utm_campaign=ig_sale",
        "funnel_step": "review_step", "top_cause": "deploy payment-widget 1.13.2",
        "started_at": datetime(2026, 11, 21, 15, tzinfo=UTC),
        "last_anomaly_at": datetime(2026, 11, 21, 16, tzinfo=UTC), "resolved_at": None,
        "lost_orders": 120.0, "revenue_at_risk": 9600.0, "anomaly_count": 4,
        "rca": json.dumps(rca) if rca is not None else None, **over,
    }


def test_the_headline_of_a_deploy_incident():
    assert alert_headline(_incident(_rca())) == DEPLOY_LINE


def test_the_metric_change_is_the_conversion_not_its_sharpest_step():
    # the localised scan was of review_step (-40%); checkout conversion is its steps' product
    assert round(metric_change("checkout_conversion_rate", _rca()), 3) == -0.18
    assert metric_change("sessions", _rca(where=[{"deviation": 3.0}])) == 3.0


def test_no_known_cause_and_no_root_cause_yet():
    none = [{"rank": 1, "kind": "none", "title": "no known cause", "contribution": 0.0}]
    line = alert_headline(_incident(_rca(hypotheses=none)))
    assert line.endswith("~40 orders/h lost, no known cause")
    bare = alert_headline(_incident(None, top_cause=None, lost_orders=None, where_cohort=None))
    assert bare == "checkout conversion on the whole store since 15:00 UTC, no known cause"


def test_signatures_are_named_without_a_time_and_other_days_carry_a_date():
    bots = [{"rank": 1, "kind": "bot_traffic", "title": "bot traffic on utm_campaign=fb_retarget",
             "at": "2026-11-20T09:00:00+00:00", "contribution": 0.97}]
    line = alert_headline(_incident(
        _rca(hypotheses=bots, onset="2026-11-20T09:00:00+00:00", impact={}),
        metric="sessions", where_cohort="utm_campaign=fb_retarget", lost_orders=0.0))
    assert line.startswith("sessions ") and " on fb_retarget since 2026-11-20 09:00 UTC" in line
    assert line.endswith("likely cause: bot traffic on utm_campaign=fb_retarget (explains 97%)")
    assert cohort_label("all") == "the whole store"
    assert cohort_label("country=US&device_type=desktop") == "desktop x US"


def test_every_channel_shows_the_headline_first():
    n = notification_for(_incident(_rca()), "trigger")
    assert n.headline == DEPLOY_LINE and "Lost orders" in n.summary
    assert Notification.from_dict(json.loads(json.dumps(n.to_dict()))).headline == DEPLOY_LINE
    slack = SlackWebhook("slack", url_env="X").render(n)
    assert slack["text"].endswith(DEPLOY_LINE)
    assert slack["blocks"][1]["text"]["text"].startswith(f"*{DEPLOY_LINE}*")
    event = PagerDuty("pd", routing_key_env="X").render(n, "key")
    assert event["payload"]["summary"] == DEPLOY_LINE
    assert event["payload"]["custom_details"]["detail"] == n.summary
    mail = Email("mail", host="localhost", port=25, sender="a@b.c", to=["d@e.f"]).render(n)
    assert mail["Subject"] == f"[funnelwatch] [CRITICAL] Triggered: {DEPLOY_LINE}"
    assert DEPLOY_LINE in mail.get_body(("plain",)).get_content().splitlines()[0]
    assert DEPLOY_LINE in mail.get_body(("html",)).get_content()
    hook = JsonWebhook("hook", url_env="X").render(n)
    assert hook["notification"]["headline"] == DEPLOY_LINE
    assert hook["notification"]["url"] and "inc-7" in hook["notification"]["url"]


def test_the_report_sentence_says_no_known_cause():
    import pandas as pd

    from funnelwatch.incidents.report import summary_sentence

    none = [{"rank": 1, "kind": "none", "title": "no known cause", "contribution": 0.0}]
    incident = _incident(None)
    sentence = summary_sentence(incident, _rca(hypotheses=none), pd.DataFrame())
    assert "no known cause" in sentence and "probably" not in sentence
