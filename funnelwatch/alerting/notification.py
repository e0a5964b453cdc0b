"""The one message every channel renders: a `Notification` about one incident.

It is plain data (no secrets, no channel settings), so the outbox can store it as JSON and
render it again at every delivery attempt.
"""

from __future__ import annotations

import base64
import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

ACTIONS = ("trigger", "acknowledge", "resolve")

# Severity (0-100) -> level, highest first. PagerDuty's four severities use the same names.
SEVERITY_LEVELS = (("critical", 80.0), ("error", 60.0), ("warning", 30.0), ("info", 0.0))


def severity_level(severity: float) -> str:
    """`critical` (>= 80), `error` (>= 60), `warning` (>= 30) or `info`."""
    for name, threshold in SEVERITY_LEVELS:
        if severity >= threshold:
            return name
    return "info"


@dataclass(frozen=True)
class Notification:
    """One alert message about one incident.

    `dedup_key` identifies the incident for the receivers (PagerDuty groups trigger,
    acknowledge and resolve by it) and for the outbox (one row per dedup key, channel and
    action). `playbook` is a URL or free text; routing may replace it per rule.
    `chart_png` is an optional PNG (e-mail shows it inline; the other channels do not).
    `url` is the incident's page (`funnelwatch serve`); every channel links to it.
    `headline` is the one line a person can act on (funnelwatch.incidents.headline); every
    channel shows it first (subject, Slack text, PagerDuty summary), the title when absent.
    """

    incident_id: str
    dedup_key: str
    action: str
    severity: float
    title: str
    summary: str
    metric: str
    cohort: str = "all"
    team: str | None = None
    fields: Mapping[str, str] = field(default_factory=dict)
    playbook: str | None = None
    chart_png: bytes | None = field(default=None, repr=False)
    url: str | None = None
    headline: str | None = None

    def __post_init__(self) -> None:
        if self.action not in ACTIONS:
            raise ValueError(f"action must be one of {ACTIONS}, got {self.action!r}")
        if isinstance(self.severity, bool) or not isinstance(self.severity, int | float):
            raise TypeError("severity must be a number from 0 to 100")
        if not math.isfinite(self.severity) or not 0 <= self.severity <= 100:
            raise ValueError(f"severity must be from 0 to 100, got {self.severity!r}")
        for name in ("incident_id", "dedup_key", "title", "metric", "cohort"):
            value = getattr(self, name)
            if not isinstance(value, str) or not value.strip():
                raise ValueError(f"{name} must be a non-empty string")
        if len(self.dedup_key) > 255:
            raise ValueError("dedup_key must be at most 255 characters (PagerDuty's limit)")
        if self.chart_png is not None and not isinstance(self.chart_png, bytes | bytearray):
            raise ValueError("chart_png must be bytes (a PNG) or None")
        if self.url is not None and not str(self.url).startswith(("http://", "https://")):
            raise ValueError("url must be an http(s) URL or None")
        if self.headline is not None and (
            not isinstance(self.headline, str) or not self.headline.strip()
        ):
            raise ValueError("headline must be a non-empty string or None")
        # Freeze the fields as str -> str so the JSON round trip is exact.
        object.__setattr__(self, "fields", {str(k): str(v) for k, v in dict(self.fields).items()})

    @property
    def first_line(self) -> str:
        """What every channel shows first: the headline, else the title."""
        return self.headline or self.title

    @property
    def level(self) -> str:
        return severity_level(self.severity)

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready dict (the chart as base64)."""
        return {
            "incident_id": self.incident_id,
            "dedup_key": self.dedup_key,
            "action": self.action,
            "severity": float(self.severity),
            "title": self.title,
            "summary": self.summary,
            "metric": self.metric,
            "cohort": self.cohort,
            "team": self.team,
            "fields": dict(self.fields),
            "playbook": self.playbook,
            "chart_png": (
                base64.b64encode(self.chart_png).decode("ascii") if self.chart_png else None
            ),
            "url": self.url,
            "headline": self.headline,
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Notification:
        values = dict(data)
        chart = values.get("chart_png")
        values["chart_png"] = base64.b64decode(chart) if chart else None
        return cls(**values)
