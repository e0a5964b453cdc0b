"""Tests of the clickstream simulator: determinism, contract conformance, funnel sanity,
every incident's label and its visible effect, the landing output, and 1M-event generation."""

from __future__ import annotations

import itertools
import json
import os

import numpy as np
import pandas as pd
import pyarrow.parquet as pq
import pytest

from funnelwatch.contract import (
    CHECKOUT_STEPS,
    DEVICE_TYPES,
    EVENT_ARROW_SCHEMA,
    EVENT_COLUMNS,
    EVENT_TYPES,
    OTHER_VALUE,
    PAGE_TYPES,
    PAYMENT_STATUSES,
    REFERENCE_TABLES,
    REQUIRED_COLUMNS,
    to_arrow,
)
from funnelwatch.landing import event_files, hour_dir
from simulator import (
    INCIDENT_TYPES,
    IncidentSpec,
    SimulationConfig,
    load_incidents,
    simulate,
    write_simulation,
)
from simulator.incidents import resolve_incidents, resolve_time

METRICS = {
    "sessions",
    "product_view_rate",
    "add_to_cart_rate",
    "checkout_start_rate",
    "payment_step_rate",
    "checkout_conversion_rate",
    "payment_failure_rate",
    "session_conversion_rate",
    "purchases",
    "events",
}
CAUSES = {"deploy", "campaign", "payment_provider", "stock", "tracking", "bot", "data"}
COHORT = {"os": "iOS", "browser": "Safari", "utm_campaign": "ig_sale"}

START, END = "2026-11-02", "2026-11-04"  # 48 hours; ig_sale runs all along (window < 5 days)
SPH = 2500


def ts(text: str) -> pd.Timestamp:
    return pd.Timestamp(text, tz="UTC")


# One incident of each type at non-overlapping times inside the 48-hour test window.
TEST_INCIDENTS = [
    IncidentSpec("checkout_conversion_drop", "day 0 00:00", 6, magnitude=-0.30, id="ck"),
    IncidentSpec(
        "cohort_checkout_drop", "day 0 06:00", 18, cohort=COHORT, magnitude=-0.18, id="cohort"
    ),
    IncidentSpec("stock_out", "day 1 00:00", 4, cohort={"category": "electronics"}, id="stock"),
    IncidentSpec(
        "payment_provider_errors",
        "day 1 05:00",
        4,
        cohort={"payment_provider": "adyen"},
        params={"failure_rate": 0.4, "latency_factor": 3.0},
        id="adyen",
    ),
    IncidentSpec("tracking_outage", "day 1 10:00", 2, id="tracking"),
    IncidentSpec(
        "bot_spike",
        "day 1 13:00",
        3,
        cohort={"utm_campaign": "fb_retarget"},
        magnitude=4.0,
        id="bots",
    ),
    IncidentSpec("campaign_loss", "day 1 16:00", 1, cohort={"utm_campaign": "brand_search"},
                 params={"starts_campaign": False}, id="campaign"),
    IncidentSpec("late_hour", "day 1 17:00", 1, params={"arrives_after_hours": 6}, id="late"),
    IncidentSpec("duplicate_events", "day 1 18:00", 1, params={"fraction": 0.05}, id="dups"),
    IncidentSpec("null_field", "day 1 19:00", 2, params={"field": "country"}, id="nulls"),
    IncidentSpec("unknown_event_type", "2026-11-03T21:00", 2, id="wishlist"),
]


@pytest.fixture(scope="module")
def quiet():
    return simulate(
        SimulationConfig(start=START, end=END, sessions_per_hour=SPH, seed=11, incidents=[])
    )


@pytest.fixture(scope="module")
def noisy():
    return simulate(
        SimulationConfig(
            start=START, end=END, sessions_per_hour=SPH, seed=11, incidents=TEST_INCIDENTS
        )
    )


def label(result, ident):
    return next(lab for lab in result.incidents if lab["id"] == ident)


def window_mask(events, lab):
    return (events["event_time"] >= ts(lab["start"])) & (events["event_time"] < ts(lab["end"]))


def sessions_with(events, event_type, **where):
    mask = events["event_type"] == event_type
    for col, value in where.items():
        mask &= events[col] == value
    return set(events.loc[mask, "session_id"])


# --------------------------------------------------------------------------------------
# Determinism and contract
# --------------------------------------------------------------------------------------


def test_same_seed_same_frame_different_seed_different_frame():
    cfg = {
        "start": "2026-11-05T10:00",
        "end": "2026-11-05T16:00",
        "sessions_per_hour": 600,
        "incidents": [IncidentSpec("duplicate_events", "day 0 12:00", 1)],
    }
    a = simulate(SimulationConfig(seed=5, **cfg))
    b = simulate(SimulationConfig(seed=5, **cfg))
    c = simulate(SimulationConfig(seed=6, **cfg))
    pd.testing.assert_frame_equal(a.events, b.events)
    for name in a.reference:
        pd.testing.assert_frame_equal(a.reference[name], b.reference[name])
    assert a.incidents == b.incidents
    assert len(a.events) != len(c.events) or not a.events.equals(c.events)


def test_events_fit_the_contract(quiet, noisy):
    for result in (quiet, noisy):
        events = result.events
        assert tuple(events.columns) == EVENT_COLUMNS
        assert to_arrow(events).schema.equals(EVENT_ARROW_SCHEMA)
        assert events[list(REQUIRED_COLUMNS)].notna().all().all()
        assert events["event_time"].is_monotonic_increasing
        assert events["event_time"].min() >= ts(START) and events["event_time"].max() < ts(END)
        assert set(events["page_type"].dropna()) <= set(PAGE_TYPES)
        assert set(events["device_type"].dropna()) <= set(DEVICE_TYPES)
        assert set(events["payment_status"].dropna()) <= set(PAYMENT_STATUSES)
        steps = events[events["event_type"] == "checkout_step"]
        assert set(steps["checkout_step"]) == set(CHECKOUT_STEPS) - {OTHER_VALUE}  # all real steps
        assert events.loc[events["event_type"] != "checkout_step", "checkout_step"].isna().all()
        assert (events["price"].dropna() >= 0).all() and (events["revenue"].dropna() >= 0).all()
        assert (events["quantity"].dropna() >= 0).all() and (
            events["latency_ms"].dropna() >= 0
        ).all()
        purchases = events[events["event_type"] == "purchase"]
        assert purchases[["order_id", "revenue", "quantity"]].notna().all().all()
        assert (purchases["currency"] == "USD").all()
        assert purchases["sku"].isna().all() and purchases["category"].isna().all()
        attempts = events[events["event_type"] == "payment_attempt"]
        assert attempts[["payment_provider", "payment_status", "latency_ms"]].notna().all().all()
        failed = attempts["payment_status"] == "failure"
        assert attempts.loc[failed, "error_code"].notna().all()
        assert attempts.loc[~failed, "error_code"].isna().all()
    assert set(quiet.events["event_type"]) == set(EVENT_TYPES)
    assert quiet.events["event_id"].is_unique
    assert set(noisy.events["event_type"]) == set(EVENT_TYPES) | {"wishlist_add"}


def test_session_attributes_and_traffic_sources(quiet):
    events = quiet.events
    per_session = events.groupby("session_id")[
        [
            "user_id",
            "device_type",
            "os",
            "browser",
            "country",
            "utm_source",
            "utm_campaign",
            "app_version",
        ]
    ].nunique(dropna=False)
    assert (per_session <= 1).all().all()  # constant within a session
    first = events.drop_duplicates("session_id")
    assert first["user_id"].nunique() < len(first)  # repeat visitors
    assert set(first["country"]) == {"US", "GB", "DE", "FR", "CA", "AU", "NL", "ES", "IT", "BR"}
    assert first["country"].value_counts(normalize=True)["US"] > 0.3
    direct = first[first["utm_source"].isna()]
    assert direct[["utm_medium", "utm_campaign"]].isna().all().all() and len(direct) > 0
    organic = first[first["utm_medium"] == "organic"]
    assert (organic["utm_source"] == "google").all() and organic["utm_campaign"].isna().all()
    combos = set(map(tuple, first[["utm_source", "utm_medium", "utm_campaign"]].dropna().values))
    assert combos == {
        ("google", "cpc", "brand_search"),
        ("instagram", "social", "ig_sale"),
        ("newsletter", "email", "weekly_newsletter"),
        ("facebook", "social", "fb_retarget"),
    }
    ios = first[first["os"] == "iOS"]
    assert set(ios["browser"]) <= {"Safari", "Chrome"} and set(ios["device_type"]) <= {
        "mobile",
        "tablet",
    }
    assert set(first.loc[first["os"] == "Windows", "device_type"]) == {"desktop"}
    # sessions start uniformly in their hour, so some cross into the next hour
    span = events.groupby("session_id")["event_time"].agg(["min", "max"])
    assert (span["min"].dt.floor("h") != span["max"].dt.floor("h")).mean() > 0.01


def test_funnel_rates_are_realistic(quiet):
    events = quiet.events
    n_sessions = events["session_id"].nunique()
    starts = sessions_with(events, "checkout_start")
    bought = sessions_with(events, "purchase")
    assert (
        bought
        <= starts
        <= sessions_with(events, "add_to_cart")
        <= sessions_with(events, "product_view")
    )
    assert bought <= sessions_with(events, "checkout_step", checkout_step="review")
    assert 0.02 <= len(bought) / n_sessions <= 0.04
    assert 0.45 <= len(bought) / len(starts) <= 0.65
    per_type = events["event_type"].value_counts()
    assert per_type["purchase"] <= per_type["checkout_start"]
    assert 0.0 < per_type["js_error"] / n_sessions < 0.05
    # funnel order within a session: checkout_start before purchase
    t = events.pivot_table(
        index="session_id", columns="event_type", values="event_time", aggfunc="min"
    )
    t = t.dropna(subset=["purchase"])
    assert (t["checkout_start"] < t["purchase"]).all() and (
        t["page_view"] <= t["checkout_start"]
    ).all()
    # a purchase's revenue equals what stayed in the cart
    one = events[events["session_id"] == next(iter(bought))]
    added = one[one["event_type"] == "add_to_cart"]
    removed = one[one["event_type"] == "remove_from_cart"]
    value = (added["price"] * added["quantity"]).sum() - (
        removed["price"] * removed["quantity"]
    ).sum()
    assert one.loc[one["event_type"] == "purchase", "revenue"].iloc[0] == pytest.approx(
        value, abs=0.02
    )
    # desktop converts better than mobile
    conv = {
        d: len(bought & set(g["session_id"])) / g["session_id"].nunique()
        for d, g in events.groupby("device_type")
    }
    assert conv["desktop"] > conv["mobile"]


def test_reference_tables(quiet):
    ref = quiet.reference
    for table in REFERENCE_TABLES:
        assert list(ref[table.name].columns) == [c for c, _, _ in table.columns]
    deploys = ref["deploys"]
    assert str(deploys["deploy_time"].dtype) == "datetime64[us, UTC]"
    assert set(deploys["service"]) <= {"web", "checkout", "payment-widget", "search"}
    assert deploys.groupby(deploys["deploy_time"].dt.date).size().between(1, 3).all()
    # app_version is the web build live when the session started
    assert set(quiet.events["app_version"]) <= {
        "4.18.0",
        *deploys.loc[deploys["service"] == "web", "version"],
    }
    campaigns = ref["campaigns"]
    assert set(campaigns["campaign_name"]) == {
        "brand_search",
        "ig_sale",
        "weekly_newsletter",
        "fb_retarget",
    }
    assert str(campaigns["start_time"].dtype) == "datetime64[us, UTC]"


def test_calendar_black_friday_cyber_monday_promotion_and_holidays():
    result = simulate(
        SimulationConfig(start="2026-11-18", end="2026-12-02", sessions_per_hour=60, seed=1)
    )
    hol = result.reference["holidays"]
    rows = {(str(r.holiday_date), r.name, r.country, r.kind) for r in hol.itertuples()}
    assert ("2026-11-27", "Black Friday", "ALL", "promotion") in rows
    assert ("2026-11-30", "Cyber Monday", "ALL", "promotion") in rows
    assert ("2026-11-26", "Thanksgiving", "US", "holiday") in rows
    assert ("2026-11-25", "autumn_sale", "ALL", "promotion") in rows  # mid-window promotion
    events = result.events
    daily = events.drop_duplicates("session_id").groupby(events["event_time"].dt.date).size()
    bf, before = daily[pd.Timestamp("2026-11-27").date()], daily[pd.Timestamp("2026-11-20").date()]
    assert bf > 2 * before  # Black Friday surge (a Friday vs the Friday before)
    short = simulate(
        SimulationConfig(start="2026-11-02", end="2026-11-05", sessions_per_hour=10, seed=1)
    )
    assert not (short.reference["holidays"]["kind"] == "promotion").any()  # no promotion < 10 days


# --------------------------------------------------------------------------------------
# Incidents: labels and visible effects
# --------------------------------------------------------------------------------------


def test_every_incident_is_labelled(noisy):
    labels = noisy.incidents
    assert [lab["id"] for lab in labels] == [s.id for s in TEST_INCIDENTS]
    assert {lab["type"] for lab in labels} == set(INCIDENT_TYPES)
    for lab in labels:
        assert {
            "id",
            "type",
            "kind",
            "start",
            "end",
            "metric",
            "cohort",
            "magnitude",
            "cause",
        } <= set(lab)
        assert lab["kind"] in ("business", "data_quality")
        assert lab["metric"] in METRICS
        assert lab["cause"]["type"] in CAUSES and lab["cause"]["ref"]
        assert ts(lab["start"]) < ts(lab["end"])
    json.dumps(labels)  # JSON-able
    spans = sorted((ts(lab["start"]), ts(lab["end"])) for lab in labels)
    assert all(a[1] <= b[0] for a, b in itertools.pairwise(spans))  # non-overlapping


def test_cohort_checkout_drop_follows_a_payment_widget_deploy(quiet, noisy):
    lab = label(noisy, "cohort")
    assert lab["cohort"] == COHORT and lab["magnitude"] == -0.18
    assert lab["metric"] == "checkout_conversion_rate"
    deploys = noisy.reference["deploys"]
    dep = deploys[deploys["version"] == lab["cause"]["ref"]]
    assert lab["cause"]["type"] == "deploy" and list(dep["service"]) == ["payment-widget"]
    lead = ts(lab["start"]) - dep["deploy_time"].iloc[0]
    assert pd.Timedelta(0) < lead <= pd.Timedelta(minutes=15)
    assert "widget" in dep["description"].iloc[0]

    def cohort_rates(result, inside):
        ev = result.events
        in_cohort = (
            (ev["os"] == "iOS") & (ev["browser"] == "Safari") & (ev["utm_campaign"] == "ig_sale")
        )
        pay = ev[in_cohort & (ev["checkout_step"] == "payment")]
        pay = pay[window_mask(pay, lab) == inside]
        bought = sessions_with(ev, "purchase")
        return len(set(pay["session_id"]) & bought), len(pay)

    b_in, n_in = cohort_rates(noisy, True)
    q_in, _ = cohort_rates(quiet, True)
    b_out, n_out = cohort_rates(noisy, False)
    assert n_in > 50
    assert 0.70 < b_in / q_in < 0.92  # same sessions as the quiet store, 18% fewer purchases
    assert b_in / n_in < 0.95 * (b_out / n_out)  # lower than outside the window
    # other cohorts are untouched
    others = noisy.events[(noisy.events["os"] == "Android") & window_mask(noisy.events, lab)]
    q_others = quiet.events[(quiet.events["os"] == "Android") & window_mask(quiet.events, lab)]
    assert (others["event_type"] == "purchase").sum() == (
        q_others["event_type"] == "purchase"
    ).sum()


def test_checkout_conversion_drop(quiet, noisy):
    lab = label(noisy, "ck")
    assert lab["metric"] == "checkout_conversion_rate" and lab["cause"]["type"] == "deploy"

    def purchases(result):
        ev = result.events
        return ((ev["event_type"] == "purchase") & window_mask(ev, lab)).sum()

    assert 0.6 < purchases(noisy) / purchases(quiet) < 0.8


def test_stock_out(quiet, noisy):
    lab = label(noisy, "stock")
    assert (
        lab["cause"] == {"type": "stock", "ref": "electronics"}
        and lab["metric"] == "add_to_cart_rate"
    )
    for result, expect_zero in ((noisy, True), (quiet, False)):
        ev = result.events
        adds = ev[
            (ev["event_type"] == "add_to_cart")
            & (ev["category"] == "electronics")
            & window_mask(ev, lab)
        ]
        assert (len(adds) == 0) == expect_zero
    ev = noisy.events
    inside = ev[window_mask(ev, lab)]
    assert (
        (inside["event_type"] == "product_view") & (inside["category"] == "electronics")
    ).sum() > 100
    assert ((inside["event_type"] == "add_to_cart") & (inside["category"] == "apparel")).sum() > 10


def test_payment_provider_errors(noisy):
    lab = label(noisy, "adyen")
    assert lab["cause"] == {"type": "payment_provider", "ref": "adyen"}
    assert lab["metric"] == "payment_failure_rate" and lab["magnitude"] > 5
    att = noisy.events[noisy.events["event_type"] == "payment_attempt"]
    inside = window_mask(att, lab)
    adyen = att["payment_provider"] == "adyen"
    fail = att["payment_status"] == "failure"
    assert fail[adyen & inside].mean() > 0.25
    assert fail[adyen & ~inside].mean() < 0.08
    assert fail[~adyen & inside].mean() < 0.10
    assert (
        att.loc[adyen & inside, "latency_ms"].median()
        > 2 * att.loc[adyen & ~inside, "latency_ms"].median()
    )
    codes = att.loc[adyen & inside & fail, "error_code"].value_counts()
    assert codes.index[0] in ("provider_unavailable", "gateway_timeout")


def test_tracking_outage_drops_add_to_cart_but_sessions_convert(quiet, noisy):
    lab = label(noisy, "tracking")
    assert lab["kind"] == "data_quality" and lab["metric"] == "add_to_cart_rate"
    assert lab["cause"] == {"type": "tracking", "ref": "add_to_cart"}
    ev = noisy.events[window_mask(noisy.events, lab)]
    q = quiet.events[window_mask(quiet.events, lab)]
    assert (ev["event_type"] == "add_to_cart").sum() == 0
    assert (q["event_type"] == "add_to_cart").sum() > 100
    for kind in ("checkout_start", "purchase"):
        assert (ev["event_type"] == kind).sum() == (q["event_type"] == kind).sum() > 0


def test_bot_spike(quiet, noisy):
    lab = label(noisy, "bots")
    assert lab["cohort"] == {"utm_campaign": "fb_retarget"} and lab["metric"] == "sessions"
    assert lab["cause"] == {"type": "bot", "ref": "utm_campaign=fb_retarget"} and lab["bot_sessions"] > 0

    def fb_sessions(result):
        ev = result.events
        first = ev.drop_duplicates("session_id")
        return first[(first["utm_campaign"] == "fb_retarget") & window_mask(first, lab)]

    bots, normal = fb_sessions(noisy), fb_sessions(quiet)
    assert 4.0 < len(bots) / len(normal) < 6.5
    extra = bots[~bots["session_id"].isin(normal["session_id"])]
    assert extra["user_id"].nunique() <= 5
    ev = noisy.events[noisy.events["session_id"].isin(extra["session_id"])]
    assert set(ev["event_type"]) == {"page_view", "product_view"}
    assert ev.groupby("session_id").size().mean() > 8


def test_late_hour(noisy):
    lab = label(noisy, "late")
    assert lab["kind"] == "data_quality" and lab["arrives_after_hours"] == 6
    (late,) = noisy.late
    assert late.hour == ts(lab["start"]) and late.arrives_at == ts(lab["start"]) + pd.Timedelta(
        hours=6
    )
    in_hour = np.flatnonzero(window_mask(noisy.events, lab).to_numpy())
    assert len(late.rows) == len(in_hour) > 0 and set(late.rows) == set(in_hour)


def test_duplicate_events(noisy):
    lab = label(noisy, "dups")
    ev = noisy.events
    dup = ev[ev.duplicated("event_id", keep=False)]
    assert len(dup) > 0 and window_mask(dup, lab).all()
    assert dup.duplicated(keep=False).all()  # whole rows repeated, same event_id
    in_hour = window_mask(ev, lab).sum()
    assert 0.02 < ev.duplicated("event_id").sum() / in_hour < 0.08


def test_null_field(noisy):
    lab = label(noisy, "nulls")
    assert lab["cause"] == {"type": "data", "ref": "country"}
    ev = noisy.events
    inside = window_mask(ev, lab)
    assert ev.loc[inside, "country"].isna().all() and inside.sum() > 0
    assert ev.loc[~inside, "country"].notna().all()


def test_unknown_event_type(noisy):
    lab = label(noisy, "wishlist")
    assert lab["cause"]["ref"] == "wishlist_add" and lab["kind"] == "data_quality"
    ev = noisy.events
    wish = ev[ev["event_type"] == "wishlist_add"]
    assert len(wish) > 50 and wish["event_id"].is_unique
    lo, hi = ts(lab["start"]), ts(lab["end"]) + pd.Timedelta(seconds=30)
    assert ((wish["event_time"] >= lo) & (wish["event_time"] < hi)).all()
    assert wish["sku"].notna().all()


# --------------------------------------------------------------------------------------
# Scenarios and output
# --------------------------------------------------------------------------------------


def test_default_scenario_fits_any_window_of_14_days_or_more():
    specs = load_incidents("default")
    # campaign_loss launches a campaign (it moves the store's campaign calendar, and with it
    # the default scenario's ig_sale case): it lives in the explain scenario
    assert {s.type for s in specs} == set(INCIDENT_TYPES) - {"campaign_loss"}
    assert len(specs) == len(INCIDENT_TYPES) - 1
    assert "campaign_loss" in {s.type for s in load_incidents("explain")}
    for days in (14, 21, 30):
        start = ts("2026-11-01")
        resolved = resolve_incidents(specs, start, start + pd.Timedelta(days=days))
        spans = sorted((i.start, i.end) for i in resolved)
        assert all(a[1] <= b[0] for a, b in itertools.pairwise(spans))
    with pytest.raises(ValueError, match="outside the simulation window"):
        resolve_incidents(specs, ts("2026-11-01"), ts("2026-11-08"))
    assert resolve_time("day 2 14:30", ts("2026-11-01"), ts("2026-11-15")) == ts("2026-11-03T14:30")
    assert resolve_time("day -1 09:00", ts("2026-11-01"), ts("2026-11-15")) == ts(
        "2026-11-14T09:00"
    )
    assert resolve_time("2026-11-05T10:00", ts("2026-11-01"), ts("2026-11-15")) == ts(
        "2026-11-05T10:00"
    )


def test_default_scenario_end_to_end(tmp_path):
    cfg = SimulationConfig(
        start="2026-11-01",
        end="2026-11-15",
        sessions_per_hour=120,
        seed=42,
        incidents=load_incidents("default"),
    )
    result = simulate(cfg)
    assert len(result.incidents) == len(INCIDENT_TYPES) - 1  # all but campaign_loss
    paths = write_simulation(result, tmp_path / "landing", tmp_path / "truth.json")
    truth = json.loads(paths["ground_truth"].read_text())
    assert truth == result.incidents
    assert len(paths["late"]) == 1


def test_write_simulation(noisy, tmp_path):
    landing = tmp_path / "landing"
    paths = write_simulation(noisy, landing, tmp_path / "gt" / "ground_truth.json")
    hours = pd.date_range(START, END, freq="h", tz="UTC", inclusive="left")
    for hour in hours:
        assert event_files(landing, hour), hour
    late_lab = label(noisy, "late")
    late_hour = ts(late_lab["start"])
    (late_path,) = paths["late"]
    assert late_path == hour_dir(landing, late_hour) / "late.parquet"
    assert os.path.getmtime(late_path) == (late_hour + pd.Timedelta(hours=6)).timestamp()
    assert [p.name for p in event_files(landing, late_hour)] == [
        "late.parquet"
    ]  # whole hour is late
    total = sum(pq.read_metadata(p).num_rows for p in landing.glob("events/*/*/*.parquet"))
    assert total == len(noisy.events)
    assert pq.read_schema(late_path).equals(EVENT_ARROW_SCHEMA)
    for table in REFERENCE_TABLES:
        frame = pd.read_csv(landing / "reference" / f"{table.name}.csv")
        assert list(frame.columns) == [c for c, _, _ in table.columns]
    assert json.loads((tmp_path / "gt" / "ground_truth.json").read_text()) == noisy.incidents


def test_single_hour_of_about_a_million_events():
    cfg = SimulationConfig.single_hour("2026-11-10T19:00", events_target=1_000_000, seed=3)
    result = simulate(cfg)
    assert 900_000 <= len(result.events) <= 1_100_000
    assert (result.events["event_time"].dt.floor("h") == ts("2026-11-10T19:00")).all()


# --------------------------------------------------------------------------------------
# The oracle (simulator/oracle.py) and the scenarios of issue 14 §5
# --------------------------------------------------------------------------------------


def _oracle_label(ident, metric, cohort, start, hours, magnitude=-0.5, type_="checkout_conversion_drop"):
    t0 = ts(start)
    return {"id": ident, "type": type_, "metric": metric, "cohort": cohort, "magnitude": magnitude,
            "start": t0.isoformat(), "end": (t0 + pd.Timedelta(hours=hours)).isoformat()}


def test_oracle_z_is_standard_normal_where_nothing_happens():
    """On a quiet store the per-hour z of a rate (k of n against the sessions' own
    probabilities) and of a count (against the traffic model's Poisson mean) is N(0, 1): the
    expectation is the simulator's truth, not a fit."""
    from simulator.generate import funnel_outcome, prepare
    from simulator.oracle import incident_hours

    prepared = prepare(SimulationConfig(start=START, end=END, sessions_per_hour=SPH, seed=5))
    funnel = funnel_outcome(prepared.sessions, prepared.ctx, prepared.incidents)
    zs = []
    for metric, cohort in (("checkout_conversion_rate", {}), ("add_to_cart_rate", {"device_type": "mobile"}),
                           ("sessions", {"utm_campaign": "fb_retarget"}),
                           ("sessions", {"country": "US", "device_type": "desktop", "os": "Windows"}),
                           ("payment_failure_rate", {})):
        hours = incident_hours(prepared, funnel, _oracle_label("q", metric, cohort, START, 47))
        assert len(hours) == 47 and (hours["units"] > 0).all(), metric
        zs.append(hours["z"].to_numpy())
    z = np.concatenate(zs)
    assert abs(z.mean()) < 0.2 and 0.8 < z.std() < 1.2, (z.mean(), z.std())


def test_oracle_sees_a_large_drop_in_its_first_hour_and_not_a_tiny_one():
    from simulator.oracle import oracle

    incidents = [
        IncidentSpec("checkout_conversion_drop", "day 0 12:00", 4, magnitude=-0.5, id="big",
                     params={"deploy": None}),
        IncidentSpec("checkout_conversion_drop", "day 1 12:00", 4, cohort={"country": "GB"},
                     magnitude=-0.01, id="tiny", params={"deploy": None}),
        IncidentSpec("bot_spike", "day 1 02:00", 2, magnitude=4.0, id="bots"),
        IncidentSpec("payment_provider_errors", "day 1 18:00", 3,
                     cohort={"payment_provider": "adyen"}, id="adyen"),
    ]
    hours, found = oracle(SimulationConfig(start=START, end=END, sessions_per_hour=SPH, seed=5,
                                           incidents=incidents))
    found = found.set_index("id")
    assert found.loc["big", "visible"] and found.loc["big", "oracle_hour"] == ts("2026-11-02 12:00")
    assert found.loc["big", "oracle_z"] < -10
    assert not found.loc["tiny", "visible"] and abs(found.loc["tiny", "oracle_z"]) < 4
    assert found.loc["bots", "visible"] and found.loc["bots", "oracle_z"] > 10
    assert found.loc["adyen", "visible"] and found.loc["adyen", "direction"] == 1
    big = hours[hours["id"] == "big"]
    assert list(big["hour"]) == list(pd.date_range(ts("2026-11-02 12:00"), periods=4, freq="h"))
    # the cumulative z is the count z of the hours so far
    diff = (big["observed"] - big["expected"]).cumsum()
    assert np.allclose(big["cum_z"], diff / np.sqrt(big["variance"].cumsum()))


def test_oracle_names_what_it_cannot_model_instead_of_failing():
    from simulator.oracle import oracle

    incidents = [IncidentSpec("bot_spike", "day 1 02:00", 2, cohort={"utm_campaign": "fb_retarget"},
                              params={"campaigns": None}, metric="revenue", id="odd")]
    _, found = oracle(SimulationConfig(start=START, end=END, sessions_per_hour=300, seed=5,
                                       incidents=incidents))
    row = found.set_index("id").loc["odd"]
    assert not row["visible"] and "revenue" in row["oracle_note"]


def test_last_weekday_start_and_planned_traffic():
    from simulator.generate import prepare
    from simulator.oracle import planned_traffic

    start, end = ts("2026-11-17"), ts("2026-12-01")  # 12-01 is a Tuesday (exclusive)
    assert resolve_time("last tuesday 11:00", start, end) == ts("2026-11-24 11:00")
    assert resolve_time("last monday", start, end) == ts("2026-11-30 00:00")
    planned = planned_traffic(prepare(SimulationConfig(start=start, end=end, sessions_per_hour=50)))
    sends = planned[planned["name"] == "newsletter send"]
    assert list(sends["start"]) == [ts("2026-11-17"), ts("2026-11-24")]
    assert {"campaign ig_sale launch", "campaign ig_sale end", "Black Friday"} <= set(planned["name"])


@pytest.fixture(scope="module")
def explain():
    return simulate(SimulationConfig(start="2026-11-17", end="2026-12-01", sessions_per_hour=400,
                                     seed=13, incidents="explain"))


def test_explain_scenario_labels_say_what_the_answer_should_be(explain):
    labels = {lab["id"]: lab for lab in explain.incidents}
    assert labels["store-wide-drop"]["expected_where"] == "all"
    assert labels["store-wide-drop"]["expected_cause"] == {"kind": "none", "ref": None}
    assert labels["two-causes-ios-safari"]["expected_step"] == "review_step"
    assert labels["two-causes-gb"]["expected_step"] == "shipping_step"
    assert labels["two-causes-gb"]["expected_cause"]["kind"] == "deploy"
    assert labels["newsletter-day-mobile-drop"]["start"] == "2026-11-24T11:00:00Z"
    assert labels["ig-sale-launch-loss"]["expected_cause"] == {"kind": "campaign", "ref": "ig_sale"}
    bots = labels["bots-over-campaigns"]
    assert bots["expected_where"] == "browser=Chrome&country=US&device_type=desktop&os=Windows"
    assert bots["expected_cause"] == {
        "kind": "bot_traffic", "ref": "browser=Chrome&country=US&device_type=desktop&os=Windows"}
    deep = labels["three-dimension-cohort-drop"]
    assert deep["expected_where"] == "browser=Chrome&country=US&os=Windows"
    assert deep["expected_cause"] == {"kind": "none", "ref": None}


def test_campaign_loss_launches_the_campaign_beside_a_decoy_deploy(explain):
    lab = label(explain, "ig-sale-launch-loss")
    campaigns = explain.reference["campaigns"].set_index("campaign_name")
    assert campaigns.loc["ig_sale", "start_time"] == ts(lab["start"])
    ev = explain.events
    ig = ev[ev["utm_campaign"] == "ig_sale"]
    assert ig["event_time"].min() >= ts(lab["start"])  # no ig_sale traffic before its launch
    deploys = explain.reference["deploys"]
    decoy = deploys[(deploys["service"] == "web")
                    & (deploys["deploy_time"] == ts(lab["start"]) - pd.Timedelta(hours=20))]
    assert len(decoy) == 1
    inside = window_mask(ig, lab)
    starts = sessions_with(ig[inside], "checkout_start")
    bought = sessions_with(ig[inside], "purchase") & starts
    later = ig[(ig["event_time"] >= ts(lab["end"]))]
    later_rate = len(sessions_with(later, "purchase")) / len(sessions_with(later, "checkout_start"))
    assert len(bought) / len(starts) < 0.8 * later_rate


def test_bot_spike_over_several_campaigns(explain):
    lab = label(explain, "bots-over-campaigns")
    ev = explain.events[window_mask(explain.events, lab)]
    bots = ev[ev["browser_version"] == "120.0"]
    assert set(bots["utm_campaign"]) == {"fb_retarget", "brand_search", "weekly_newsletter"}
    assert set(bots["country"]) == {"US"} and set(bots["os"]) == {"Windows"}
    assert set(bots["device_type"]) == {"desktop"} and lab["bot_sessions"] > 100
    with pytest.raises(ValueError, match="not utm_campaign"):
        resolve_incidents([IncidentSpec("bot_spike", "day 0 01:00", 1, cohort={"utm_campaign": "ig_sale"},
                                        params={"campaigns": ["ig_sale"]})], ts(START), ts(END))
