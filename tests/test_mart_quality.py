"""The cohort metrics mart's suite (Great Expectations) on hand-built hours with known faults,
and its outcome joining the hour's data-quality incident."""

from datetime import UTC, datetime, timedelta

import duckdb
import pytest

from funnelwatch.quality.incidents import failed_hours, record_outcomes
from funnelwatch.quality.mart_suites import run_mart_suites

HOUR = datetime(2026, 11, 20, 14, tzinfo=UTC)
WEEK_BEFORE = HOUR - timedelta(weeks=1)


@pytest.fixture
def con(tmp_path):
    con = duckdb.connect(str(tmp_path / "w.duckdb"))
    con.execute("CREATE SCHEMA raw; CREATE SCHEMA marts")
    con.execute("CREATE TABLE raw.events (event_hour TIMESTAMPTZ, session_id VARCHAR)")
    con.execute("""CREATE TABLE marts.fct_cohort_metrics_hourly (event_hour TIMESTAMPTZ,
                   metric VARCHAR, cohort VARCHAR, numerator DOUBLE, denominator DOUBLE,
                   value DOUBLE)""")
    for hour in (WEEK_BEFORE, HOUR):
        con.execute("INSERT INTO raw.events SELECT $h, 's' || i FROM range(100) t(i)", {"h": hour})
        con.execute("""INSERT INTO marts.fct_cohort_metrics_hourly VALUES
            ($h, 'sessions', 'all', 100, NULL, 100), ($h, 'sessions', 'os=iOS', 40, NULL, 40),
            ($h, 'sessions', 'os=Android', 60, NULL, 60),
            ($h, 'checkout_conversion_rate', 'all', 5, 10, 0.5)""", {"h": hour})
    return con


def _failed(con):
    return {o.name for o in run_mart_suites(con, HOUR) if not o.passed}


def test_a_whole_hour_passes(con):
    assert _failed(con) == set()


def test_half_built_hour_and_impossible_rates_and_lost_cohorts_fail(con):
    con.execute("UPDATE marts.fct_cohort_metrics_hourly SET value = 50, numerator = 50 "
                "WHERE event_hour = $h AND metric = 'sessions' AND cohort = 'all'", {"h": HOUR})
    assert _failed(con) == {"cohort_metrics_reconcile_sessions"}
    con.execute("UPDATE marts.fct_cohort_metrics_hourly SET numerator = 12, value = 1.2 "
                "WHERE event_hour = $h AND metric = 'checkout_conversion_rate'", {"h": HOUR})
    con.execute("DELETE FROM marts.fct_cohort_metrics_hourly "
                "WHERE event_hour = $h AND cohort = 'os=Android'", {"h": HOUR})
    assert _failed(con) == {"cohort_metrics_reconcile_sessions", "cohort_metrics_rates_valid",
                            "cohort_metrics_cohort_coverage"}


def test_mart_failures_join_the_hours_incident_without_erasing_the_events_results(con):
    from funnelwatch.quality.suites import CheckOutcome

    events_ok = [CheckOutcome("events_schema", True, "schema")]
    assert record_outcomes(con, HOUR, events_ok) is None
    con.execute("DELETE FROM raw.events WHERE event_hour = $h AND session_id < 's5'", {"h": HOUR})
    incident = record_outcomes(con, HOUR, run_mart_suites(con, HOUR))
    assert incident == "dq-2026112014"
    assert HOUR in failed_hours(con, HOUR, HOUR + timedelta(hours=1))
    names = {r[0] for r in con.execute("SELECT check_name FROM quality.check_results").fetchall()}
    assert "events_schema" in names and "cohort_metrics_reconcile_sessions" in names
    # fixed and re-checked: the incident resolves
    con.execute("UPDATE marts.fct_cohort_metrics_hourly SET value = (SELECT count(DISTINCT "
                "session_id) FROM raw.events WHERE event_hour = $h) WHERE event_hour = $h AND "
                "metric = 'sessions' AND cohort = 'all'", {"h": HOUR})
    assert record_outcomes(con, HOUR, run_mart_suites(con, HOUR)) is None
    assert failed_hours(con, HOUR, HOUR + timedelta(hours=1)) == set()
