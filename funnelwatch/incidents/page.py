"""The incident page: a small Starlette app served by uvicorn (`funnelwatch serve`).

    GET  /                               the incidents list (unresolved + resolved in the last 7 days)
    GET  /incidents/<id>                 one incident: summary, band chart, symptoms, where,
                                         funnel, causes with evidence, impact, timeline,
                                         playbook, and forms to acknowledge, resolve, give feedback
    POST /incidents/<id>/acknowledge     form -> 303 to the page (shows queued / applied)
    POST /incidents/<id>/resolve         form -> 303 to the page
    POST /incidents/<id>/feedback        JSON {"label", "note"?, "author"?, "until"?} -> 202
                                         {"feedback_id", "status": "queued"}; 400 / 401 as
                                         before; a form (the page's) -> 303 to the page
    GET  /health                         {"status": "ok", "pending": n}

Reads come from the analyst snapshot (funnelwatch/publish.py), never the warehouse: the
pipeline holds DuckDB's single write lock for minutes, and a reader could not even open it.
Writes (acknowledge, resolve, feedback) go into the feedback spool (`feedback.submit`,
`feedback.submit_action`) rather than a short `connect_when_free` write: a request then never
waits up to 20 s for the pipeline's lock, and the app never takes the write lock itself, so it
can never make a pipeline run fail to open the warehouse. The price is latency: the next
pipeline run (the `incidents` asset, or `funnelwatch feedback`) applies the spool and publishes
the incident tables; the page says which of queued / applied / rejected a submission is.

Auth: `FUNNELWATCH_FEEDBACK_TOKEN`, read once when the server is made. When set, every route but
/health needs it: `Authorization: Bearer <token>`, or for a browser `?token=<token>` once (it
becomes an HttpOnly, SameSite=Strict cookie, which also keeps other sites from posting the
forms). A server listening beyond loopback refuses to start without a token. The token is
compared in constant time and never logged (the access log has method, path and status only).
"""

from __future__ import annotations

import hmac
import ipaddress
import json
import socket
import sys
import threading
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, quote

from funnelwatch.incidents import feedback

MAX_BODY = 16 * 1024
TOKEN_ENV = "FUNNELWATCH_FEEDBACK_TOKEN"
TOKEN_COOKIE = "funnelwatch_token"
MAX_SYMPTOMS = 50
FEEDBACK_FIELDS = {"label", "note", "author", "until"}


class ServeConfigError(ValueError):
    """The server cannot start as asked (one line, for the CLI)."""


def is_loopback(host: str) -> bool:
    if host.strip().lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False  # a name other than localhost may resolve anywhere


# --- reading the snapshot ------------------------------------------------------------------------


def _rows(con, sql: str, params: dict | None = None) -> list[dict[str, Any]]:
    import duckdb

    try:
        cur = con.execute(sql, params or {})
    except duckdb.CatalogException:  # the snapshot has no incident tables (yet)
        return []
    names = [d[0] for d in cur.description]
    return [dict(zip(names, row, strict=True)) for row in cur.fetchall()]


def _published_at(con) -> str:
    from funnelwatch.incidents.report import _when

    rows = _rows(con, "SELECT published_at FROM snapshot_info")
    return _when(rows[0]["published_at"]) if rows else "-"


def _symptoms(con, incident: dict[str, Any]):
    """The incident's anomalous points (incidents.members) as a report Section, worst first.
    Without the incident's cohort no cohort is named (the report's rule)."""
    from funnelwatch.incidents.report import Section, Table, _fmt, _when

    rows = _rows(con, """SELECT event_hour, metric, cohort, severity, direction
                         FROM incidents.members WHERE incident_id = $i
                         ORDER BY severity DESC NULLS LAST, event_hour""",
                 {"i": incident["incident_id"]})
    section = Section("Symptoms: anomalous points")
    if not rows:
        section.paragraphs.append("No member points in the snapshot.")
        return section
    show_cohort = bool(incident.get("cohort"))
    headers = ["hour", "metric"] + (["cohort"] if show_cohort else []) + ["severity", "direction"]
    table = []
    for r in rows[:MAX_SYMPTOMS]:
        row = [_when(r["event_hour"]), str(r["metric"] or "-")]
        if show_cohort:
            row.append(str(r["cohort"] or "-"))
        table.append(row + [_fmt(r["severity"], 2), str(r["direction"] or "-")])
    section.table = Table(headers, table, frozenset({2}) if show_cohort else frozenset())
    if len(rows) > MAX_SYMPTOMS:
        section.note = f"{len(rows) - MAX_SYMPTOMS} more points not shown"
    return section


def list_context(publish_dir: Path) -> dict[str, Any]:
    from funnelwatch.incidents.commands import list_incidents
    from funnelwatch.incidents.report import _money, _orders, _when, incident_duration
    from funnelwatch.publish import open_snapshot

    try:
        con = open_snapshot(publish_dir)
    except FileNotFoundError as exc:
        return {"error": str(exc), "incidents": [], "hidden": 0, "published_at": "-"}
    try:
        rows, hidden = list_incidents(con, None, days=7, limit=200)
        published = _published_at(con)
    finally:
        con.close()
    shown = [{
        "id": r["incident_id"], "url": "/incidents/" + quote(str(r["incident_id"]), safe=""),
        "title": r.get("title") or r.get("metric") or r["incident_id"],
        "state": r.get("state") or "-",
        "severity": "-" if r.get("severity") is None else f"{r['severity']:.0f}",
        "started": _when(r.get("started_at")), "duration": incident_duration(r),
        "where": (r.get("where_cohort") or r.get("cohort") or "-") if r.get("cohort") else "-",
        "cause": r.get("top_cause") or "-", "lost_orders": _orders(r.get("lost_orders")),
        "revenue": _money(r.get("revenue_at_risk")),
    } for r in rows]
    return {"error": None, "incidents": shown, "hidden": hidden, "published_at": published}


def incident_context(publish_dir: Path, spool_dir: Path, incident_id: str,
                     submitted: str | None) -> dict[str, Any] | None:
    """What the incident page shows; None when the snapshot has no such incident. Raises
    FileNotFoundError when there is no snapshot."""
    import base64

    from funnelwatch.incidents.report import build_report, find_playbook
    from funnelwatch.publish import open_snapshot

    con = open_snapshot(publish_dir)
    try:
        found = _rows(con, "SELECT * FROM incidents.incidents WHERE incident_id = $i",
                      {"i": incident_id})
        if not found:
            return None
        incident = found[0]
        doc = build_report(con, incident, playbook=find_playbook(incident))
        doc.sections.insert(1, _symptoms(con, incident))
        published = _published_at(con)
    finally:
        con.close()
    status = None
    if submitted:
        state, reason = feedback.submission_status(spool_dir, submitted)
        status = {"id": submitted, "state": state, "reason": reason}
    images = {name: "data:image/png;base64," + base64.b64encode(data).decode("ascii")
              for name, data in doc.png.items()}
    path = "/incidents/" + quote(incident_id, safe="")
    return {
        "doc": doc, "images": images, "state": incident.get("state") or "open",
        "path": path, "pending": feedback.pending_for(spool_dir, incident_id),
        "submitted": status, "published_at": published, "labels": ("true", "false_alarm",
                                                                   "expected"),
    }


def closest_ids(publish_dir: Path, wanted: str) -> list[str]:
    import difflib

    from funnelwatch.publish import open_snapshot

    try:
        con = open_snapshot(publish_dir)
    except FileNotFoundError:
        return []
    try:
        ids = [r["incident_id"] for r in _rows(con, "SELECT incident_id FROM incidents.incidents")]
    finally:
        con.close()
    return difflib.get_close_matches(wanted, ids, n=5, cutoff=0.5)


# --- the app ---------------------------------------------------------------------------------------


def create_app(publish_dir: str | Path, spool_dir: str | Path, token: str | None):
    """The Starlette app. `token` None or "" means no auth (loopback only: see make_server)."""
    from starlette.applications import Starlette
    from starlette.concurrency import run_in_threadpool
    from starlette.requests import Request
    from starlette.responses import HTMLResponse, JSONResponse, RedirectResponse, Response
    from starlette.routing import Route

    from funnelwatch.templating import render

    publish_dir, spool_dir = Path(publish_dir), Path(spool_dir)
    token = token or None

    def page(template: str, status: int = 200, **context) -> HTMLResponse:
        return HTMLResponse(render(template, **context),
                            status_code=status)

    def wants_html(request: Request) -> bool:
        return "text/html" in request.headers.get("accept", "")

    def not_found(request: Request, message: str, closest: list[str] | None = None) -> Response:
        if wants_html(request):
            return page("page_404.html", 404, title="Not found", message=message,
                        closest=[{"id": i, "url": "/incidents/" + quote(i, safe="")}
                                 for i in closest or []])
        return JSONResponse({"error": message}, status_code=404)

    def authorised(request: Request) -> bool:
        if token is None:
            return True
        scheme, _, given = request.headers.get("authorization", "").partition(" ")
        candidates = [given.strip()] if scheme.lower() == "bearer" else []
        candidates += [request.query_params.get("token") or "",
                       request.cookies.get(TOKEN_COOKIE) or ""]
        return any(c and hmac.compare_digest(c.encode(), token.encode()) for c in candidates)

    def refused(request: Request) -> Response:
        message = "missing or wrong bearer token"
        if wants_html(request):
            response = page("page_error.html", 401, title="Token needed", message=(
                f"This page needs the token ({TOKEN_ENV}): open it once with ?token=<token> "
                "or send Authorization: Bearer <token>."))
        else:
            response = JSONResponse({"error": message}, status_code=401)
        response.headers["WWW-Authenticate"] = 'Bearer realm="funnelwatch"'
        return response

    def remember_token(request: Request, response: Response) -> Response:
        """A browser that authenticated with ?token= gets it as a cookie (then the forms work
        without the token in their URLs)."""
        given = request.query_params.get("token")
        if token is not None and given and hmac.compare_digest(given.encode(), token.encode()):
            response.set_cookie(TOKEN_COOKIE, token, httponly=True, samesite="strict",
                                secure=request.url.scheme == "https")
        return response

    async def read_body(request: Request) -> bytes:
        """At most MAX_BODY bytes; ValueError for a larger body (declared or sent)."""
        try:
            declared = int(request.headers.get("content-length") or 0)
        except ValueError:
            raise ValueError("bad Content-Length") from None
        if declared > MAX_BODY:
            raise ValueError(f"body too large ({declared} bytes, at most {MAX_BODY})")
        chunks, size = [], 0
        async for chunk in request.stream():
            size += len(chunk)
            if size > MAX_BODY:
                raise ValueError(f"body too large (more than {MAX_BODY} bytes)")
            chunks.append(chunk)
        return b"".join(chunks)

    def is_form(request: Request) -> bool:
        return request.headers.get("content-type", "").startswith(
            "application/x-www-form-urlencoded")

    def form_fields(raw: bytes) -> dict[str, str]:
        parsed = parse_qs(raw.decode("utf-8", "replace"), keep_blank_values=False)
        return {k: v[-1].strip() for k, v in parsed.items() if v and v[-1].strip()}

    def back_to_page(incident_id: str, submission_id: str | None = None,
                     error: str | None = None) -> Response:
        url = "/incidents/" + quote(incident_id, safe="")
        if submission_id:
            url += "?submitted=" + quote(submission_id, safe="")
        elif error:
            url += "?error=" + quote(error[:300], safe="")
        return RedirectResponse(url, status_code=303)

    async def health(request: Request) -> Response:
        return JSONResponse({"status": "ok", "pending": len(feedback.pending(spool_dir))})

    async def incidents_list(request: Request) -> Response:
        if not authorised(request):
            return refused(request)
        context = await run_in_threadpool(list_context, publish_dir)
        return remember_token(request, page("page_list.html", title="Incidents", **context))

    async def incident_page(request: Request) -> Response:
        if not authorised(request):
            return refused(request)
        incident_id = request.path_params["incident_id"]
        submitted = request.query_params.get("submitted")
        try:
            context = await run_in_threadpool(incident_context, publish_dir, spool_dir,
                                              incident_id, submitted)
        except FileNotFoundError as exc:
            return page("page_error.html", 503, title="No snapshot", message=str(exc))
        if context is None:
            closest = await run_in_threadpool(closest_ids, publish_dir, incident_id)
            return not_found(request, f"no incident {incident_id!r} in the analyst snapshot "
                                      "(it may be newer than the last pipeline run)", closest)
        context["error"] = request.query_params.get("error")
        return remember_token(request, page("page_incident.html", title=context["doc"].title,
                                            **context))

    async def body_fields(request: Request, not_an_object: str,
                          empty_json: dict | None = None) -> dict | Response:
        """The POST body's fields (a form or a JSON object), or the 400 response saying why
        not. `empty_json`: what an empty JSON body stands for (None: it is invalid JSON)."""
        try:
            raw = await read_body(request)
        except ValueError as exc:
            return JSONResponse({"error": str(exc)}, status_code=400)
        if is_form(request):
            return form_fields(raw)
        if not raw and empty_json is not None:
            return empty_json
        try:
            body = json.loads(raw.decode("utf-8"))
        except (UnicodeDecodeError, json.JSONDecodeError) as exc:
            return JSONResponse({"error": f"body is not valid JSON: {exc}"}, status_code=400)
        if not isinstance(body, dict):
            return JSONResponse({"error": not_an_object}, status_code=400)
        return body

    def queue(request: Request, incident_id: str, submit, id_key: str, what: str) -> Response:
        """Queue a submission into the spool: a form goes back to the page (with the id or the
        error), JSON gets 202 with the id, 400 for bad fields, 503 when the spool fails."""
        form = is_form(request)
        try:
            queued_id = submit()
        except ValueError as exc:
            if form:
                return back_to_page(incident_id, error=str(exc))
            return JSONResponse({"error": str(exc)}, status_code=400)
        except OSError:
            return JSONResponse({"error": f"could not queue the {what} (spool folder)"},
                                status_code=503)
        if form:
            return back_to_page(incident_id, queued_id)
        return JSONResponse({id_key: queued_id, "status": "queued"}, status_code=202)

    async def incident_action(request: Request) -> Response:
        if not authorised(request):
            return refused(request)
        incident_id, action = request.path_params["incident_id"], request.path_params["action"]
        fields = await body_fields(request, "body must be a JSON object", empty_json={})
        if isinstance(fields, Response):
            return fields
        return queue(request, incident_id, lambda: feedback.submit_action(
            spool_dir, incident_id, action, author=fields.get("author"),
            note=fields.get("note")), "action_id", "action")

    async def incident_feedback(request: Request) -> Response:
        if not authorised(request):
            return refused(request)
        incident_id = request.path_params["incident_id"]
        body = await body_fields(request, "body must be a JSON object with a 'label'")
        if isinstance(body, Response):
            return body
        unknown = set(body) - FEEDBACK_FIELDS
        if unknown:
            return JSONResponse({"error": f"unknown fields: {', '.join(sorted(unknown))}"},
                                status_code=400)
        return queue(request, incident_id, lambda: feedback.submit(
            spool_dir, incident_id, body.get("label"), note=body.get("note"),
            author=body.get("author"), until=body.get("until")), "feedback_id", "feedback")

    async def unknown_route(request: Request, exc) -> Response:
        return not_found(request, "not found: GET /, GET /incidents/<id>, GET /health, "
                                  "POST /incidents/<id>/feedback|acknowledge|resolve")

    async def wrong_method(request: Request, exc) -> Response:
        return JSONResponse({"error": f"{request.method} is not allowed here"}, status_code=405)

    routes = [
        Route("/", incidents_list, methods=["GET"]),
        Route("/health", health, methods=["GET"]),
        Route("/incidents/{incident_id}", incident_page, methods=["GET"]),
        Route("/incidents/{incident_id}/feedback", incident_feedback, methods=["POST"]),
        Route("/incidents/{incident_id}/feedback/", incident_feedback, methods=["POST"]),
        Route("/incidents/{incident_id}/{action:str}", incident_action, methods=["POST"]),
    ]
    app = Starlette(routes=routes, exception_handlers={404: unknown_route, 405: wrong_method})
    app.state.publish_dir, app.state.spool_dir, app.state.token = publish_dir, spool_dir, token
    return app


class AccessLog:
    """ASGI middleware: method, path and status on stderr; never the query (a ?token=) or
    headers (the bearer token)."""

    def __init__(self, app):
        self.app = app

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        status = {}

        async def send_logged(message):
            if message["type"] == "http.response.start":
                status["code"] = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, send_logged)
        finally:
            client = (scope.get("client") or ("-",))[0]
            sys.stderr.write(f"{client} - {scope['method']} {scope['path']} "
                             f"{status.get('code', '-')}\n")


# --- the server ------------------------------------------------------------------------------------


class PageServer:
    """uvicorn on a socket bound (and listening) here, so `server_address` holds the real port
    at once (port 0: any free port) and a client connecting before uvicorn runs just waits."""

    def __init__(self, app, host: str, port: int, token: str | None):
        import uvicorn

        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        self.socket = socket.socket(family, socket.SOCK_STREAM)
        self.socket.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            self.socket.bind((host, port))
        except OSError as exc:
            self.socket.close()
            raise ServeConfigError(f"cannot listen on {host}:{port}: {exc.strerror or exc}") from None
        self.socket.listen(128)
        self.server_address = self.socket.getsockname()[:2]
        self.app, self.token = app, token
        config = uvicorn.Config(AccessLog(app), log_level="warning", access_log=False,
                                lifespan="off", proxy_headers=False)
        self.server = uvicorn.Server(config)
        self._thread: threading.Thread | None = None

    @property
    def spool_dir(self) -> Path:
        return self.app.state.spool_dir

    def serve_forever(self) -> None:
        self.server.run(sockets=[self.socket])

    def shutdown(self) -> None:
        self.server.should_exit = True
        if self._thread is not None:
            self._thread.join()

    def server_close(self) -> None:
        self.socket.close()


def make_server(host: str = "127.0.0.1", port: int = 8765, spool_dir: str | Path = "data/feedback",
                token: str | None = None, publish_dir: str | Path | None = None) -> PageServer:
    """A bound server. `token=None` reads FUNNELWATCH_FEEDBACK_TOKEN now; pass "" to force no
    token (loopback only). `publish_dir` None: $FUNNELWATCH_PUBLISH_DIR (Settings). Raises
    ServeConfigError when asked to listen beyond loopback without a token."""
    import os

    from funnelwatch.settings import Settings

    if token is None:
        token = os.environ.get(TOKEN_ENV) or None
    token = token or None
    if token is None and not is_loopback(host):
        raise ServeConfigError(
            f"refusing to listen on {host} without a token: set {TOKEN_ENV} (the page and its "
            "forms then need it), or listen on 127.0.0.1")
    if publish_dir is None:
        publish_dir = Settings.from_env(export=False).publish_dir
    Path(spool_dir).mkdir(parents=True, exist_ok=True)
    app = create_app(publish_dir, spool_dir, token)
    return PageServer(app, host, port, token)


def serve_in_thread(server: PageServer) -> threading.Thread:
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    server._thread = thread
    thread.start()
    return thread


def serve(host: str = "127.0.0.1", port: int = 8765, spool_dir: str | Path = "data/feedback",
          publish_dir: str | Path | None = None, token: str | None = None, echo=print) -> None:
    """Run until interrupted (Ctrl-C)."""
    server = make_server(host, port, spool_dir, token, publish_dir)
    bound_host, bound_port = server.server_address
    shown = f"[{bound_host}]" if ":" in str(bound_host) else bound_host
    echo(f"incident page on http://{shown}:{bound_port}/ (GET /incidents/<id>, "
         f"POST /incidents/<id>/feedback|acknowledge|resolve, GET /health); "
         f"snapshot: {server.app.state.publish_dir}; spool: {server.spool_dir}; "
         f"auth: {'token' if server.token else 'none (loopback only; set ' + TOKEN_ENV + ')'}")
    try:
        server.serve_forever()
    finally:
        server.server_close()
