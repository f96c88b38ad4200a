"""feedback.unsubscribe: the public listener of one-click unsubscribe (RFC 8058).

`[public] listen` serves exactly this, apart from the admin API and without its token:
the signed token in the path is the authority (feedback.tokens).

- `POST /u/TOKEN` (a mailbox provider's one-click, body `List-Unsubscribe=One-Click`):
  records `unsubscribed` and the suppression in the token's stream; 200, also again.
- `GET /u/TOKEN` (a person following the link): a page with a button that POSTs, since
  RFC 8058 forbids unsubscribing on GET (link scanners fetch every URL).

Everything else is 404; a token that is not ours is 404 too, a body over 4 KB is 413.
"""

from __future__ import annotations

from collections.abc import Callable

from fastapi import FastAPI, Request
from fastapi.responses import HTMLResponse, PlainTextResponse, Response

from relay.core.errors import LocalFailure
from relay.feedback.intake import unsubscribed
from relay.feedback.tokens import FeedbackTokens
from relay.queue.roles import FeedbackStore

MAX_BODY = 4096
MAX_TOKEN = 1024

_PAGE = """<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>Unsubscribe</title>
<meta name="viewport" content="width=device-width, initial-scale=1"></head>
<body style="font-family: sans-serif; max-width: 32em; margin: 4em auto">
<h1>Unsubscribe</h1>
<p>Stop receiving these messages at this address?</p>
<form method="post"><input type="hidden" name="List-Unsubscribe" value="One-Click">
<button type="submit">Unsubscribe</button></form>
</body></html>
"""
_DONE = """<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>Unsubscribed</title></head>
<body style="font-family: sans-serif; max-width: 32em; margin: 4em auto">
<h1>Unsubscribed</h1><p>You will not receive these messages any more.</p>
</body></html>
"""


def create_public_app(queue: FeedbackStore, tokens: FeedbackTokens,
                      counted: Callable[[str], None] = lambda kind: None) -> FastAPI:
    app = FastAPI(openapi_url=None, docs_url=None, redoc_url=None)

    def known(token: str) -> bool:
        return len(token) <= MAX_TOKEN and tokens.read_unsubscribe(token) is not None

    @app.get("/u/{token}")
    async def page(token: str) -> Response:
        if not known(token):
            return _not_found()
        return HTMLResponse(_PAGE, headers=_PRIVATE)

    @app.post("/u/{token}")
    async def one_click(token: str, request: Request) -> Response:
        size = 0
        async for chunk in request.stream():
            size += len(chunk)
            if size > MAX_BODY:
                return PlainTextResponse("request body too large\n", 413)
        copy = tokens.read_unsubscribe(token) if len(token) <= MAX_TOKEN else None
        if copy is None:
            return _not_found()
        try:
            await queue.record_feedback(unsubscribed(copy, "one-click"))
        except LocalFailure:  # the queue cannot be written now (a full disk): again later
            return PlainTextResponse("try again later\n", 503, headers=_PRIVATE)
        counted("unsubscribed")
        if "text/html" in request.headers.get("accept", ""):
            return HTMLResponse(_DONE, headers=_PRIVATE)
        return PlainTextResponse("unsubscribed\n", headers=_PRIVATE)

    @app.api_route("/{path:path}", methods=["GET", "POST", "PUT", "DELETE", "PATCH",
                                            "HEAD", "OPTIONS"], include_in_schema=False)
    async def nothing_else(path: str) -> Response:
        return _not_found()

    return app


_PRIVATE = {"Cache-Control": "no-store", "X-Robots-Tag": "noindex",
            "Referrer-Policy": "no-referrer"}


def _not_found() -> Response:
    return PlainTextResponse("not found\n", 404, headers=_PRIVATE)
