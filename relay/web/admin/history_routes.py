"""admin.history_routes: what happened to a message, also after it left the queue.

`GET /v1/messages/{id}`: the envelope, subject, size, the application's metadata and
tags, and each recipient's timeline (queue.events), for `[history] retention` after the
message left the queue. `GET /v1/events`: events oldest first, filtered by message,
recipient, type and time, paged by an opaque cursor (`after`, from the last page's
`next`): a page never misses an event that commits later.
"""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Query

from relay.queue.events import MAX_PAGE, EventFilter, EventType
from relay.queue.roles import EventHistory
from relay.web.admin.errors import ApiError


def history_routes(queue: EventHistory) -> APIRouter:
    router = APIRouter()

    @router.get("/v1/messages/{message_id}", responses={404: {"description": "unknown, or "
                                                               "past its retention"}})
    async def message_history(message_id: str) -> dict[str, Any]:
        """A message's envelope, subject, metadata and every recipient's events."""
        found = await queue.history(message_id)
        if found is None:
            raise ApiError(404, "not_found", f"no message {message_id} in the queue or its "
                           "history", "id")
        return found.to_json()

    @router.get("/v1/events", responses={422: {"description": "a filter or cursor that "
                                                             "cannot be"}})
    async def list_events(
        message: str | None = None,
        recipient: str | None = None,
        type: Annotated[list[EventType] | None, Query()] = None,  # the API's name
        since: float | None = None,
        until: float | None = None,
        after: Annotated[str, Query(max_length=64)] = "",
        limit: Annotated[int, Query(ge=1, le=MAX_PAGE)] = 100,
        key: Annotated[str | None, Query(max_length=64)] = None,
    ) -> dict[str, Any]:
        """Events oldest first; `next` is the cursor for the events after these (pass it
        as `after`; the same cursor again later gives what happened since). `key`: only
        mail submitted with that API key ("admin" for the admin token)."""
        wanted = EventFilter(message, recipient, tuple(type or ()), since, until, after, limit,
                             key)
        try:
            page = await queue.events(wanted)
        except ValueError:
            raise ApiError(422, "invalid", "not a cursor from this relay's events",
                           "after") from None
        return {"events": [event.to_json() for event in page.events], "next": page.cursor}

    return router
