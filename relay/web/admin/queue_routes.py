"""admin.queue_routes: /v1/queue, what `relayctl queue` uses (Postfix's mailq, postcat,
postsuper and qshape over HTTP).

Operator commands (flush, requeue, hold, release, delete) take a selection: message ids,
a recipient domain, or all. Their answer counts what changed and lists the ids that are
not in the queue (`missing`), so that a client can say so, as postsuper does.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Mapping
from typing import Any, Protocol

from fastapi import APIRouter
from fastapi.responses import Response
from pydantic import BaseModel, model_validator

from relay.queue import (
    SUMMARY_AGE_BUCKETS,
    MessageInfo,
    RecipientInfo,
    Selection,
    ShapeKey,
    State,
)
from relay.queue.roles import BodyReader, BroadcastStore, QueueCommands
from relay.web.admin.errors import ApiError

_FINISHED = (State.DELIVERED, State.BOUNCED)


class SelectionRequest(BaseModel):
    """Which messages an operator command applies to: `ids`, every message with a
    recipient at `domain`, or `all`."""

    ids: list[str] = []
    domain: str | None = None
    all: bool = False

    @model_validator(mode="after")
    def _one_selection(self) -> SelectionRequest:
        if not (self.ids or self.domain or self.all):
            raise ValueError("give ids, domain or all")
        return self

    def selection(self) -> Selection:
        return Selection(self.ids, self.domain, self.all)


def message_json(message: MessageInfo,
                 waiting: Mapping[tuple[str, str], str] | None = None) -> dict[str, Any]:
    """`waiting`: the recipients that wait for a connection (scheduler.waiting); every
    other active one is being delivered."""
    return {
        "id": message.id,
        "from": message.mail_from,
        "size": message.size,
        "received_at": message.received_at,
        "recipients": [
            {"address": r.address, "state": r.state.value, "attempts": r.attempts,
             "next_attempt_at": r.next_attempt_at, "last_reply": r.last_reply,
             "activity": _activity(message.id, r, waiting or {})}
            for r in message.recipients
        ],
    }


def _activity(message_id: str, recipient: RecipientInfo,
              waiting: Mapping[tuple[str, str], str]) -> str | None:
    """What an active recipient is doing now; None for the other states."""
    if recipient.state is not State.ACTIVE:
        return None
    destination = waiting.get((message_id, recipient.address))
    return ("being delivered" if destination is None
            else f"waiting for a connection to {destination}")


class OperatedQueue(QueueCommands, BodyReader, BroadcastStore, Protocol):
    """The operator's commands, a message's content, and broadcasts (an id may be one)."""


def queue_routes(queue: OperatedQueue, wake: Callable[[], None],
                 waiting: Callable[[], Mapping[tuple[str, str], str]] = dict) -> APIRouter:
    """/v1/queue: what `relayctl queue` uses."""
    router = APIRouter(prefix="/v1/queue")

    @router.get("/summary")
    async def summary(state: State | None = None, by: ShapeKey = "recipient"
                      ) -> dict[str, Any]:
        """Waiting recipients by destination domain and age, like Postfix's qshape; with
        `by=sender`, messages by sender domain (qshape -s)."""
        _waiting(state)
        shapes = await queue.summary(state, by)
        return {"age_buckets_minutes": list(SUMMARY_AGE_BUCKETS), "by": by,
                "domains": [{"domain": d.domain, "total": d.total, "by_age": d.by_age}
                            for d in shapes]}

    @router.get("")
    async def list_queue(state: State | None = None, domain: str | None = None
                         ) -> dict[str, Any]:
        _waiting(state)
        messages = await queue.list_messages(state=state, domain=domain)
        now_waiting = waiting()
        return {"messages": [message_json(m, now_waiting) for m in messages]}

    @router.get("/{message_id}")
    async def show(message_id: str) -> dict[str, Any]:
        return message_json(await _existing(queue, message_id), waiting())

    @router.get("/{message_id}/message", response_class=Response,
                responses={200: {"content": {"message/rfc822": {}}}})
    async def content(message_id: str) -> Response:
        """The message as stored (a broadcast's: its template, JSON), like postcat -q."""
        await _existing(queue, message_id)
        is_broadcast = await queue.broadcast_status(message_id) is not None
        return Response(await queue.read_body(message_id),
                        media_type="application/json" if is_broadcast else "message/rfc822")

    def operator_command(name: str, done: str, act: Callable[[Selection], Awaitable[int]],
                         wakes: bool, doc: str) -> None:
        async def command(request: SelectionRequest) -> dict[str, Any]:
            missing = await queue.missing(request.ids) if request.ids else []
            count = await act(request.selection())
            if wakes and count:
                wake()
            return {done: count, "missing": missing}

        command.__doc__ = doc
        router.post(f"/{name}", name=name)(command)

    operator_command("flush", "flushed", queue.flush, True,
                     "Make deferred recipients due now.")
    operator_command("requeue", "requeued", queue.requeue, True,
                     "Every recipient not yet final back to queued, due now, like "
                     "`postsuper -r` (active ones too: an outcome of theirs still in "
                     "flight is then ignored).")
    operator_command("hold", "held", queue.hold, False,
                     "Hold the waiting recipients, like `postsuper -h`.")
    operator_command("release", "released", queue.release, True,
                     "Held recipients back to the queue, due now, like `postsuper -H`.")
    operator_command("delete", "deleted", queue.delete, False,
                     "Remove messages (not broadcasts: cancel those), like `postsuper -d`; "
                     "counts messages.")

    @router.post("/{message_id}/hold")
    async def hold_one(message_id: str) -> dict[str, int]:
        await _existing(queue, message_id)
        return {"held": await queue.hold(Selection([message_id]))}

    @router.post("/{message_id}/release")
    async def release_one(message_id: str) -> dict[str, int]:
        await _existing(queue, message_id)
        count = await queue.release(Selection([message_id]))
        wake()
        return {"released": count}

    @router.delete("/{message_id}")
    async def delete_one(message_id: str) -> dict[str, int]:
        if not await queue.delete(Selection([message_id])):
            raise _not_found(message_id)
        return {"deleted": 1}

    return router


def _waiting(state: State | None) -> None:
    if state is not None and state in _FINISHED:
        raise ApiError(422, "invalid", f"{state.value} recipients have left the queue; "
                       "the queue holds queued, active, deferred and held ones", "state")


async def _existing(queue: QueueCommands, message_id: str) -> MessageInfo:
    message = await queue.get_message(message_id)
    if message is None:
        raise _not_found(message_id)
    return message


def _not_found(message_id: str) -> ApiError:
    return ApiError(404, "not_found", f"no message {message_id} in the queue", "id")
