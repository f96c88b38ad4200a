"""queue.postgres.webhooks: webhook endpoints and delivery state in the PostgreSQL backend
(queue.webhooks says what they are), shared by every node; leases in the database's
clock. Their tables: migration 5 (queue.postgres.schema)."""

from __future__ import annotations

import asyncpg

from relay.queue.postgres.pool import NOW, count_of
from relay.queue.webhooks import (
    ENDPOINT_COLUMNS,
    STATE_COLUMNS,
    WebhookEndpoint,
    WebhookState,
    events_json,
    state_of,
    state_values,
)


async def add_endpoint(connection: asyncpg.Connection, endpoint: WebhookEndpoint) -> None:
    await connection.execute(
        f"INSERT INTO webhook_endpoints ({ENDPOINT_COLUMNS}) VALUES ($1, $2, $3, $4, $5)",
        endpoint.id, endpoint.url, events_json(endpoint.events), endpoint.secret,
        endpoint.created_at)
    await start(connection, endpoint.id)


async def start(connection: asyncpg.Connection, endpoint_id: str) -> None:
    """An endpoint's state, if it has none: its events are those that commit after the
    ones visible now (queue.postgres.events)."""
    await connection.execute(
        "INSERT INTO webhook_state (endpoint, cursor) VALUES "
        "($1, pg_snapshot_xmin(pg_current_snapshot())::text || '.0') ON CONFLICT DO NOTHING",
        endpoint_id)


async def remove_endpoint(connection: asyncpg.Connection, endpoint_id: str) -> bool:
    await connection.execute("DELETE FROM webhook_state WHERE endpoint = $1", endpoint_id)
    return count_of(await connection.execute("DELETE FROM webhook_endpoints WHERE id = $1",
                                             endpoint_id)) > 0


async def lease(connection: asyncpg.Connection, endpoint_id: str, owner: str,
                seconds: float) -> WebhookState | None:
    """The endpoint's state, leased to `owner`; None while another node's lease runs, or
    when it has none (removed: its last round must not bring the row back)."""
    row = await connection.fetchrow(
        f"UPDATE webhook_state SET owner = $2, lease_until = {NOW} + $3 WHERE endpoint = $1 "
        f"AND (owner = $2 OR lease_until < {NOW}) RETURNING {STATE_COLUMNS}",
        endpoint_id, owner, seconds)
    return None if row is None else state_of(row)


async def save(connection: asyncpg.Connection, state: WebhookState, owner: str) -> bool:
    return count_of(await connection.execute(
        "UPDATE webhook_state SET cursor = $1, attempts = $2, head_failing_since = $3, "
        "failing_since = $4, next_attempt_at = $5, disabled_at = $6 "
        "WHERE endpoint = $7 AND owner = $8", *state_values(state), state.endpoint, owner)) > 0


async def enable(connection: asyncpg.Connection, endpoint_id: str) -> bool:
    return count_of(await connection.execute(
        "UPDATE webhook_state SET disabled_at = NULL, failing_since = NULL, attempts = 0, "
        "head_failing_since = NULL, next_attempt_at = 0 WHERE endpoint = $1",
        endpoint_id)) > 0
