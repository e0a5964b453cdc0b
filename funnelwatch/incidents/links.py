"""Where an incident's page is: `$FUNNELWATCH_INCIDENT_BASE_URL/incidents/<id>`.

The base URL is the address people reach `funnelwatch serve` at (default
http://127.0.0.1:8765, the command's default); alerts and the Dagster metadata link to it.
It is read when a link is made, never at import.
"""

from __future__ import annotations

import os
from urllib.parse import quote

BASE_URL_ENV = "FUNNELWATCH_INCIDENT_BASE_URL"
DEFAULT_BASE_URL = "http://127.0.0.1:8765"


def base_url() -> str:
    """The configured base URL; ValueError (one clear line) when it is not http(s)."""
    value = (os.environ.get(BASE_URL_ENV) or DEFAULT_BASE_URL).strip().rstrip("/")
    if not value.startswith(("http://", "https://")):
        raise ValueError(f"{BASE_URL_ENV} must be an http(s) URL such as {DEFAULT_BASE_URL}, "
                         f"not {value!r}")
    return value


def incident_url(incident_id: str, base: str | None = None) -> str:
    """The incident page's URL (the id percent-encoded as one path segment)."""
    return f"{(base or base_url()).rstrip('/')}/incidents/{quote(str(incident_id), safe='')}"
