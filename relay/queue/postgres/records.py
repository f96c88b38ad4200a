"""queue.postgres.records: what the cluster backend keeps besides the mail itself, for
PostgresQueue: message histories and events (queue.postgres.events), webhook endpoints and
their delivery state (queue.postgres.webhooks), and the admin API's keys."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import asyncpg

from relay.queue import overview
from relay.queue.apikeys import COLUMNS as KEY_COLUMNS
from relay.queue.apikeys import (
    SESSION_COLUMNS,
    ApiKey,
    ConsoleSession,
    key_of,
    key_values,
    session_of,
)
from relay.queue.base import EVERY_STREAM, ReturnPath, Suppression
from relay.queue.events import (
    EVENT_COLUMNS,
    EVENT_FROM,
    HISTORY_COLUMNS,
    EventFilter,
    EventPage,
    Feedback,
    MessageHistory,
    event_of,
    history_of,
)
from relay.queue.overview import Activity, LeaseHolder, NodeInfo, lease_holders_of
from relay.queue.postgres import events, feedback, webhooks
from relay.queue.postgres.nodes import node_list
from relay.queue.postgres.pool import NOW, count_of
from relay.queue.webhooks import (
    ENDPOINT_COLUMNS,
    STATE_COLUMNS,
    WebhookEndpoint,
    WebhookState,
    endpoint_of,
    state_of,
)


class PostgresRecords:
    """The Queue methods of this module; PostgresQueue provides the plumbing."""

    _lease: float  # seconds a claim is leased for

    def _connection(self) -> Any:
        raise NotImplementedError

    def _transaction(self) -> Any:
        raise NotImplementedError

    async def _fetch(self, sql: str, *params: Any) -> list[asyncpg.Record]:
        raise NotImplementedError

    async def _execute(self, sql: str, *params: Any) -> str:
        raise NotImplementedError

    # -- what happened (queue.postgres.events) -----------------------------------------

    async def history(self, message_id: str) -> MessageHistory | None:
        async with self._connection() as connection:
            row = await connection.fetchrow(
                f"SELECT {HISTORY_COLUMNS} FROM history WHERE message_id = $1", message_id)
            if row is None:
                return None
            rows = await connection.fetch(
                f"SELECT {EVENT_COLUMNS} FROM {EVENT_FROM} WHERE e.message_id = $1 "
                "ORDER BY e.id", message_id)
        return history_of(row, [event_of(r) for r in rows])

    async def events(self, wanted: EventFilter) -> EventPage:
        async with self._connection() as connection:
            return await events.page(connection, wanted)

    async def count_events(self, wanted: EventFilter, cap: int) -> int:
        async with self._connection() as connection:
            return await events.count(connection, wanted, cap)

    async def prune_history(self, before: float) -> int:
        async with self._transaction() as connection:
            return (await events.prune(connection, before)
                    + await feedback.prune_return_paths(connection, before))

    # -- the suppression list, and what comes back later (queue.postgres.feedback) ------

    async def suppressions(self, stream: str | None = None) -> list[Suppression]:
        where, params = ("", []) if stream is None else ("WHERE stream = $1", [stream])
        rows = await self._fetch(f"SELECT address, reason, created_at, stream FROM "
                                 f"suppressions {where} ORDER BY address, stream", *params)
        return [Suppression(*row) for row in rows]

    async def suppress(self, address: str, reason: str,
                       stream: str = EVERY_STREAM) -> bool:
        async with self._connection() as connection:
            return await feedback.suppress(connection, address, reason, stream)

    async def unsuppress(self, address: str, stream: str | None = None) -> int:
        if stream is None:
            return count_of(await self._execute(
                "DELETE FROM suppressions WHERE address = lower($1)", address))
        return count_of(await self._execute(
            "DELETE FROM suppressions WHERE address = lower($1) AND stream = $2",
            address, stream))

    async def return_path(self, token: str) -> ReturnPath | None:
        rows = await self._fetch("SELECT token, message_id, recipient, stream FROM "
                                 "return_paths WHERE token = $1", token)
        return ReturnPath(*rows[0]) if rows else None

    async def record_feedback(self, report: Feedback) -> bool:
        async with self._transaction() as connection:
            return await feedback.record(connection, report)

    # -- the operator's overview (queue.overview) ----------------------------------------

    async def activity(self, since: float, step: float) -> list[Activity]:
        async def read(sql: str, params: Sequence[Any]) -> list[asyncpg.Record]:
            return await self._fetch(sql, *params)

        return await overview.activity(read, overview.POSTGRES, since, step)

    async def lease_holders(self) -> list[LeaseHolder]:
        return lease_holders_of(await self._fetch(_LEASE_HOLDERS))

    async def nodes(self) -> list[NodeInfo]:
        async with self._connection() as connection:
            return await node_list(connection, self._lease)

    # -- webhooks (queue.postgres.webhooks) --------------------------------------------

    async def webhook_endpoints(self) -> list[WebhookEndpoint]:
        return [endpoint_of(row) for row in await self._fetch(
            f"SELECT {ENDPOINT_COLUMNS} FROM webhook_endpoints ORDER BY created_at, id")]

    async def add_webhook_endpoint(self, endpoint: WebhookEndpoint) -> None:
        async with self._transaction() as connection:
            await webhooks.add_endpoint(connection, endpoint)

    async def remove_webhook_endpoint(self, endpoint_id: str) -> bool:
        async with self._transaction() as connection:
            return await webhooks.remove_endpoint(connection, endpoint_id)

    async def webhook_states(self) -> list[WebhookState]:
        return [state_of(row) for row in await self._fetch(
            f"SELECT {STATE_COLUMNS} FROM webhook_state ORDER BY endpoint")]

    async def start_webhook(self, endpoint_id: str) -> None:
        async with self._connection() as connection:
            await webhooks.start(connection, endpoint_id)

    async def lease_webhook(self, endpoint_id: str, owner: str,
                            seconds: float) -> WebhookState | None:
        async with self._transaction() as connection:
            return await webhooks.lease(connection, endpoint_id, owner, seconds)

    async def save_webhook(self, state: WebhookState, owner: str) -> bool:
        async with self._connection() as connection:
            return await webhooks.save(connection, state, owner)

    async def enable_webhook(self, endpoint_id: str) -> bool:
        async with self._connection() as connection:
            return await webhooks.enable(connection, endpoint_id)

    # -- the admin API's keys (queue.apikeys) -------------------------------------------

    async def api_keys(self) -> list[ApiKey]:
        return [key_of(row) for row in await self._fetch(
            f"SELECT {KEY_COLUMNS} FROM api_keys ORDER BY created_at, id")]

    async def api_key(self, digest: str) -> ApiKey | None:
        rows = await self._fetch(f"SELECT {KEY_COLUMNS} FROM api_keys WHERE digest = $1",
                                 digest)
        return key_of(rows[0]) if rows else None

    async def add_api_key(self, key: ApiKey) -> None:
        await self._execute(f"INSERT INTO api_keys ({KEY_COLUMNS}) "
                            "VALUES ($1, $2, $3, $4, $5, $6, $7)", *key_values(key))

    async def revoke_api_key(self, key_id: str) -> bool:
        return count_of(await self._execute(
            f"UPDATE api_keys SET revoked_at = {NOW} WHERE id = $1 AND revoked_at IS NULL",
            key_id)) > 0

    # -- the console's sessions (queue.apikeys) ----------------------------------------

    async def open_console_session(self, id_digest: str, token_digest: str, csrf: str,
                                   lifetime: float) -> None:
        async with self._transaction() as connection:
            await connection.execute(f"DELETE FROM console_sessions WHERE expires_at <= {NOW}")
            await connection.execute(
                f"INSERT INTO console_sessions ({SESSION_COLUMNS}) VALUES ($1, $2, $3, "
                f"{NOW} + $4)", id_digest, token_digest, csrf, lifetime)

    async def console_session(self, id_digest: str) -> ConsoleSession | None:
        rows = await self._fetch(f"SELECT {SESSION_COLUMNS} FROM console_sessions "
                                 f"WHERE id = $1 AND expires_at > {NOW}", id_digest)
        return session_of(rows[0]) if rows else None

    async def close_console_sessions(self, id_digest: str = "", token_digest: str = ""
                                     ) -> int:
        return count_of(await self._execute(
            "DELETE FROM console_sessions WHERE id = $1 OR token = $2", id_digest,
            token_digest))


# Leases still running, by node: a lease past its expiry is anybody's again.
# By node name: an owner is "name/incarnation" (queue.postgres.nodes).
_LEASE_HOLDERS = f"""
    SELECT split_part(owner, '/', 1) AS node, SUM(recipients), SUM(connections),
        SUM(webhooks) FROM (
        SELECT lease_owner AS owner, COUNT(*) AS recipients, 0 AS connections, 0 AS webhooks
            FROM recipients WHERE state = 'active' AND lease_owner IS NOT NULL
            AND next_attempt_at > {NOW} GROUP BY lease_owner
        UNION ALL
        SELECT owner, 0, COUNT(*), 0 FROM destination_slots WHERE expires_at > {NOW}
            GROUP BY owner
        UNION ALL
        SELECT owner, 0, 0, COUNT(*) FROM webhook_state WHERE owner IS NOT NULL
            AND lease_until > {NOW} GROUP BY owner
    ) AS held GROUP BY 1 ORDER BY 1"""
