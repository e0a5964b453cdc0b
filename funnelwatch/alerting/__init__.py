"""Alert delivery: notifications, channels, routing rules and the outbox.

A library only for now: nothing in the Dagster code location calls it yet (see
docs/alerting.md).
"""

from funnelwatch.alerting.channels import (
    Channel,
    ChannelError,
    Email,
    JsonWebhook,
    PagerDuty,
    SlackWebhook,
    build_channel,
    build_channels,
    redact,
)
from funnelwatch.alerting.notification import Notification, severity_level
from funnelwatch.alerting.outbox import (
    backoff_delay,
    deliver_due,
    enqueue,
    ensure_outbox,
    requeue,
    status_summary,
)
from funnelwatch.alerting.routing import (
    RouteResult,
    RoutingConfig,
    load_routing,
    parse_routing,
    route,
)

__all__ = [
    "Channel",
    "ChannelError",
    "Email",
    "JsonWebhook",
    "Notification",
    "PagerDuty",
    "RouteResult",
    "RoutingConfig",
    "SlackWebhook",
    "backoff_delay",
    "build_channel",
    "build_channels",
    "deliver_due",
    "enqueue",
    "ensure_outbox",
    "load_routing",
    "parse_routing",
    "redact",
    "requeue",
    "route",
    "severity_level",
    "status_summary",
]
