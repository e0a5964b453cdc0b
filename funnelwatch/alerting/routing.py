"""Routing rules (config/alert_routing.yml): which channels get a notification, with which
playbook, and what is suppressed (mute, snooze, quiet hours) and why.

`load_routing` reads and validates the file; `route(notification, config, now)` is pure.
"""

from __future__ import annotations

import fnmatch
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from datetime import date, datetime, time, timedelta
from pathlib import Path
from typing import Any, NamedTuple
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

import yaml

from funnelwatch.alerting.channels import build_channel
from funnelwatch.alerting.notification import Notification

REPO_ROOT = Path(__file__).resolve().parents[2]
DEFAULT_ROUTING_PATH = REPO_ROOT / "config" / "alert_routing.yml"
DAYS = ("mon", "tue", "wed", "thu", "fri", "sat", "sun")


@dataclass(frozen=True)
class QuietHours:
    """A daily window [start, end) in `timezone` (wraps midnight when start > end), on the
    given weekdays (the day the window starts)."""

    start: time
    end: time
    timezone: ZoneInfo
    days: frozenset[int] = frozenset(range(7))

    def contains(self, now: datetime) -> bool:
        local = now.astimezone(self.timezone)
        t, today = local.time().replace(tzinfo=None), local.weekday()
        if self.start == self.end:
            return False
        if self.start < self.end:
            return today in self.days and self.start <= t < self.end
        yesterday = (local.date() - timedelta(days=1)).weekday()
        return (today in self.days and t >= self.start) or (
            yesterday in self.days and t < self.end
        )

    def describe(self) -> str:
        return f"{self.start:%H:%M}-{self.end:%H:%M} {self.timezone.key}"


@dataclass(frozen=True)
class Suppression:
    """Mute / snooze / quiet hours, on a team or a rule."""

    mute: bool = False
    snooze_until: datetime | None = None
    quiet_hours: QuietHours | None = None


@dataclass(frozen=True)
class Team:
    name: str
    suppression: Suppression = Suppression()
    playbook: str | None = None


@dataclass(frozen=True)
class Rule:
    name: str
    channels: tuple[str, ...]
    min_severity: float = 0.0
    metric: str = "*"
    cohort: str = "*"
    team: str | None = None
    actions: tuple[str, ...] = ("trigger", "acknowledge", "resolve")
    playbook: str | None = None
    suppression: Suppression = Suppression()
    stop: bool = False

    def matches(self, n: Notification) -> bool:
        return (
            n.severity >= self.min_severity
            and n.action in self.actions
            and fnmatch.fnmatchcase(n.metric, self.metric)
            and fnmatch.fnmatchcase(n.cohort, self.cohort)
            and (self.team is None or n.team == self.team)
        )


@dataclass(frozen=True)
class RoutingConfig:
    rules: tuple[Rule, ...]
    teams: Mapping[str, Team] = field(default_factory=dict)
    channels: Mapping[str, Mapping[str, Any]] = field(default_factory=dict)
    critical_severity: float = 80.0
    timezone: ZoneInfo = field(default_factory=lambda: ZoneInfo("UTC"))


class Delivery(NamedTuple):
    channel: str
    playbook: str | None
    rule: str


class Suppressed(NamedTuple):
    rule: str
    channels: tuple[str, ...]
    reason: str


@dataclass(frozen=True)
class RouteResult:
    """Where a notification goes (`deliveries`: channel, playbook, rule) and what was held
    back with the reason (`suppressed`). Iterating gives (channel, playbook) pairs."""

    deliveries: tuple[Delivery, ...]
    suppressed: tuple[Suppressed, ...]
    matched_rules: tuple[str, ...]

    def __iter__(self) -> Iterator[tuple[str, str | None]]:
        return iter([(d.channel, d.playbook) for d in self.deliveries])

    def __len__(self) -> int:
        return len(self.deliveries)

    @property
    def channels(self) -> list[str]:
        return [d.channel for d in self.deliveries]


def _suppressed_why(
    s: Suppression, owner: str, n: Notification, now: datetime, critical: float
) -> str | None:
    if s.mute:
        return f"{owner} is muted"
    if s.snooze_until is not None and now < s.snooze_until:
        return f"{owner} is snoozed until {s.snooze_until.isoformat()}"
    if s.quiet_hours is not None and s.quiet_hours.contains(now) and n.severity < critical:
        return (
            f"quiet hours of {owner} ({s.quiet_hours.describe()}); severity "
            f"{n.severity:.0f} < critical {critical:.0f}"
        )
    return None


def route(notification: Notification, config: RoutingConfig, now: datetime) -> RouteResult:
    """Apply the rules in order: every matching rule adds its channels (a channel once, with
    the first rule's playbook); a rule with `stop: true` ends the evaluation when it matches.
    A muted or snoozed team or rule suppresses everything; quiet hours (the rule's, else its
    team's) suppress all but critical notifications."""
    if now.tzinfo is None:
        raise ValueError("now must be timezone-aware")
    n = notification
    deliveries: dict[str, Delivery] = {}
    suppressed: list[Suppressed] = []
    matched: list[str] = []
    critical = config.critical_severity
    team = config.teams.get(n.team) if n.team else None
    for rule in config.rules:
        if not rule.matches(n):
            continue
        matched.append(rule.name)
        rule_team = config.teams.get(rule.team) if rule.team else team
        why = None
        if rule_team is not None:
            s = rule_team.suppression
            # The rule's own quiet hours replace the team's.
            if rule.suppression.quiet_hours is not None:
                s = Suppression(s.mute, s.snooze_until, None)
            why = _suppressed_why(s, f"team {rule_team.name}", n, now, critical)
        why = why or _suppressed_why(rule.suppression, f"rule {rule.name}", n, now, critical)
        if why:
            suppressed.append(Suppressed(rule.name, rule.channels, why))
        else:
            playbook = rule.playbook or (rule_team.playbook if rule_team else None) or n.playbook
            for channel in rule.channels:
                deliveries.setdefault(channel, Delivery(channel, playbook, rule.name))
        if rule.stop:
            break
    if not matched:
        suppressed.append(Suppressed("", (), "no rule matches"))
    return RouteResult(tuple(deliveries.values()), tuple(suppressed), tuple(matched))


# --- loading ----------------------------------------------------------------------------------


def _zone(name: Any, where: str) -> ZoneInfo:
    try:
        return ZoneInfo(str(name))
    except (ZoneInfoNotFoundError, ValueError):
        raise ValueError(f"{where}: unknown time zone {name!r}") from None


def _time(value: Any, where: str) -> time:
    if isinstance(value, int):  # YAML 1.1 reads 22:00 unquoted as sexagesimal 1320
        return time(value // 60 % 24, value % 60)
    try:
        return time.fromisoformat(str(value))
    except ValueError:
        raise ValueError(f"{where}: {value!r} is not a time like '22:00'") from None


def _datetime(value: Any, tz: ZoneInfo, where: str) -> datetime | None:
    if value is None:
        return None
    if isinstance(value, date) and not isinstance(value, datetime):
        value = datetime.combine(value, time())
    if not isinstance(value, datetime):
        try:
            value = datetime.fromisoformat(str(value))
        except ValueError:
            raise ValueError(f"{where}: {value!r} is not an ISO date-time") from None
    return value if value.tzinfo else value.replace(tzinfo=tz)


def _suppression(spec: Mapping[str, Any], tz: ZoneInfo, where: str) -> Suppression:
    quiet = None
    if spec.get("quiet_hours"):
        q = spec["quiet_hours"]
        days = q.get("days", list(DAYS))
        bad = [d for d in days if str(d).lower()[:3] not in DAYS]
        if bad:
            raise ValueError(f"{where}: unknown days {bad}")
        quiet = QuietHours(
            start=_time(q["start"], where),
            end=_time(q["end"], where),
            timezone=_zone(q["timezone"], where) if q.get("timezone") else tz,
            days=frozenset(DAYS.index(str(d).lower()[:3]) for d in days),
        )
    mute = spec.get("mute", False)
    if not isinstance(mute, bool):
        raise TypeError(f"{where}: mute must be true or false")
    return Suppression(mute, _datetime(spec.get("snooze_until"), tz, where), quiet)


RULE_KEYS = {"name", "channels", "min_severity", "metric", "cohort", "team", "actions",
             "playbook", "quiet_hours", "mute", "snooze_until", "stop"}
TEAM_KEYS = {"quiet_hours", "mute", "snooze_until", "playbook", "description"}


def parse_routing(raw: Mapping[str, Any]) -> RoutingConfig:
    """Validate a routing document (the parsed YAML)."""
    if not isinstance(raw, Mapping):
        raise TypeError("routing config must be a mapping")
    tz = _zone(raw.get("timezone", "UTC"), "timezone")
    channels = dict(raw.get("channels") or {})
    for name, spec in channels.items():
        build_channel(name, spec)  # validates; reads no secret
    teams: dict[str, Team] = {}
    for name, spec in (raw.get("teams") or {}).items():
        spec = spec or {}
        unknown = set(spec) - TEAM_KEYS
        if unknown:
            raise ValueError(f"team {name!r}: unknown keys {sorted(unknown)}")
        teams[name] = Team(name, _suppression(spec, tz, f"team {name!r}"), spec.get("playbook"))
    rules = []
    for i, spec in enumerate(raw.get("rules") or []):
        name = str(spec.get("name") or f"rule {i + 1}")
        where = f"rule {name!r}"
        unknown = set(spec) - RULE_KEYS
        if unknown:
            raise ValueError(f"{where}: unknown keys {sorted(unknown)}")
        rule_channels = tuple(spec.get("channels") or ())
        if not rule_channels:
            raise ValueError(f"{where}: no channels")
        missing = [c for c in rule_channels if c not in channels]
        if missing:
            raise ValueError(f"{where}: undefined channels {missing}")
        if spec.get("team") is not None and spec["team"] not in teams:
            raise ValueError(f"{where}: undefined team {spec['team']!r}")
        min_severity = float(spec.get("min_severity", 0))
        if not 0 <= min_severity <= 100:
            raise ValueError(f"{where}: min_severity must be from 0 to 100")
        actions = tuple(spec.get("actions") or ("trigger", "acknowledge", "resolve"))
        rules.append(
            Rule(
                name=name,
                channels=rule_channels,
                min_severity=min_severity,
                metric=str(spec.get("metric", "*")),
                cohort=str(spec.get("cohort", "*")),
                team=spec.get("team"),
                actions=actions,
                playbook=spec.get("playbook"),
                suppression=_suppression(spec, tz, where),
                stop=bool(spec.get("stop", False)),
            )
        )
    names = [r.name for r in rules]
    if len(names) != len(set(names)):
        raise ValueError("rule names must be unique")
    critical = float(raw.get("critical_severity", 80))
    return RoutingConfig(tuple(rules), teams, channels, critical, tz)


def load_routing(path: Path | str | None = None) -> RoutingConfig:
    """Read config/alert_routing.yml (or `path`). Holds no secrets: channels name the
    environment variables their secrets are read from at send time."""
    path = Path(path) if path else DEFAULT_ROUTING_PATH
    with open(path, encoding="utf-8") as fh:
        return parse_routing(yaml.safe_load(fh) or {})
