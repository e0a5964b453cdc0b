"""Incident root cause (funnelwatch.incidents.rca) on a real DuckDB warehouse built here.

The synthetic store: 8 days of hourly funnel counts for 54 leaf cohorts (device x os x browser x
country x campaign) drawn from a fixed funnel with binomial noise, plus the tables the analysis
reads (category hourly, deploys, campaigns, a thin raw.events). Planted:

* from DAY8 12:00 for 12 h, iOS Safari visitors of ig_sale complete the payment step half as
  often (payment_step -> review_step x 0.5), after a payment-widget deploy at 11:55 (decoys:
  a search deploy at 03:00, a web deploy at 20:00);
* from DAY8 00:00 for 6 h, electronics cannot be added to cart (category table).
"""

from __future__ import annotations

import json
import shutil
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import duckdb
import numpy as np
import pandas as pd
import pytest

from funnelwatch.incidents.rca import analyse_incident

T0 = datetime(2026, 11, 1, tzinfo=UTC)
DAY8 = T0 + timedelta(days=7)
INC_START, INC_END = DAY8 + timedelta(hours=12), DAY8 + timedelta(hours=24)
STOCK_START, STOCK_END = DAY8, DAY8 + timedelta(hours=6)
RATES = {  # conversion from the previous stage
    "product_view_sessions": 0.7,
    "add_to_cart_sessions": 0.2,
    "checkout_start_sessions": 0.45,
    "shipping_step_sessions": 0.86,
    "payment_step_sessions": 0.9,
    "review_step_sessions": 0.9,
    "payment_attempt_sessions": 0.95,
    "purchase_sessions": 0.97,
}
DEVICES = [
    ("mobile", "iOS", "Safari"),
    ("mobile", "iOS", "Chrome"),
    ("mobile", "Android", "Chrome"),
    ("desktop", "Windows", "Chrome"),
    ("desktop", "macOS", "Safari"),
    ("desktop", "macOS", "Chrome"),
]
CAMPAIGNS = {
    "(none)": ("(none)", "(none)"),
    "ig_sale": ("instagram", "social"),
    "brand_search": ("google", "cpc"),
}
CATEGORIES = ["electronics", "books", "home", "toys"]
# the counts a break at the review step scales (that step's sessions and every one after it)
FROM_REVIEW_STEP = ("review_step_sessions", "payment_attempt_sessions", "purchase_sessions",
                    "payment_attempts", "payment_failures", "purchases", "revenue")


def _build(path: Path, seed: int = 3, review_factor: float = 0.5) -> None:
    rng = np.random.default_rng(seed)
    hours = [T0 + timedelta(hours=h) for h in range(24 * 8)]
    rows = []
    for h in hours:
        daily = 1.0 + 0.4 * np.sin((h.hour - 6) / 24 * 2 * np.pi)
        for device, os_, browser in DEVICES:
            for country in ("US", "GB", "DE"):
                for camp, (src, med) in CAMPAIGNS.items():
                    n = int(rng.poisson(60 * daily))
                    row = {
                        "event_hour": h,
                        "device_type": device,
                        "os": os_,
                        "browser": browser,
                        "country": country,
                        "utm_source": src,
                        "utm_medium": med,
                        "utm_campaign": camp,
                        "sessions": n,
                    }
                    prev = n
                    for col, rate in RATES.items():
                        if (
                            col == "review_step_sessions"
                            and os_ == "iOS"
                            and browser == "Safari"
                            and camp == "ig_sale"
                            and INC_START <= h < INC_END
                        ):
                            rate *= review_factor
                        prev = int(rng.binomial(prev, rate))
                        row[col] = prev
                    row["payment_attempts"] = row["payment_attempt_sessions"]
                    row["payment_failures"] = (
                        row["payment_attempt_sessions"] - row["purchase_sessions"]
                    )
                    row["purchases"] = row["purchase_sessions"]
                    row["revenue"] = float(row["purchases"] * rng.uniform(90, 110))
                    row["js_error_sessions"] = int(rng.binomial(n, 0.01))
                    row["events"] = n * 6
                    rows.append(row)
    funnel = pd.DataFrame(rows)
    cats = []
    for h in hours:
        for c in CATEGORIES:
            pv = int(rng.poisson(400))
            rate = 0.0 if (c == "electronics" and STOCK_START <= h < STOCK_END) else 0.2
            atc = int(rng.binomial(pv, rate))
            cats.append(
                {
                    "event_hour": h,
                    "category": c,
                    "product_view_sessions": pv,
                    "add_to_cart_sessions": atc,
                    "add_to_cart_rate": atc / pv if pv else None,
                }
            )
    categories = pd.DataFrame(cats)
    deploys = pd.DataFrame(
        [
            {
                "deploy_id": "d1",
                "deploy_time": DAY8 + timedelta(hours=3),
                "service": "search",
                "version": "3.1.0",
                "description": "index rebuild",
            },
            {
                "deploy_id": "d2",
                "deploy_time": INC_START - timedelta(minutes=5),
                "service": "payment-widget",
                "version": "9.9.0",
                "description": "wallet button layout",
            },
            {
                "deploy_id": "d3",
                "deploy_time": DAY8 + timedelta(hours=20),
                "service": "web",
                "version": "4.0.1",
                "description": "footer links",
            },
        ]
    )
    deploys["deploy_hour"] = deploys["deploy_time"].dt.floor("h")
    campaigns = pd.DataFrame(
        [
            {
                "campaign_id": "c1",
                "campaign_name": "ig_sale",
                "start_time": T0 - timedelta(days=3),
                "end_time": T0 + timedelta(days=20),
                "channel": "social",
                "duration_hours": 552.0,
            },
        ]
    )
    campaigns["start_hour"] = campaigns["start_time"]
    events = []
    for h in hours:
        for i in range(20):
            events.append(
                {
                    "event_time": h + timedelta(minutes=3 * i),
                    "event_type": "page_view",
                    "user_id": f"u{i}",
                    "session_id": f"s{h:%d%H}{i}",
                    "error_code": None,
                    "payment_provider": None,
                    "payment_status": None,
                    "latency_ms": None,
                    "device_type": "mobile",
                    "os": "iOS",
                    "browser": "Safari",
                    "country": "US",
                    "utm_source": "instagram",
                    "utm_medium": "social",
                    "utm_campaign": "ig_sale",
                }
            )
        for i, et in enumerate(
            (
                "product_view",
                "add_to_cart",
                "checkout_start",
                "checkout_step",
                "payment_attempt",
                "purchase",
            )
        ):
            events.append(
                {
                    "event_time": h + timedelta(minutes=i),
                    "event_type": et,
                    "user_id": "u1",
                    "session_id": f"s{h:%d%H}1",
                    "error_code": None,
                    "payment_provider": "stripe" if et == "payment_attempt" else None,
                    "payment_status": "success" if et == "payment_attempt" else None,
                    "latency_ms": 300.0 if et == "payment_attempt" else None,
                    "device_type": "mobile",
                    "os": "iOS",
                    "browser": "Safari",
                    "country": "US",
                    "utm_source": "instagram",
                    "utm_medium": "social",
                    "utm_campaign": "ig_sale",
                }
            )
    raw = pd.DataFrame(events)
    raw["event_hour"] = raw["event_time"].dt.floor("h")
    con = duckdb.connect(str(path))
    try:
        for schema in ("marts", "intermediate", "raw"):
            con.execute(f"create schema {schema}")
        for name, frame in (
            ("marts.fct_funnel_hourly", funnel),
            ("intermediate.int_category_hourly", categories),
            ("marts.dim_deploys", deploys),
            ("marts.dim_campaigns", campaigns),
            ("raw.events", raw),
        ):
            con.register("frame", frame)
            con.execute(f"create table {name} as select * from frame")
            con.unregister("frame")
        # typed like the marts: timestamptz and varchar codes
        for t, c in (
            ("marts.fct_funnel_hourly", "event_hour"),
            ("intermediate.int_category_hourly", "event_hour"),
            ("marts.dim_deploys", "deploy_time"),
            ("marts.dim_campaigns", "start_time"),
            ("raw.events", "event_time"),
            ("raw.events", "event_hour"),
        ):
            con.execute(f"alter table {t} alter {c} type timestamptz")
        for c in ("error_code", "payment_provider", "payment_status"):
            con.execute(f"alter table raw.events alter {c} type varchar")
        con.execute("alter table raw.events alter latency_ms type double")
    finally:
        con.close()


@pytest.fixture(scope="module")
def warehouse(tmp_path_factory):
    path = tmp_path_factory.mktemp("rca") / "funnelwatch.duckdb"
    _build(path)
    con = duckdb.connect(str(path), read_only=True)
    yield con
    con.close()


def test_planted_payment_step_drop_is_localised_stepped_explained_and_costed(warehouse):
    t0 = time.perf_counter()
    result = analyse_incident(
        warehouse, metric="checkout_conversion_rate", cohort="all", start=INC_START, end=INC_END
    )
    elapsed = time.perf_counter() - t0
    json.dumps(result)  # JSON-serialisable as returned
    assert (
        result["window_start"] == INC_START.isoformat()
        and result["window_end"] == INC_END.isoformat()
    )

    top = result["where"][0]
    assert top["filters"] == {"os": "iOS", "browser": "Safari", "utm_campaign": "ig_sale"}
    assert top["cohort"] == "browser=Safari&os=iOS&utm_campaign=ig_sale"
    assert top["z"] < -5 and top["deviation"] < -0.2 and top["root_cause"] is True
    assert 1 <= len(result["where"]) <= 3 and [w["rank"] for w in result["where"]] == list(
        range(1, len(result["where"]) + 1)
    )

    assert result["funnel_step"] == "review_step"
    step = next(s for s in result["funnel"] if s["step"] == "review_step")
    assert step["change"] < -0.3  # the cohort's payment -> review conversion halved ...
    assert abs(step["rest_change"]) < 0.05  # ... the rest of the store did not move

    first = result["hypotheses"][0]
    assert (first["kind"], first["ref"], first["service"]) == ("deploy", "9.9.0", "payment-widget")
    assert first["at"].startswith((INC_START - timedelta(minutes=5)).isoformat()[:16])
    assert 0.5 <= first["contribution"] <= 1.0 and "review_step" in first["evidence"]
    # the decoys (search 9 h before, web 8 h after the onset) are absent or rank lower
    refs = [h["ref"] for h in result["hypotheses"]]
    assert refs[0] == "9.9.0" and all(
        h["contribution"] == 0 for h in result["hypotheses"][1:] if h["kind"] == "deploy"
    )

    impact = result["impact"]
    # expected loss: ~3 leaves x 60 sessions x 0.7 x 0.2 x 0.45 x 0.86 x 0.9 x 0.45 x ... x 12 h
    assert 20 <= impact["lost_orders"] <= 70
    assert 90 <= impact["average_order_value"] <= 110
    assert impact["revenue_at_risk"] == pytest.approx(
        impact["lost_orders"] * impact["average_order_value"], rel=1e-3
    )
    hours = impact["per_hour"]
    assert len(hours) == 12 and hours[0]["event_hour"] == INC_START.isoformat()
    assert hours[-1]["cumulative_revenue_at_risk"] == pytest.approx(
        impact["revenue_at_risk"], rel=1e-3
    )
    assert elapsed < 2.0


def test_stock_out_is_named_by_category(warehouse):
    result = analyse_incident(
        warehouse,
        metric="add_to_cart_rate",
        cohort="category=electronics",
        start=STOCK_START,
        end=STOCK_END,
    )
    assert result["where"][0]["filters"] == {"category": "electronics"}
    assert result["where"][0]["actual"] == 0.0
    first = result["hypotheses"][0]
    assert (first["kind"], first["ref"]) == ("stock_out", "electronics")
    assert first["contribution"] > 0.9


def test_quiet_window_finds_no_confident_cause(warehouse):
    start = T0 + timedelta(days=7, hours=6)
    result = analyse_incident(
        warehouse,
        metric="checkout_conversion_rate",
        cohort="os=Android",
        start=start,
        end=start + timedelta(hours=4),
    )
    # localised inside the flagged cohort, nothing significant, no loss
    assert all(w["filters"].get("os") == "Android" for w in result["where"])
    assert not any(w["root_cause"] for w in result["where"])
    assert result["impact"]["lost_orders"] >= 0
    assert not any(h["kind"] == "deploy" and h["contribution"] > 0 for h in result["hypotheses"])


def test_rise_in_sessions_reports_no_lost_orders(warehouse):
    result = analyse_incident(
        warehouse, metric="sessions", cohort="all", start=INC_START, end=INC_END
    )
    assert result["funnel_step"] is None or isinstance(result["funnel_step"], str)
    assert result["impact"]["lost_orders"] >= 0


def test_late_start_still_blames_the_deploy_at_the_onset(tmp_path):
    """Detection flags a drop hours late: the deploy at the onset (T = INC_START - 5 min) must
    rank first, ahead of a later deploy of the same service (T + 4 h) nearer the given start."""
    path = tmp_path / "late.duckdb"
    _build(path)
    con = duckdb.connect(str(path))
    con.execute(
        "insert into marts.dim_deploys (deploy_id, deploy_time, service, version, description, "
        "deploy_hour) values ('d4', ?, 'payment-widget', '9.9.1', 'copy change', ?)",
        [INC_START + timedelta(hours=4), INC_START + timedelta(hours=4)],
    )
    con.close()
    con = duckdb.connect(str(path), read_only=True)
    try:
        start = INC_START + timedelta(hours=6)
        t0 = time.perf_counter()
        result = analyse_incident(
            con, metric="checkout_conversion_rate", cohort="all", start=start, end=INC_END
        )
        elapsed = time.perf_counter() - t0
        # with no lookback the onset is the given start: the later deploy is nearer
        blind = analyse_incident(
            con,
            metric="checkout_conversion_rate",
            cohort="all",
            start=start,
            end=INC_END,
            lookback_hours=0,
        )
    finally:
        con.close()
    json.dumps(result)
    assert result["window_start"] == start.isoformat()
    onset = datetime.fromisoformat(result["onset"])
    assert abs((onset - INC_START).total_seconds()) <= 3600  # estimated from the data
    assert result["where"][0]["filters"] == {
        "os": "iOS",
        "browser": "Safari",
        "utm_campaign": "ig_sale",
    }
    deploys = [h for h in result["hypotheses"] if h["kind"] == "deploy"]
    assert result["hypotheses"][0]["ref"] == "9.9.0" and deploys[0]["contribution"] > 0
    # a deploy 4 h after the onset cannot have started it: ruled out, with the reason
    assert "9.9.1" not in [h["ref"] for h in deploys]
    later = next(r for r in result["rejected_causes"] if r["ref"] == "9.9.1")
    assert "after the change began" in later["reason"]
    # the loss is counted from the onset, not from the late start
    assert result["impact"]["per_hour"][0]["event_hour"] == onset.isoformat()
    assert blind["onset"] == start.isoformat()
    assert blind["hypotheses"][0]["ref"] == "9.9.1"
    assert elapsed < 2.0


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"metric": "conversion_of_everything"}, "unknown metric"),
        ({"end": INC_START}, "empty window"),
        ({"start": T0 + timedelta(days=30), "end": T0 + timedelta(days=30, hours=2)}, "no data"),
        ({"start": INC_START.replace(tzinfo=None)}, "timezone-aware"),
        ({"cohort": "planet=Mars"}, "unknown dimension"),
    ],
)
def test_bad_requests_raise_clear_errors(warehouse, kwargs, message):
    args = {
        "metric": "checkout_conversion_rate",
        "cohort": "all",
        "start": INC_START,
        "end": INC_END,
        **kwargs,
    }
    with pytest.raises(ValueError, match=message):
        analyse_incident(warehouse, **args)


SEED42 = Path(__file__).resolve().parents[1] / "evaluation_runs" / "incidents-seed42"


@pytest.mark.skipif(
    not (SEED42 / "warehouse" / "funnelwatch.duckdb").exists(),
    reason="evaluation_runs/incidents-seed42 is absent (built by `make evaluate`)",
)
def test_seeded_ios_safari_incident_on_the_simulated_warehouse(tmp_path):
    copy = tmp_path / "seed42.duckdb"  # never open an evaluation warehouse in place
    shutil.copy(SEED42 / "warehouse" / "funnelwatch.duckdb", copy)
    con = duckdb.connect(str(copy), read_only=True)
    try:
        result = analyse_incident(
            con,
            metric="checkout_conversion_rate",
            cohort="all",
            start=datetime(2026, 11, 21, 14, tzinfo=UTC),
            end=datetime(2026, 11, 24, 14, tzinfo=UTC),
        )
    finally:
        con.close()
    assert result["where"][0]["filters"] == {
        "os": "iOS",
        "browser": "Safari",
        "utm_campaign": "ig_sale",
    }
    first = result["hypotheses"][0]
    assert (first["kind"], first["ref"], first["service"]) == ("deploy", "1.14.0", "payment-widget")
    assert result["funnel_step"] == "review_step"
    assert result["impact"]["lost_orders"] > 0


def test_score_rca_matches_where_and_cause_by_the_label_rules():
    from funnelwatch.evaluation.rca_accuracy import markdown_section, score_rca

    truth = {
        "id": "ios",
        "type": "cohort_checkout_drop",
        "magnitude": -0.18,
        "cohort": {"os": "iOS", "browser": "Safari", "utm_campaign": "ig_sale"},
        "cause": {"type": "deploy", "ref": "1.14.0", "service": "payment-widget"},
        "drop_after": "payment",
    }
    hit = {
        "where": [
            {
                "cohort": "browser=Safari&utm_campaign=ig_sale",
                "filters": {"browser": "Safari", "utm_campaign": "ig_sale"},
            },
            {
                "cohort": "browser=Safari&os=iOS&utm_campaign=ig_sale",
                "filters": {"utm_campaign": "ig_sale", "os": "iOS", "browser": "Safari"},
            },
        ],
        "hypotheses": [{"kind": "deploy", "ref": "1.14.0"}],
        "funnel_step": "review_step",
    }
    stock = {
        "id": "s",
        "type": "stock_out",
        "magnitude": -1.0,
        "cohort": {"category": "electronics"},
        "cause": {"type": "stock", "ref": "electronics"},
    }
    miss = {
        "where": [{"cohort": "all", "filters": {}}],
        "hypotheses": [{"kind": "deploy", "ref": "electronics"}],
        "funnel_step": None,
    }
    scores = score_rca([(truth, hit), (stock, miss)])
    a, b = scores["rows"]
    assert (a["where_rank"], a["cause_rank"], a["step_truth"], a["step_answer"]) == (
        2,
        1,
        "review_step",
        "review_step",
    )
    assert (b["where_rank"], b["cause_rank"], b["cause_truth"]) == (
        None,
        None,
        "stock_out:electronics",
    )
    o = scores["overall"]
    assert (o["n"], o["where_top1"], o["where_top3"], o["cause_top1"]) == (2, 0.0, 0.5, 0.5)
    assert "| all business incidents | 2 |" in markdown_section(scores)


def test_incident_root_cause_is_localised_from_the_store_down(warehouse):
    """The incident layer asks from the whole store first, so a narrow flagged cohort does
    not fence the answer in; an incompatible store-wide answer falls back to the cohort."""
    from funnelwatch.incidents.lifecycle import localise_top_down

    narrow = "os=iOS&browser=Safari&utm_campaign=ig_sale&country=US"
    result = localise_top_down(warehouse, analyse_incident, "checkout_conversion_rate", narrow,
                               INC_START, INC_END)
    assert result["scope"] == "store"
    assert result["where"][0]["cohort"] == "browser=Safari&os=iOS&utm_campaign=ig_sale"
    elsewhere = localise_top_down(warehouse, analyse_incident, "checkout_conversion_rate",
                                  "os=Android", INC_START, INC_END)
    assert elsewhere["scope"] == "flagged cohort"


def test_localised_cohorts_below_the_minimum_size_are_masked(warehouse):
    from funnelwatch.incidents.masking import cohort_sessions, mask_small_cohorts

    result = analyse_incident(warehouse, metric="checkout_conversion_rate", cohort="all",
                              start=INC_START, end=INC_END)
    top = result["where"][0]
    size = cohort_sessions(warehouse, top["filters"], INC_START, INC_END)
    assert size > 0
    kept = mask_small_cohorts(warehouse, json.loads(json.dumps(result)), INC_START, INC_END,
                              minimum=int(size))
    assert kept["where"][0]["cohort"] == top["cohort"]
    masked = mask_small_cohorts(warehouse, json.loads(json.dumps(result)), INC_START, INC_END,
                                minimum=int(size) + 1)
    first = masked["where"][0]
    assert first["cohort"] == f"(cohort of fewer than {int(size) + 1} sessions)"
    assert first["filters"] == {} and first["actual"] is None and first["masked"]
    assert "ig_sale" not in json.dumps(masked["where"][0]) + json.dumps(masked["funnel"])
    assert cohort_sessions(warehouse, {"category": "electronics"}, INC_START, INC_END) is None


def test_one_problem_seen_through_many_series_is_one_incident(tmp_path):
    """Localise, then group: the iOS Safari x ig_sale review-step break flagged as five
    series (the store's checkout conversion, iOS, the campaign, a country inside the cohort)
    is one incident at the localised cohort with the others as its symptoms; an Android point
    of the same hour, which the localisation does not explain, is a second incident. Grouped
    by their own cohorts alone (no localiser), the store-wide point pulls the Android point
    into the campaign's incident and the iOS symptom opens one of its own."""
    from funnelwatch.detection.store import replace_window
    from funnelwatch.incidents.lifecycle import process_window
    from funnelwatch.incidents.rca import cohort_closures, explain_points

    path = tmp_path / "funnelwatch.duckdb"
    _build(path, review_factor=0.1)
    flagged = [("checkout_conversion_rate", "utm_campaign=ig_sale", 80.0),
               ("review_step_rate", "os=iOS", 70.0),
               ("review_step_rate", "browser=Safari&country=US&os=iOS&utm_campaign=ig_sale", 65.0),
               ("checkout_conversion_rate", "all", 60.0),
               ("checkout_conversion_rate", "os=Android", 55.0)]
    con = duckdb.connect(str(path))
    try:
        con.execute("SET TimeZone = 'UTC'")
        for h in range(2):
            hour = INC_START + timedelta(hours=h)
            replace_window(con, hour, hour + timedelta(hours=1), pd.DataFrame([
                {"event_hour": hour, "metric": m, "cohort": c, "value": 0.3, "expected": 0.5,
                 "lower": 0.45, "upper": 0.55, "severity": sev, "direction": "down",
                 "is_anomaly": True} for m, c, sev in flagged]))
        process_window(con, INC_START, INC_START + timedelta(hours=2),
                       localise=explain_points, closures=cohort_closures)
        incidents = con.execute(
            "SELECT incident_id, localised_cohort, cohort, anomaly_count, title "
            "FROM incidents.incidents ORDER BY anomaly_count DESC").fetchall()
        assert len(incidents) == 2, incidents
        main, other = incidents
        assert main[1] == "browser=Safari&os=iOS&utm_campaign=ig_sale"
        assert main[3] == 8 and "browser=Safari&os=iOS&utm_campaign=ig_sale" in main[4]
        symptoms = {tuple(r) for r in con.execute(
            "SELECT DISTINCT metric, cohort FROM incidents.members WHERE incident_id = $i",
            {"i": main[0]}).fetchall()}
        assert symptoms == {(m, c) for m, c, _ in flagged[:4]}
        # the report (and so `funnelwatch incident ID` and the page) lists them under it
        from funnelwatch.incidents.report import build_report

        row = con.execute("SELECT * FROM incidents.incidents WHERE incident_id = $i",
                          {"i": main[0]}).df().to_dict("records")[0]
        section = next(x for x in build_report(con, row).sections
                       if x.title.startswith("Symptoms"))
        assert sorted((r[0], r[1], r[2]) for r in section.table.rows) == sorted(
            (m, c, "2") for m, c, _ in flagged[:4])
        assert other[2] == "os=Android" and other[1] is None and other[3] == 2
        # the same points grouped without a localiser, by their own cohorts: the iOS symptom
        # is an incident of its own, and the Android point is pulled into the campaign's
        # through the store-wide point (two wrong answers the localisation avoids)
        con.execute("DROP SCHEMA incidents CASCADE")
        process_window(con, INC_START, INC_START + timedelta(hours=2))
        owner = {(m, c): i for i, m, c in con.execute(
            "SELECT incident_id, metric, cohort FROM incidents.members").fetchall()}
        campaign = owner[("checkout_conversion_rate", "utm_campaign=ig_sale")]
        assert owner[("review_step_rate", "os=iOS")] != campaign
        assert owner[("checkout_conversion_rate", "os=Android")] == campaign
    finally:
        con.close()


def test_a_slow_drop_is_localised_over_the_hours_of_evidence_behind_its_flag(tmp_path):
    """A 20% review-step drop in iOS Safari x ig_sale: no single hour shows where it is, six
    pooled hours do. The sequential test flags `os=iOS` after six hours (window_hours 6); the
    incident is localised, and its root cause analysed, over those six hours."""
    from funnelwatch.detection.store import replace_window
    from funnelwatch.incidents.lifecycle import process_hour
    from funnelwatch.incidents.rca import (
        analyse_incident,
        cohort_closures,
        explain_points,
        localise_change,
    )

    path = tmp_path / "funnelwatch.duckdb"
    _build(path, review_factor=0.8)
    hour = INC_START + timedelta(hours=5)
    con = duckdb.connect(str(path))
    try:
        con.execute("SET TimeZone = 'UTC'")
        assert localise_change(con, metric="review_step_rate", start=hour,
                               end=hour + timedelta(hours=1)) == []
        replace_window(con, hour, hour + timedelta(hours=1), pd.DataFrame([
            {"event_hour": hour, "metric": "review_step_rate", "cohort": "os=iOS", "value": 0.7,
             "expected": 0.8, "lower": 0.75, "upper": 0.85, "severity": 60.0,
             "direction": "down", "is_anomaly": True, "window_hours": 6.0}]))
        process_hour(con, hour, localise=explain_points, closures=cohort_closures, analyse=analyse_incident)
        where, started, rca = con.execute(
            "SELECT localised_cohort, started_at, rca FROM incidents.incidents").fetchone()
        assert where == "browser=Safari&os=iOS&utm_campaign=ig_sale"
        assert started == hour  # opened when flagged; analysed from its evidence
        assert json.loads(rca)["window_start"] == (hour - timedelta(hours=5)).isoformat()
    finally:
        con.close()


def test_incidents_whose_root_cause_is_the_same_are_merged(tmp_path):
    """Root cause drives grouping after the analysis too: the iOS Safari x ig_sale review-step
    break flagged in `utm_campaign=ig_sale` and in `os=iOS&browser=Safari` (overlapping, not
    nested by name) opens two incidents when nothing localises the points; both analyses name
    the same deploy for the same where, so they are one incident with both as symptoms."""
    from funnelwatch.detection.store import replace_window
    from funnelwatch.incidents.lifecycle import process_hour
    from funnelwatch.incidents.rca import cohort_closures

    path = tmp_path / "funnelwatch.duckdb"
    _build(path, review_factor=0.1)
    flagged = [("checkout_conversion_rate", "utm_campaign=ig_sale", 80.0),
               ("review_step_rate", "os=iOS&browser=Safari", 70.0)]
    con = duckdb.connect(str(path))
    try:
        con.execute("SET TimeZone = 'UTC'")
        replace_window(con, INC_START, INC_START + timedelta(hours=1), pd.DataFrame([
            {"event_hour": INC_START, "metric": m, "cohort": c, "value": 0.3, "expected": 0.5,
             "lower": 0.45, "upper": 0.55, "severity": sev, "direction": "down",
             "is_anomaly": True} for m, c, sev in flagged]))
        result = process_hour(con, INC_START)  # no analysis: two incidents
        assert len(result.opened) == 2
        con.execute("DROP SCHEMA incidents CASCADE")
        result = process_hour(con, INC_START, analyse=analyse_incident, closures=cohort_closures)
        rows = con.execute("SELECT incident_id, where_cohort, top_cause, anomaly_count "
                           "FROM incidents.incidents").fetchall()
        assert len(rows) == 1, rows
        assert rows[0][1] == "browser=Safari&os=iOS&utm_campaign=ig_sale"
        assert rows[0][2] == "deploy payment-widget 9.9.0" and rows[0][3] == 2
        assert result.touched == [rows[0][0]]
        timeline = con.execute("SELECT detail FROM incidents.timeline WHERE kind = 'updated'"
                               ).fetchall()
        assert any("absorbed" in d for (d,) in timeline)
    finally:
        con.close()


def test_a_problem_flagged_again_after_it_resolved_reopens_its_incident(tmp_path):
    """A slow drop's flags pause for the recovery hours and come back in another series: the
    new incident's analysis names the same deploy for a nested where, so the resolved incident
    absorbs it and re-opens (one problem, one incident, paged again under a fresh key)."""
    from funnelwatch.detection.store import replace_window
    from funnelwatch.incidents.lifecycle import IncidentPolicy, process_hour
    from funnelwatch.incidents.rca import cohort_closures

    path = tmp_path / "funnelwatch.duckdb"
    _build(path, review_factor=0.1)
    first = ("review_step_rate", "os=iOS&browser=Safari")

    def row(at, metric, cohort, flagged):
        return {"event_hour": at, "metric": metric, "cohort": cohort,
                "value": 0.3 if flagged else 0.5, "expected": 0.5, "lower": 0.45,
                "upper": 0.55, "severity": 70.0 if flagged else 0.0,
                "direction": "down" if flagged else "none", "is_anomaly": flagged}

    policy = IncidentPolicy(recovery_hours=3, reopen_hours=6)
    con = duckdb.connect(str(path))
    try:
        con.execute("SET TimeZone = 'UTC'")
        for n in range(5):
            at = INC_START + timedelta(hours=n)
            rows = [row(at, *first, flagged=n == 0)]
            if n == 4:
                rows.append(row(at, "checkout_conversion_rate", "utm_campaign=ig_sale", True))
            replace_window(con, at, at + timedelta(hours=1), pd.DataFrame(rows))
            result = process_hour(con, at, policy, analyse=analyse_incident,
                                  closures=cohort_closures)
            if n == 3:
                assert len(result.resolved) == 1
        rows = con.execute("SELECT incident_id, state, alert_key, anomaly_count, top_cause "
                           "FROM incidents.incidents").fetchall()
        assert len(rows) == 1, rows
        inc_id, state, alert_key, count, cause = rows[0]
        assert state == "open" and alert_key == f"{inc_id}-r1" and count == 2
        assert cause == "deploy payment-widget 9.9.0"
        assert result.reopened == [inc_id]
        kinds = [k for (k,) in con.execute(
            "SELECT kind FROM incidents.timeline WHERE incident_id = $i ORDER BY event_time, "
            "recorded_at", {"i": inc_id}).fetchall()]
        assert kinds[:2] == ["opened", "resolved"] and "reopened" in kinds
    finally:
        con.close()


def test_a_new_deploy_during_an_incident_is_a_new_problem_when_root_cause_names_it(tmp_path):
    """Back-to-back releases of one service: payment-widget 9.9.0 halves iOS Safari x ig_sale's
    review step from 12:00; 9.9.1 at 17:55 breaks the review step of every iOS visitor from
    18:00. The 18:00 points (os=iOS, around the open incident's cohort) would join the open
    incident; after a deploy that can move its step they open one of their own, and root cause
    keeps them apart: two problems, each with its own deploy."""
    from funnelwatch.detection.store import replace_window
    from funnelwatch.incidents.lifecycle import process_hour
    from funnelwatch.incidents.rca import cohort_closures

    path = tmp_path / "funnelwatch.duckdb"
    _build(path)
    second = INC_START + timedelta(hours=6)
    con = duckdb.connect(str(path))
    try:
        con.execute("SET TimeZone = 'UTC'")
        con.execute(
            "update marts.fct_funnel_hourly set "
            + ", ".join(f"{c} = round({c} * 0.2)" for c in FROM_REVIEW_STEP)
            + " where os = 'iOS' and event_hour >= ?", [second])
        con.execute(
            "insert into marts.dim_deploys (deploy_id, deploy_time, service, version, "
            "description, deploy_hour) values ('d4', ?, 'payment-widget', '9.9.1', "
            "'wallet button fix', ?)", [second - timedelta(minutes=5), second - timedelta(hours=1)])

        def flag(at, cohort):
            return {"event_hour": at, "metric": "review_step_rate", "cohort": cohort,
                    "value": 0.3, "expected": 0.9, "lower": 0.85, "upper": 0.95,
                    "severity": 70.0, "direction": "down", "is_anomaly": True}

        for n in range(9):
            at = INC_START + timedelta(hours=n)
            rows = [flag(at, "os=iOS&browser=Safari")]
            if at >= second:
                rows.append(flag(at, "os=iOS"))
            replace_window(con, at, at + timedelta(hours=1), pd.DataFrame(rows))
            process_hour(con, at, analyse=analyse_incident, closures=cohort_closures)
        rows = con.execute("SELECT started_at, top_cause FROM incidents.incidents "
                           "ORDER BY started_at").fetchall()
        assert [cause for _, cause in rows] == ["deploy payment-widget 9.9.0",
                                                "deploy payment-widget 9.9.1"], rows
        assert rows[1][0] == second
    finally:
        con.close()
