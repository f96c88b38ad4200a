"""queue.postgres.nodes: who the nodes of a cluster are, and what a restarted node takes
back.

A node has a stable name (`[queue] node`, default the host name: a pod's name on
Kubernetes) and a fresh incarnation at each start; its leases are owned by
"<name>/<incarnation>". While it runs it holds a session advisory lock on its name, on a
connection of its own, and writes a heartbeat there every quarter lease.

At start, with that lock taken, a node returns to the queue what an earlier incarnation
of its name still leases (recipients, connection slots, webhook endpoints), instead of
letting acknowledged mail wait out the lease after a crash. The lock is the fence: it is
held by a live process and released by PostgreSQL the moment that process's connection
ends, so a node cannot rob a live twin; a second process with the same name refuses to
start instead. Taking back is safe against a late result of the earlier incarnation:
outcomes are fenced by the attempt number, and a recipient taken again has a new one.

BUGS: behind a pooler in transaction mode (`notify = false`) a session lock does not
belong to one client; give such nodes a direct connection to the database.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import secrets

import asyncpg

from relay.core.errors import RelayError
from relay.queue.overview import LeaseHolder, NodeInfo, lease_holders_of
from relay.queue.postgres.notify import NOTIFY
from relay.queue.postgres.pool import (
    CONNECT_TIMEOUT,
    DATABASE_ERRORS,
    NOW,
    DatabaseAccess,
    connected,
    count_of,
)
from relay.queue.postgres.schema import MIGRATIONS, version
from relay.runtime.tasks import BackgroundTask
from relay.runtime.trouble import Trouble

log = logging.getLogger("relay.queue")

_LOCK = "SELECT pg_try_advisory_lock(hashtextextended('relay-node:' || $1, 0))"
_OF_EARLIER = "split_part({}, '/', 1) = $1 AND {} <> $2"  # owned by this name, not now


def incarnation_of(node: str) -> str:
    """The owner of this run's leases: the node's name and a token new at each start."""
    return f"{node}/{secrets.token_hex(4)}"


class NodeLock:
    """The node's name, held for as long as the node runs, with its heartbeat."""

    def __init__(self, dsn: str, node: str, owner: str, interval: float) -> None:
        self._dsn = dsn
        self.node = node
        self.owner = owner
        self._interval = interval
        self._connection: asyncpg.Connection | None = None
        self._task = BackgroundTask("node-heartbeat")

    async def take(self) -> tuple[int, int, int]:
        """Hold the name (RelayError when a live twin holds it), take back what earlier
        runs of it lease, and start the heartbeat; what was taken back, by kind."""
        self._connection = await self._locked()
        async with self._connection.transaction():
            taken = await _take_back(self._connection, self.node, self.owner)
            await self._connection.execute(
                f"INSERT INTO nodes (name, owner, started_at, heartbeat_at) "
                f"VALUES ($1, $2, {NOW}, {NOW}) ON CONFLICT (name) DO UPDATE SET "
                "owner = EXCLUDED.owner, started_at = EXCLUDED.started_at, "
                "heartbeat_at = EXCLUDED.heartbeat_at", self.node, self.owner)
        if any(taken):
            log.info("node %s: took back %d recipients, %d connection slots and %d webhook "
                     "endpoints that an earlier run of this node held", self.node, *taken)
        self._task.start(self._beat())
        return taken

    async def _locked(self) -> asyncpg.Connection:
        connection = await asyncpg.connect(self._dsn, timeout=CONNECT_TIMEOUT)
        if not await connection.fetchval(_LOCK, self.node):
            await connection.close()
            raise RelayError(f"cannot start: another node named {self.node} is running on "
                             "this queue database: give each node its own [queue] node")
        return connection

    async def _beat(self) -> None:
        trouble = Trouble(f"node {self.node}'s heartbeat", log)
        while True:
            await asyncio.sleep(self._interval)
            try:
                if self._connection is None or self._connection.is_closed():
                    self._connection = await self._locked()  # the lock went with it
                await self._connection.execute(
                    f"UPDATE nodes SET heartbeat_at = {NOW} WHERE name = $1 AND owner = $2",
                    self.node, self.owner)
            except (*DATABASE_ERRORS, RelayError) as exc:
                await self._drop_connection()
                await asyncio.sleep(trouble.failed(exc))
            else:
                trouble.succeeded()

    async def _drop_connection(self) -> None:
        if self._connection is not None:
            with contextlib.suppress(*DATABASE_ERRORS):
                await self._connection.close(timeout=CONNECT_TIMEOUT)
            self._connection = None

    async def release(self) -> None:
        await self._task.stop()
        await self._drop_connection()  # and the lock with it


async def _take_back(connection: asyncpg.Connection, node: str, owner: str
                     ) -> tuple[int, int, int]:
    recipients = count_of(await connection.execute(
        f"UPDATE recipients SET next_attempt_at = {NOW}, lease_owner = NULL "
        f"WHERE state = 'active' AND {_OF_EARLIER.format('lease_owner', 'lease_owner')}",
        node, owner))
    slots = count_of(await connection.execute(
        f"DELETE FROM destination_slots WHERE {_OF_EARLIER.format('owner', 'owner')}",
        node, owner))
    webhooks = count_of(await connection.execute(
        "UPDATE webhook_state SET owner = NULL, lease_until = 0 "
        f"WHERE {_OF_EARLIER.format('owner', 'owner')}", node, owner))
    if recipients:
        await connection.execute(NOTIFY)  # every node may deliver them
    return recipients, slots, webhooks


async def node_list(connection: asyncpg.Connection, lease: float) -> list[NodeInfo]:
    """Every node that ever ran, by name; gone when no heartbeat came within a lease."""
    rows = await connection.fetch(
        f"SELECT name, owner, started_at, heartbeat_at, heartbeat_at < {NOW} - $1 "
        "FROM nodes ORDER BY name", lease)
    return [NodeInfo(*row) for row in rows]


async def cluster_status(dsn: str, lease: float) -> tuple[int, int, list[NodeInfo]]:
    """relayctl db status, on one connection: the version the database has, the newest
    this relay knows, and the nodes (none before the schema has their table)."""
    async with connected(dsn) as connection:
        current = await version(connection)
        has_nodes = await connection.fetchval("SELECT to_regclass('nodes') IS NOT NULL")
        return (current, len(MIGRATIONS),
                await node_list(connection, lease) if has_nodes else [])


class NodeViews(DatabaseAccess):
    """The Overview's nodes of the cluster and what each holds now."""

    async def lease_holders(self) -> list[LeaseHolder]:
        async with self._connection() as connection:
            return lease_holders_of(await connection.fetch(_LEASE_HOLDERS))

    async def nodes(self) -> list[NodeInfo]:
        async with self._connection() as connection:
            return await node_list(connection, self._lease)


# Leases still running, by node: a lease past its expiry is anybody's again.
# By node name: an owner is "name/incarnation".
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
