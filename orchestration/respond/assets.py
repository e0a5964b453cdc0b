"""Respond: anomalies -> incidents (with root cause, impact and a report) -> alerts.

Both assets are launched by `anomalies_sensor` for each newly scored hour (see sensors.py)
and by `funnelwatch run` after a backfill. They take the hours of their partition in order:
incident state depends on it.
"""

from datetime import UTC, datetime, timedelta

import dagster as dg
import pandas as pd

from orchestration.detect.assets import cohort_anomalies
from orchestration.partitions import hourly_partitions, single_run_backfill
from orchestration.resources import WAREHOUSE_POOL, WarehouseResource
from orchestration.respond.resources import AlertingSettings, IncidentSettings

INCIDENT_TABLE_COLUMNS = ["incident_id", "state", "severity", "started_at", "metric",
                          "where_cohort", "funnel_step", "top_cause", "lost_orders",
                          "revenue_at_risk"]


def _window_days(window) -> list:
    days, day = [], window.start.date()
    while day <= (window.end - timedelta(microseconds=1)).date():
        days.append(day)
        day += timedelta(days=1)
    return days


def _incident_table(frame: pd.DataFrame) -> str:
    if frame.empty:
        return "_none_"
    shown = frame[INCIDENT_TABLE_COLUMNS].copy()
    return shown.round({"severity": 0, "lost_orders": 1, "revenue_at_risk": 0}).to_markdown(
        index=False)


@dg.asset(
    group_name="respond",
    kinds={"python", "duckdb"},
    owners=["team:sre-oncall"],
    partitions_def=hourly_partitions,
    backfill_policy=single_run_backfill,
    pool=WAREHOUSE_POOL,
    deps=[cohort_anomalies],
    description=(
        "Anomalies of the partition's hours grouped into incidents (`incidents.incidents`, "
        "`incidents.members`, `incidents.timeline`): the partition's anomalies are localised "
        "first (where the store's metric changed) and those of the same or nested localised "
        "cohort within a few hours are one incident with a stable id, severity and state "
        "(open, acknowledged, resolved after the localised cohort recovers). Each changed incident gets its root cause "
        "(where, which funnel step, ranked hypotheses: deploys, campaigns, JS errors, payment "
        "providers), its impact (lost orders, revenue at risk) and a Markdown/HTML report. "
        "Feedback and incident-page actions queued by people (CLI, HTTP) are applied first; "
        "afterwards the incident tables are published to the analyst snapshot, which the "
        "incident page (`funnelwatch serve`) reads."
    ),
)
def incidents(
    context: dg.AssetExecutionContext,
    warehouse: WarehouseResource,
    incident_settings: IncidentSettings,
) -> dg.MaterializeResult:
    from funnelwatch.incidents.feedback import ingest_spool
    from funnelwatch.incidents.lifecycle import process_window
    from funnelwatch.incidents.links import incident_url
    from funnelwatch.incidents.rca import analyse_incident, cohort_closures, explain_points
    from funnelwatch.incidents.reporting import render_incident_reports
    from funnelwatch.publish import INCIDENT_TABLE_KEYS, publish_marts

    window = context.partition_time_window
    reports_dir = incident_settings.reports_path(warehouse.path)
    with warehouse.get_connection() as con:
        feedback = ingest_spool(con, incident_settings.feedback_path())
        results = process_window(con, window.start, window.end, incident_settings.policy(),
                                 analyse=analyse_incident, localise=explain_points,
                                 closures=cohort_closures)
        changed = sorted({i for r in results for i in r.touched + r.resolved})
        rendered = render_incident_reports(con, changed, reports_dir)
        changed_frame = con.execute(
            "SELECT * FROM incidents.incidents WHERE list_contains($ids, incident_id) "
            "ORDER BY severity DESC", {"ids": changed}).df()
        open_count = con.execute(
            "SELECT count(*) FROM incidents.incidents WHERE state IN ('open', 'acknowledged')"
        ).fetchone()[0]
    # The incident page reads the analyst snapshot (it must never hold the warehouse), and the
    # snapshot asset runs before detection: publish the incident tables and the window's
    # scored series now, so the page shows this run's incidents and applied actions.
    publish_marts(warehouse.get_connection, warehouse.publish_dir, dates=_window_days(window),
                  only=INCIDENT_TABLE_KEYS)
    metadata = {
        "anomaly_points": dg.MetadataValue.int(sum(r.points for r in results)),
        "incidents_opened": dg.MetadataValue.int(sum(len(r.opened) for r in results)),
        "incidents_updated": dg.MetadataValue.int(sum(len(r.updated) for r in results)),
        "incidents_escalated": dg.MetadataValue.int(sum(len(r.escalated) for r in results)),
        "incidents_reopened": dg.MetadataValue.int(sum(len(r.reopened) for r in results)),
        "incidents_resolved": dg.MetadataValue.int(sum(len(r.resolved) for r in results)),
        # The sensor reads this: while incidents are open, quiet hours still need a run
        # (to resolve them when their metrics recover).
        "open_incidents": dg.MetadataValue.int(int(open_count)),
        "feedback_applied": dg.MetadataValue.int(feedback.applied),
        "feedback_rejected": dg.MetadataValue.int(feedback.rejected),
        "page_actions_applied": dg.MetadataValue.int(feedback.actions_applied),
        "reports_written": dg.MetadataValue.int(len(rendered)),
        "changed_incidents": dg.MetadataValue.md(_incident_table(changed_frame)),
    }
    if changed:
        metadata["incident_pages"] = dg.MetadataValue.md("\n".join(
            f"- [{i}]({incident_url(i)})" for i in changed_frame["incident_id"]))
    if rendered:
        worst = changed_frame.iloc[0]["incident_id"]
        metadata["worst_incident_page"] = dg.MetadataValue.url(incident_url(worst))
        metadata["worst_incident_report"] = dg.MetadataValue.md(rendered[worst].ui_markdown)
        metadata["worst_incident_report_path"] = dg.MetadataValue.path(
            str(rendered[worst].markdown_path))
    return dg.MaterializeResult(metadata=metadata)


@dg.asset(
    group_name="respond",
    kinds={"python", "duckdb", "slack", "pagerduty"},
    owners=["team:sre-oncall"],
    partitions_def=hourly_partitions,
    backfill_policy=single_run_backfill,
    pool=WAREHOUSE_POOL,
    deps=[incidents],
    description=(
        "Every incident change worth a message (opened, re-opened, acknowledged, resolved) "
        "routed by config/alert_routing.yml and queued in `alerting.outbox`, then delivered "
        "to Slack, e-mail, PagerDuty and webhooks with retry and backoff. Changes older than "
        "the horizon (backfills) are not paged. Channels whose secrets are not set in the "
        "environment keep their messages pending."
    ),
)
def incident_alerts(
    context: dg.AssetExecutionContext,
    warehouse: WarehouseResource,
    incident_settings: IncidentSettings,
    alerting: AlertingSettings,
) -> dg.MaterializeResult:
    with warehouse.get_connection() as con:
        metadata = send_incident_alerts(context, con, alerting)
    return dg.MaterializeResult(metadata=metadata)


def send_incident_alerts(context, con, alerting: AlertingSettings) -> dict:
    """Enqueue a message for every incident change and deliver what is due; the outbox
    status as metadata. Shared by `incident_alerts` and the checkout fast lane."""
    from funnelwatch.alerting import status_summary
    from funnelwatch.incidents.alerts import deliver, enqueue_incident_alerts
    from funnelwatch.incidents.reporting import band_chart_png

    routing = alerting.routing()
    now = datetime.now(UTC)
    queued = enqueue_incident_alerts(
        con, routing, now, horizon=timedelta(hours=alerting.horizon_hours),
        chart_for=lambda incident: band_chart_png(con, incident),
    )
    attempts, unconfigured = deliver(con, routing, now)
    status = status_summary(con, now)
    if unconfigured:
        context.log.info("channels without their secrets in the environment (messages stay "
                         "pending): %s", ", ".join(unconfigured))
    attempt_rows = pd.DataFrame(
        [(a.channel, a.action, a.dedup_key, a.status, a.attempts, a.error or "")
         for a in attempts],
        columns=["channel", "action", "dedup_key", "status", "attempts", "error"],
    )
    return {
        "messages_enqueued": dg.MetadataValue.int(len(queued.enqueued)),
        "held_back_by_routing": dg.MetadataValue.int(len(queued.suppressed)),
        "not_paged_backfill": dg.MetadataValue.int(len(queued.skipped_backfill)),
        "delivery_attempts": dg.MetadataValue.md(
            attempt_rows.to_markdown(index=False) if len(attempt_rows) else "_none due_"),
        "outbox_pending": dg.MetadataValue.int(status["by_status"].get("pending", 0)),
        "outbox_failed": dg.MetadataValue.int(status["by_status"].get("failed", 0)),
        "outbox_sent": dg.MetadataValue.int(status["by_status"].get("sent", 0)),
        "outbox_dead": dg.MetadataValue.int(status["by_status"].get("dead", 0)),
        "outbox_status": dg.MetadataValue.json(status),
        "unconfigured_channels": dg.MetadataValue.text(", ".join(unconfigured) or "none"),
    }


assets = [incidents, incident_alerts]
