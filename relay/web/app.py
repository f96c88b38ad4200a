"""web.app: the admin listener's app, the admin API (relay.web.admin) and the operator's
console (relay.web.console) in one FastAPI on uvicorn, in the relay's event loop; above both,
so that neither imports the other's routes.

Every request but `GET /healthz` needs `Authorization: Bearer <token>` (401 otherwise);
there is no unauthenticated mode. The token comes from `[admin] token_file`, or is made
at first start as `<queue path>/admin.token` (mode 0600). Errors are JSON
`{"error": {"code", "message", "field"}}` with a 4xx status, never a 500 for bad input.
`relayctl queue ...` is a client of the /v1/queue endpoints, the browser console
(relay.web.console, under /ui/) signs in with the same token or an API key; `GET /metrics` is
Prometheus's (give it the token with `authorization: {credentials_file: ...}` in the
scrape config).
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
from collections.abc import Awaitable, Callable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

import uvicorn
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from starlette.exceptions import HTTPException

from relay.cleanup.cleanup import Cleanup
from relay.core.errors import LocalFailure
from relay.core.ratelimit import RateLimiter, SlidingWindow
from relay.queue import Queue
from relay.queue.webhooks import WebhookEndpoint
from relay.runtime import metrics
from relay.web.admin.apikey_routes import apikey_routes
from relay.web.admin.broadcast_routes import broadcast_routes, openapi_schemas
from relay.web.admin.callers import KeyRing
from relay.web.admin.errors import ApiError, error_body, validation_error
from relay.web.admin.history_routes import history_routes
from relay.web.admin.idempotency import IdempotencyKeys
from relay.web.admin.outage import RETRY_AFTER, QueueOutage
from relay.web.admin.queue_routes import queue_routes
from relay.web.admin.send_routes import send_routes
from relay.web.admin.suppression_routes import suppression_routes
from relay.web.admin.webhook_routes import webhook_routes
from relay.web.console import Console, Sessions, console_routes, is_console, not_found_page
from relay.web.gate import Gate


@dataclass(frozen=True)
class Services:
    """What the API works with."""

    queue: Queue
    cleanup: Cleanup  # the way in for new mail, as for SMTP
    token: str
    wake: Callable[[], None]  # the scheduler: new or released mail
    scrape: Callable[[], Awaitable[bytes]]  # the Prometheus exposition, fresh
    max_message_size: int  # [smtp] max_message_size holds for the API too
    webhooks: list[WebhookEndpoint] = field(default_factory=list)  # [[webhooks]] endpoints
    rates: RateLimiter = field(default_factory=SlidingWindow)  # API keys' rate limits
    cluster: bool = False  # the PostgreSQL backend (the console shows its nodes)
    # The recipients this node's scheduler holds that wait for a connection, and where to.
    waiting: Callable[[], Mapping[tuple[str, str], str]] = dict


def create_app(services: Services) -> FastAPI:
    # The built-in docs routes would be unauthenticated; /openapi.json is served below.
    app = FastAPI(title="relay admin API", version="1", openapi_url=None, docs_url=None,
                  redoc_url=None)
    outage = QueueOutage()
    _install_error_handlers(app, outage)
    # Who calls, and the body limits, before any route reads a byte (relay.web.gate).
    keys = KeyRing(services.queue, services.token)
    sessions = Sessions(services.queue)  # the browser console's (relay.web.console)
    app.add_middleware(Gate, keys=keys, rates=services.rates,
                       max_message_size=services.max_message_size, sessions=sessions,
                       outage=outage)

    @app.get("/healthz", responses={503: {"description": "the queue cannot be used now"}})
    async def healthz() -> dict[str, str]:
        """Ready for mail: 200, or 503 while the queue (its database) cannot be used."""
        try:
            await asyncio.wait_for(services.queue.check(), HEALTH_TIMEOUT)
        except (LocalFailure, TimeoutError) as exc:
            raise ApiError(503, "not_ready", str(exc) or "the queue does not answer") from None
        return {"status": "ok"}

    @app.get("/openapi.json", include_in_schema=False)
    async def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            schema = app.openapi()
            schema.setdefault("components", {}).setdefault("schemas", {}).update(
                openapi_schemas())
        return app.openapi()

    @app.get("/metrics", response_class=Response,
             responses={200: {"content": {metrics.CONTENT_TYPE: {}}}})
    async def prometheus() -> Response:
        return Response(await services.scrape(), media_type=metrics.CONTENT_TYPE)

    app.include_router(queue_routes(services.queue, services.wake, services.waiting))
    app.include_router(history_routes(services.queue))
    app.include_router(webhook_routes(services.queue, services.webhooks))
    idempotency = IdempotencyKeys(services.queue)
    app.include_router(send_routes(services.cleanup, idempotency, services.max_message_size))
    app.include_router(broadcast_routes(services.queue, services.wake, idempotency,
                                        services.max_message_size))
    app.include_router(suppression_routes(services.queue))
    app.include_router(apikey_routes(services.queue, keys))
    app.include_router(console_routes(Console(services.queue, keys, sessions, services.wake,
                                              services.webhooks, services.cluster)))
    return app


HEALTH_TIMEOUT = 2.0  # seconds; a probe that waits longer is as good as a failure
_CODES = {400: "bad_request", 404: "not_found", 405: "method_not_allowed"}


def _install_error_handlers(app: FastAPI, outage: QueueOutage) -> None:
    @app.exception_handler(LocalFailure)  # the queue cannot be used: 503, logged by change
    async def _queue_unavailable(request: Request, exc: LocalFailure) -> JSONResponse:
        error = outage.answer(exc)
        return JSONResponse(error_body(error.code, str(error.detail)), error.status_code,
                            headers={"Retry-After": RETRY_AFTER})

    @app.exception_handler(HTTPException)  # ours, FastAPI's and Starlette's (404, 405)
    async def _http_error(request: Request, exc: HTTPException) -> Response:
        if (exc.status_code in (404, 405) and request.method == "GET"
                and is_console(request.url.path)):
            return not_found_page(request)  # a browser's page, not JSON
        code = exc.code if isinstance(exc, ApiError) else _CODES.get(exc.status_code,
                                                                      "http_error")
        field = exc.field if isinstance(exc, ApiError) else None
        headers = {"WWW-Authenticate": "Bearer"} if exc.status_code == 401 else None
        return JSONResponse(error_body(code, str(exc.detail), field), exc.status_code,
                            headers=headers)

    @app.exception_handler(RequestValidationError)
    async def _invalid(request: Request, exc: RequestValidationError) -> JSONResponse:
        error = validation_error(exc.errors())
        return JSONResponse(error_body(error.code, str(error.detail), error.field), 422)


class _EmbeddedServer(uvicorn.Server):
    """uvicorn without its own signal handling: the relay owns SIGTERM and SIGHUP."""

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        yield


class HttpServer:
    """An app served by uvicorn in the relay's loop: the admin API (or the public
    unsubscribe listener, relay.feedback.unsubscribe)."""

    def __init__(self, app: FastAPI, sock: socket.socket, service: str = "admin") -> None:
        self._socket = sock  # bound at start, so that a busy port is a clean error
        self._socket.setblocking(False)
        config = uvicorn.Config(app, lifespan="off", access_log=False, log_level="warning",
                                timeout_graceful_shutdown=5)
        self._server = _EmbeddedServer(config)
        self._service = service
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        self._task = asyncio.create_task(self._server.serve(sockets=[self._socket]),
                                         name=self._service)

    async def stop(self) -> None:
        self._server.should_exit = True
        if self._task is not None:
            await self._task
