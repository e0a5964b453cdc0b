"""Great Expectations suites over one loaded hour: the data-quality gate of detection.

A broken hour (a tracking outage, a half-loaded hour, a field gone null, duplicated or
unknown events) must raise a data-quality incident, not page anyone as a business anomaly.
Each suite is validated by Great Expectations on a small frame computed in DuckDB (the
hour's events, or per-type counts against the same hour of previous weeks), so its evidence
is GE's own result. `great_expectations` takes ~10 s to import: it is imported inside
`run_suites`, never at module level.
"""

from __future__ import annotations

import functools
import os
from collections.abc import Iterator
from datetime import datetime, timedelta
from typing import Any

import duckdb
import pandas as pd

from funnelwatch.contract import EVENT_COLUMNS, EVENT_TYPES
from funnelwatch.landing import as_utc_hour
from funnelwatch.quality.outcomes import CheckOutcome, QualitySettings
from funnelwatch.quality.tracking import (
    TRACKING_LOSS_CHECK,
    TRACKING_LOSS_DESCRIPTION,
    tracking_loss_outcome,
)
from funnelwatch.verbosity import verbose
from funnelwatch.warehouse import (
    EVENTS_TABLE,
    INGEST_LOG_TABLE,
    LINEAGE_COLUMNS,
    REJECTED_FILES_TABLE,
)

DEFAULT_SETTINGS = QualitySettings()
# Session attributes that define cohorts: their null rate must stay low.
COHORT_FIELDS = ("device_type", "os", "browser", "country")


CHECK_DESCRIPTIONS = {
    "events_schema": "raw.events has exactly the contract's columns plus lineage columns.",
    "events_unique_event_id": "No event_id appears twice in the hour.",
    "events_accepted_event_types": "Every event_type is one of the contract's types.",
    "events_cohort_null_rates": "Cohort fields (device_type, os, browser, country) are "
    "null in at most 5% of the hour's events.",
    "events_volume_vs_previous_weeks": "Each event type's count is at least 0.4x the median "
    "of the same hour in the previous 4 weeks (types with a baseline of 50+): missing data. "
    "The funnel steps the tracking-loss check judges (product_view, add_to_cart, "
    "checkout_start) are left to it: one lost event is one tracking-loss incident.",
    "events_feed_present": "The hour has events when the loaded hours of the previous 7 days "
    "averaged 50+ events an hour: a day with no file or a feed that stopped is missing data.",
    "events_ingest_rejections": "Ingest quarantined at most 1% of the hour's landed rows and "
    "dropped at most 1% as duplicate event_ids (raw.ingest_log).",
    "events_completeness": "With 500+ events expected, events reach the hour's last 15 "
    "minutes (a half-loaded or cut-off hour fails).",
    TRACKING_LOSS_CHECK: TRACKING_LOSS_DESCRIPTION,
    "events_unreadable_files": "Every landing file of the hour could be read: a file that "
    "could not (a CSV named .parquet, a truncated write) was set aside and its events are "
    "missing from the hour (raw.rejected_files).",
}
CHECK_NAMES = tuple(CHECK_DESCRIPTIONS)


@functools.cache
def _gx_batch_definition():
    """One ephemeral GX context and pandas batch definition per process. Building them for
    every validation (9 per hour, thousands in a 14-day backfill) was most of the checks'
    time. GE's per-validation progress bars are off unless `funnelwatch --verbose`."""
    os.environ.setdefault("GX_ANALYTICS_ENABLED", "false")  # no network here
    import great_expectations as gx
    from great_expectations.data_context.types.base import ProgressBarsConfig

    context = gx.get_context(mode="ephemeral")
    if not verbose():
        context.variables.progress_bars = ProgressBarsConfig(globally=False)
    return (
        context.data_sources.add_pandas("warehouse")
        .add_dataframe_asset("frame")
        .add_batch_definition_whole_dataframe("hour")
    )


def _gx_validate(frame: pd.DataFrame, expectations: list) -> list:
    """Validate `frame` against `expectations` (GE's own results, with their evidence)."""
    import great_expectations as gx

    batch = _gx_batch_definition().get_batch(batch_parameters={"dataframe": frame})
    suite = gx.ExpectationSuite(name="funnelwatch_hour")
    for expectation in expectations:
        suite.add_expectation(expectation)
    return list(batch.validate(suite).results)


def _evidence(result) -> dict[str, Any]:
    keep = ("observed_value", "element_count", "unexpected_count", "unexpected_percent",
            "partial_unexpected_list")
    out = {"expectation": result.expectation_config.type}
    out.update({k: result.result[k] for k in keep if result.result.get(k) is not None})
    kwargs = result.expectation_config.kwargs
    out.update({k: kwargs[k] for k in ("column", "mostly", "min_value", "max_value") if k in kwargs})
    if "partial_unexpected_list" in out:
        out["partial_unexpected_list"] = [str(v) for v in out["partial_unexpected_list"][:10]]
    return out


def _previous_week_counts(con, hour: datetime, weeks: int) -> pd.DataFrame:
    hours = [hour - timedelta(weeks=w) for w in range(1, weeks + 1)]
    return con.execute(
        f"""SELECT event_type, median(n) AS baseline, count(*) AS weeks_seen FROM (
              SELECT event_hour, event_type, count(*) AS n FROM {EVENTS_TABLE}
              WHERE event_hour IN (SELECT unnest($hours::TIMESTAMPTZ[]))
              GROUP BY ALL)
            GROUP BY event_type""",
        {"hours": hours},
    ).df()


def run_suites(
    con: duckdb.DuckDBPyConnection,
    hour: datetime | str,
    settings: QualitySettings = DEFAULT_SETTINGS,
) -> list[CheckOutcome]:
    """Validate one loaded hour of raw.events. Reads only; the caller records the outcome."""
    return _hour_outcomes(con, as_utc_hour(hour), settings, _schema_outcome(con))


def run_suites_over(
    con: duckdb.DuckDBPyConnection,
    hours: list[datetime],
    settings: QualitySettings = DEFAULT_SETTINGS,
) -> Iterator[tuple[datetime, list[CheckOutcome]]]:
    """(hour, outcomes) of `run_suites` for each hour. The table's schema is one for every
    hour, so it is validated once, not once per hour."""
    schema = _schema_outcome(con)
    for hour in hours:
        yield hour, _hour_outcomes(con, as_utc_hour(hour), settings, schema)


def _schema_outcome(con: duckdb.DuckDBPyConnection) -> CheckOutcome:
    """raw.events' columns (a one-row frame of column names is what GE sees)."""
    import great_expectations as gx

    columns = [r[0] for r in con.execute(
        "SELECT column_name FROM information_schema.columns WHERE table_schema = 'raw' "
        "AND table_name = 'events' ORDER BY ordinal_position").fetchall()]
    expected_columns = list(EVENT_COLUMNS) + [name for name, _, _ in LINEAGE_COLUMNS]
    (schema,) = _gx_validate(
        pd.DataFrame(columns=columns),
        [gx.expectations.ExpectTableColumnsToMatchOrderedList(column_list=expected_columns)],
    )
    return CheckOutcome("events_schema", schema.success, CHECK_DESCRIPTIONS["events_schema"],
                        _evidence(schema))


def _hour_outcomes(
    con: duckdb.DuckDBPyConnection,
    hour: datetime,
    settings: QualitySettings,
    schema: CheckOutcome,
) -> list[CheckOutcome]:
    import great_expectations as gx

    events = con.execute(
        f"SELECT event_id, event_type, event_time, {', '.join(COHORT_FIELDS)} "
        f"FROM {EVENTS_TABLE} WHERE event_hour = $h",
        {"h": hour},
    ).df()
    outcomes: list[CheckOutcome] = [schema]

    row_results = _gx_validate(
        events,
        [
            gx.expectations.ExpectColumnValuesToBeUnique(column="event_id"),
            gx.expectations.ExpectColumnValuesToBeInSet(
                column="event_type", value_set=list(EVENT_TYPES)),
            *[
                gx.expectations.ExpectColumnValuesToNotBeNull(
                    column=c, mostly=1 - settings.max_cohort_null_rate)
                for c in COHORT_FIELDS
            ],
        ],
    )
    unique, types, *nulls = row_results
    outcomes.append(CheckOutcome("events_unique_event_id", unique.success,
                                 CHECK_DESCRIPTIONS["events_unique_event_id"], _evidence(unique)))
    outcomes.append(CheckOutcome("events_accepted_event_types", types.success,
                                 CHECK_DESCRIPTIONS["events_accepted_event_types"],
                                 _evidence(types)))
    outcomes.append(CheckOutcome(
        "events_cohort_null_rates", all(r.success for r in nulls),
        CHECK_DESCRIPTIONS["events_cohort_null_rates"],
        {"fields": {c: _evidence(r) for c, r in zip(COHORT_FIELDS, nulls)},
         "events": len(events)},
    ))

    # volume per event type against the same hour of previous weeks; the funnel steps the
    # tracking-loss check judged are its to judge (against their neighbours and the later
    # steps), or one lost event would also be a second, data_quality incident
    tracking = tracking_loss_outcome(con, hour, settings)
    deferred = sorted(tracking.evidence.get("judged", []))
    baseline = _previous_week_counts(con, hour, settings.volume_weeks)
    counts = events.groupby("event_type").size().rename("observed").reset_index()
    volume = baseline.merge(counts, on="event_type", how="left").fillna({"observed": 0})
    volume = volume[(volume["baseline"] >= settings.volume_min_baseline)
                    & ~volume["event_type"].isin(deferred)].copy()
    volume["ratio"] = volume["observed"] / volume["baseline"]
    if volume.empty:
        outcomes.append(CheckOutcome(
            "events_volume_vs_previous_weeks", True,
            CHECK_DESCRIPTIONS["events_volume_vs_previous_weeks"],
            {"note": "no previous weeks with enough volume yet (cold start): not checked",
             "deferred_to_tracking_loss": deferred}))
    else:
        (ratio,) = _gx_validate(volume, [gx.expectations.ExpectColumnValuesToBeBetween(
            column="ratio", min_value=settings.volume_min_ratio)])
        evidence = _evidence(ratio)
        evidence["by_event_type"] = volume.round(3).to_dict(orient="records")
        evidence["deferred_to_tracking_loss"] = deferred
        outcomes.append(CheckOutcome("events_volume_vs_previous_weeks", ratio.success,
                                     CHECK_DESCRIPTIONS["events_volume_vs_previous_weeks"],
                                     evidence))

    outcomes.append(feed_presence_outcome(con, hour, len(events), settings))

    # Two one-row checks, validated by GE in one call (a call costs more than its rows):
    # ingest's own accounting (rows that broke the contract or came twice) and completeness
    # (a busy hour whose events stop early was cut off or half loaded).
    log = con.execute(
        f"""SELECT rows_in, rows_quarantined, duplicates_dropped FROM {INGEST_LOG_TABLE}
            WHERE event_hour = $h ORDER BY ingested_at DESC LIMIT 1""",
        {"h": hour},
    ).df()
    check_rejections = not (log.empty or int(log["rows_in"].iloc[0]) == 0)
    expected_events = float(baseline["baseline"].sum()) if not baseline.empty else 0.0
    check_completeness = expected_events >= settings.completeness_min_events
    one_row: dict[str, list[float]] = {}
    expectations = []
    if check_rejections:
        rows_in = int(log["rows_in"].iloc[0])
        one_row["quarantined_share"] = [int(log["rows_quarantined"].iloc[0]) / rows_in]
        one_row["duplicate_share"] = [int(log["duplicates_dropped"].iloc[0]) / rows_in]
        expectations += [
            gx.expectations.ExpectColumnValuesToBeBetween(
                column=c, min_value=0, max_value=settings.max_rejected_share)
            for c in ("quarantined_share", "duplicate_share")]
    if check_completeness:
        one_row["minute_of_hour"] = [
            (pd.Timestamp(events["event_time"].max()) - pd.Timestamp(hour)).total_seconds() / 60
            if len(events) else 0.0]
        expectations.append(gx.expectations.ExpectColumnMaxToBeBetween(
            column="minute_of_hour", min_value=60 - settings.completeness_last_minutes,
            max_value=60))
    results = _gx_validate(pd.DataFrame(one_row), expectations) if expectations else []

    if not check_rejections:
        outcomes.append(CheckOutcome(
            "events_ingest_rejections", True, CHECK_DESCRIPTIONS["events_ingest_rejections"],
            {"note": "no ingest of this hour with rows"}))
    else:
        rejected, results = results[:2], results[2:]
        evidence = {
            "rows_in": int(log["rows_in"].iloc[0]),
            "rows_quarantined": int(log["rows_quarantined"].iloc[0]),
            "duplicates_dropped": int(log["duplicates_dropped"].iloc[0]),
            "quarantined_share": round(one_row["quarantined_share"][0], 4),
            "duplicate_share": round(one_row["duplicate_share"][0], 4),
            "max_share": settings.max_rejected_share,
        }
        outcomes.append(CheckOutcome("events_ingest_rejections",
                                     all(r.success for r in rejected),
                                     CHECK_DESCRIPTIONS["events_ingest_rejections"], evidence))

    # files ingest could not read and set aside: the hour is missing their events
    outcomes.append(_unreadable_files_outcome(con, hour))

    if not check_completeness:
        outcomes.append(CheckOutcome(
            "events_completeness", True, CHECK_DESCRIPTIONS["events_completeness"],
            {"note": f"expected volume {expected_events:.0f} is below "
                     f"{settings.completeness_min_events}: not checked"}))
    else:
        (last,) = results
        outcomes.append(CheckOutcome("events_completeness", last.success,
                                     CHECK_DESCRIPTIONS["events_completeness"], _evidence(last)))

    outcomes.append(tracking)
    return outcomes


def _unreadable_files_outcome(con: duckdb.DuckDBPyConnection, hour: datetime) -> CheckOutcome:
    recorded = con.execute(
        "SELECT count(*) FROM information_schema.tables WHERE table_schema = 'raw' "
        "AND table_name = 'rejected_files'").fetchone()[0]
    if not recorded:  # a warehouse no ingest of this version has written yet
        return CheckOutcome("events_unreadable_files", True,
                            CHECK_DESCRIPTIONS["events_unreadable_files"],
                            {"note": "no ingest has recorded files yet"})
    rejected = con.execute(
        f"SELECT file, line, reason FROM {REJECTED_FILES_TABLE} WHERE event_hour = $h "
        "ORDER BY file",
        {"h": hour},
    ).fetchall()
    files = [{"file": f, "line": line, "reason": reason} for f, line, reason in rejected]
    evidence: dict = {"files": files}
    if files:
        # The incident's summary names the files (quality.incidents.record_outcomes).
        evidence["headline"] = "unreadable files set aside: " + "; ".join(
            f"{f['file']}" + (f" line {f['line']}" if f["line"] is not None else "")
            + f" ({f['reason']})" for f in files)
    return CheckOutcome("events_unreadable_files", not files,
                        CHECK_DESCRIPTIONS["events_unreadable_files"], evidence)


def feed_presence_outcome(
    con: duckdb.DuckDBPyConnection,
    hour: datetime,
    events_in_hour: int,
    settings: QualitySettings = DEFAULT_SETTINGS,
) -> CheckOutcome:
    """An empty hour of a store that was sending events: missing data. The same hour of earlier
    weeks may be missing too (or not loaded yet), so the recent days are the reference."""
    description = CHECK_DESCRIPTIONS["events_feed_present"]
    if events_in_hour:
        return CheckOutcome("events_feed_present", True, description,
                            {"events": events_in_hour})
    hours, events = con.execute(
        f"""SELECT count(DISTINCT event_hour), count(*) FROM {EVENTS_TABLE}
            WHERE event_hour >= $s AND event_hour < $h""",
        {"s": hour - timedelta(days=7), "h": hour},
    ).fetchone()
    per_hour = events / hours if hours else 0.0
    evidence = {"events": 0, "recent_hours_with_events": hours,
                "recent_events_per_hour": round(per_hour, 1),
                "min_events_per_hour": settings.volume_min_baseline}
    return CheckOutcome("events_feed_present", per_hour < settings.volume_min_baseline,
                        description, evidence)