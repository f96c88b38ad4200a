"""admin.apikey_routes: the admin API's keys (admin.callers), for `relayctl apikey`.

`POST /v1/apikeys {"name", "scopes", "rate_limit"}` makes a key and answers it once
(only its digest is kept); `GET /v1/apikeys` lists them without secrets; `DELETE
/v1/apikeys/{id}` revokes one (it stays listed, refused). All need the admin scope.
"""

from __future__ import annotations

from typing import Annotated, Any, Protocol

from fastapi import APIRouter
from pydantic import BaseModel, ConfigDict, Field, StringConstraints, field_validator

from relay.core.units import parse_rate
from relay.queue.apikeys import ApiScope
from relay.queue.roles import ApiKeyStore, ConsoleSessionStore
from relay.web.admin.callers import KeyRing, new_key
from relay.web.admin.errors import ApiError


class NewApiKey(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: Annotated[str, StringConstraints(pattern=r"^[!-~][ -~]{0,99}$")]
    scopes: list[ApiScope] = Field(min_length=1, max_length=len(ApiScope))
    rate_limit: str = ""  # "1000/h": requests per window; "" for none

    @field_validator("rate_limit")
    @classmethod
    def _rate(cls, value: str) -> str:
        parse_rate(value)  # ValueError names what is expected
        return value.strip()


class KeyQueue(ApiKeyStore, ConsoleSessionStore, Protocol):
    """The keys, and the console's sessions that end with a revoked key."""


def apikey_routes(queue: KeyQueue, keys: KeyRing) -> APIRouter:
    router = APIRouter(prefix="/v1/apikeys")

    @router.get("")
    async def list_keys() -> dict[str, Any]:
        return {"keys": [key.to_json() for key in await queue.api_keys()]}

    @router.post("", status_code=201)
    async def create_key(new: NewApiKey) -> dict[str, Any]:
        """A new key; the answer's `key` is the secret, shown this once."""
        record, key = new_key(new.name, tuple(dict.fromkeys(new.scopes)), new.rate_limit)
        await queue.add_api_key(record)
        return {**record.to_json(), "key": key}

    @router.delete("/{key_id}", responses={404: {"description": "no such key, or revoked"}})
    async def revoke_key(key_id: str) -> dict[str, int]:
        if not await queue.revoke_api_key(key_id):
            raise ApiError(404, "not_found", f"no API key {key_id} that is not revoked", "id")
        keys.forget()
        revoked = next(k for k in await queue.api_keys() if k.id == key_id)
        # Its console sessions would be refused anyway (the key is checked on every
        # request); they are ended too, not left to expire.
        await queue.close_console_sessions(token_digest=revoked.digest)
        return {"revoked": 1}

    return router
