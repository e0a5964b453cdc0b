"""Alert channels: Slack incoming webhook, e-mail over SMTP, PagerDuty Events API v2 and a
generic JSON webhook.

A channel holds its settings and the *names* of the environment variables its secrets live
in (webhook URLs, routing keys, SMTP credentials). The values are read at send time, never
at import or construction, and never appear in an exception message or a log line: every
error a channel raises is a `ChannelError` whose text went through `redact`.

HTTP goes through the standard library (`urllib.request`), so the channels add no
dependency.
"""

from __future__ import annotations

import json
import logging
import os
import re
import smtplib
import ssl
import urllib.error
import urllib.parse
import urllib.request
from abc import ABC, abstractmethod
from collections.abc import Iterable, Mapping
from email.message import EmailMessage
from email.utils import make_msgid
from typing import Any

from funnelwatch.alerting.notification import Notification

log = logging.getLogger(__name__)

PAGERDUTY_EVENTS_URL = "https://events.pagerduty.com/v2/enqueue"
DEFAULT_TIMEOUT_S = 10.0
REDACTED = "***"

# HTTP statuses worth retrying; any other 4xx means the request itself is wrong (or the
# webhook was revoked), which no retry fixes.
RETRYABLE_HTTP = {408, 425, 429}

# Secret-looking things we redact even when we do not know the value.
_SECRET_PATTERNS = (
    re.compile(r"https://hooks\.slack\.com/\S+"),
    re.compile(r"(?<=://)[^/\s:@]+:[^/\s@]+(?=@)"),  # user:password@ in URLs
    re.compile(
        r"(?i)(routing_key|token|password|secret|api_key)([\"']?\s*[:=]\s*[\"']?)[^\s\"',&]+"
    ),
)


class ChannelError(Exception):
    """A delivery failed. The message is already redacted; `retryable` says if a later
    attempt may succeed (down, timeout, 5xx, 429) or not (rejected payload, revoked URL)."""

    def __init__(self, message: str, retryable: bool = True):
        super().__init__(message)
        self.retryable = retryable


def redact(text: str, secrets: Iterable[str] = ()) -> str:
    """`text` with every known secret value (and its URL-quoted forms) and every
    secret-looking pattern replaced by ***."""
    variants: set[str] = set()
    for secret in secrets:
        if not secret or len(secret) < 4:
            continue
        variants.update({secret, urllib.parse.quote(secret), urllib.parse.quote(secret, safe="")})
        parsed = urllib.parse.urlsplit(secret)
        # A webhook URL's secret is its path and query; the host alone is not.
        if parsed.scheme and parsed.netloc and len(parsed.path) > 1:
            variants.add(parsed.path + (f"?{parsed.query}" if parsed.query else ""))
    for value in sorted(variants, key=len, reverse=True):
        text = text.replace(value, REDACTED)
    for pattern in _SECRET_PATTERNS:
        if pattern.groups >= 2:
            text = pattern.sub(lambda m: m.group(1) + m.group(2) + REDACTED, text)
        else:
            text = pattern.sub(REDACTED, text)
    return text


class Channel(ABC):
    """Base class: `send(notification, playbook)` delivers or raises `ChannelError`."""

    kind = "channel"
    secret_envs: tuple[str, ...] = ()

    def __init__(self, name: str, timeout_s: float = DEFAULT_TIMEOUT_S):
        self.name = name
        self.timeout_s = float(timeout_s)

    def __repr__(self) -> str:  # settings only: env var names, never values
        return f"{type(self).__name__}(name={self.name!r})"

    def secrets(self) -> list[str]:
        """The current values of this channel's secret variables (for redaction)."""
        return [os.environ[e] for e in self.secret_envs if e and os.environ.get(e)]

    def redact(self, text: str) -> str:
        return redact(text, self.secrets())

    def _env(self, env_name: str | None, what: str, required: bool = True) -> str | None:
        value = os.environ.get(env_name) if env_name else None
        if required and not value:
            # The variable's name is not a secret; its value is.
            raise ChannelError(f"{self.name}: {what} is not set (environment variable {env_name})")
        return value

    @abstractmethod
    def send(self, notification: Notification, playbook: str | None = None) -> None:
        """Deliver one notification; raise ChannelError (redacted) when it does not go out."""


# --- HTTP -------------------------------------------------------------------------------------


def _post_json(
    channel: Channel, url: str, body: Mapping[str, Any], headers: Mapping[str, str] | None = None
) -> tuple[int, str]:
    """POST `body` as JSON; returns (status, text) for 2xx, raises a redacted ChannelError
    otherwise. Never chains the original exception (its text may hold the URL)."""
    scheme = urllib.parse.urlsplit(url).scheme
    if scheme not in ("http", "https"):
        raise ChannelError(f"{channel.name}: the configured URL is not http(s)", retryable=False)
    data = json.dumps(body).encode("utf-8")
    request = urllib.request.Request(url, data=data, method="POST")
    request.add_header("Content-Type", "application/json")
    request.add_header("User-Agent", "funnelwatch-alerting/1")
    for key, value in (headers or {}).items():
        request.add_header(key, value)
    error: ChannelError | None = None
    try:
        with urllib.request.urlopen(request, timeout=channel.timeout_s) as response:
            return response.status, response.read(4096).decode("utf-8", "replace")
    except urllib.error.HTTPError as exc:
        try:
            detail = exc.read(300).decode("utf-8", "replace").strip()
        except Exception:  # noqa: BLE001 - the status is what matters
            detail = ""
        retryable = exc.code >= 500 or exc.code in RETRYABLE_HTTP
        error = ChannelError(
            channel.redact(f"{channel.name}: HTTP {exc.code} {detail}".strip()), retryable
        )
    except urllib.error.URLError as exc:
        error = ChannelError(channel.redact(f"{channel.name}: cannot connect ({exc.reason})"))
    except (TimeoutError, OSError) as exc:
        error = ChannelError(channel.redact(f"{channel.name}: {type(exc).__name__}: {exc}"))
    except ValueError as exc:  # malformed URL; its text quotes the URL
        error = ChannelError(
            channel.redact(f"{channel.name}: invalid URL ({type(exc).__name__})"), False
        )
    raise error


def _is_url(text: str | None) -> bool:
    return bool(text) and urllib.parse.urlsplit(text.strip()).scheme in ("http", "https")


def _slack_escape(text: str) -> str:
    return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


def _clip(text: str, limit: int) -> str:
    return text if len(text) <= limit else text[: limit - 1] + "…"


ACTION_LABEL = {"trigger": "Triggered", "acknowledge": "Acknowledged", "resolve": "Resolved"}
ACTION_EMOJI = {
    "trigger": ":rotating_light:", "acknowledge": ":eyes:", "resolve": ":white_check_mark:"
}


class SlackWebhook(Channel):
    """Slack incoming webhook; the URL (a secret) comes from the variable `url_env`."""

    kind = "slack"

    def __init__(self, name: str, url_env: str, timeout_s: float = DEFAULT_TIMEOUT_S):
        super().__init__(name, timeout_s)
        self.url_env = url_env
        self.secret_envs = (url_env,)

    def render(self, n: Notification, playbook: str | None = None) -> dict[str, Any]:
        """The Block Kit message (header, summary, fields, playbook, context)."""
        label = ACTION_LABEL[n.action]
        header = _clip(f"{label}: {n.title}", 150)
        blocks: list[dict[str, Any]] = [
            {"type": "header", "text": {"type": "plain_text", "text": header, "emoji": True}},
            {
                "type": "section",
                "text": {
                    "type": "mrkdwn",
                    "text": _clip(
                        (f"*{_slack_escape(n.headline)}*\n" if n.headline else "")
                        + f"{ACTION_EMOJI[n.action]} *{n.level.upper()}* "
                        f"(severity {n.severity:.0f})\n{_slack_escape(n.summary)}",
                        3000,
                    ),
                },
            },
        ]
        fields = {"Metric": n.metric, "Cohort": n.cohort}
        if n.team:
            fields["Team"] = n.team
        fields.update(n.fields)
        items = [
            {"type": "mrkdwn", "text": _clip(f"*{_slack_escape(k)}*\n{_slack_escape(v)}", 2000)}
            for k, v in fields.items()
        ]
        for start in range(0, len(items), 10):  # Slack allows 10 fields per section
            blocks.append({"type": "section", "fields": items[start : start + 10]})
        if n.url:
            link = {"type": "mrkdwn", "text": f":mag: <{n.url}|Open the incident page>"}
            blocks.append({"type": "section", "text": link})
        if playbook:
            if _is_url(playbook):
                text = f":book: <{playbook.strip()}|Playbook>"
            else:
                text = f":book: *Playbook*\n{_slack_escape(playbook)}"
            text_obj = {"type": "mrkdwn", "text": _clip(text, 3000)}
            blocks.append({"type": "section", "text": text_obj})
        blocks.append(
            {
                "type": "context",
                "elements": [
                    {
                        "type": "mrkdwn",
                        "text": _slack_escape(
                            f"incident {n.incident_id} · dedup key {n.dedup_key}"
                        ),
                    }
                ],
            }
        )
        text = f"[{n.level.upper()}] {label}: {n.first_line}"
        return {"text": _clip(text, 3000), "blocks": blocks}

    def send(self, notification: Notification, playbook: str | None = None) -> None:
        url = self._env(self.url_env, "Slack webhook URL")
        _post_json(self, url, self.render(notification, playbook))


class JsonWebhook(Channel):
    """Generic JSON webhook: POSTs the notification as JSON. The URL comes from `url_env`;
    an optional bearer token from `token_env`."""

    kind = "webhook"

    def __init__(
        self,
        name: str,
        url_env: str,
        token_env: str | None = None,
        include_chart: bool = False,
        timeout_s: float = DEFAULT_TIMEOUT_S,
    ):
        super().__init__(name, timeout_s)
        self.url_env = url_env
        self.token_env = token_env
        self.include_chart = include_chart
        self.secret_envs = tuple(e for e in (url_env, token_env) if e)

    def render(self, n: Notification, playbook: str | None = None) -> dict[str, Any]:
        body = n.to_dict()
        if not self.include_chart:
            body.pop("chart_png")
        body["playbook"] = playbook if playbook is not None else n.playbook
        body["level"] = n.level
        return {"type": "funnelwatch.alert", "version": 1, "notification": body}

    def send(self, notification: Notification, playbook: str | None = None) -> None:
        url = self._env(self.url_env, "webhook URL")
        headers = {}
        if self.token_env:
            headers["Authorization"] = f"Bearer {self._env(self.token_env, 'webhook token')}"
        _post_json(self, url, self.render(notification, playbook), headers)


class PagerDuty(Channel):
    """PagerDuty Events API v2. The integration's routing key comes from `routing_key_env`.
    Trigger, acknowledge and resolve share the notification's dedup key, so PagerDuty
    folds them into one incident."""

    kind = "pagerduty"

    def __init__(
        self,
        name: str,
        routing_key_env: str,
        events_url: str = PAGERDUTY_EVENTS_URL,
        source: str = "funnelwatch",
        timeout_s: float = DEFAULT_TIMEOUT_S,
    ):
        super().__init__(name, timeout_s)
        self.routing_key_env = routing_key_env
        self.events_url = events_url
        self.source = source
        self.secret_envs = (routing_key_env,)

    def render(
        self, n: Notification, routing_key: str, playbook: str | None = None
    ) -> dict[str, Any]:
        event: dict[str, Any] = {
            "routing_key": routing_key,
            "event_action": n.action,
            "dedup_key": n.dedup_key,
        }
        if n.action != "trigger":  # acknowledge / resolve need only the key
            return event
        details = {"incident_id": n.incident_id, "severity_score": float(n.severity)}
        if n.url:
            details["incident_page"] = n.url
        details.update({"metric": n.metric, "cohort": n.cohort, "team": n.team})
        details.update(n.fields)
        if n.headline and n.summary:  # the summary line is the headline; the detail goes here
            details["detail"] = n.summary
        if playbook and not _is_url(playbook):
            details["playbook"] = playbook
        event["payload"] = {
            "summary": _clip(
                n.headline if n.headline else f"{n.title}: {n.summary}" if n.summary else n.title,
                1024,
            ),
            "severity": n.level,
            "source": self.source,
            "component": n.metric,
            "group": n.cohort,
            "class": "funnel_anomaly",
            "custom_details": details,
        }
        links = []
        if playbook and _is_url(playbook):
            links.append({"href": playbook.strip(), "text": "Playbook"})
        if n.url:
            links.append({"href": n.url, "text": "Incident page"})
        if links:
            event["links"] = links
        return event

    def send(self, notification: Notification, playbook: str | None = None) -> None:
        key = self._env(self.routing_key_env, "PagerDuty routing key")
        _post_json(self, self.events_url, self.render(notification, key, playbook))


class Email(Channel):
    """E-mail over SMTP: an HTML body (plain-text alternative) with the chart inline as a
    CID image. Credentials, if any, come from `username_env` / `password_env`."""

    kind = "email"

    def __init__(
        self,
        name: str,
        host: str,
        port: int,
        sender: str,
        to: Iterable[str],
        starttls: bool = True,
        use_ssl: bool = False,
        username_env: str | None = None,
        password_env: str | None = None,
        timeout_s: float = DEFAULT_TIMEOUT_S,
    ):
        super().__init__(name, timeout_s)
        self.host, self.port = host, int(port)
        self.sender = sender
        self.to = [to] if isinstance(to, str) else list(to)
        if not self.to:
            raise ValueError(f"{name}: e-mail channel needs at least one recipient")
        self.starttls, self.use_ssl = bool(starttls), bool(use_ssl)
        self.username_env, self.password_env = username_env, password_env
        self.secret_envs = tuple(e for e in (password_env,) if e)

    def render(self, n: Notification, playbook: str | None = None) -> EmailMessage:
        msg = EmailMessage()
        label = ACTION_LABEL[n.action]
        msg["Subject"] = f"[funnelwatch] [{n.level.upper()}] {label}: {n.first_line}"
        msg["From"] = self.sender
        msg["To"] = ", ".join(self.to)
        msg["X-Funnelwatch-Dedup-Key"] = n.dedup_key
        rows = {"Severity": f"{n.level} ({n.severity:.0f})", "Metric": n.metric,
                "Cohort": n.cohort}
        if n.team:
            rows["Team"] = n.team
        rows.update(n.fields)
        rows["Incident"] = n.incident_id
        text = [f"{label}: {n.first_line}", "", n.summary, ""]
        if n.url:
            text += [f"Incident page: {n.url}", ""]
        text += [f"{k}: {v}" for k, v in rows.items()]
        if playbook:
            text += ["", f"Playbook: {playbook}"]
        msg.set_content("\n".join(text))

        from funnelwatch.templating import render

        cid = make_msgid(domain="funnelwatch.local")
        body = render(
            "email.html", title=f"{label}: {n.first_line}", label=label, n=n, rows=rows,
            chart_cid=cid[1:-1] if n.chart_png else None, playbook=playbook,
            playbook_url=playbook.strip() if playbook and _is_url(playbook) else None,
        )
        msg.add_alternative(body, subtype="html")
        if n.chart_png:
            html_part = msg.get_payload()[1]
            html_part.add_related(
                bytes(n.chart_png), maintype="image", subtype="png", cid=cid,
                filename="chart.png",
            )
        return msg

    def send(self, notification: Notification, playbook: str | None = None) -> None:
        msg = self.render(notification, playbook)
        user = self._env(self.username_env, "SMTP user", required=False)
        password = self._env(self.password_env, "SMTP password", required=bool(self.password_env))
        error: ChannelError | None = None
        try:
            cls = smtplib.SMTP_SSL if self.use_ssl else smtplib.SMTP
            with cls(self.host, self.port, timeout=self.timeout_s) as smtp:
                if self.starttls and not self.use_ssl:
                    smtp.starttls(context=ssl.create_default_context())
                if user and password:
                    smtp.login(user, password)
                smtp.send_message(msg)
            return
        except smtplib.SMTPRecipientsRefused as exc:
            codes = sorted({code for code, _ in exc.recipients.values()})
            error = ChannelError(f"{self.name}: recipients refused (SMTP {codes})", False)
        except smtplib.SMTPResponseException as exc:
            detail = exc.smtp_error.decode("utf-8", "replace") if isinstance(
                exc.smtp_error, bytes) else str(exc.smtp_error)
            retryable = not 500 <= exc.smtp_code < 600 or isinstance(
                exc, smtplib.SMTPAuthenticationError)
            error = ChannelError(f"{self.name}: SMTP {exc.smtp_code} {detail}", retryable)
        except (smtplib.SMTPException, OSError) as exc:
            error = ChannelError(f"{self.name}: {type(exc).__name__}: {exc}")
        raise ChannelError(self.redact(str(error)), error.retryable)


CHANNEL_TYPES = {
    "slack": SlackWebhook,
    "webhook": JsonWebhook,
    "pagerduty": PagerDuty,
    "email": Email,
}


def build_channel(name: str, spec: Mapping[str, Any]) -> Channel:
    """A channel from its routing-config entry (`type` plus the class's keyword arguments;
    `from` is accepted for an e-mail's `sender`, `ssl` for `use_ssl`)."""
    spec = dict(spec)
    kind = spec.pop("type", None)
    if kind not in CHANNEL_TYPES:
        raise ValueError(f"channel {name!r}: type must be one of {sorted(CHANNEL_TYPES)}")
    if "from" in spec:
        spec["sender"] = spec.pop("from")
    if "ssl" in spec:
        spec["use_ssl"] = spec.pop("ssl")
    for key in list(spec):
        if key.endswith("_env"):
            continue
        if key in ("url", "routing_key", "password", "token"):
            raise ValueError(
                f"channel {name!r}: {key!r} is a secret; name an environment variable with "
                f"{key}_env instead"
            )
    try:
        return CHANNEL_TYPES[kind](name=name, **spec)
    except TypeError as exc:
        raise ValueError(f"channel {name!r} ({kind}): {exc}") from None


def build_channels(specs: Mapping[str, Mapping[str, Any]]) -> dict[str, Channel]:
    return {name: build_channel(name, spec) for name, spec in specs.items()}
