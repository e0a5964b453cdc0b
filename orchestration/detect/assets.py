"""Detect: score every monitored funnel and cohort series for the partition's hours."""

import base64
import io

import dagster as dg
import pandas as pd

from funnelwatch.detection.run import WindowResult, holidays_frame, score_window
from funnelwatch.detection.store import replace_window
from orchestration.partitions import hourly_partitions, single_run_backfill
from orchestration.resources import WAREHOUSE_POOL, WarehouseResource
from orchestration.settings import DetectionSettings
from orchestration.transform.assets import dbt_model_key

SEVERITY_BANDS = [(90, "critical"), (70, "major"), (50, "minor")]


def _band(severity: float) -> str:
    for floor, name in SEVERITY_BANDS:
        if severity >= floor:
            return name
    return "none"


def _chart_markdown(history: pd.DataFrame, title: str) -> str:
    """The worst series against its expected band, as an inline PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(8, 3), dpi=90)
    ax.fill_between(history["event_hour"], history["lower"], history["upper"], alpha=0.25,
                    label="expected band")
    ax.plot(history["event_hour"], history["expected"], linestyle="--", linewidth=1,
            label="expected")
    ax.plot(history["event_hour"], history["value"], linewidth=1.5, label="observed")
    flagged = history[history["is_anomaly"].fillna(False).astype(bool)]
    ax.scatter(flagged["event_hour"], flagged["value"], color="red", zorder=3, label="anomaly")
    ax.set_title(title, fontsize=9)
    ax.legend(fontsize=7, loc="best")
    fig.autofmt_xdate()
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", bbox_inches="tight")
    plt.close(fig)
    return f"![{title}](data:image/png;base64,{base64.b64encode(buffer.getvalue()).decode()})"


@dg.asset(
    group_name="detect",
    kinds={"python", "duckdb"},
    owners=["team:sre-oncall"],
    partitions_def=hourly_partitions,
    backfill_policy=single_run_backfill,
    pool=WAREHOUSE_POOL,
    deps=[
        dbt_model_key("fct_cohort_metrics_hourly"),
        dbt_model_key("dim_holidays"),
    ],
    description=(
        "Every monitored (metric, cohort) series scored for the partition's hours by the "
        "detector ensemble (a sequential test on counts; hour-of-week, EWMA, CUSUM and "
        "Prophet as context), and every other cohort of up to three dimensions by a subset "
        "scan over the leaf table, "
        "written to `detection.anomalies` with expected value, band, severity 0-100, "
        "direction and which detectors fired and why. Hours with an open data-quality "
        "incident are skipped."
    ),
)
def cohort_anomalies(
    context: dg.AssetExecutionContext,
    warehouse: WarehouseResource,
    detection: DetectionSettings,
) -> dg.MaterializeResult:
    window = context.partition_time_window
    with warehouse.get_connection() as con:
        holidays = holidays_frame(con)
        result = score_window(
            con, window.start, window.end, lambda: detection.make_ensemble(holidays),
            history_days=detection.history_days, cube_scan=detection.cube_scan,
            cube_scan_false_alarms_per_day=detection.cube_scan_false_alarms_per_day,
        )
        written = replace_window(con, window.start, window.end, result.scored)
    return dg.MaterializeResult(metadata=detection_metadata(result, written))


def detection_metadata(result: WindowResult, written: int) -> dict:
    """The materialization metadata of a scored window: counts, the anomalies by band, the
    top 10 and the worst series' chart."""
    scored = result.scored
    metadata = {
        "series_scored": dg.MetadataValue.int(result.series),
        "points_scored": dg.MetadataValue.int(written),
        "hours_skipped_for_data_quality": dg.MetadataValue.int(len(result.skipped_hours)),
        "prophet_models_fitted": dg.MetadataValue.int(result.prophet_fitted),
        "prophet_models_reused": dg.MetadataValue.int(result.prophet_reused),
        "prophet_models_saved": dg.MetadataValue.int(result.prophet_saved),
        "alerts_cleared_as_planned_or_dq_aftermath": dg.MetadataValue.int(result.planned_cleared),
        "alerts_cleared_by_incident_feedback": dg.MetadataValue.int(result.feedback_cleared),
        "cube_scan_alerts": dg.MetadataValue.int(result.scan_alerts),
    }
    if scored.empty:
        return metadata
    flagged = scored[scored["is_anomaly"].fillna(False).astype(bool)].copy()
    flagged["band"] = flagged["severity"].map(_band)
    counts = flagged["band"].value_counts()
    for _, name in SEVERITY_BANDS:
        metadata[f"anomalies_{name}"] = dg.MetadataValue.int(int(counts.get(name, 0)))
    top = flagged.sort_values("severity", ascending=False).head(10)
    columns = ["event_hour", "metric", "cohort", "value", "expected", "severity", "direction",
               "why"]
    metadata["top_10"] = dg.MetadataValue.md(
        top[columns].round({"value": 4, "expected": 4, "severity": 1}).to_markdown(index=False) if len(top) else "_no anomalies_"
    )
    if len(top):
        worst = top.iloc[0]
        series = scored[(scored["metric"] == worst["metric"])
                        & (scored["cohort"] == worst["cohort"])].sort_values("event_hour")
        metadata["worst_series_chart"] = dg.MetadataValue.md(
            _chart_markdown(series.tail(24 * 7), f"{worst['metric']} | {worst['cohort']}")
        )
    return metadata


assets = [cohort_anomalies]
