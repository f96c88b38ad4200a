"""admin.broadcast_routes: broadcasts as jobs, over HTTP (what is done with an upload is
cleanup.uploads').

`POST /v1/broadcasts` takes the template and its recipients as one JSON document, or, for
large lists, as NDJSON (`Content-Type: application/x-ndjson`): the first line is the
template, each further line one recipient, read as they arrive so that a million
recipients never sit in memory. The 202 `{"id", "accepted", "suppressed", "rejected": [...]}` comes
once the broadcast is durable and due. Then `GET /v1/broadcasts/{id}` gives its counts,
`.../events` streams them as Server-Sent Events until it is over, `.../cancel` drops what
has not been sent. `GET /v1/broadcasts` lists them, newest first, a page at a time.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import dataclasses
import functools
import hashlib
import json
import logging
from collections.abc import AsyncIterator, Callable
from typing import Annotated, Any, Literal, Protocol

from fastapi import APIRouter, Header, Query, Request
from fastapi.responses import StreamingResponse
from pydantic import BaseModel, Field, ValidationError
from starlette.requests import ClientDisconnect

from relay.cleanup.compose import ComposeError
from relay.cleanup.templates import Recipient, Template
from relay.cleanup.uploads import NOT_JSON, Rejection, TooLarge, store_broadcast
from relay.queue import BroadcastStatus
from relay.queue.roles import BroadcastStore, IdempotencyStore
from relay.web.admin.callers import caller_of
from relay.web.admin.errors import ApiError, validation_error
from relay.web.admin.idempotency import IdempotencyKeys, replay

MAX_LINE = 1024 * 1024  # bytes per NDJSON line
EVENT_INTERVAL = 1.0  # seconds between looks at a broadcast's counts
KEEPALIVE_EVERY = 15  # looks without a change between two keepalive comments
NDJSON = "application/x-ndjson"

log = logging.getLogger("relay.admin")


class BroadcastRequest(Template):
    """The JSON form: the template's fields and the recipients in one document. Each
    recipient is checked on its own: a bad one is rejected, the others are sent."""

    recipients: list[Recipient] = Field(default_factory=list)


class BroadcastAccepted(BaseModel):
    id: str
    accepted: int
    suppressed: int
    rejected: list[Rejection]
    rejected_total: int


BroadcastState = Literal["receiving", "sending", "done", "cancelled"]
DEFAULT_PAGE, MAX_PAGE = 50, 1000  # broadcasts a listing answers with


class BroadcastPage(BaseModel):
    broadcasts: list[BroadcastStatus]
    next_cursor: str | None


class BroadcastQueue(BroadcastStore, IdempotencyStore, Protocol):
    """Broadcasts, and the answers kept for retries."""


def broadcast_routes(queue: BroadcastQueue, wake: Callable[[], None], keys: IdempotencyKeys,
                     max_message_size: int) -> APIRouter:
    router = APIRouter()

    @router.post(
        "/v1/broadcasts", status_code=202, response_model=BroadcastAccepted,
        openapi_extra={"requestBody": {"required": True, "content": {
            "application/json": {"schema": {"$ref": "#/components/schemas/BroadcastRequest"}},
            NDJSON: {"schema": {
                "type": "array", "items": {"type": "object"},
                "description": "one JSON object per line: the template (BroadcastRequest "
                               "without recipients), then one Recipient per line"}}}}},
        responses={409: {"description": "Idempotency-Key reused with another body"},
                   422: {"description": "invalid template; `field` names the part"}})
    async def submit(request: Request,
                     idempotency_key: Annotated[str | None, Header(max_length=200)] = None,
                     ) -> dict[str, Any]:
        """A broadcast: one template, many recipients, each rendered when it is sent."""
        body = _Body(request)
        store = functools.partial(_store, queue, body, max_message_size=max_message_size,
                                  api_key=caller_of(request).key_id)
        try:
            if idempotency_key is None:
                answer = await store(None)
            else:
                async with keys.held(idempotency_key):
                    earlier = await queue.idempotent_answer(idempotency_key)
                    if earlier is not None:
                        await body.drain()  # the digest needs the whole body
                        return replay(earlier, body.digest())
                    answer = await store(idempotency_key)
        except ClientDisconnect:
            log.warning("broadcast upload from [%s] ended by the client after %d bytes: "
                        "nothing stored", request.client.host if request.client else "?",
                        body.received)
            raise ApiError(400, "incomplete", "the client ended the upload", "body") from None
        wake()
        return answer

    @router.get("/v1/broadcasts", response_model=BroadcastPage,
                responses={422: {"description": "a bad cursor, state or limit"}})
    async def listing(state: BroadcastState | None = None, cursor: str | None = None,
                      limit: Annotated[int, Query(ge=1, le=MAX_PAGE)] = DEFAULT_PAGE
                      ) -> BroadcastPage:
        """The broadcasts, newest first, a page at a time: `next_cursor` (null on the
        last page) asks for the next one."""
        found = await queue.broadcasts(limit + 1, state, _cursor_position(cursor))
        page, more = found[:limit], len(found) > limit
        return BroadcastPage(broadcasts=page,
                             next_cursor=_cursor_of(page[-1]) if more else None)

    @router.get("/v1/broadcasts/{broadcast_id}", response_model=BroadcastStatus)
    async def status(broadcast_id: str) -> BroadcastStatus:
        return await _existing(queue, broadcast_id)

    @router.get("/v1/broadcasts/{broadcast_id}/events",
                responses={200: {"content": {"text/event-stream": {}}}})
    async def events(broadcast_id: str) -> StreamingResponse:
        """The counts as Server-Sent Events (`event: status`) every second, until the
        broadcast is done or cancelled and nothing of it is being sent."""
        await _existing(queue, broadcast_id)
        return StreamingResponse(status_events(queue, broadcast_id),
                                 media_type="text/event-stream",
                                 headers={"Cache-Control": "no-cache"})

    @router.post("/v1/broadcasts/{broadcast_id}/cancel", response_model=BroadcastStatus)
    async def cancel(broadcast_id: str) -> BroadcastStatus:
        """Stop what has not been sent; recipients being sent right now finish. A
        broadcast already done or cancelled is a 409."""
        before = await _existing(queue, broadcast_id)
        if before.state in ("done", "cancelled"):
            raise ApiError(409, "finished", f"broadcast {broadcast_id} is {before.state} "
                           "already: nothing left to cancel", "id")
        cancelled = await queue.cancel_broadcast(broadcast_id)
        if cancelled is None:
            raise ApiError(404, "not_found", f"no broadcast {broadcast_id}", "id")
        return cancelled

    return router


def _cursor_of(last: BroadcastStatus) -> str:
    """Where the next page starts, as an opaque token (the last row's time and id)."""
    return base64.urlsafe_b64encode(json.dumps([last.created_at, last.id]).encode()).decode()


def _cursor_position(cursor: str | None) -> tuple[float, str] | None:
    if cursor is None:
        return None
    try:
        created, broadcast_id = json.loads(base64.urlsafe_b64decode(cursor.encode()))
        return float(created), str(broadcast_id)
    except (ValueError, TypeError, binascii.Error):
        raise ApiError(422, "invalid", "not a cursor this API gave", "cursor") from None


def openapi_schemas() -> dict[str, Any]:
    """Component schemas for the request body that FastAPI does not see (it is read by
    hand, to stream it)."""
    schema = BroadcastRequest.model_json_schema(ref_template="#/components/schemas/{model}")
    return {**schema.pop("$defs", {}), "BroadcastRequest": schema}


async def _existing(queue: BroadcastStore, broadcast_id: str) -> BroadcastStatus:
    found = await queue.broadcast_status(broadcast_id)
    if found is None:
        raise ApiError(404, "not_found", f"no broadcast {broadcast_id}", "id")
    return found


async def status_events(queue: BroadcastStore, broadcast_id: str) -> AsyncIterator[str]:
    """An event when the counts change (the first one at once), a comment now and then
    so that proxies keep the connection, and the end when nothing is left to send."""
    sent, quiet = "", 0
    while True:
        current = await queue.broadcast_status(broadcast_id)
        if current is None:
            return
        data = json.dumps(dataclasses.asdict(current))
        if data != sent:
            yield f"event: status\ndata: {data}\n\n"
            sent, quiet = data, 0
        elif (quiet := quiet + 1) % KEEPALIVE_EVERY == 0:
            yield ": still sending\n\n"
        if current.state in ("done", "cancelled") and current.queued == 0:
            return
        await asyncio.sleep(EVENT_INTERVAL)


class _Body:
    """The request body as a template and a stream of recipients, hashed as it is read
    (for Idempotency-Key) and never held whole when it is NDJSON."""

    def __init__(self, request: Request) -> None:
        self._request = request
        self._hash = hashlib.sha256()
        content_type = request.headers.get("content-type", "").split(";")[0].strip()
        self.ndjson = content_type == NDJSON
        self._stream = request.stream()
        self.received = 0  # bytes

    def digest(self) -> str:
        return self._hash.hexdigest()

    async def drain(self) -> None:
        async for chunk in self._stream:
            self._update(chunk)

    def _update(self, chunk: bytes) -> None:
        self._hash.update(chunk)
        self.received += len(chunk)

    async def template_and_recipients(self) -> tuple[Template, AsyncIterator[Any]]:
        if not self.ndjson:
            document = _json_object(await self._whole(), "body")
            recipients = document.pop("recipients", [])
            if not isinstance(recipients, list):
                raise ApiError(422, "invalid", "recipients must be a list", "recipients")
            return _template(document), _iterate(recipients)
        lines = self._lines()
        first = _json_object(await anext(lines, b""), "template")
        return _template(first), _parsed(lines)

    async def _whole(self) -> bytes:
        chunks = []
        async for chunk in self._stream:
            self._update(chunk)
            chunks.append(chunk)
        return b"".join(chunks)

    async def _lines(self) -> AsyncIterator[bytes]:
        pending = b""
        async for chunk in self._stream:
            self._update(chunk)
            pending += chunk
            *complete, pending = pending.split(b"\n")
            for line in complete:
                if line.strip():
                    yield line
            if len(pending) > MAX_LINE:
                raise ApiError(413, "line_too_long", f"an NDJSON line is over {MAX_LINE} "
                               "bytes", "body")
        if pending.strip():
            yield pending


async def _iterate(items: list[Any]) -> AsyncIterator[Any]:
    for item in items:
        yield item


async def _parsed(lines: AsyncIterator[bytes]) -> AsyncIterator[Any]:
    index = 0
    async for line in lines:
        try:
            yield _loads(line, f"recipients[{index}]")
        except ValueError:
            yield NOT_JSON
        index += 1



def _loads(data: bytes, what: str) -> Any:
    """json.loads, with JSON nested deeper than Python recurses (a hostile body) a 400
    naming the part instead of a RecursionError."""
    try:
        return json.loads(data)
    except RecursionError:
        raise ApiError(400, "invalid", f"the {what} is nested too deeply", what) from None


def _json_object(data: bytes, what: str) -> dict[str, Any]:
    try:
        parsed = _loads(data, what)
    except ValueError:
        parsed = None
    if not isinstance(parsed, dict):
        raise ApiError(422, "invalid", f"the {what} is not a JSON object", what)
    return parsed


def _template(document: dict[str, Any]) -> Template:
    try:
        return Template.model_validate(document)
    except ValidationError as exc:
        raise validation_error(exc.errors()) from None


async def _store(queue: BroadcastStore, body: _Body, idempotency_key: str | None, *,
                 max_message_size: int, api_key: str) -> dict[str, Any]:
    template, recipients = await body.template_and_recipients()
    try:
        return await store_broadcast(queue, template, recipients,
                                     idempotency_key=idempotency_key, digest=body.digest,
                                     max_message_size=max_message_size, api_key=api_key)
    except TooLarge as exc:
        raise ApiError(413, "too_large", str(exc), exc.field) from None
    except ComposeError as exc:
        raise ApiError(422, "invalid", str(exc), exc.field) from None
