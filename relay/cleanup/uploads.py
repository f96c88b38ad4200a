"""uploads: a broadcast taken in, however it arrives: its template checked once, its
recipients checked one by one as they come and written in chunks, so that a million of
them never sit in memory, then made due in one durable step. Invalid recipients are
rejected with their index and the reason, addresses on the suppression list skipped and
counted; nothing of a broadcast stays unless it was accepted. The HTTP side
(web.admin.broadcast_routes) reads the request; this is what is done with it.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from typing import Any

from pydantic import BaseModel

from relay.cleanup.compose import ComposeError
from relay.cleanup.templates import Template, check_recipient, envelope_sender
from relay.queue import Idempotency, new_queue_id
from relay.queue.base import BROADCAST
from relay.queue.roles import BroadcastStore

CHUNK = 5000  # recipients per index write while a broadcast is uploaded
MAX_LISTED_REJECTIONS = 10_000  # in the answer; rejected_total counts them all
NOT_JSON = object()  # a recipient that was not even JSON: rejected like a bad one


class Rejection(BaseModel):
    index: int
    email: str | None
    reason: str


class TooLarge(ValueError):
    """The template alone is over max_message_size (413); `field` names the part."""

    def __init__(self, field: str, message: str) -> None:
        super().__init__(message)
        self.field = field


async def store_broadcast(queue: BroadcastStore, template: Template,
                          recipients: AsyncIterator[Any], *, idempotency_key: str | None,
                          digest: Callable[[], str], max_message_size: int,
                          api_key: str) -> dict[str, Any]:
    """Store the broadcast and make it due; the answer (kept for `idempotency_key`, whose
    body `digest()` gives once every recipient was read). ComposeError or TooLarge for a
    template that cannot be sent; nothing of it stays then, nor when anything fails
    before it was accepted."""
    stored_template = template.model_dump_json(by_alias=True).encode()
    if len(stored_template) > max_message_size:
        raise TooLarge("template", f"the template is {len(stored_template)} bytes; "
                       f"max_message_size is {max_message_size}")
    sender, smtputf8 = envelope_sender(template)
    broadcast_id = new_queue_id()
    needed = template.fields()
    rejected: list[Rejection] = []
    rejected_total = accepted = suppressed = 0
    chunk: list[tuple[str, str]] = []
    accepting = False
    try:
        await queue.open_broadcast(broadcast_id, sender, stored_template, smtputf8,
                                   template.tracking(template.subject, api_key, BROADCAST))
        index = 0
        async for item in recipients:
            checked = ("not a JSON object" if item is NOT_JSON
                       else check_recipient(needed, item))
            if isinstance(checked, str):
                rejected_total += 1
                if len(rejected) < MAX_LISTED_REJECTIONS:
                    email = item.get("email") if isinstance(item, dict) else None
                    rejected.append(Rejection(
                        index=index, email=email if isinstance(email, str) else None,
                        reason=checked))
            else:
                chunk.append(checked)
                if len(chunk) >= CHUNK:
                    suppressed += await queue.add_broadcast_recipients(broadcast_id, chunk)
                    accepted += len(chunk)
                    chunk = []
            index += 1
        if chunk:
            suppressed += await queue.add_broadcast_recipients(broadcast_id, chunk)
            accepted += len(chunk)
        if not accepted + rejected_total:
            raise ComposeError("recipients", "a broadcast needs at least one recipient")
        answer = {"id": broadcast_id, "accepted": accepted - suppressed,
                  "suppressed": suppressed,
                  "rejected": [r.model_dump() for r in rejected],
                  "rejected_total": rejected_total}
        idempotency = (Idempotency(idempotency_key, digest())
                       if idempotency_key is not None else None)
        accepting = True
        await queue.accept_broadcast(broadcast_id, rejected_total, idempotency, answer)
    except BaseException:
        # Never acknowledged: nothing of it stays. Once accepting, the commit may have
        # landed (a retry with the Idempotency-Key then finds it); if it did not, the
        # next start removes the broadcast that is still "receiving".
        if not accepting:
            await asyncio.shield(queue.abandon_broadcast(broadcast_id))
        raise  # a LocalFailure is the caller's to answer (web.admin.outage)
    return answer
