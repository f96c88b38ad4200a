"""admin.suppression_routes: the suppression list: addresses not sent to, by stream
("*": every stream): hard bounces everywhere, complaints and unsubscribes in the stream
they came from, and those an operator adds."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter
from pydantic import BaseModel, StringConstraints

from relay.cleanup.compose import ComposeError, mailbox
from relay.queue.base import EVERY_STREAM, SUPPRESSION_STREAM_PATTERN
from relay.queue.roles import SuppressionStore
from relay.web.admin.errors import ApiError

# A stream's name, or "*": every stream.
SuppressionStream = Annotated[str, StringConstraints(pattern=SUPPRESSION_STREAM_PATTERN)]


class SuppressionEntry(BaseModel):
    address: str
    reason: str = "added by an operator"
    stream: SuppressionStream = EVERY_STREAM


def suppression_routes(queue: SuppressionStore) -> APIRouter:
    router = APIRouter()

    @router.get("/v1/suppressions")
    async def suppressions(stream: SuppressionStream | None = None) -> dict[str, Any]:
        """Addresses not sent to, by stream ("*": every stream): hard bounces everywhere,
        complaints and unsubscribes in the stream they came from, and those added here.
        `?stream=` shows one stream's entries."""
        return {"suppressions": [
            {"address": s.address, "stream": s.stream, "reason": s.reason,
             "created_at": s.created_at}
            for s in await queue.suppressions(stream)]}

    @router.post("/v1/suppressions", status_code=201)
    async def add_suppression(entry: SuppressionEntry) -> dict[str, bool]:
        check_address(entry.address)
        return {"added": await queue.suppress(entry.address, entry.reason, entry.stream)}

    @router.delete("/v1/suppressions/{address}")
    async def remove_suppression(address: str,
                                 stream: SuppressionStream | None = None) -> dict[str, bool]:
        """Off every stream's list, or with `?stream=` off that one's only."""
        if not await queue.unsuppress(address, stream):
            raise ApiError(404, "not_found", f"{address} is not suppressed", "address")
        return {"removed": True}

    return router


def check_address(address: str) -> None:
    try:
        mailbox(address, "address")
    except ComposeError as exc:
        raise ApiError(422, "invalid", str(exc), exc.field) from None
