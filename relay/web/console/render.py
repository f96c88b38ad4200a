"""console.render: pages from the templates, and the headers every console answer carries.

Templates are Jinja2 with autoescaping on for everything: whatever came from mail or the
API (subjects, addresses, headers, replies, fields) is text on the page, never markup.
The Content-Security-Policy allows scripts and styles from the console's own files only,
so even a value that slipped through escaping could not run.
"""

from __future__ import annotations

import json
import time
from importlib import resources
from typing import Any

from fastapi.responses import HTMLResponse, RedirectResponse, Response
from jinja2 import Environment, PackageLoader, StrictUndefined, select_autoescape

SECURITY_HEADERS = {
    "Content-Security-Policy": (
        "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self'; "
        "connect-src 'self'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'"),
    "X-Content-Type-Options": "nosniff",
    "X-Frame-Options": "DENY",
    "Referrer-Policy": "same-origin",  # "no-referrer" would make a form's Origin "null"
    "Cache-Control": "no-store",
}


def _age(seconds: float | None) -> str:
    """'3d 4h', '5m 2s': how long ago, or how long from now for a negative one."""
    if seconds is None:
        return "-"
    later, seconds = seconds < 0, abs(int(seconds))
    parts: list[str] = []
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60), ("s", 1)):
        if seconds >= size or (unit == "s" and not parts):
            parts.append(f"{seconds // size}{unit}")
            seconds %= size
        if len(parts) == 2:
            break
    return ("in " if later else "") + " ".join(parts)


def _when(at: float | None) -> str:
    return "-" if at is None else time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(at))


def _size(size: int) -> str:
    if size < 1024:
        return f"{size} bytes"
    return f"{size / 1024:.1f} KB" if size < 1024 * 1024 else f"{size / 1024 / 1024:.1f} MB"


def _details(data: dict[str, Any]) -> str:
    """An event's data as `name: value` pairs (escaped by the template like the rest); a
    time (`next_attempt_at`) as a date, as every time on the pages."""
    def shown(name: str, value: Any) -> str:
        if name.endswith("_at") and isinstance(value, int | float):
            return _when(value)
        return value if isinstance(value, str) else json.dumps(value)

    return " · ".join(f"{name}: {shown(name, value)}" for name, value in data.items())


def _environment() -> Environment:
    env = Environment(loader=PackageLoader("relay.web.console", "templates"),
                      autoescape=select_autoescape(default=True, default_for_string=True),
                      undefined=StrictUndefined, trim_blocks=True, lstrip_blocks=True)
    env.filters.update(when=_when, size=_size,
                       ago=lambda at: _age(None if at is None else time.time() - at),
                       json=lambda value: json.dumps(value, ensure_ascii=False, indent=1),
                       details=_details)
    return env


_ENV = _environment()


def page(template: str, status: int = 200, **context: Any) -> HTMLResponse:
    html = _ENV.get_template(template).render(**context)
    return HTMLResponse(html, status, headers=SECURITY_HEADERS)


def redirect(to: str) -> RedirectResponse:
    return RedirectResponse(to, 303, headers=SECURITY_HEADERS)


def static(name: str) -> Response:
    """One of the console's own files (its stylesheet and script)."""
    data = resources.files("relay.web.console").joinpath("static", name).read_bytes()
    kind = {"css": "text/css", "js": "text/javascript", "svg": "image/svg+xml"}[
        name.rsplit(".", 1)[-1]]
    return Response(data, media_type=kind, headers=SECURITY_HEADERS)
