"""admin.queue_routes: /v1/queue, what `relayctl queue` uses (Postfix's mailq, postsuper
and qshape over HTTP)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from fastapi import APIRouter
from pydantic import BaseModel, model_validator

from relay.admin.errors import ApiError
from relay.queue import SUMMARY_AGE_BUCKETS, MessageInfo, Queue, Selection, State


class SelectionRequest(BaseModel):
    """Which messages a flush or requeue applies to."""

    ids: list[str] = []
    domain: str | None = None
    all: bool = False

    @model_validator(mode="after")
    def _one_selection(self) -> SelectionRequest:
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
    async def flush(request: SelectionRequest) -> dict[str, int]:
        """Make deferred recipients due now."""
        count = await queue.flush(Selection(request.ids, request.domain, request.all))
        wake()
        return {"flushed": count}

    @router.post("/requeue")
    async def requeue(request: SelectionRequest) -> dict[str, int]:
        """Every recipient not yet final back to queued, due now, like `postsuper -r`
        (active ones too: an outcome of theirs still in flight is then ignored)."""
        count = await queue.requeue(Selection(request.ids, request.domain, request.all))
        wake()
        return {"requeued": count}

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


