"""Tracking loss and gaps as data-quality incidents that span hours (funnelwatch issue 16).

Small synthetic stores written straight into raw.events: every session views a page, some
view products, add to cart, check out and buy, each step after the one before it."""

from __future__ import annotations

import duckdb
import pandas as pd
import pytest

from funnelwatch.quality.incidents import failed_hours, hour_incidents, record_outcomes
from funnelwatch.quality.suites import feed_presence_outcome, run_suites
from funnelwatch.quality.tracking import tracking_loss_outcome
from funnelwatch.warehouse import ensure_raw_schema

START = pd.Timestamp("2026-11-10T00:00:00Z")
# event type -> (minute in the session, sessions with it per 40: a subset of the step before)
STEPS = {"page_view": (1, 40), "product_view": (5, 24), "add_to_cart": (10, 8),
         "checkout_start": (15, 4), "purchase": (20, 2)}


def _hour_events(hour: pd.Timestamp, sessions: int, keep: dict[str, float] | None = None):
    keep = keep or {}
    rows = []
    for s in range(sessions):
        # sessions start through the hour (the events suite's completeness check wants events
        # in its last minutes), each early enough for its last step to stay in the hour
        last_minute = max(minute for minute, per_40 in STEPS.values() if s % 40 < per_40)
        start = hour + pd.Timedelta(minutes=(s * 7) % (60 - last_minute))
        for event_type, (minute, per_40) in STEPS.items():
            if s % 40 >= per_40:
                continue
            # keep the type's events in a share of the blocks of 40 sessions (0: tracking
            # lost); the same blocks for every type, so a later step stays a subset
            if (s // 40) % 10 >= keep.get(event_type, 1.0) * 10:
                continue
            rows.append({
                "event_id": f"{hour:%Y%m%d%H}-{s}-{event_type}",
                "event_time": start + pd.Timedelta(minutes=minute, seconds=s % 30),
                "event_type": event_type, "user_id": f"u{s}",
                "session_id": f"{hour:%Y%m%d%H}-s{s}", "device_type": "mobile", "os": "iOS",
                "browser": "Safari", "country": "US", "event_hour": hour,
            })
    return pd.DataFrame(rows)


def _insert(con, frame: pd.DataFrame) -> None:
    if frame.empty:
        return
    con.register("frame", frame)
    con.execute("""INSERT INTO raw.events (event_id, event_time, event_type, user_id, session_id,
                   device_type, os, browser, country, event_hour)
                   SELECT event_id, event_time, event_type, user_id, session_id, device_type,
                          os, browser, country, event_hour FROM frame""")
    con.unregister("frame")


@pytest.fixture
def con(tmp_path):
    con = duckdb.connect(str(tmp_path / "w.duckdb"))
    ensure_raw_schema(con)
    yield con
    con.close()


def _run(con, hours: list[tuple[pd.Timestamp, int, dict | None]]) -> None:
    """Load and check hour by hour, as the hourly pipeline does."""
    for hour, sessions, keep in hours:
        _insert(con, _hour_events(hour, sessions, keep))
        record_outcomes(con, hour, [tracking_loss_outcome(con, hour.to_pydatetime())])


def _presence_and_tracking(con, hour: pd.Timestamp) -> list:
    at = hour.to_pydatetime()
    events = con.execute("SELECT count(*) FROM raw.events WHERE event_hour = $h",
                         {"h": at}).fetchone()[0]
    return [feed_presence_outcome(con, at, events), tracking_loss_outcome(con, at)]


def _timeline(sessions: int, normal: int, broken: int, after: int, keep: dict):
    hours = [START + pd.Timedelta(hours=i) for i in range(normal + broken + after)]
    return [(h, sessions, keep if normal <= i < normal + broken else None)
            for i, h in enumerate(hours)], hours[normal], hours[normal + broken - 1]


def _incidents(con) -> pd.DataFrame:
    return con.execute("SELECT * FROM quality.incidents ORDER BY first_hour").df()


def test_a_vanished_event_is_one_tracking_loss_from_its_first_hour_to_its_return(con):
    timeline, first, last = _timeline(400, 48, 6, 3, {"add_to_cart": 0})
    _run(con, timeline[:48 + 3])  # half-way through the outage
    (open_,) = _incidents(con).itertuples()
    assert (open_.kind, open_.subject, open_.status) == ("tracking_loss", "add_to_cart", "open")
    assert pd.Timestamp(open_.first_hour) == first and open_.hours == 3
    assert "add_to_cart events missing from" in open_.summary

    _run(con, timeline[48 + 3:])
    (incident,) = _incidents(con).itertuples()
    assert incident.incident_id == open_.incident_id  # updated while it lasted, not re-opened
    assert pd.Timestamp(incident.first_hour) == first and pd.Timestamp(incident.last_hour) == last
    assert incident.hours == 6 and incident.status == "resolved"  # the event came back
    # detection and the fast lane skip exactly the outage's hours
    window = failed_hours(con, START.to_pydatetime(), (START + pd.Timedelta(days=3)).to_pydatetime())
    assert window == {(first + pd.Timedelta(hours=i)).to_pydatetime() for i in range(6)}
    assert hour_incidents(con, first.to_pydatetime()) == [incident.incident_id]


def test_a_quiet_store_is_flagged_once_the_evidence_is_enough_dated_from_the_first_hour(con):
    # 40 sessions an hour: 8 carts expected an hour, one empty hour is not yet evidence
    timeline, first, last = _timeline(40, 48, 5, 2, {"add_to_cart": 0})
    _run(con, timeline[:49])
    assert _incidents(con).empty
    (outcome,) = [tracking_loss_outcome(con, first.to_pydatetime())]
    assert outcome.passed and "not yet enough evidence" in outcome.evidence["checked"]["add_to_cart"]
    _run(con, timeline[49:])
    (incident,) = _incidents(con).itertuples()
    assert incident.subject == "add_to_cart"
    assert pd.Timestamp(incident.first_hour) == first and pd.Timestamp(incident.last_hour) == last
    assert incident.status == "resolved"
    assert first.to_pydatetime() in failed_hours(con, first.to_pydatetime(),
                                                 (last + pd.Timedelta(hours=1)).to_pydatetime())


def test_a_real_checkout_drop_is_not_tracking_loss(con):
    # checkouts fall to a tenth and purchases with them: customers, not the tracker
    timeline, first, _ = _timeline(400, 48, 6, 2, {"checkout_start": 0.1, "purchase": 0.1})
    _run(con, timeline)
    assert _incidents(con).empty
    outcome = tracking_loss_outcome(con, (first + pd.Timedelta(hours=5)).to_pydatetime())
    assert outcome.passed
    verdict = outcome.evidence["checked"]["checkout_start"]
    assert verdict["verdict"].startswith("low, but the next step fell with it")
    assert verdict["share_without_event"] == 0.0


def test_a_30_hour_gap_is_one_missing_data_incident(con):
    hours = [START + pd.Timedelta(hours=i) for i in range(24 + 30 + 3)]
    for i, hour in enumerate(hours):
        empty = 24 <= i < 54
        if not empty:
            _insert(con, _hour_events(hour, 400))
        record_outcomes(con, hour, _presence_and_tracking(con, hour))
    (gap,) = _incidents(con).itertuples()
    assert (gap.kind, gap.hours, gap.status) == ("missing_data", 30, "resolved")
    assert gap.failed_checks == ["events_feed_present"] and "30 hours" in gap.summary
    assert pd.Timestamp(gap.first_hour) == hours[24] and pd.Timestamp(gap.last_hour) == hours[53]
    assert gap.incident_id == f"gap-{hours[24]:%Y%m%d%H}"
    assert len(failed_hours(con, hours[0].to_pydatetime(), hours[-1].to_pydatetime())) == 30


def test_an_event_lost_across_a_gap_stays_one_incident(con):
    """An empty hour says nothing about one event type: the loss goes on across it."""
    hours = [START + pd.Timedelta(hours=i) for i in range(48 + 10)]
    for i, hour in enumerate(hours):
        empty = 51 <= i < 54
        if not empty:
            _insert(con, _hour_events(hour, 400, {"add_to_cart": 0} if i >= 48 else None))
        record_outcomes(con, hour, _presence_and_tracking(con, hour))
    incidents = _incidents(con)
    assert list(incidents["kind"]) == ["tracking_loss", "missing_data"]
    loss = incidents.iloc[0]
    assert pd.Timestamp(loss["first_hour"]) == hours[48]
    assert pd.Timestamp(loss["last_hour"]) == hours[-1] and loss["status"] == "open"
    assert loss["hours"] == 10 - 3


def test_a_warehouse_with_per_hour_incidents_keeps_its_broken_hours(con):
    """Before incidents spanned hours, quality.incidents had one row per hour (event_hour)."""
    con.execute("CREATE SCHEMA quality")
    con.execute("""CREATE TABLE quality.incidents (incident_id VARCHAR, kind VARCHAR,
                   event_hour TIMESTAMPTZ, failed_checks VARCHAR[], summary VARCHAR,
                   status VARCHAR, opened_at TIMESTAMPTZ, updated_at TIMESTAMPTZ)""")
    con.execute("""INSERT INTO quality.incidents VALUES
        ('dq-2026111012', 'data_quality', '2026-11-10 12:00:00+00', ['events_completeness'],
         'cut off', 'open', now(), now()),
        ('dq-2026111013', 'data_quality', '2026-11-10 13:00:00+00', ['events_completeness'],
         'fixed', 'resolved', now(), now())""")
    hours = failed_hours(con, START.to_pydatetime(), (START + pd.Timedelta(days=1)).to_pydatetime())
    assert hours == {pd.Timestamp("2026-11-10 12:00:00+00").to_pydatetime()}
    rows = con.execute("SELECT incident_id, first_hour = last_hour, hours, status "
                       "FROM quality.incidents ORDER BY incident_id").fetchall()
    assert rows == [("dq-2026111012", True, 1, "open"), ("dq-2026111013", True, 1, "resolved")]


def test_one_outage_is_one_tracking_loss_incident_not_also_a_volume_one(con):
    """The demo's case through the events suite: add_to_cart gone for 3 hours while the rest
    of the funnel carries on, in hours whose previous weeks had carts. The volume check (below
    0.4x of previous weeks) leaves add_to_cart to the tracking-loss check: one incident."""
    timeline, first, last = _timeline(400, 48, 3, 1, {"add_to_cart": 0})
    checked = [hour for hour, _, _ in timeline[48:]]
    for hour in checked:
        for week in range(1, 5):
            _insert(con, _hour_events(hour - pd.Timedelta(weeks=week), 400))
    for hour, sessions, keep in timeline:
        _insert(con, _hour_events(hour, sessions, keep))
        if hour in checked:
            outcomes = {o.name: o for o in run_suites(con, hour.to_pydatetime())}
            volume = outcomes["events_volume_vs_previous_weeks"]
            assert volume.passed, volume.evidence
            assert "add_to_cart" in volume.evidence["deferred_to_tracking_loss"]
            # the types the tracking-loss check does not judge are still held to their
            # previous weeks (checkout_start and purchase are below the volume baseline)
            assert {r["event_type"] for r in volume.evidence["by_event_type"]} == {"page_view"}
            record_outcomes(con, hour.to_pydatetime(), list(outcomes.values()))
    (incident,) = _incidents(con).itertuples()
    assert (incident.kind, incident.subject) == ("tracking_loss", "add_to_cart")
    assert incident.failed_checks == ["events_tracking_loss"]
    assert pd.Timestamp(incident.first_hour) == first and pd.Timestamp(incident.last_hour) == last
    assert incident.status == "resolved"  # the hour after: carts are back


def test_a_lost_event_the_funnel_cannot_judge_is_still_a_volume_failure(con):
    """No session ever reaches the step after add_to_cart, so the tracking-loss check cannot
    tell a lost event from a real drop: the volume check still judges it (data_quality)."""
    hour = START + pd.Timedelta(hours=48)
    for h in [hour - pd.Timedelta(weeks=w) for w in range(1, 5)] + [
            START + pd.Timedelta(hours=i) for i in range(48)]:
        _insert(con, _hour_events(h, 400, {"checkout_start": 0, "purchase": 0}))
    _insert(con, _hour_events(hour, 400, {"add_to_cart": 0, "checkout_start": 0,
                                          "purchase": 0}))
    outcomes = {o.name: o for o in run_suites(con, hour.to_pydatetime())}
    assert outcomes["events_tracking_loss"].passed
    assert "add_to_cart" not in outcomes["events_tracking_loss"].evidence["judged"]
    volume = outcomes["events_volume_vs_previous_weeks"]
    assert not volume.passed
    by_type = {r["event_type"]: r for r in volume.evidence["by_event_type"]}
    assert by_type["add_to_cart"]["observed"] == 0
    assert record_outcomes(con, hour.to_pydatetime(), list(outcomes.values())) == (
        f"dq-{hour:%Y%m%d%H}")
