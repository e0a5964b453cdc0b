"""Routing rules (config/alert_routing.yml): which channels get a notification, with which
playbook, and what is suppressed (mute, snooze, quiet hours) and why.

`load_routing` reads and validates the file (pydantic models of its keys: a typo'd key or a
wrong type is one ConfigError line); `route(notification, config, now)` is pure.
"""

from __future__ import annotations

import fnmatch
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from datetime import date, datetime, time, timedelta
from pathlib import Path
from typing import Annotated, Any, Literal, NamedTuple
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from pydantic import (
    AfterValidator,
    BeforeValidator,
    ConfigDict,
    Field,
    StrictBool,
    StrictFloat,
    StrictInt,
    ValidationInfo,
    field_validator,
    model_validator,
)

from funnelwatch.alerting.channels import build_channel
from funnelwatch.alerting.notification import ACTIONS, Notification
from funnelwatch.config_files import (
    ConfigError,
    ConfigModel,
    display_path,
    read_yaml,
    validate_model,
)

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
# The file's shape as pydantic models (unknown keys are errors, funnelwatch/config_files.py);
# `parse_routing` validates with them, checks the names that refer to each other, and builds
# the frozen objects `route` uses.


def _known_zone(name: str) -> str:
    try:
        ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError):
        raise ValueError(f"unknown time zone {name!r} (expected an IANA name like "
                         f"'Europe/Berlin' or 'UTC')") from None
    return name


def _clock(value: Any) -> time:
    if isinstance(value, time):
        return value
    if isinstance(value, int) and not isinstance(value, bool):
        return time(value // 60 % 24, value % 60)  # YAML 1.1 reads 22:00 unquoted as 1320
    try:
        return time.fromisoformat(str(value))
    except ValueError:
        raise ValueError(f"expected a time like '22:00', got {value!r}") from None


def _instant(value: Any) -> datetime | None:
    if value is None or isinstance(value, datetime):
        return value
    if isinstance(value, date):
        return datetime.combine(value, time())
    if isinstance(value, str):
        try:
            return datetime.fromisoformat(value)
        except ValueError:
            pass
    raise ValueError(f"expected an ISO date-time like '2026-12-27T09:00:00+01:00', got {value!r}")


def _day(value: str) -> str:
    if value.lower()[:3] not in DAYS:
        raise ValueError(f"unknown day {value!r} (expected one of: {', '.join(DAYS)})")
    return value.lower()[:3]


ZoneName = Annotated[str, AfterValidator(_known_zone)]
ClockTime = Annotated[time, BeforeValidator(_clock)]
Instant = Annotated[datetime | None, BeforeValidator(_instant)]
Severity = Annotated[StrictFloat, Field(ge=0, le=100)]
SECRET_KEYS = ("url", "routing_key", "password", "token")


class QuietHoursSpec(ConfigModel):
    start: ClockTime
    end: ClockTime
    timezone: ZoneName | None = None  # default: the file's `timezone`
    days: list[Annotated[str, AfterValidator(_day)]] = Field(default_factory=lambda: list(DAYS))


class TeamSpec(ConfigModel):
    description: str | None = None
    playbook: str | None = None
    quiet_hours: QuietHoursSpec | None = None
    mute: StrictBool = False
    snooze_until: Instant = None


class RuleSpec(ConfigModel):
    name: str | None = None  # default: "rule N"
    channels: list[str]
    min_severity: Severity = 0.0
    metric: str = "*"
    cohort: str = "*"
    team: str | None = None
    actions: list[Literal["trigger", "acknowledge", "resolve"]] = Field(
        default_factory=lambda: list(ACTIONS))
    playbook: str | None = None
    quiet_hours: QuietHoursSpec | None = None
    mute: StrictBool = False
    snooze_until: Instant = None
    stop: StrictBool = False

    @field_validator("channels")
    @classmethod
    def _some_channel(cls, channels: list[str]) -> list[str]:
        if not channels:
            raise ValueError("expected at least one channel name")
        return channels


class ChannelSpec(ConfigModel):
    """Settings of one channel: the keyword arguments of its class in channels.py."""

    type: str  # each kind narrows it to its literal name (the union's discriminator)
    timeout_s: Annotated[StrictFloat, Field(gt=0)] | None = None

    @model_validator(mode="before")
    @classmethod
    def _no_secrets(cls, data: Any) -> Any:
        if isinstance(data, Mapping):
            for key in SECRET_KEYS:
                if key in data:
                    raise ValueError(f"{key!r} is a secret; name an environment variable with "
                                     f"{key}_env instead")
        return data


class SlackSpec(ChannelSpec):
    type: Literal["slack"]
    url_env: str


class WebhookSpec(ChannelSpec):
    type: Literal["webhook"]
    url_env: str
    token_env: str | None = None
    include_chart: StrictBool = False


class PagerDutySpec(ChannelSpec):
    type: Literal["pagerduty"]
    routing_key_env: str
    events_url: str | None = None
    source: str | None = None


class EmailSpec(ChannelSpec):
    model_config = ConfigDict(populate_by_name=True)  # `sender` and `use_ssl` work too

    type: Literal["email"]
    host: str
    port: Annotated[StrictInt, Field(gt=0, lt=65536)]
    sender: str = Field(alias="from")
    to: list[str]
    starttls: StrictBool = True
    use_ssl: StrictBool = Field(False, alias="ssl")
    username_env: str | None = None
    password_env: str | None = None

    @field_validator("to", mode="before")
    @classmethod
    def _one_address_is_a_list(cls, value: Any) -> Any:
        return [value] if isinstance(value, str) else value

    @field_validator("to")
    @classmethod
    def _some_recipient(cls, to: list[str]) -> list[str]:
        if not to:
            raise ValueError("expected at least one recipient address")
        return to


AnyChannelSpec = Annotated[SlackSpec | WebhookSpec | PagerDutySpec | EmailSpec,
                           Field(discriminator="type")]


class RoutingFile(ConfigModel):
    """config/alert_routing.yml."""

    timezone: ZoneName = "UTC"
    critical_severity: Severity = 80.0
    channels: dict[str, AnyChannelSpec] = Field(default_factory=dict)
    teams: dict[str, TeamSpec | None] = Field(default_factory=dict)
    rules: list[RuleSpec] = Field(default_factory=list)

    @field_validator("channels", "teams", "rules", mode="before")
    @classmethod
    def _empty_section(cls, value: Any, info: ValidationInfo) -> Any:
        # `teams:` with every entry commented out is an empty section, not an error.
        if value is None:
            return [] if info.field_name == "rules" else {}
        return value


def _suppression(spec: TeamSpec | RuleSpec, tz: ZoneInfo) -> Suppression:
    quiet = None
    if spec.quiet_hours is not None:
        q = spec.quiet_hours
        quiet = QuietHours(
            start=q.start,
            end=q.end,
            timezone=ZoneInfo(q.timezone) if q.timezone else tz,
            days=frozenset(DAYS.index(d) for d in q.days),
        )
    snooze = spec.snooze_until
    if snooze is not None and snooze.tzinfo is None:
        snooze = snooze.replace(tzinfo=tz)
    return Suppression(spec.mute, snooze, quiet)


def parse_routing(raw: Any, source: str = "routing config") -> RoutingConfig:
    """Validate a routing document (the parsed YAML); a problem raises one ConfigError line
    naming `source` and the key."""
    doc = validate_model(raw, RoutingFile, source)
    tz = ZoneInfo(doc.timezone)
    channels = {name: spec.model_dump(by_alias=True, exclude_unset=True)
                for name, spec in doc.channels.items()}
    for name, spec in channels.items():
        try:
            build_channel(name, spec)  # the channel class's own checks; reads no secret
        except ValueError as exc:
            raise ConfigError(source, str(exc), f"channels.{name}") from None
    teams = {name: Team(name, _suppression(spec or TeamSpec(), tz), (spec or TeamSpec()).playbook)
             for name, spec in doc.teams.items()}
    rules = []
    for i, spec in enumerate(doc.rules):
        missing = [c for c in spec.channels if c not in channels]
        if missing:
            raise ConfigError(source, f"undefined channels {missing} (defined under channels: "
                              f"{', '.join(channels) or 'none'})", f"rules[{i}].channels")
        if spec.team is not None and spec.team not in teams:
            raise ConfigError(source, f"undefined team {spec.team!r} (defined under teams: "
                              f"{', '.join(teams) or 'none'})", f"rules[{i}].team")
        rules.append(
            Rule(
                name=spec.name or f"rule {i + 1}",
                channels=tuple(spec.channels),
                min_severity=spec.min_severity,
                metric=spec.metric,
                cohort=spec.cohort,
                team=spec.team,
                actions=tuple(spec.actions),
                playbook=spec.playbook,
                suppression=_suppression(spec, tz),
                stop=spec.stop,
            )
        )
    seen: set[str] = set()
    for i, rule in enumerate(rules):
        if rule.name in seen:
            raise ConfigError(source, f"rule name {rule.name!r} is used twice (rule names "
                              "must be unique)", f"rules[{i}].name")
        seen.add(rule.name)
    return RoutingConfig(tuple(rules), teams, channels, doc.critical_severity, tz)


def load_routing(path: Path | str | None = None) -> RoutingConfig:
    """Read config/alert_routing.yml (or `path`). Holds no secrets: channels name the
    environment variables their secrets are read from at send time. A bad file raises
    ConfigError (one line: file, key, what was expected)."""
    path = Path(path) if path else DEFAULT_ROUTING_PATH
    return parse_routing(read_yaml(path) or {}, display_path(path))
