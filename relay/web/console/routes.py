"""console.routes: the console's pages and the forms they post, under /ui/.

Reading needs the `read` scope, every action `admin` (admin.callers.required_scope); the gate
(relay.web.gate) admits a request by its session cookie or, for scripts, its bearer token.
Actions are POSTed forms that carry the session's CSRF token and answer with a redirect
back to the page (post/redirect/get), so they work without JavaScript too.
"""

from __future__ import annotations

import json
import re
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from email.parser import HeaderParser
from typing import Any
from urllib.parse import parse_qs, quote, urlsplit

from fastapi import APIRouter, Request
from fastapi.responses import Response, StreamingResponse

from relay.core.errors import LocalFailure
from relay.queue import Queue, Selection, State
from relay.queue.apikeys import ApiScope
from relay.queue.base import EVERY_STREAM, SUPPRESSION_STREAM_PATTERN
from relay.queue.webhooks import WebhookEndpoint, WebhookState
from relay.web.admin.broadcast_routes import status_events
from relay.web.admin.callers import KeyRing, caller_of
from relay.web.admin.errors import ApiError
from relay.web.admin.suppression_routes import check_address
from relay.web.console.chart import delivery_chart
from relay.web.console.queue_view import WAITING, QueueFilter, rows_of, states_of
from relay.web.console.render import SECURITY_HEADERS, page, redirect, static
from relay.web.console.sessions import COOKIE, Session, Sessions

PREFIX = "/ui"
SIGN_IN = f"{PREFIX}/sign-in"
# What a client without a session may have: the sign-in page, its stylesheet and icon.
OPEN_PATHS = frozenset({("GET", SIGN_IN), ("POST", SIGN_IN),
                        ("GET", f"{PREFIX}/static/console.css"),
                        ("GET", f"{PREFIX}/static/favicon.svg")})
STATIC_FILES = ("console.css", "console.js", "favicon.svg")

CHART_STEP = 60.0  # seconds per bar: deliveries per minute
CHART_STEPS = 180  # three hours
QUEUE_PAGE = 500  # messages listed at most; the filters narrow it down
RECIPIENTS_LISTED = 50  # of one message, on its page, until asked for every one
MAX_HEADERS = 64 * 1024  # bytes of a message's head shown
ACTIONS = ("flush", "hold", "release", "requeue")  # relayctl's, besides delete


@dataclass(frozen=True)
class Console:
    """What the console works with."""

    queue: Queue
    keys: KeyRing
    sessions: Sessions
    wake: Callable[[], None]  # the scheduler: released or flushed mail
    webhooks: list[WebhookEndpoint]  # [[webhooks]] of the configuration
    cluster: bool  # the PostgreSQL backend: show the nodes


def is_console(path: str) -> bool:
    return path == PREFIX or path.startswith(PREFIX + "/")


def console_routes(console: Console) -> APIRouter:
    router = APIRouter(prefix=PREFIX, include_in_schema=False)
    queue = console.queue

    # -- signing in and out ------------------------------------------------------------

    @router.get("/sign-in")
    async def sign_in_page() -> Response:
        return page("sign_in.html", error="")

    @router.post("/sign-in")
    async def sign_in(request: Request) -> Response:
        _same_origin(request)
        token = _fields(await request.body()).get("token", "").strip().encode()
        try:
            caller = await console.keys.caller(token) if token else None
        except LocalFailure as exc:
            return page("sign_in.html", 503, error=f"Cannot check the key now: {exc}")
        if caller is None or not caller.allows(ApiScope.READ):
            return page("sign_in.html", 401, error="That is neither the admin token nor an "
                        "API key with the read scope.")
        try:
            cookie = await console.sessions.open(token)
        except LocalFailure as exc:
            return page("sign_in.html", 503, error=f"Cannot sign in now: {exc}")
        response = redirect(f"{PREFIX}/")
        response.set_cookie(COOKIE, cookie, max_age=int(console.sessions.lifetime),
                            path=PREFIX, httponly=True, samesite="strict",
                            secure=request.url.scheme == "https")
        return response

    @router.post("/sign-out")
    async def sign_out(request: Request) -> Response:
        await _form(request)
        session = _session(request)
        if session is not None:
            await console.sessions.close(session)
        response = redirect(SIGN_IN)
        response.delete_cookie(COOKIE, path=PREFIX)
        return response

    @router.get("/static/{name}")
    async def static_file(name: str) -> Response:
        if name not in STATIC_FILES:
            raise ApiError(404, "not_found", f"no file {name}", "name")
        return static(name)

    # -- overview ----------------------------------------------------------------------

    @router.get("")
    async def root() -> Response:
        return redirect(f"{PREFIX}/")

    @router.get("/")
    async def overview(request: Request) -> Response:
        since = (time.time() // CHART_STEP - CHART_STEPS + 1) * CHART_STEP
        stats = await queue.stats()
        activity = await queue.activity(since, CHART_STEP)
        return _page(request, "overview.html", stats=stats, states=WAITING,
                     chart=delivery_chart(activity, since, CHART_STEP, CHART_STEPS),
                     deferred=(await queue.summary(State.DEFERRED))[:10],
                     failing=await _failing_webhooks(queue, console.webhooks),
                     cluster=console.cluster,
                     nodes=await queue.nodes() if console.cluster else [],
                     holders={h.node: h for h in await queue.lease_holders()}
                     if console.cluster else {})

    # -- the queue ---------------------------------------------------------------------

    @router.get("/queue")
    async def queue_list(request: Request) -> Response:
        wanted = QueueFilter.of(request.query_params)
        messages = [] if wanted.problem else await queue.list_messages(
            **wanted.query(), limit=QUEUE_PAGE + 1)
        return _page(request, "queue.html", rows=rows_of(messages[:QUEUE_PAGE], wanted),
                     more=len(messages) > QUEUE_PAGE, wanted=wanted, states=WAITING,
                     problem=wanted.problem, notice=_notice(request))

    @router.get("/queue/act")
    async def confirm_bulk(request: Request, action: str = "") -> Response:
        """Before a bulk action: how many messages the filter picks, and a question."""
        wanted = QueueFilter.of(request.query_params)
        if action not in ACTIONS or wanted.problem:
            return _page(request, "missing.html", 404, what="No such action, or a filter "
                         f"that does not parse: {wanted.problem or action[:40]}")
        count = len(await _picked(queue, wanted))
        return _page(request, "bulk.html", action=action, wanted=wanted, count=count)

    @router.get("/queue/{message_id}")
    async def message_page(request: Request, message_id: str) -> Response:
        broadcast = await queue.broadcast_status(message_id)
        if broadcast is not None:  # a million recipients are no page: its counts instead
            return _page(request, "broadcast.html", broadcast=broadcast,
                         stored=await _template(queue, message_id))
        info = await queue.get_message(message_id)
        history = await queue.history(message_id)
        if info is None and history is None:
            return _page(request, "missing.html", 404,
                         what=f"No message {message_id} in the queue or its history.")
        headers = None
        if info is not None and caller_of(request).allows(ApiScope.ADMIN):
            headers = await _headers(queue, message_id)
        everyone = request.query_params.get("all") == "1"
        return _page(request, "message.html", id=message_id, info=info, history=history,
                     headers=headers, notice=_notice(request),
                     shown=10 ** 9 if everyone else RECIPIENTS_LISTED,
                     states=states_of(info.recipients) if info else [])

    # ACTIONS: each one's queue command, and whether it makes mail due (the scheduler wakes).
    actions: dict[str, tuple[Callable[[Selection], Awaitable[int]], bool]] = {
        "flush": (queue.flush, True), "hold": (queue.hold, False),
        "release": (queue.release, True), "requeue": (queue.requeue, True)}

    async def apply(action: str, selection: Selection) -> int:
        if action not in actions:
            raise ApiError(404, "not_found", f"no action {action[:40]!r}", "action")
        command, wakes = actions[action]
        count = await command(selection)
        if wakes and count:
            console.wake()
        return count

    @router.post("/queue")
    async def act_on_many(request: Request) -> Response:
        """An action for exactly the messages the posted filter picks (every message
        without one), as the page that asked said."""
        fields = await _form(request)
        wanted = QueueFilter.of(fields)
        if wanted.problem:
            raise ApiError(422, "invalid", wanted.problem, "filter")
        selection = (Selection(all=True) if wanted.empty
                     else Selection(await _picked(queue, wanted)))
        count = await apply(fields.get("action", ""), selection)
        query = wanted.as_query_string()
        return redirect(f"{PREFIX}/queue?{query}{'&' if query else ''}"
                        f"done={fields.get('action', '')}&count={count}")

    @router.post("/queue/{message_id}/{action}")
    async def act(request: Request, message_id: str, action: str) -> Response:
        await _form(request)
        if action == "delete":
            deleted = await queue.delete(Selection([message_id]))
            return redirect(f"{PREFIX}/queue?done={'deleted' if deleted else 'not-deleted'}"
                            f"&id={quote(message_id)}")
        count = await apply(action, Selection([message_id]))
        return redirect(f"{PREFIX}/queue/{quote(message_id)}?done={action}&count={count}")

    @router.get("/queue/{message_id}/delete")
    async def confirm_delete(request: Request, message_id: str) -> Response:
        info = await queue.get_message(message_id)
        if info is None:
            return _page(request, "missing.html", 404,
                         what=f"No message {message_id} in the queue.")
        return _page(request, "delete.html", info=info)

    # -- broadcasts --------------------------------------------------------------------

    @router.get("/broadcasts")
    async def broadcast_list(request: Request) -> Response:
        return _page(request, "broadcasts.html", broadcasts=await queue.broadcasts(),
                     notice=_notice(request))

    @router.get("/broadcasts/{broadcast_id}/events")
    async def broadcast_events(broadcast_id: str) -> Response:
        if await queue.broadcast_status(broadcast_id) is None:
            raise ApiError(404, "not_found", f"no broadcast {broadcast_id}", "id")
        return StreamingResponse(status_events(queue, broadcast_id),
                                 media_type="text/event-stream",
                                 headers={**SECURITY_HEADERS, "Cache-Control": "no-cache"})

    @router.post("/broadcasts/{broadcast_id}/cancel")
    async def cancel_broadcast(request: Request, broadcast_id: str) -> Response:
        await _form(request)
        cancelled = await queue.cancel_broadcast(broadcast_id)
        done = "cancelled" if cancelled is not None else "not-cancelled"
        return redirect(f"{PREFIX}/broadcasts?done={done}&id={quote(broadcast_id)}")

    # -- suppressions ------------------------------------------------------------------

    async def _suppressions_page(request: Request, q: str, stream: str, problem: str = "",
                                 status: int = 200) -> Response:
        search, stream = q.strip().lower(), stream.strip()
        if stream and not _is_stream(stream):
            problem, stream = problem or f"{stream!r} is not a stream name", ""
        found = await queue.suppressions(stream or None)
        if search:
            found = [s for s in found if search in s.address]
        return _page(request, "suppressions.html", status, suppressions=found[:QUEUE_PAGE],
                     more=max(len(found) - QUEUE_PAGE, 0), q=q, stream=stream,
                     problem=problem, notice=_notice(request))

    @router.get("/suppressions")
    async def suppression_list(request: Request, q: str = "", stream: str = "") -> Response:
        return await _suppressions_page(request, q, stream)

    @router.post("/suppressions")
    async def add_suppression(request: Request) -> Response:
        fields = await _form(request)
        address = fields.get("address", "").strip()
        stream = fields.get("stream", "").strip() or EVERY_STREAM
        try:
            check_address(address)
        except ApiError as exc:
            return await _suppressions_page(request, "", "", f"address: {exc.detail}", 422)
        if not _is_stream(stream):
            return await _suppressions_page(request, "", "", f"stream: {stream!r} is not a "
                                            "stream name (or * for every stream)", 422)
        reason = fields.get("reason", "").strip()[:200] or "added in the console"
        added = await queue.suppress(address, reason, stream)
        return redirect(f"{PREFIX}/suppressions?done={'added' if added else 'present'}")

    @router.post("/suppressions/remove")
    async def remove_suppression(request: Request) -> Response:
        fields = await _form(request)
        stream = fields.get("stream", "").strip() or None
        removed = await queue.unsuppress(fields.get("address", "").strip(), stream)
        return redirect(f"{PREFIX}/suppressions?done={'removed' if removed else 'absent'}")

    return router


# What a redirect's ?done= may say: known words only, so a link cannot put text on a page.
_NOTICES = {
    "flush": "{count} recipient(s) made due now.", "hold": "{count} recipient(s) held.",
    "release": "{count} recipient(s) released.",
    "requeue": "{count} recipient(s) back in the queue.",
    "deleted": "Message {id} deleted.", "not-deleted": "Message {id} was not deleted (gone "
    "already, or a broadcast: cancel those).",
    "cancelled": "Broadcast {id} cancelled.",
    "not-cancelled": "Broadcast {id} has nothing left to cancel.",
    "added": "Suppression added.", "present": "That suppression was there already.",
    "removed": "Suppression removed.", "absent": "No such suppression.",
}
_COUNT = re.compile(r"\d{1,9}")


def _notice(request: Request) -> str:
    done, params = request.query_params.get("done", ""), request.query_params
    if done not in _NOTICES:
        return ""
    count = params.get("count", "")
    return _NOTICES[done].format(count=count if _COUNT.fullmatch(count) else "?",
                                 id=params.get("id", "")[:64])


def _page(request: Request, template: str, status: int = 200, **context: Any) -> Response:
    session = _session(request)
    caller = caller_of(request)
    return page(template, status, csrf=session.csrf if session else "",
                admin=caller.allows(ApiScope.ADMIN), actions=ACTIONS, **context)


def not_found_page(request: Request) -> Response:
    """What a console address that leads nowhere answers: a page with the console's
    header (to go on from), not the API's JSON."""
    if getattr(request.state, "caller", None) is None:  # not signed in: nothing to show
        return page("missing.html", 404, what="There is no such page.")
    return _page(request, "missing.html", 404,
                 what=f"There is no page at {request.url.path[:200]}.")


def _session(request: Request) -> Session | None:
    """The session the gate found; None for a script with a bearer token."""
    session = getattr(request.state, "session", None)
    return session if isinstance(session, Session) else None


def _fields(body: bytes) -> dict[str, str]:
    parsed = parse_qs(body.decode("utf-8", "replace"), keep_blank_values=True)
    return {name: values[-1] for name, values in parsed.items()}


async def _form(request: Request) -> dict[str, str]:
    """A posted form's fields. A browser's form must carry its session's CSRF token
    (403 otherwise); a script with a bearer token has no cookie to be tricked with."""
    _same_origin(request)
    fields = _fields(await request.body())
    session = _session(request)
    if session is not None and not session.checks(fields.get("csrf", "")):
        raise ApiError(403, "csrf", "the form's CSRF token is missing or wrong: reload the "
                       "page and try again", "csrf")
    return fields


def _same_origin(request: Request) -> None:
    """A browser says where a form came from; one from another site is refused. The host
    may be the one asked for or, behind a reverse proxy, the one the proxy was asked for."""
    origin = request.headers.get("origin")
    if origin is None:
        return  # not a browser's form, or one too old to say
    try:
        host = urlsplit(origin).netloc
    except ValueError:
        host = ""
    if not host or host not in (request.headers.get("host"),
                                request.headers.get("x-forwarded-host")):
        raise ApiError(403, "cross_origin", f"a form from {origin[:100]!r} is not accepted "
                       "here", "origin")


async def _picked(queue: Queue, wanted: QueueFilter) -> list[str]:
    """The ids of every message the filter picks (not only the page's)."""
    return [m.id for m in await queue.list_messages(**wanted.query())]


def _is_stream(stream: str) -> bool:
    """A stream's name, or EVERY_STREAM: what a suppression may hold in."""
    return re.fullmatch(SUPPRESSION_STREAM_PATTERN, stream) is not None


async def _headers(queue: Queue, message_id: str) -> list[tuple[str, str]] | None:
    try:
        body = await queue.read_body(message_id)
    except (FileNotFoundError, LocalFailure):
        return None  # it left the queue a moment ago
    head = body[:MAX_HEADERS].split(b"\r\n\r\n", 1)[0]
    parsed = HeaderParser().parsestr(head.decode("utf-8", "replace"), headersonly=True)
    return [(name, str(value)) for name, value in parsed.items()]


async def _template(queue: Queue, broadcast_id: str) -> dict[str, Any] | None:
    """A broadcast's template (its JSON as stored) while it is in the queue."""
    try:
        template = json.loads(await queue.read_body(broadcast_id))
    except (FileNotFoundError, LocalFailure, ValueError):
        return None  # finished, and its file gone
    return template if isinstance(template, dict) else None


async def _failing_webhooks(queue: Queue, configured: list[WebhookEndpoint]
                            ) -> list[tuple[WebhookEndpoint, WebhookState]]:
    """Endpoints (configured or added through the API) not answering 2xx, or disabled."""
    states = {state.endpoint: state for state in await queue.webhook_states()}
    found = [(endpoint, states.get(endpoint.id))
             for endpoint in [*configured, *await queue.webhook_endpoints()]]
    return [(endpoint, state) for endpoint, state in found if state is not None
            and (state.failing_since is not None or state.disabled_at is not None)]
