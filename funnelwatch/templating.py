"""The one set of HTML templates (`funnelwatch/templates/`): the incident page, the report's
`report.html` and the alert e-mail's body render from them, sharing a base and partials.

Autoescape is on for every template. Values are escaped with the standard library's
`html.escape` (quotes too) rather than markupsafe's own escaping, so the HTML the project writes
reads the same everywhere (`'` is `&#x27;`, as in the reports written before the templates).
"""

from __future__ import annotations

import html
from functools import lru_cache

import jinja2
from markupsafe import Markup


def _escape(value) -> Markup:
    if isinstance(value, Markup) or hasattr(value, "__html__"):
        return Markup(value.__html__())
    return Markup(html.escape("" if value is None else str(value), quote=True))


@lru_cache(maxsize=1)
def environment() -> jinja2.Environment:
    env = jinja2.Environment(
        loader=jinja2.PackageLoader("funnelwatch", "templates"),
        autoescape=True,
        finalize=_escape,  # runs before autoescape; a Markup result is not escaped again
        undefined=jinja2.StrictUndefined,  # a missing value is a bug, not an empty string
        trim_blocks=True,
        lstrip_blocks=True,
        keep_trailing_newline=True,
    )
    return env


def render(template: str, **context) -> str:
    return environment().get_template(template).render(**context)
