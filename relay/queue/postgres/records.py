"""queue.postgres.records: what the cluster backend keeps besides the mail itself, where
its SQL is its own: message histories and events in commit order (queue.postgres.events),
feedback, the nodes and their leases. The tables both backends keep alike (keys,
sessions, webhooks, suppressions, pruning) are queue.tables'."""

from __future__ import annotations

from typing import Any

import asyncpg

from relay.queue.base import EVERY_STREAM
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
from relay.queue.overview import LeaseHolder, NodeInfo, lease_holders_of
from relay.queue.postgres import events, feedback
from relay.queue.postgres.nodes import node_list
from relay.queue.postgres.pool import NOW
from relay.queue.tables import SharedTables


class PostgresRecords(SharedTables):
    """The cluster's own ways with events, feedback and the overview; what both backends
    keep alike is queue.tables'. PostgresQueue provides the plumbing."""

    _lease: float  # seconds a claim is leased for
    _live = "TRUE"  # a finished message's rows go in the transaction that finishes it

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

    # -- the suppression list, and what comes back later (queue.postgres.feedback) -----

    async def suppress(self, address: str, reason: str,
                       stream: str = EVERY_STREAM) -> bool:
        async with self._connection() as connection:
            return await feedback.suppress(connection, address, reason, stream)

    async def record_feedback(self, report: Feedback) -> bool:
        async with self._transaction() as connection:
            return await feedback.record(connection, report)

    # -- the operator's overview (queue.overview) ----------------------------------------

    async def lease_holders(self) -> list[LeaseHolder]:
        return lease_holders_of(await self._fetch(_LEASE_HOLDERS))

    async def nodes(self) -> list[NodeInfo]:
        async with self._connection() as connection:
            return await node_list(connection, self._lease)


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
