"""Incidents -> notifications -> the alert outbox -> channels.

An incident is worth a message when its `alert_version` is above `alerted_version`: it
opened (trigger), re-opened (trigger with a fresh key), was acknowledged (acknowledge) or
resolved (resolve). Updates and escalations of an ongoing incident change its report and
the UI, not the pager. Each message goes through `alerting.outbox` (idempotent by the
incident's alert key, channel and action), so a re-run enqueues nothing twice and a channel
that is down gets the message when it is back.

Backfills do not page: an incident whose latest change is older than `horizon` before `now`
is marked as handled with a timeline note instead.
"""

from __future__ import annotations

import math
import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import datetime, timedelta

import duckdb
import pandas as pd

from funnelwatch.alerting import Notification, RoutingConfig, build_channel, enqueue, route
from funnelwatch.alerting.outbox import TABLE as OUTBOX_TABLE
from funnelwatch.alerting.outbox import Attempt, deliver_due, ensure_outbox
from funnelwatch.incidents.headline import alert_headline
from funnelwatch.incidents.rca.hypotheses import NO_KNOWN_CAUSE
from funnelwatch.incidents.store import SCHEMA, add_timeline, ensure_incident_schema

DEFAULT_HORIZON = timedelta(hours=24)

ChartFor = Callable[[dict], bytes | None]


def team_for(metric: str) -> str:
    """Which team owns a metric (routing rules match on it)."""
    if metric.startswith(("checkout", "payment", "shipping", "review")) or metric in (
        "purchases", "revenue", "session_conversion_rate"
    ):
        return "checkout"
    if metric.startswith("js_error") or metric == "events":
        return "analytics"
    return "growth"


def _money(value) -> str:
    return "n/a" if value is None else f"{value:,.0f}"


def notification_for(incident: Mapping, action: str, chart_png: bytes | None = None
                     ) -> Notification:
    from funnelwatch.incidents.links import incident_url

    where = incident.get("where_cohort") or incident["cohort"]
    cause = incident.get("top_cause") or NO_KNOWN_CAUSE
    summary = (
        f"{incident['metric']} | {incident['cohort']} since "
        f"{incident['started_at']:%Y-%m-%d %H:%M} UTC. Where: {where}. "
        f"Step: {incident.get('funnel_step') or 'n/a'}. Probable cause: {cause}. "
        f"Lost orders {_money(incident.get('lost_orders'))}, revenue at risk "
        f"{_money(incident.get('revenue_at_risk'))}."
    )
    if action == "resolve":
        summary = f"Resolved at {incident['resolved_at']:%Y-%m-%d %H:%M} UTC. " + summary
    fields = {
        "incident": incident["incident_id"],
        "started": f"{incident['started_at']:%Y-%m-%d %H:%M} UTC",
        "where": where,
        "funnel step": incident.get("funnel_step") or "n/a",
        "probable cause": cause,
        "lost orders": _money(incident.get("lost_orders")),
        "revenue at risk": _money(incident.get("revenue_at_risk")),
        "anomalous series": str(incident.get("anomaly_count") or 0),
    }
    if incident.get("report_path"):
        fields["report"] = str(incident["report_path"])
    return Notification(
        incident_id=incident["incident_id"],
        dedup_key=incident["alert_key"],
        action=action,
        severity=float(min(max(incident["severity"] or 0.0, 0.0), 100.0)),
        title=incident["title"],
        summary=summary,
        metric=incident["metric"],
        cohort=incident["cohort"],
        team=team_for(incident["metric"]),
        fields=fields,
        chart_png=chart_png,
        url=incident_url(incident["incident_id"]),
        headline=alert_headline(incident),
    )


@dataclass
class AlertRun:
    enqueued: list[tuple[str, str, str]] = field(default_factory=list)  # (incident, action, channel)
    suppressed: list[tuple[str, str]] = field(default_factory=list)  # (incident, reason)
    skipped_backfill: list[str] = field(default_factory=list)


def _action(state: str) -> str:
    return {"resolved": "resolve", "acknowledged": "acknowledge"}.get(state, "trigger")


def enqueue_incident_alerts(
    con: duckdb.DuckDBPyConnection,
    routing: RoutingConfig,
    now: datetime,
    horizon: timedelta = DEFAULT_HORIZON,
    chart_for: ChartFor | None = None,
) -> AlertRun:
    """Route and enqueue a message for every incident with an unsent change."""
    ensure_incident_schema(con)
    ensure_outbox(con)
    run = AlertRun()
    pending = con.execute(
        f"""SELECT * FROM {SCHEMA}.incidents
            WHERE coalesce(alerted_version, 0) < alert_version
              AND coalesce(category, 'business') <> 'context' ORDER BY started_at"""
    ).df()
    for incident in pending.to_dict("records"):
        incident = {k: (None if _missing(v) else v) for k, v in incident.items()}
        inc_id = incident["incident_id"]
        latest = incident["resolved_at"] or incident["last_anomaly_at"]
        action = _action(incident["state"])
        con.execute("BEGIN TRANSACTION")
        try:
            if latest + timedelta(hours=1) < now - horizon:
                run.skipped_backfill.append(inc_id)
                add_timeline(con, inc_id, now, "alert_skipped",
                          f"{action}: the change is older than {horizon} (backfill); not paged")
            elif action != "trigger" and not _was_triggered(con, incident["alert_key"]):
                add_timeline(con, inc_id, now, "alert_skipped",
                          f"{action}: nothing was paged for {incident['alert_key']}")
            else:
                chart = chart_for(incident) if chart_for and action == "trigger" else None
                notification = notification_for(incident, action, chart)
                routed = route(notification, routing, now)
                enqueue(con, notification, routed, now)
                for delivery in routed.deliveries:
                    run.enqueued.append((inc_id, action, delivery.channel))
                for held in routed.suppressed:
                    run.suppressed.append((inc_id, held.reason))
                detail = f"{action} -> {', '.join(routed.channels) or 'no channel'}"
                if routed.suppressed:
                    detail += "; held back: " + "; ".join(s.reason for s in routed.suppressed)
                add_timeline(con, inc_id, now, "alerted", detail)
            con.execute(
                f"UPDATE {SCHEMA}.incidents SET alerted_version = alert_version "
                "WHERE incident_id = $id", {"id": inc_id},
            )
            con.execute("COMMIT")
        except BaseException:
            con.execute("ROLLBACK")
            raise
    return run


def _missing(value) -> bool:
    """None, NaN or NaT (pandas' missing values in a records dict); lists are values."""
    return value is None or value is pd.NaT or (isinstance(value, float) and math.isnan(value))


def _was_triggered(con, alert_key: str) -> bool:
    return con.execute(
        f"SELECT count(*) FROM {OUTBOX_TABLE} WHERE dedup_key = $k AND action = 'trigger'",
        {"k": alert_key},
    ).fetchone()[0] > 0


def configured_senders(routing: RoutingConfig, environ: Mapping[str, str] | None = None
                       ) -> tuple[dict, list[str]]:
    """The channels whose secrets are all set in the environment, and the names of those that
    are not (their rows stay pending in the outbox until someone configures them)."""
    environ = os.environ if environ is None else environ
    senders, missing = {}, []
    for name, spec in routing.channels.items():
        channel = build_channel(name, spec)
        if all(environ.get(e) for e in channel.secret_envs):
            senders[name] = channel
        else:
            missing.append(name)
    return senders, missing


def deliver(con: duckdb.DuckDBPyConnection, routing: RoutingConfig, now: datetime
            ) -> tuple[list[Attempt], list[str]]:
    """Send what is due on the configured channels. Returns the attempts and the names of
    the channels left unconfigured."""
    senders, missing = configured_senders(routing)
    return deliver_due(con, senders, now), missing
