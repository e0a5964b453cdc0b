"""The incident page (funnelwatch/incidents/page.py, `funnelwatch serve`): a real warehouse
with an incident, published to the analyst snapshot, the app on a real uvicorn server on a
free 127.0.0.1 port; plain HTTP for the routes and the token rules, and Debian's chromium
driven by Playwright for the click-through (skipped when /usr/bin/chromium is missing)."""

from __future__ import annotations

import html
import json
import urllib.error
import urllib.parse
import urllib.request
from datetime import timedelta
from pathlib import Path

import duckdb
import pytest
from typer.testing import CliRunner

from funnelwatch.detection.store import ensure_detection_schema, replace_window
from funnelwatch.incidents import feedback as fb
from funnelwatch.incidents.links import incident_url
from funnelwatch.incidents.page import ServeConfigError, make_server, serve_in_thread
from funnelwatch.incidents.store import ensure_incident_schema
from funnelwatch.publish import INCIDENT_TABLE_KEYS, open_snapshot, publish_marts
from tests.fixtures_incidents import (
    COHORT,
    DROP_START,
    END,
    INCIDENT_ID,
    START,
    WHERE,
    incident_row,
    seed_incident_warehouse,
    series_frame,
)

CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                 "--disable-component-update", "--no-first-run"]


@pytest.fixture
def published(paths, tmp_path):
    """A warehouse with one open incident (its series, members, timeline) published to the
    analyst snapshot; returns (warehouse, publish dir, spool dir)."""
    warehouse, publish = paths["warehouse"], paths["publish"]
    seed_incident_warehouse(warehouse, [(0, "opened", "4 anomalous points, severity 85")])
    with duckdb.connect(str(warehouse)) as con:
        for hour in range(4):
            con.execute("INSERT INTO incidents.members VALUES ($i, $h, $m, $c, $s, 'down')",
                        {"i": INCIDENT_ID, "h": DROP_START + timedelta(hours=hour),
                         "m": "checkout_conversion_rate", "c": COHORT, "s": 85.0 - hour})
    publish_marts(warehouse, publish)
    return warehouse, publish, tmp_path / "spool"


@pytest.fixture
def server(published):
    _, publish, spool = published
    srv = make_server("127.0.0.1", 0, spool, token="", publish_dir=publish)
    serve_in_thread(srv)
    yield srv, f"http://127.0.0.1:{srv.server_address[1]}"
    srv.shutdown()
    srv.server_close()


def _get(url, headers=None):
    request = urllib.request.Request(url, headers=headers or {})
    try:
        with urllib.request.urlopen(request, timeout=30) as response:
            return response.status, response.read().decode(), response.headers
    except urllib.error.HTTPError as err:
        return err.code, err.read().decode(), err.headers


class _NoRedirect(urllib.request.HTTPRedirectHandler):
    def redirect_request(self, *args, **kwargs):
        return None


def _post_form(url, fields: dict, headers=None):
    data = "&".join(f"{k}={urllib.parse.quote(v)}" for k, v in fields.items()).encode()
    request = urllib.request.Request(url, data=data, method="POST", headers={
        "Content-Type": "application/x-www-form-urlencoded", **(headers or {})})
    opener = urllib.request.build_opener(_NoRedirect)
    try:
        with opener.open(request, timeout=30) as response:
            return response.status, response.headers
    except urllib.error.HTTPError as err:
        return err.code, err.headers


def test_snapshot_holds_the_incident_tables_under_their_schemas(published):
    _, publish, _ = published
    con = open_snapshot(publish)
    try:
        assert con.execute("SELECT incident_id, state FROM incidents.incidents").fetchall() == [
            (INCIDENT_ID, "open")]
        assert con.execute("SELECT count(*) FROM incidents.members").fetchone()[0] == 4
        assert con.execute("SELECT count(*) FROM incidents.timeline").fetchone()[0] == 1
        assert con.execute("SELECT count(*) FROM detection.anomalies").fetchone()[0] == 7 * 24
        assert con.execute("SELECT count(*) FROM incidents.feedback").fetchone()[0] == 0
        columns = {r[0] for r in con.execute(
            "SELECT column_name FROM information_schema.columns").fetchall()}
        assert not columns & {"user_id", "session_id"}
    finally:
        con.close()


def test_publishing_only_the_incident_tables_keeps_the_others(published):
    warehouse, publish, _ = published
    with duckdb.connect(str(warehouse)) as con:
        con.execute("UPDATE incidents.incidents SET state = 'acknowledged'")
    before = json.loads((publish / "manifest.json").read_text())["detection.anomalies"]
    publish_marts(warehouse, publish, dates=[DROP_START.date()], only=INCIDENT_TABLE_KEYS)
    manifest = json.loads((publish / "manifest.json").read_text())
    assert set(manifest) >= set(INCIDENT_TABLE_KEYS)
    # Only the given day of a table with event_hour gets a new file.
    changed = {k for k, v in manifest["detection.anomalies"].items() if before.get(k) != v}
    assert changed == {f"date={DROP_START.date():%Y-%m-%d}"}
    con = open_snapshot(publish)
    try:
        assert con.execute("SELECT state FROM incidents.incidents").fetchone()[0] == "acknowledged"
        assert con.execute("SELECT count(*) FROM detection.anomalies").fetchone()[0] == 7 * 24
    finally:
        con.close()


def test_routes_list_page_404_and_health(server):
    _, base = server
    status, body, _ = _get(f"{base}/")
    assert status == 200 and INCIDENT_ID in body and f'href="/incidents/{INCIDENT_ID}"' in body
    status, body, _ = _get(f"{base}/incidents/{INCIDENT_ID}")
    assert status == 200
    assert "fell 18%" in body  # the one-line summary
    assert body.count('src="data:image/png;base64,') == 3  # band, funnel, revenue charts
    for heading in ("The metric against its expected band", "Symptoms: anomalous points",
                    "Where: top contributors", "Funnel: affected cohort vs the rest",
                    "Why: hypotheses", "Impact", "Timeline", "Playbook"):
        assert f"<h2>{heading}</h2>" in body, heading
    assert "deploy payment-widget 1.14.0" in body and html.escape(WHERE) in body
    assert "<script>" not in body and "&lt;script&gt;" in body  # the evidence is escaped
    assert f'action="/incidents/{INCIDENT_ID}/acknowledge"' in body
    assert f'action="/incidents/{INCIDENT_ID}/resolve"' in body

    status, body, _ = _get(f"{base}/incidents/inc-20261129-1400-checkou",
                           {"Accept": "text/html"})
    assert status == 404 and "no incident &#x27;inc-20261129-1400-checkou&#x27;" in body
    assert INCIDENT_ID in body  # the closest id
    status, body, _ = _get(f"{base}/incidents/nope")
    assert status == 404 and "no incident" in json.loads(body)["error"]
    status, body, _ = _get(f"{base}/nowhere")
    assert status == 404 and "not found" in json.loads(body)["error"]
    status, body, _ = _get(f"{base}/health")
    assert status == 200 and json.loads(body) == {"status": "ok", "pending": 0}


def test_form_actions_queue_then_apply_and_the_page_says_so(server, published):
    warehouse, publish, spool = published
    _, base = server
    page = f"{base}/incidents/{INCIDENT_ID}"
    status, headers = _post_form(f"{page}/acknowledge", {"author": "ann"})
    assert status == 303
    location = headers["Location"]
    assert location.startswith(f"/incidents/{INCIDENT_ID}?submitted=act-")
    action_id = location.split("submitted=")[1]
    status, body, _ = _get(base + location)
    assert status == 200 and f"Queued ({action_id})" in body and "acknowledge by ann" in body

    status, headers = _post_form(f"{page}/feedback", {"label": "meh"})
    assert status == 303 and "error=" in headers["Location"]
    status, body, _ = _get(base + headers["Location"])
    assert "Not queued: label must be one of" in body

    # The pipeline's incident step applies the spool and publishes the incident tables.
    with duckdb.connect(str(warehouse)) as con:
        result = fb.ingest_spool(con, spool)
        assert result.action_ids == [action_id] and result.applied == 0
        assert con.execute("SELECT state FROM incidents.incidents").fetchone()[0] == "acknowledged"
        assert con.execute("SELECT alert_version FROM incidents.incidents").fetchone()[0] == 2
    publish_marts(warehouse, publish, only=INCIDENT_TABLE_KEYS)
    status, body, _ = _get(base + location)
    assert f"Applied ({action_id})" in body and '<span id="state">acknowledged</span>' in body
    assert f'action="/incidents/{INCIDENT_ID}/acknowledge"' not in body  # no longer open

    status, headers = _post_form(f"{page}/resolve", {"author": "bo", "note": "rolled back"})
    assert status == 303
    status, headers = _post_form(f"{page}/feedback", {"label": "true", "author": "bo"})
    assert status == 303 and "submitted=fb-" in headers["Location"]
    with duckdb.connect(str(warehouse)) as con:
        result = fb.ingest_spool(con, spool)
        assert (result.actions_applied, result.applied) == (1, 1)
        state, feedback_label = con.execute(
            "SELECT state, feedback FROM incidents.incidents").fetchone()
        assert (state, feedback_label) == ("resolved", "true")
        kinds = [r[0] for r in con.execute(
            "SELECT kind FROM incidents.timeline ORDER BY recorded_at").fetchall()]
        assert kinds[-3:] == ["acknowledged", "resolved", "feedback"]


def test_unknown_incident_action_is_rejected_into_the_spool(tmp_path):
    con = duckdb.connect(str(tmp_path / "w.duckdb"))
    ensure_incident_schema(con)
    spool = tmp_path / "spool"
    action_id = fb.submit_action(spool, "inc-missing", "resolve", author="ann")
    with pytest.raises(ValueError, match="action must be one of"):
        fb.submit_action(spool, "inc-missing", "delete")
    result = fb.ingest_spool(con, spool)
    assert result.rejected == 1
    state, reason = fb.submission_status(spool, action_id)
    assert state == "rejected" and "unknown incident" in reason


def test_token_is_required_when_set_and_beyond_loopback(published, monkeypatch):
    _, publish, spool = published
    monkeypatch.delenv("FUNNELWATCH_FEEDBACK_TOKEN", raising=False)
    with pytest.raises(ServeConfigError, match="refusing to listen on 0.0.0.0 without a token"):
        make_server("0.0.0.0", 0, spool, publish_dir=publish)

    monkeypatch.setenv("FUNNELWATCH_FEEDBACK_TOKEN", "s3cret-token")
    srv = make_server("127.0.0.1", 0, spool, publish_dir=publish)  # the token is read here
    monkeypatch.delenv("FUNNELWATCH_FEEDBACK_TOKEN")
    serve_in_thread(srv)
    base = f"http://127.0.0.1:{srv.server_address[1]}"
    try:
        assert _get(f"{base}/")[0] == 401
        status, body, headers = _get(f"{base}/incidents/{INCIDENT_ID}", {"Accept": "text/html"})
        assert status == 401 and "?token=" in body and "s3cret" not in body
        assert headers["WWW-Authenticate"].startswith("Bearer")
        assert _get(f"{base}/", {"Authorization": "Bearer wrong"})[0] == 401
        assert _get(f"{base}/", {"Authorization": "Bearer s3cret-token"})[0] == 200
        assert _post_form(f"{base}/incidents/{INCIDENT_ID}/acknowledge", {})[0] == 401
        # A browser: ?token= once, then the cookie carries it (forms included).
        status, _, headers = _get(f"{base}/?token=s3cret-token")
        cookie = headers["Set-Cookie"]
        assert status == 200 and "HttpOnly" in cookie and "SameSite=strict" in cookie
        status, _ = _post_form(f"{base}/incidents/{INCIDENT_ID}/acknowledge", {},
                               {"Cookie": cookie.split(";")[0]})
        assert status == 303
        assert _get(f"{base}/health")[0] == 200  # no secret in it: open
    finally:
        srv.shutdown()
        srv.server_close()


def test_cli_serve_refuses_beyond_loopback_without_a_token(paths, monkeypatch):
    from funnelwatch.cli import app

    monkeypatch.delenv("FUNNELWATCH_FEEDBACK_TOKEN", raising=False)
    runner = CliRunner()
    for command in ("serve", "feedback-server"):
        result = runner.invoke(app, [command, "--host", "0.0.0.0", "--port", "0"])
        assert result.exit_code == 2, result.output
        assert "refusing to listen on 0.0.0.0 without a token" in result.output
        assert "Traceback" not in result.output
    monkeypatch.setenv("FUNNELWATCH_INCIDENT_BASE_URL", "incidents.example.com")
    result = runner.invoke(app, ["serve", "--port", "0"])
    assert result.exit_code == 2 and "must be an http(s) URL" in result.output


def test_links_use_the_base_url(monkeypatch):
    monkeypatch.delenv("FUNNELWATCH_INCIDENT_BASE_URL", raising=False)
    assert incident_url("inc-1") == "http://127.0.0.1:8765/incidents/inc-1"
    monkeypatch.setenv("FUNNELWATCH_INCIDENT_BASE_URL", "https://fw.example.com/")
    assert incident_url("a|b=c") == "https://fw.example.com/incidents/a%7Cb%3Dc"


def test_browser_opens_the_incident_and_acknowledges_it(server):
    if not CHROMIUM.is_file():
        pytest.skip(f"{CHROMIUM} is missing (apt-get install -y chromium)")
    sync_api = pytest.importorskip("playwright.sync_api")
    _, base = server
    with sync_api.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        try:
            page = browser.new_page()
            page.goto(f"{base}/")
            page.click(f'a[href="/incidents/{INCIDENT_ID}"]')
            page.wait_for_url(f"**/incidents/{INCIDENT_ID}")
            assert "fell 18%" in page.inner_text("p.summary")
            band = page.locator('img[alt="The metric against its expected band"]')
            assert band.count() == 1
            assert band.evaluate("img => img.complete && img.naturalWidth > 0")
            assert "Symptoms: anomalous points" in page.inner_text("body")
            assert "deploy payment-widget 1.14.0" in page.inner_text("body")
            page.fill('form[action$="/acknowledge"] input[name="author"]', "ann")
            page.click("#acknowledge")
            page.wait_for_url("**submitted=act-*")
            status = page.inner_text("#submission-status")
            assert status.startswith("Queued (act-") and "next pipeline run" in status
            assert "acknowledge by ann" in page.inner_text("#pending")
        finally:
            browser.close()


def test_incidents_asset_publishes_the_incident_tables_and_links_the_page(
        paths, tmp_path, monkeypatch, dbt_manifest):
    """The respond step applies a queued page action, publishes the incident tables to the
    snapshot (the page's source) and links the page in its metadata."""
    import dagster as dg

    from orchestration.resources import WarehouseResource
    from orchestration.respond.assets import incidents as incidents_asset
    from orchestration.respond.resources import IncidentSettings

    monkeypatch.setenv("FUNNELWATCH_INCIDENT_BASE_URL", "https://fw.example.com")
    warehouse, publish = paths["warehouse"], paths["publish"]
    warehouse.parent.mkdir(parents=True, exist_ok=True)
    with duckdb.connect(str(warehouse)) as con:
        ensure_detection_schema(con)
        replace_window(con, START, END, series_frame())
    spool = tmp_path / "spool"
    resources = {
        "warehouse": WarehouseResource(path=str(warehouse), publish_dir=str(publish)),
        "incident_settings": IncidentSettings(reports_dir=str(tmp_path / "reports"),
                                              feedback_dir=str(spool)),
    }

    def run(hour):
        result = dg.materialize([incidents_asset], resources=resources,
                                partition_key=f"{hour:%Y-%m-%d-%H:%M}")
        assert result.success
        return result.asset_materializations_for_node("incidents")[0].metadata

    meta = run(DROP_START)
    con = open_snapshot(publish)
    try:
        (inc_id, state), = con.execute(
            "SELECT incident_id, state FROM incidents.incidents").fetchall()
    finally:
        con.close()
    assert state == "open"
    assert meta["worst_incident_page"] == dg.MetadataValue.url(
        f"https://fw.example.com/incidents/{inc_id}")
    assert f"(https://fw.example.com/incidents/{inc_id})" in meta["incident_pages"].value

    fb.submit_action(spool, inc_id, "acknowledge", author="ann")
    meta = run(DROP_START + timedelta(hours=1))
    assert meta["page_actions_applied"].value == 1
    con = open_snapshot(publish)
    try:
        assert con.execute("SELECT state FROM incidents.incidents").fetchone()[0] == "acknowledged"
        assert con.execute("SELECT count(*) FROM incidents.members").fetchone()[0] >= 2
    finally:
        con.close()


def test_alerts_link_the_incident_page(monkeypatch):
    from funnelwatch.alerting.channels import Email, JsonWebhook, PagerDuty, SlackWebhook
    from funnelwatch.alerting.notification import Notification
    from funnelwatch.incidents.alerts import notification_for

    monkeypatch.setenv("FUNNELWATCH_INCIDENT_BASE_URL", "https://fw.example.com")
    row = incident_row()
    row["rca"] = None
    n = notification_for(row, "trigger")
    url = f"https://fw.example.com/incidents/{INCIDENT_ID}"
    assert n.url == url and Notification.from_dict(n.to_dict()) == n
    old_row = {k: v for k, v in n.to_dict().items() if k != "url"}  # queued before the field
    assert Notification.from_dict(old_row).url is None

    slack = json.dumps(SlackWebhook("s", url_env="X").render(n))
    assert f"<{url}|Open the incident page>" in slack
    event = PagerDuty("p", routing_key_env="X").render(n, "key", "https://wiki.example.com/pb")
    assert {"href": url, "text": "Incident page"} in event["links"]
    assert event["payload"]["custom_details"]["incident_page"] == url
    assert JsonWebhook("w", url_env="X").render(n)["notification"]["url"] == url
    msg = Email("e", host="127.0.0.1", port=25, sender="a@example.com",
                to=["b@example.com"]).render(n)
    html_part = next(p for p in msg.walk() if p.get_content_type() == "text/html")
    plain = next(p for p in msg.walk() if p.get_content_type() == "text/plain")
    assert f'<a href="{url}">Open the incident page</a>' in html_part.get_content()
    assert f"Incident page: {url}" in plain.get_content()
    with pytest.raises(ValueError, match="url must be an http"):
        Notification(**{**n.to_dict(), "chart_png": None, "url": "javascript:alert(1)"})
