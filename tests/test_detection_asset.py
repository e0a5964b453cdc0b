"""The detection asset's mechanics on a real warehouse: every monitored series of the hour is
scored and written, re-runs replace, data-quality hours are skipped. (Whether the verdicts
are right is the evaluation's job, against the simulator's ground truth.)"""

from __future__ import annotations

import dagster as dg
import duckdb
import pandas as pd
import pytest

from funnelwatch.quality.incidents import record_outcomes
from funnelwatch.quality.suites import CheckOutcome
from tests.test_pipeline import _defs, _resources, _simulate

DAY = pd.Timestamp("2026-11-02", tz="UTC")


@pytest.mark.slow
def test_detection_scores_every_series_and_replaces_on_rerun(paths, dbt_manifest):
    _simulate(paths["landing"], days=3)
    job = _defs().resolve_job_def("hourly_pipeline")
    assert job.execute_in_process(
        instance=dg.DagsterInstance.ephemeral(), resources=_resources(paths),
        tags={"dagster/asset_partition_range_start": "2026-11-02-00:00",
              "dagster/asset_partition_range_end": "2026-11-04-23:00"},
    ).success
    # a data-quality incident covering one hour: detection must skip it
    con = duckdb.connect(str(paths["warehouse"]))
    record_outcomes(con, pd.Timestamp("2026-11-04 12:00:00+00"), [CheckOutcome(
        "events_completeness", False, "the hour was cut off", {})])
    con.close()

    detect = [a for a in _defs().assets if "cohort_anomalies" in {k.path[-1] for k in a.keys}]
    for _ in range(2):
        result = dg.materialize(detect, partition_key="2026-11-04-12:00",
                                resources=_resources(paths),
                                instance=dg.DagsterInstance.ephemeral())
        assert result.success
        result = dg.materialize(detect, partition_key="2026-11-04-13:00",
                                resources=_resources(paths),
                                instance=dg.DagsterInstance.ephemeral())
        assert result.success
    con = duckdb.connect(str(paths["warehouse"]), read_only=True)
    # the pipeline run scored every hour; the two re-materialised partitions were replaced
    per_hour = dict(con.execute("SELECT strftime(event_hour, '%H'), count(*) FROM "
                                "detection.anomalies WHERE event_hour IN "
                                "('2026-11-04 12:00:00+00', '2026-11-04 13:00:00+00') "
                                "GROUP BY 1").fetchall())
    (hours_scored,) = con.execute(
        "SELECT count(DISTINCT event_hour) FROM detection.anomalies").fetchone()
    (monitored,) = con.execute(
        "SELECT count(*) FROM marts.fct_cohort_metrics_hourly "
        "WHERE event_hour = '2026-11-04 13:00:00+00'").fetchone()
    nulls = con.execute("SELECT count(*) FROM detection.anomalies WHERE severity IS NULL").fetchone()[0]
    con.close()
    assert per_hour == {"13": monitored}  # 12:00 skipped; the rerun replaced, not appended
    assert hours_scored == 72 - 1  # hourly_pipeline detects too; 12:00 now has no rows
    assert nulls == 0
    meta = result.asset_materializations_for_node("cohort_anomalies")[0].metadata
    assert meta["series_scored"].value == monitored
    assert "top_10" in meta
