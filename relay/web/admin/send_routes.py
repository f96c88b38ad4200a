"""admin.send_routes: `POST /v1/messages`, one message over HTTP.

Structured JSON or raw RFC 5322 text (relay.cleanup.compose), then cleanup and the queue, as for
SMTP: the answer `202 {"id", "recipients"}` comes once the message is durable. With an
`Idempotency-Key` header, the same key and body within 24 hours get the first answer
again and queue nothing twice (the key is committed with the message, so even a crash
between the two cannot queue it twice); the same key with another body is a 409.
"""

from __future__ import annotations

import hashlib
from typing import Annotated, Any

from fastapi import APIRouter, Header, Request
from pydantic import BaseModel, Discriminator, Tag

from relay.cleanup.cleanup import Cleanup, Origin
from relay.cleanup.compose import ComposeError, RawMessage, StructuredMessage, compose, raw_message
from relay.core.errors import LocalFailure, Rejected
from relay.core.reply import SPOOL_FULL
from relay.queue import Idempotency
from relay.web.admin.callers import caller_of
from relay.web.admin.errors import ApiError
from relay.web.admin.idempotency import IdempotencyKeys


def _shape(body: Any) -> str:
    return "raw" if isinstance(body, dict) and "raw" in body else "structured"


MessageBody = Annotated[
    Annotated[StructuredMessage, Tag("structured")] | Annotated[RawMessage, Tag("raw")],
    Discriminator(_shape),
]


class Accepted(BaseModel):
    id: str
    recipients: int


def send_routes(cleanup: Cleanup, keys: IdempotencyKeys, max_message_size: int) -> APIRouter:
    router = APIRouter()

    @router.post("/v1/messages", status_code=202, response_model=Accepted,
                 responses={409: {"description": "Idempotency-Key reused with another body"},
                            413: {"description": "over max_message_size"},
                            422: {"description": "invalid message; `field` names the part"},
                            503: {"description": "the spool cannot take it now; retry"}})
    async def send_message(message: MessageBody, request: Request,
                           idempotency_key: Annotated[str | None, Header(max_length=200)] = None,
                           ) -> dict[str, Any]:
        """One message: structured (from, to, cc, bcc, subject, text, html, headers,
        attachments as base64) or raw (mail_from, rcpt_to, raw)."""
        if idempotency_key is None:
            return await _submit(message, request, None)
        digest = hashlib.sha256(await request.body()).hexdigest()
        async with keys.held(idempotency_key):
            earlier = await keys.earlier_answer(idempotency_key, digest)
            if earlier is not None:
                return earlier
            return await _submit(message, request, Idempotency(idempotency_key, digest))

    async def _submit(message: StructuredMessage | RawMessage, request: Request,
                      idempotency: Idempotency | None) -> dict[str, Any]:
        try:
            composed = (compose(message) if isinstance(message, StructuredMessage)
                        else raw_message(message))
        except ComposeError as exc:
            raise ApiError(422, "invalid", str(exc), exc.field) from None
        if len(composed.data) > max_message_size:
            field = "raw" if isinstance(message, RawMessage) else "body"
            raise ApiError(413, "too_large", f"the message is {len(composed.data)} bytes; "
                           f"max_message_size is {max_message_size}", field)
        client = request.client.host if request.client else "unknown"
        try:
            queue_id = await cleanup.submit(
                composed.mail_from, composed.recipients, composed.data,
                Origin("HTTP", client), smtputf8=composed.smtputf8, idempotency=idempotency,
                tracking=message.tracking(api_key=caller_of(request).key_id))
        except Rejected as exc:
            field = "raw" if isinstance(message, RawMessage) else "text"
            raise ApiError(422, "rejected", str(exc.reply), field) from None
        except LocalFailure as exc:
            if exc.reply is not SPOOL_FULL:
                raise  # queue_unavailable (admin.outage)
            raise ApiError(503, "spool_full", str(exc.reply)) from None
        return {"id": queue_id, "recipients": len(composed.recipients)}

    return router
