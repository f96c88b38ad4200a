"""admin: the HTTP API (FastAPI on uvicorn, in the relay's event loop).

Every request but `GET /healthz` needs `Authorization: Bearer <token>` (401 otherwise);
there is no unauthenticated mode. The token comes from `[admin] token_file`, or is made
at first start as `<queue path>/admin.token` (mode 0600). Errors are JSON
`{"error": {"code", "message", "field"}}` with a 4xx status, never a 500 for bad input.
`relayctl queue ...` is a client of the /v1/queue endpoints; `GET /metrics` is Prometheus's
(give it the token with `authorization: {credentials_file: ...}` in the scrape config).
"""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import socket
from collections.abc import Awaitable, Callable, Iterator
from typing import Any

import uvicorn
from fastapi import APIRouter, Depends, FastAPI, HTTPException, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from pydantic import BaseModel, model_validator

from relay import metrics
from relay.config import split_hostport
from relay.queue import SUMMARY_AGE_BUCKETS, MessageInfo, Queue, Selection, State


class ApiError(HTTPException):
    def __init__(self, status: int, code: str, message: str, field: str | None = None):
        super().__init__(status, message)
        self.code = code
        self.field = field


def error_body(code: str, message: str, field: str | None = None) -> dict[str, Any]:
    return {"error": {"code": code, "message": message, "field": field}}


class FlushRequest(BaseModel):
    ids: list[str] = []
    domain: str | None = None
    all: bool = False

    @model_validator(mode="after")
    def _one_selection(self) -> FlushRequest:
        if not (self.ids or self.domain or self.all):
            raise ValueError("give ids, domain or all")
        return self


def message_json(message: MessageInfo) -> dict[str, Any]:
    return {
        "id": message.id,
        "from": message.mail_from,
        "size": message.size,
        "received_at": message.received_at,
        "recipients": [
            {"address": r.address, "state": r.state.value, "attempts": r.attempts,
             "next_attempt_at": r.next_attempt_at, "last_reply": r.last_reply}
            for r in message.recipients
        ],
    }


def create_app(queue: Queue, token: str, wake: Callable[[], None],
               scrape: Callable[[], Awaitable[bytes]]) -> FastAPI:
    """`scrape` renders the Prometheus exposition (fresh queue figures included)."""
    # The built-in docs routes would be unauthenticated; /openapi.json is served below.
    app = FastAPI(title="relay admin API", version="1", openapi_url=None, docs_url=None,
                  redoc_url=None)
    _install_error_handlers(app)

    def require_token(request: Request) -> None:
        header = request.headers.get("authorization", "")
        scheme, _, given = header.partition(" ")
        if scheme.lower() != "bearer" or not hmac.compare_digest(given.strip().encode(),
                                                                 token.encode()):
            raise ApiError(401, "unauthorized", "missing or wrong bearer token")

    @app.get("/healthz")
    async def healthz() -> dict[str, str]:
        return {"status": "ok"}

    authorized = [Depends(require_token)]

    @app.get("/openapi.json", dependencies=authorized, include_in_schema=False)
    async def openapi() -> dict[str, Any]:
        return app.openapi()

    @app.get("/metrics", dependencies=authorized, response_class=Response,
             responses={200: {"content": {metrics.CONTENT_TYPE: {}}}})
    async def prometheus() -> Response:
        return Response(await scrape(), media_type=metrics.CONTENT_TYPE)

    app.include_router(queue_routes(queue, wake), dependencies=authorized)
    return app


def _install_error_handlers(app: FastAPI) -> None:
    @app.exception_handler(HTTPException)
    async def _http_error(request: Request, exc: HTTPException) -> JSONResponse:
        code = exc.code if isinstance(exc, ApiError) else "http_error"
        field = exc.field if isinstance(exc, ApiError) else None
        headers = {"WWW-Authenticate": "Bearer"} if exc.status_code == 401 else None
        return JSONResponse(error_body(code, str(exc.detail), field), exc.status_code,
                            headers=headers)

    @app.exception_handler(RequestValidationError)
    async def _invalid(request: Request, exc: RequestValidationError) -> JSONResponse:
        first = exc.errors()[0] if exc.errors() else {"loc": (), "msg": "invalid request"}
        loc = [str(p) for p in first.get("loc", ()) if p not in ("body", "query", "path")]
        message = str(first.get("msg", "invalid request")).removeprefix("Value error, ")
        return JSONResponse(error_body("invalid", message, ".".join(loc) or None), 422)


def queue_routes(queue: Queue, wake: Callable[[], None]) -> APIRouter:
    """/v1/queue: what `relayctl queue` uses."""
    router = APIRouter(prefix="/v1/queue")

    @router.get("/summary")
    async def summary(state: State | None = None) -> dict[str, Any]:
        """Waiting recipients by destination domain and age, like Postfix's qshape."""
        shapes = await queue.summary(state)
        return {"age_buckets_minutes": list(SUMMARY_AGE_BUCKETS),
                "domains": [{"domain": d.domain, "total": d.total, "by_age": d.by_age}
                            for d in shapes]}

    @router.get("")
    async def list_queue(state: State | None = None, domain: str | None = None
                         ) -> dict[str, Any]:
        messages = await queue.list_messages(state=state, domain=domain)
        return {"messages": [message_json(m) for m in messages]}

    @router.get("/{message_id}")
    async def show(message_id: str) -> dict[str, Any]:
        return message_json(await _existing(queue, message_id))

    @router.post("/flush")
    async def flush(request: FlushRequest) -> dict[str, int]:
        count = await queue.flush(Selection(request.ids, request.domain, request.all))
        wake()
        return {"flushed": count}

    @router.post("/{message_id}/hold")
    async def hold(message_id: str) -> dict[str, int]:
        await _existing(queue, message_id)
        return {"held": await queue.hold(message_id)}

    @router.post("/{message_id}/release")
    async def release(message_id: str) -> dict[str, int]:
        await _existing(queue, message_id)
        count = await queue.release(message_id)
        wake()
        return {"released": count}

    @router.delete("/{message_id}")
    async def delete(message_id: str) -> dict[str, bool]:
        if not await queue.delete(message_id):
            raise _not_found(message_id)
        return {"deleted": True}

    return router


async def _existing(queue: Queue, message_id: str) -> MessageInfo:
    message = await queue.get_message(message_id)
    if message is None:
        raise _not_found(message_id)
    return message


def _not_found(message_id: str) -> ApiError:
    return ApiError(404, "not_found", f"no message {message_id} in the queue", "id")


class _EmbeddedServer(uvicorn.Server):
    """uvicorn without its own signal handling: the relay owns SIGTERM and SIGHUP."""

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        yield


class AdminServer:
    def __init__(self, app: FastAPI, listen: str) -> None:
        host, port = split_hostport(listen)
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        self._socket = socket.socket(family, socket.SOCK_STREAM)
        self._socket.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self._socket.bind((host, port))  # bound here so a busy port is a clean error
        self._socket.listen(128)
        self._socket.setblocking(False)
        config = uvicorn.Config(app, lifespan="off", access_log=False, log_level="warning",
                                timeout_graceful_shutdown=5)
        self._server = _EmbeddedServer(config)
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        self._task = asyncio.create_task(self._server.serve(sockets=[self._socket]),
                                         name="admin")

    async def stop(self) -> None:
        self._server.should_exit = True
        if self._task is not None:
            await self._task
