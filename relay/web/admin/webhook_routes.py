"""admin.webhook_routes: the application's webhook endpoints (relay.notify.webhooks).

`GET /v1/webhooks` lists every endpoint, those of relay.toml and those added here, with
how its delivery stands (never a secret). `POST /v1/webhooks {"url", "events"}` adds one
and answers its signing secret, once; `DELETE /v1/webhooks/{id}` removes one added here;
`POST /v1/webhooks/{id}/enable` delivers again to an endpoint that was disabled after
failing for too long, from the event where it stopped.
"""

from __future__ import annotations

import secrets
import time
from typing import Annotated, Any

from fastapi import APIRouter
from pydantic import BaseModel, ConfigDict, Field, StringConstraints, field_validator

from relay.notify.webhooks import describe, new_secret, url_problem
from relay.queue.events import EventType
from relay.queue.roles import WebhookStore
from relay.queue.webhooks import WebhookEndpoint
from relay.web.admin.errors import ApiError

WebhookUrl = Annotated[str, StringConstraints(pattern=r"^https?://[^\s/]+\S*$", max_length=2000)]


class NewWebhook(BaseModel):
    model_config = ConfigDict(extra="forbid")

    url: WebhookUrl
    events: list[EventType] = Field(default=[], max_length=len(EventType))  # empty: all

    @field_validator("url")
    @classmethod
    def _postable(cls, url: str) -> str:
        problem = url_problem(url)
        if problem is not None:
            raise ValueError(problem)
        return url


def webhook_routes(queue: WebhookStore, configured: list[WebhookEndpoint]) -> APIRouter:
    router = APIRouter(prefix="/v1/webhooks")
    from_config = {endpoint.id for endpoint in configured}

    @router.get("")
    async def list_webhooks() -> dict[str, Any]:
        """Every endpoint and how its delivery stands (disabled_at, failing_since)."""
        endpoints = [*configured, *await queue.webhook_endpoints()]
        return {"webhooks": describe(endpoints, await queue.webhook_states())}

    @router.post("", status_code=201)
    async def add_webhook(new: NewWebhook) -> dict[str, Any]:
        """Add an endpoint; its events start now. The answer holds its signing secret,
        which is not shown again."""
        endpoint = WebhookEndpoint(f"wh_{secrets.token_hex(8)}", new.url,
                                   tuple(dict.fromkeys(new.events)), new_secret(), time.time())
        await queue.add_webhook_endpoint(endpoint)
        return {**endpoint.to_json(), "secret": endpoint.secret}

    @router.delete("/{webhook_id}", responses={404: {"description": "no such endpoint"},
                                              409: {"description": "one of relay.toml"}})
    async def remove_webhook(webhook_id: str) -> dict[str, int]:
        if webhook_id in from_config:
            raise ApiError(409, "configured", f"webhook {webhook_id} is in relay.toml: "
                           "remove it there", "id")
        if not await queue.remove_webhook_endpoint(webhook_id):
            raise ApiError(404, "not_found", f"no webhook {webhook_id}", "id")
        return {"removed": 1}

    @router.post("/{webhook_id}/enable", responses={404: {"description": "no such "
                                                                     "endpoint"}})
    async def enable_webhook(webhook_id: str) -> dict[str, int]:
        """Deliver again to a disabled endpoint, from the event where it stopped."""
        known = webhook_id in from_config or any(
            e.id == webhook_id for e in await queue.webhook_endpoints())
        if not known:
            raise ApiError(404, "not_found", f"no webhook {webhook_id}", "id")
        return {"enabled": int(await queue.enable_webhook(webhook_id))}

    return router
