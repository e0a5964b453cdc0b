"""A small HTTP endpoint for incident feedback (stdlib only).

    POST /incidents/<incident_id>/feedback   {"label": "true"|"false_alarm"|"expected",
                                               "note"?: str, "author"?: str, "until"?: ISO}
        -> 202 {"feedback_id": ..., "status": "queued"}
        -> 400 {"error": ...}  bad JSON, bad label / fields, body too large (> MAX_BODY bytes)
        -> 401 {"error": ...}  a token is configured and `Authorization: Bearer <token>` differs
    GET /health -> 200 {"status": "ok", "pending": n}

The server only writes the spool folder (`feedback.submit`): it never opens the warehouse, so
it never waits for or blocks the pipeline, which applies the spool on its next run
(`feedback.ingest_spool`). The token comes from `FUNNELWATCH_FEEDBACK_TOKEN`, read once when
the server starts; it is never logged or echoed.
"""

from __future__ import annotations

import hmac
import json
import os
import re
import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import unquote

from funnelwatch.incidents import feedback

MAX_BODY = 16 * 1024
TOKEN_ENV = "FUNNELWATCH_FEEDBACK_TOKEN"
_FEEDBACK_PATH = re.compile(r"^/incidents/([^/]+)/feedback/?$")


class FeedbackServer(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self, address, spool_dir: Path, token: str | None):
        self.spool_dir = Path(spool_dir)
        self.token = token or None
        super().__init__(address, FeedbackHandler)


class FeedbackHandler(BaseHTTPRequestHandler):
    server: FeedbackServer
    server_version = "funnelwatch-feedback/1"

    def log_message(self, format, *args):
        # Method, path and status only (never headers, so never the token).
        sys.stderr.write(f"{self.address_string()} - {format % args}\n")

    def _reply(self, status: int, body: dict) -> None:
        data = json.dumps(body).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        if status == 401:
            self.send_header("WWW-Authenticate", 'Bearer realm="funnelwatch-feedback"')
        self.end_headers()
        self.wfile.write(data)

    def _authorised(self) -> bool:
        if self.server.token is None:
            return True
        header = self.headers.get("Authorization", "")
        scheme, _, given = header.partition(" ")
        return scheme.lower() == "bearer" and hmac.compare_digest(
            given.strip().encode(), self.server.token.encode())

    def do_GET(self):
        if self.path.split("?", 1)[0] == "/health":
            self._reply(200, {"status": "ok",
                              "pending": len(feedback.pending(self.server.spool_dir))})
        else:
            self._reply(404, {"error": "not found: GET /health, POST /incidents/<id>/feedback"})

    def do_POST(self):
        found = _FEEDBACK_PATH.match(self.path.split("?", 1)[0])
        if not found:
            self._reply(404, {"error": "not found: POST /incidents/<id>/feedback"})
            return
        if not self._authorised():
            self._reply(401, {"error": "missing or wrong bearer token"})
            return
        try:
            length = int(self.headers.get("Content-Length") or 0)
        except ValueError:
            self._reply(400, {"error": "bad Content-Length"})
            return
        if length > MAX_BODY:
            self.close_connection = True  # the unread body is not drained
            self._reply(400, {"error": f"body too large ({length} bytes, at most {MAX_BODY})"})
            return
        raw = self.rfile.read(length) if length > 0 else b""
        try:
            body = json.loads(raw.decode("utf-8"))
        except (UnicodeDecodeError, json.JSONDecodeError) as exc:
            self._reply(400, {"error": f"body is not valid JSON: {exc}"})
            return
        if not isinstance(body, dict):
            self._reply(400, {"error": "body must be a JSON object with a 'label'"})
            return
        unknown = set(body) - {"label", "note", "author", "until"}
        if unknown:
            self._reply(400, {"error": f"unknown fields: {', '.join(sorted(unknown))}"})
            return
        try:
            feedback_id = feedback.submit(
                self.server.spool_dir, unquote(found.group(1)), body.get("label"),
                note=body.get("note"), author=body.get("author"), until=body.get("until"))
        except ValueError as exc:
            self._reply(400, {"error": str(exc)})
            return
        except OSError:
            self._reply(503, {"error": "could not queue the feedback (spool folder)"})
            return
        self._reply(202, {"feedback_id": feedback_id, "status": "queued"})


def make_server(host: str = "127.0.0.1", port: int = 8765, spool_dir: str | Path = "data/feedback",
                token: str | None = None) -> FeedbackServer:
    """A bound server (port 0: any free port, see `server.server_address`). `token=None`
    reads `FUNNELWATCH_FEEDBACK_TOKEN` now; pass "" to force no token."""
    if token is None:
        token = os.environ.get(TOKEN_ENV) or None
    Path(spool_dir).mkdir(parents=True, exist_ok=True)
    return FeedbackServer((host, port), Path(spool_dir), token or None)


def serve(host: str = "127.0.0.1", port: int = 8765, spool_dir: str | Path = "data/feedback",
          token: str | None = None, echo=print) -> None:
    """Run until interrupted."""
    server = make_server(host, port, spool_dir, token)
    bound_host, bound_port = server.server_address[:2]
    echo(f"feedback endpoint on http://{bound_host}:{bound_port} "
         f"(POST /incidents/<id>/feedback, GET /health); spool: {server.spool_dir}; "
         f"auth: {'bearer token' if server.token else 'none (set ' + TOKEN_ENV + ')'}")
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        server.server_close()


def serve_in_thread(server: FeedbackServer) -> threading.Thread:
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    return thread
