"""Alert delivery against real local servers: an HTTP server (Slack, PagerDuty, webhooks)
and an SMTP server (aiosmtpd), a real DuckDB outbox, and the routing rules. Time is moved
by passing `now`; nothing sleeps."""

from __future__ import annotations

import email
import email.policy
import json
import logging
import socket
import struct
import threading
import zlib
from datetime import UTC, datetime, timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from zoneinfo import ZoneInfo

import duckdb
import pytest
from aiosmtpd.controller import Controller
from aiosmtpd.smtp import AuthResult

from funnelwatch.alerting import (
    Email,
    JsonWebhook,
    Notification,
    PagerDuty,
    SlackWebhook,
    backoff_delay,
    build_channels,
    deliver_due,
    enqueue,
    load_routing,
    parse_routing,
    requeue,
    route,
    status_summary,
)
from funnelwatch.alerting.routing import DEFAULT_ROUTING_PATH

T0 = datetime(2026, 12, 1, 12, 0, tzinfo=UTC)


def tiny_png() -> bytes:
    """A valid 1x1 PNG."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        body = kind + data
        return struct.pack(">I", len(data)) + body + struct.pack(">I", zlib.crc32(body))

    ihdr = struct.pack(">IIBBBBB", 1, 1, 8, 2, 0, 0, 0)
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr)
            + chunk(b"IDAT", zlib.compress(b"\x00\xff\x00\x00")) + chunk(b"IEND", b""))


def note(action: str = "trigger", **overrides) -> Notification:
    values = {
        "incident_id": "inc-42",
        "dedup_key": "funnelwatch:checkout_conversion_rate:device_type=mobile:2026-12-01T11",
        "action": action,
        "severity": 85.0,
        "title": "Checkout conversion dropped on mobile",
        "summary": "checkout_conversion_rate 1.2% vs expected 3.4% <in the last hour>",
        "metric": "checkout_conversion_rate",
        "cohort": "device_type=mobile",
        "team": "checkout",
        "fields": {"Expected": "3.4%", "Actual": "1.2%"},
        "playbook": "https://wiki.example.com/playbooks/checkout",
    }
    values.update(overrides)
    return Notification(**values)


# --- a real HTTP server -----------------------------------------------------------------------


class Recorder:
    """What the server received, and scripted failures per path (status codes to answer
    before it answers `ok_status`)."""

    def __init__(self):
        self.requests: list[dict] = []
        self.failures: dict[str, list[int]] = {}
        self.ok_status: dict[str, int] = {}
        self.lock = threading.Lock()

    def delivered(self, path: str) -> list[dict]:
        return [r for r in self.requests if r["path"] == path and r["status"] < 300]


@pytest.fixture
def http_server(monkeypatch):
    monkeypatch.setenv("NO_PROXY", "127.0.0.1,localhost")
    monkeypatch.setenv("no_proxy", "127.0.0.1,localhost")
    recorder = Recorder()

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self):
            body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
            with recorder.lock:
                queue = recorder.failures.get(self.path, [])
                status = queue.pop(0) if queue else recorder.ok_status.get(self.path, 200)
                recorder.requests.append({
                    "path": self.path, "status": status, "headers": dict(self.headers),
                    "json": json.loads(body),
                })
            # A careless server that echoes the request path (here: the secret) back.
            reply = b"ok" if status < 300 else f"error for {self.path}".encode()
            self.send_response(status)
            self.send_header("Content-Length", str(len(reply)))
            self.end_headers()
            self.wfile.write(reply)

        def log_message(self, *args):
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    recorder.base = f"http://127.0.0.1:{server.server_address[1]}"
    yield recorder
    server.shutdown()
    server.server_close()


@pytest.fixture
def con():
    connection = duckdb.connect()
    connection.execute("SET TimeZone = 'UTC'")
    yield connection
    connection.close()


def rows(con, where: str = "TRUE", params=()):
    cur = con.execute(
        "SELECT id, channel, action, status, attempts, next_attempt_at, last_error, payload, "
        f"sent_at FROM alerting.outbox WHERE {where} ORDER BY id", list(params))
    names = [d[0] for d in cur.description]
    return [dict(zip(names, r, strict=True)) for r in cur.fetchall()]


# --- channels ---------------------------------------------------------------------------------


def test_slack_block_kit(http_server, monkeypatch):
    monkeypatch.setenv("FW_TEST_SLACK_URL", f"{http_server.base}/slack/T000/B000/XXXX")
    slack = SlackWebhook("slack-test", url_env="FW_TEST_SLACK_URL")
    slack.send(note(), playbook="https://wiki.example.com/playbooks/checkout")
    slack.send(note("resolve"), playbook="Roll back the payment SDK.\nThen check the funnel.")
    first, second = (r["json"] for r in http_server.delivered("/slack/T000/B000/XXXX"))

    assert first["text"].startswith("[CRITICAL] Triggered: Checkout conversion")
    types = [b["type"] for b in first["blocks"]]
    assert types == ["header", "section", "section", "section", "context"]
    header = first["blocks"][0]["text"]
    assert header["type"] == "plain_text" and len(header["text"]) <= 150
    summary = first["blocks"][1]["text"]
    assert summary["type"] == "mrkdwn" and "&lt;in the last hour&gt;" in summary["text"]
    fields = [f["text"] for f in first["blocks"][2]["fields"]]
    assert "*Metric*\ncheckout_conversion_rate" in fields and "*Actual*\n1.2%" in fields
    assert len(fields) <= 10
    playbook_text = first["blocks"][3]["text"]["text"]
    assert "<https://wiki.example.com/playbooks/checkout|Playbook>" in playbook_text
    assert "inc-42" in first["blocks"][4]["elements"][0]["text"]
    assert second["blocks"][0]["text"]["text"].startswith("Resolved:")
    assert "Roll back the payment SDK." in second["blocks"][3]["text"]["text"]


def test_pagerduty_trigger_acknowledge_resolve_share_the_dedup_key(http_server, monkeypatch, con):
    monkeypatch.setenv("FW_TEST_PD_KEY", "R0UTINGKEY0000000000000000000000")
    pd = PagerDuty("pd", routing_key_env="FW_TEST_PD_KEY",
                   events_url=f"{http_server.base}/v2/enqueue", source="funnelwatch-test")
    http_server.ok_status["/v2/enqueue"] = 202
    for action in ("resolve", "acknowledge", "trigger"):  # enqueued out of order on purpose
        enqueue(con, note(action), ["pd"], now=T0)
    sent = deliver_due(con, {"pd": pd}, now=T0)
    assert [a.status for a in sent] == ["sent"] * 3

    events = [r["json"] for r in http_server.delivered("/v2/enqueue")]
    assert [e["event_action"] for e in events] == ["trigger", "acknowledge", "resolve"]
    assert {e["dedup_key"] for e in events} == {note().dedup_key}
    assert {e["routing_key"] for e in events} == {"R0UTINGKEY0000000000000000000000"}
    trigger = events[0]
    assert trigger["payload"]["severity"] == "critical"
    assert trigger["payload"]["source"] == "funnelwatch-test"
    assert trigger["payload"]["summary"].startswith("Checkout conversion dropped")
    details = trigger["payload"]["custom_details"]
    assert details["metric"] == "checkout_conversion_rate" and details["Actual"] == "1.2%"
    assert trigger["links"][0]["href"] == "https://wiki.example.com/playbooks/checkout"
    assert "payload" not in events[2]
    # The routing key is a secret: it is in the request, never in the outbox.
    assert all("R0UTINGKEY" not in r["payload"] for r in rows(con))


def test_email_html_with_inline_chart_over_real_smtp(monkeypatch):
    received = []

    class Handler:
        async def handle_DATA(self, server, session, envelope):
            received.append((envelope.mail_from, list(envelope.rcpt_tos), envelope.content))
            return "250 OK"

    def authenticator(server, session, envelope, mechanism, auth_data):
        ok = auth_data.login == b"alerts" and auth_data.password == b"smtp-pa55word-xyz"
        return AuthResult(success=ok, handled=False)  # handled=False: the server answers 535

    with socket.socket() as s:  # the Controller checks readiness by connecting: no port 0
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    controller = Controller(Handler(), hostname="127.0.0.1", port=port,
                            authenticator=authenticator, auth_require_tls=False)
    controller.start()
    try:
        monkeypatch.setenv("FW_TEST_SMTP_USER", "alerts")
        monkeypatch.setenv("FW_TEST_SMTP_PASSWORD", "smtp-pa55word-xyz")
        mail = Email("mail", host="127.0.0.1", port=port, sender="fw@example.com",
                     to=["oncall@example.com"], starttls=False, timeout_s=5,
                     username_env="FW_TEST_SMTP_USER", password_env="FW_TEST_SMTP_PASSWORD")
        chart = tiny_png()
        mail.send(note(chart_png=chart, summary="drop <b>big</b>"), playbook="Check the SDK.")

        # A wrong password: the server says no; the error names no secret.
        monkeypatch.setenv("FW_TEST_SMTP_PASSWORD", "wrong-pa55word-abc")
        with pytest.raises(Exception) as info:
            mail.send(note())
        assert "535" in str(info.value) and "wrong-pa55word" not in str(info.value)
    finally:
        controller.stop()

    assert len(received) == 1
    mail_from, rcpts, content = received[0]
    assert mail_from == "fw@example.com" and rcpts == ["oncall@example.com"]
    msg = email.message_from_bytes(content, policy=email.policy.default)
    assert msg["Subject"].strip() == (
        "[funnelwatch] [CRITICAL] Triggered: Checkout conversion dropped on mobile")
    assert msg.get_content_type() == "multipart/alternative"
    kinds = [p.get_content_type() for p in msg.walk()]
    assert kinds == ["multipart/alternative", "text/plain", "multipart/related", "text/html",
                     "image/png"]
    html_part = next(p for p in msg.walk() if p.get_content_type() == "text/html")
    image = next(p for p in msg.walk() if p.get_content_type() == "image/png")
    cid = image["Content-ID"].strip("<>")
    body = html_part.get_content()
    assert f'src="cid:{cid}"' in body
    assert "drop &lt;b&gt;big&lt;/b&gt;" in body and "Check the SDK." in body
    assert image.get_payload(decode=True) == chart
    assert "smtp-pa55word" not in content.decode("utf-8", "replace")


# --- the outbox -------------------------------------------------------------------------------


def test_channel_down_then_up_retries_with_backoff_and_delivers_once(http_server, monkeypatch, con):
    path = "/hooks/flaky"
    monkeypatch.setenv("FW_TEST_HOOK_URL", http_server.base + path)
    hook = JsonWebhook("hook", url_env="FW_TEST_HOOK_URL")
    http_server.failures[path] = [500, 500]
    n = note()
    assert len(enqueue(con, n, ["hook"], now=T0)) == 1
    assert enqueue(con, n, ["hook"], now=T0 + timedelta(seconds=5)) == []  # a no-op
    assert len(rows(con)) == 1

    def status():
        (row,) = rows(con)
        return row["status"], row["attempts"], row["next_attempt_at"]

    assert [a.status for a in deliver_due(con, {"hook": hook}, now=T0)] == ["failed"]
    assert status() == ("failed", 1, T0 + timedelta(minutes=1))
    assert deliver_due(con, {"hook": hook}, now=T0 + timedelta(seconds=59)) == []  # not due
    assert [a.status for a in deliver_due(con, {"hook": hook}, T0 + timedelta(minutes=1))] == [
        "failed"]
    assert status() == ("failed", 2, T0 + timedelta(minutes=3))  # 1 min, then 2 min
    assert deliver_due(con, {"hook": hook}, now=T0 + timedelta(minutes=2)) == []
    summary = status_summary(con, now=T0 + timedelta(minutes=2))
    assert summary["by_status"]["failed"] == 1 and summary["due_now"] == 0
    assert summary["oldest_undelivered_age_s"] == 120

    assert [a.status for a in deliver_due(con, {"hook": hook}, T0 + timedelta(minutes=3))] == [
        "sent"]
    (row,) = rows(con)
    assert row["status"] == "sent" and row["attempts"] == 3
    assert row["sent_at"] == T0 + timedelta(minutes=3)
    assert "HTTP 500" in row["last_error"]
    assert deliver_due(con, {"hook": hook}, now=T0 + timedelta(days=1)) == []  # never again
    assert enqueue(con, n, ["hook"], now=T0 + timedelta(days=1)) == []

    assert len(http_server.delivered(path)) == 1
    assert [r["status"] for r in http_server.requests] == [500, 500, 200]
    body = http_server.delivered(path)[0]["json"]
    assert body["type"] == "funnelwatch.alert"
    assert body["notification"]["dedup_key"] == n.dedup_key
    summary = status_summary(con, now=T0 + timedelta(days=1))
    assert summary["by_status"] == {"pending": 0, "sent": 1, "failed": 0, "dead": 0}
    assert summary["by_channel"]["hook"]["sent"] == 1


def test_secrets_from_the_environment_never_reach_the_table_or_the_logs(
    http_server, monkeypatch, con, caplog
):
    secret_path = "/services/T01/B02/s3cretWebhookToken123"
    monkeypatch.setenv("FW_TEST_SECRET_URL", http_server.base + secret_path)
    monkeypatch.setenv("FW_TEST_SECRET_TOKEN", "tok-9f8e7d6c5b4a")
    hook = JsonWebhook("secret-hook", url_env="FW_TEST_SECRET_URL",
                       token_env="FW_TEST_SECRET_TOKEN")
    http_server.failures[secret_path] = [503]  # its body echoes the secret path
    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        closed_port = s.getsockname()[1]
    monkeypatch.setenv("FW_TEST_DOWN_URL", f"http://127.0.0.1:{closed_port}/hook/d0wnS3cret77")
    down = JsonWebhook("down-hook", url_env="FW_TEST_DOWN_URL")
    missing = SlackWebhook("unset-slack", url_env="FW_TEST_UNSET_URL")
    monkeypatch.delenv("FW_TEST_UNSET_URL", raising=False)

    enqueue(con, note(), ["secret-hook", "down-hook", "unset-slack"], now=T0)
    senders = {"secret-hook": hook, "down-hook": down, "unset-slack": missing}
    with caplog.at_level(logging.DEBUG):
        attempts = deliver_due(con, senders, now=T0)
    assert {a.status for a in attempts} == {"failed"}
    first = http_server.requests[0]
    assert first["headers"]["Authorization"] == "Bearer tok-9f8e7d6c5b4a"

    errors = {r["channel"]: r["last_error"] for r in rows(con)}
    assert "HTTP 503" in errors["secret-hook"] and "***" in errors["secret-hook"]
    assert "cannot connect" in errors["down-hook"]
    assert "FW_TEST_UNSET_URL" in errors["unset-slack"]  # the name is fine, a value is not
    dump = json.dumps([rows(con), status_summary(con, T0)], default=str) + caplog.text
    for secret in ("s3cretWebhookToken123", "tok-9f8e7d6c5b4a", "d0wnS3cret77"):
        assert secret not in dump
        assert secret not in repr(hook) + repr(down)

    deliver_due(con, senders, now=T0 + timedelta(minutes=1))
    assert {r["channel"]: r["status"] for r in rows(con)}["secret-hook"] == "sent"


def test_dead_after_max_attempts_or_a_permanent_error_and_requeue(http_server, monkeypatch, con):
    monkeypatch.setenv("FW_TEST_BAD_URL", http_server.base + "/bad")
    monkeypatch.setenv("FW_TEST_GONE_URL", http_server.base + "/gone")
    senders = build_channels({"bad": {"type": "webhook", "url_env": "FW_TEST_BAD_URL"},
                              "gone": {"type": "slack", "url_env": "FW_TEST_GONE_URL"}})
    http_server.failures["/bad"] = [502] * 3
    http_server.failures["/gone"] = [404]  # a revoked Slack webhook: no retry fixes that
    enqueue(con, note(), ["bad", "gone"], now=T0)
    now = T0
    for _ in range(3):
        deliver_due(con, senders, now=now, max_attempts=3)
        now += timedelta(hours=1)
    states = {r["channel"]: (r["status"], r["attempts"]) for r in rows(con)}
    assert states == {"bad": ("dead", 3), "gone": ("dead", 1)}
    assert deliver_due(con, senders, now=now + timedelta(days=1)) == []
    summary = status_summary(con, now)
    assert summary["by_status"]["dead"] == 2 and len(summary["dead"]) == 2

    assert requeue(con, now, ids=[r["id"] for r in rows(con, "channel = ?", ["bad"])]) == 1
    assert [a.status for a in deliver_due(con, senders, now=now)] == ["sent"]
    assert {r["channel"]: r["status"] for r in rows(con)} == {"bad": "sent", "gone": "dead"}
    assert len(rows(con)) == 2  # nothing is ever deleted


def test_resolve_waits_for_its_trigger(http_server, monkeypatch, con):
    monkeypatch.setenv("FW_TEST_PD_KEY", "pdkey-abcdef0123456789")
    pd = PagerDuty("pd", routing_key_env="FW_TEST_PD_KEY",
                   events_url=f"{http_server.base}/pd")
    http_server.failures["/pd"] = [500]
    enqueue(con, note("trigger"), ["pd"], now=T0)
    enqueue(con, note("resolve"), ["pd"], now=T0)
    assert [(a.action, a.status) for a in deliver_due(con, {"pd": pd}, now=T0)] == [
        ("trigger", "failed")]
    later = deliver_due(con, {"pd": pd}, now=T0 + timedelta(minutes=1))
    assert [(a.action, a.status) for a in later] == [("trigger", "sent"), ("resolve", "sent")]
    assert [r["json"]["event_action"] for r in http_server.delivered("/pd")] == [
        "trigger", "resolve"]


def test_backoff_schedule_is_deterministic_and_capped():
    assert [backoff_delay(n).total_seconds() / 60 for n in range(1, 9)] == [
        1, 2, 4, 8, 16, 32, 60, 60]


# --- routing ----------------------------------------------------------------------------------

ROUTING = {
    "timezone": "Europe/Berlin",
    "critical_severity": 80,
    "channels": {
        "pd": {"type": "pagerduty", "routing_key_env": "X_PD"},
        "slack": {"type": "slack", "url_env": "X_SLACK"},
        "mail": {"type": "email", "host": "localhost", "port": 25, "from": "a@b.c",
                 "to": ["d@e.f"]},
    },
    "teams": {
        "growth": {"quiet_hours": {"start": 1320, "end": "08:00"},  # 22:00 as YAML 1.1 reads it
                   "playbook": "growth team playbook"},
        "checkout": {},
    },
    "rules": [
        {"name": "page", "team": "checkout", "metric": "checkout_*", "min_severity": 80,
         "channels": ["pd", "slack"], "playbook": "https://wiki/page"},
        {"name": "chat", "min_severity": 40, "channels": ["slack", "mail"]},
        {"name": "campaigns", "cohort": "*utm_campaign=*", "channels": ["mail"], "stop": True},
        {"name": "after-stop", "channels": ["pd"]},
    ],
}


def cfg(**changes):
    raw = json.loads(json.dumps(ROUTING))
    for path, value in changes.items():
        node = raw
        *head, last = path.split("__")
        for key in head:
            node = node[int(key)] if isinstance(node, list) else node[key]
        node[last] = value
    return parse_routing(raw)


def test_route_by_severity_metric_team_with_playbooks():
    result = route(note(severity=85), cfg(), T0)
    assert list(result) == [("pd", "https://wiki/page"), ("slack", "https://wiki/page"),
                            ("mail", note().playbook)]
    assert result.matched_rules == ("page", "chat", "after-stop")
    assert route(note(severity=60), cfg(), T0).channels == ["slack", "mail", "pd"]
    low = route(note(severity=10, cohort="utm_campaign=x&os=iOS"), cfg(), T0)
    assert low.channels == ["mail"] and low.matched_rules == ("campaigns",)  # stop
    assert route(note(severity=85, metric="sessions"), cfg(), T0).matched_rules == (
        "chat", "after-stop")
    nothing = route(note(severity=10), cfg(rules__3__min_severity=50), T0)
    assert list(nothing) == [] and nothing.suppressed[0].reason == "no rule matches"


def test_quiet_hours_hold_back_all_but_critical():
    night = datetime(2026, 12, 1, 23, 30, tzinfo=ZoneInfo("Europe/Berlin"))
    early = datetime(2026, 12, 2, 7, 59, tzinfo=ZoneInfo("Europe/Berlin"))
    day = datetime(2026, 12, 2, 8, 0, tzinfo=ZoneInfo("Europe/Berlin"))
    growth = note(team="growth", severity=50, metric="add_to_cart_rate")
    for when in (night, early, night.astimezone(UTC)):
        held = route(growth, cfg(), when)
        assert list(held) == []
        assert {s.rule for s in held.suppressed} == {"chat", "after-stop"}
        assert "quiet hours of team growth (22:00-08:00 Europe/Berlin)" in held.suppressed[0].reason
    assert route(growth, cfg(), day).channels == ["slack", "mail", "pd"]
    assert next(iter(route(growth, cfg(), day))) == ("slack", "growth team playbook")
    critical = route(note(team="growth", severity=80), cfg(), night)
    assert critical.channels == ["slack", "mail", "pd"] and critical.suppressed == ()
    weekdays = cfg(teams__growth__quiet_hours__days=["mon"])  # 2026-12-01 is a Tuesday
    assert route(growth, weekdays, night).channels != []
    # A rule's own quiet hours replace the team's.
    own = cfg(rules__1__quiet_hours={"start": "12:00", "end": "13:00", "timezone": "UTC"})
    assert route(growth, own, night).channels == ["slack", "mail"]
    assert "rule chat" in route(growth, own, T0).suppressed[0].reason


def test_mute_and_snooze_hold_back_everything():
    critical = note(severity=99)
    muted = route(critical, cfg(teams__checkout={"mute": True}), T0)
    assert list(muted) == [] and all("team checkout is muted" == s.reason
                                     for s in muted.suppressed)
    rule_muted = route(critical, cfg(rules__0__mute=True), T0)
    assert rule_muted.channels == ["slack", "mail", "pd"]  # page is muted, chat still posts
    assert rule_muted.deliveries[0].rule == "chat"
    assert rule_muted.suppressed[0] == ("page", ("pd", "slack"), "rule page is muted")

    snoozed = cfg(teams__checkout={"snooze_until": "2026-12-01T14:00:00"})  # Berlin time
    held = route(critical, snoozed, datetime(2026, 12, 1, 12, 59, tzinfo=UTC))
    assert list(held) == []
    assert "snoozed until 2026-12-01T14:00:00+01:00" in held.suppressed[0].reason
    assert len(route(critical, snoozed, datetime(2026, 12, 1, 13, 0, tzinfo=UTC))) == 3


def test_repo_routing_file_loads_and_holds_no_secrets(con):
    config = load_routing(DEFAULT_ROUTING_PATH)
    assert {r.name for r in config.rules} >= {"checkout-page", "everything-to-the-bus"}
    result = route(note(), config, T0)
    assert result.channels[:2] == ["pagerduty-checkout", "slack-checkout"]
    assert enqueue(con, note(), result, now=T0) and len(rows(con)) == len(result)
    text = DEFAULT_ROUTING_PATH.read_text()
    assert "hooks.slack.com" not in text and "routing_key:" not in text
    with pytest.raises(ValueError, match="secret"):
        parse_routing({"channels": {"s": {"type": "slack", "url": "https://hooks.slack.com/x"}}})
    with pytest.raises(ValueError, match="undefined channels"):
        parse_routing({"channels": {}, "rules": [{"name": "r", "channels": ["nope"]}]})
    with pytest.raises(ValueError):
        Notification(**{**note().to_dict(), "severity": 101})
