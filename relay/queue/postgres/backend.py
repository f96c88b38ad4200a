"""queue.postgres.backend: the cluster backend. Several relay nodes share one queue in
PostgreSQL.

Contract (queue.base) across nodes:
- Durable before 250: `store` returns once the transaction holding the message (body
  included) has committed with `synchronous_commit` on. Messages that arrive together share
  one transaction (group commit), so throughput is not one round trip per message.
- Leases, not locks: `claim_due` takes due recipients with `FOR UPDATE SKIP LOCKED` into a
  lease (owner node, the attempt number as fencing token, an expiry in the database's
  clock); `renew_leases` extends it; an outcome applies only while the token matches, so a
  node that lost its lease (paused, cut off) changes nothing and its late result is logged
  as a possible duplicate. An expired lease makes the recipient due again; nothing is ever
  deleted because a lease expired.
- Every time is the database's (`clock_timestamp()`), never a node's: a deferral is stored
  as a delay from the database's now.
- The hot tables hold only what is queued: a message leaves with its recipients in the
  transaction that makes its last one final (the message row is locked first, so two
  nodes finishing its last two recipients at once cannot both leave it behind).
Broadcasts and suppressions: queue.postgres.broadcasts. What both backends keep alike
(keys, sessions, webhooks, listings) is queue.tables', on DatabaseSql.
"""

from __future__ import annotations

import asyncio
import logging
import secrets
import socket
import time
from collections.abc import Callable, Sequence
from typing import Any

import asyncpg

from relay.core.errors import LocalFailure, RelayError
from relay.queue.base import (
    CLAIMABLE,
    DEFAULT_LEASE,
    DELETABLE,
    HOLDABLE,
    NO_TRACKING,
    WAITING,
    BroadcastStatus,
    Claimed,
    Idempotency,
    NewMessage,
    Outcome,
    Selection,
    Tracking,
)
from relay.queue.events import EventType
from relay.queue.postgres import broadcasts, events, feedback
from relay.queue.postgres.events import EventPages
from relay.queue.postgres.feedback import FeedbackWrites
from relay.queue.postgres.finish import finish_messages
from relay.queue.postgres.groupcommit import GroupCommit, message_commits, remember_answer
from relay.queue.postgres.nodes import NodeLock, NodeViews, incarnation_of
from relay.queue.postgres.notify import NOTIFY, Listener
from relay.queue.postgres.pool import (
    CONNECT_TIMEOUT,
    DATABASE_ERRORS,
    NOW,
    DatabaseSql,
    Failing,
    count_of,
    describe,
)
from relay.queue.postgres.prefetched import PrefetchedBodies
from relay.queue.postgres.ratelimits import PostgresRateLimits
from relay.queue.postgres.schema import migrate
from relay.queue.roles import NewMailTaker
from relay.queue.tables import SharedTables

log = logging.getLogger("relay.queue")

PREFETCH_SIZE = 256 * 1024  # bodies up to this size come with the claim
PREFETCH_BYTES = 64 * 1024 * 1024  # and at most this much of them is kept
POOL_CLOSE_TIMEOUT = 10.0  # seconds


class PostgresQueue(PostgresRateLimits, EventPages, FeedbackWrites, NodeViews, SharedTables):
    """Queue backend for a cluster: every table in one PostgreSQL database."""

    _live = "TRUE"  # a finished message's rows go in the transaction that finishes it

    def __init__(self, dsn: str, lease: float = DEFAULT_LEASE, node: str | None = None,
                 pool_size: int = 10, notify: bool = True) -> None:
        self._dsn = dsn
        self._notify = notify
        self._listener: Listener | None = None
        self._taker: NewMailTaker | None = None
        self._lease = lease
        self.node = node or socket.gethostname()
        self.owner = incarnation_of(self.node)  # of this run's leases
        self._node_lock: NodeLock | None = None
        self._pool_size = pool_size
        self._pool: asyncpg.Pool | None = None
        self._batches: GroupCommit[NewMessage] | None = None
        self._records: GroupCommit[Sequence[Outcome]] | None = None
        self._slots: set[str] = set()  # tokens of the destination slots this node holds
        # Bodies of small messages come with their claim: no query per message to read it.
        self._bodies = PrefetchedBodies(PREFETCH_BYTES)
        self._sql = DatabaseSql(self._connection, self._transaction)  # queue.tables'

    # -- lifecycle -------------------------------------------------------------------

    async def open(self) -> None:
        try:
            self._pool = await asyncpg.create_pool(
                # No floor of idle connections: asyncpg would reconnect them in the
                # background while the database is down, a traceback each time.
                self._dsn, min_size=0, max_size=self._pool_size, timeout=CONNECT_TIMEOUT,
                server_settings={"synchronous_commit": "on", "application_name": "relay"})
            async with self._pool.acquire() as connection:
                await migrate(connection)
                await broadcasts.abandon_stale_uploads(connection)
            self._node_lock = NodeLock(self._dsn, self.node, self.owner, self._lease / 4)
            await self._node_lock.take()  # and what an earlier run of this node leased
        except (*DATABASE_ERRORS, RelayError) as exc:
            if self._pool is not None:
                await self._pool.close()
                self._pool = None
            if isinstance(exc, RelayError):
                raise
            raise LocalFailure(f"queue database: {describe(exc)}") from exc
        self._batches = message_commits(self._pool)
        self._records = GroupCommit(self._record_together)

    # -- capabilities (queue.roles.Capabilities) -----------------------------------------

    def follow_new_mail(self, taker: NewMailTaker) -> None:
        """Wake `taker` when this node stores mail, and when any node makes work due
        (queue.postgres.notify; not with `notify = false`, where nodes poll)."""
        self._taker = taker
        self.listen(taker.wake)

    def listen(self, wake: Callable[[], None]) -> None:
        """Call `wake` when any node makes work due (queue.postgres.notify); nothing with
        `notify = false`, where nodes poll."""
        if self._notify and self._listener is None:
            self._listener = Listener(self._dsn, wake)
            self._listener.start()

    def shared_rate_limits(self) -> PostgresQueue:
        return self  # counted in the database, for every node

    def free_bytes(self) -> None:
        return None  # the database's disk is not this node's to measure

    def indexer(self) -> None:
        return None  # SMTP is served in the main process

    async def close(self) -> None:
        if self._listener is not None:
            await self._listener.stop()
            self._listener = None
        if self._node_lock is not None:
            await self._node_lock.release()
            self._node_lock = None
        for writes in (self._batches, self._records):
            if writes is not None:
                await writes.close()
        if self._pool is not None:
            try:
                # Waits for every connection to be released: bounded, a stop never hangs.
                await asyncio.wait_for(self._pool.close(), POOL_CLOSE_TIMEOUT)
            except TimeoutError:
                log.warning("queue database connections still busy after %.0fs: closed "
                            "abruptly", POOL_CLOSE_TIMEOUT)
                self._pool.terminate()
        self._pool = self._batches = self._records = None

    async def check(self) -> None:
        await self._fetchval("SELECT 1")

    # -- intake ----------------------------------------------------------------------

    async def store(self, message: NewMessage) -> None:
        if self._batches is None:
            raise LocalFailure("queue is not open")
        await self._batches.submit(message)
        if self._taker is not None:
            self._taker.wake()

    # -- delivery --------------------------------------------------------------------

    async def claim_due(self, limit: int) -> list[Claimed]:
        rows = await self._fetch(
            f"WITH due AS (SELECT id FROM recipients WHERE {CLAIMABLE} "
            f"AND next_attempt_at <= {NOW} ORDER BY next_attempt_at LIMIT $1 "
            "FOR UPDATE SKIP LOCKED), "
            "claimed AS (UPDATE recipients r SET state = 'active', attempts = r.attempts + 1, "
            f"last_attempt_at = {NOW}, next_attempt_at = {NOW} + $2, lease_owner = $3 "
            "FROM due WHERE r.id = due.id "
            "RETURNING r.id, r.message_id, r.address, r.domain, r.attempts, r.fields) "
            "SELECT c.id, c.message_id, c.address, c.domain, c.attempts, m.mail_from, "
            "m.received_at, m.smtputf8, c.fields, m.stream, "
            f"COALESCE({feedback.SUPPRESSED_FOR}, ''), "
            "CASE WHEN m.size <= $4 THEN m.body END FROM claimed c "
            "JOIN messages m ON m.id = c.message_id ORDER BY c.id",
            limit, self._lease, self.owner, PREFETCH_SIZE)
        for row in rows:
            if row[11] is not None:
                self._bodies.keep(row[1], bytes(row[11]))
        return [Claimed(*r[:11]) for r in rows]

    async def renew_leases(self, claims: Sequence[tuple[int, int]]) -> None:
        if claims:
            await self._execute(
                f"UPDATE recipients r SET next_attempt_at = {NOW} + $3 "
                "FROM unnest($1::bigint[], $2::integer[]) AS c(id, attempt) "
                "WHERE r.id = c.id AND r.attempts = c.attempt AND r.state = 'active'",
                [c[0] for c in claims], [c[1] for c in claims], self._lease)

    async def take_slot(self, destination: str, limit: int) -> str | None:
        token = secrets.token_hex(16)
        taken = await self._fetchval(
            f"WITH free AS (SELECT s FROM generate_series(0, $2 - 1) AS s WHERE NOT EXISTS ("
            "SELECT 1 FROM destination_slots d WHERE d.destination = $1 AND d.slot = s "
            f"AND d.expires_at > {NOW}) ORDER BY s LIMIT 1) "
            "INSERT INTO destination_slots (destination, slot, owner, token, expires_at) "
            f"SELECT $1, s, $3, $4, {NOW} + $5 FROM free "
            "ON CONFLICT (destination, slot) DO UPDATE SET owner = EXCLUDED.owner, "
            "token = EXCLUDED.token, expires_at = EXCLUDED.expires_at "
            f"WHERE destination_slots.expires_at <= {NOW} RETURNING slot",
            destination, limit, self.owner, token, self._lease)
        if taken is None:  # all taken, or another node took the free one first
            return None
        self._slots.add(token)
        return token

    async def renew_slots(self) -> None:
        if self._slots:
            await self._execute(f"UPDATE destination_slots SET expires_at = {NOW} + $2 "
                                "WHERE token = ANY($1::text[])", list(self._slots),
                                self._lease)

    async def release_slot(self, token: str) -> None:
        self._slots.discard(token)
        await self._execute("DELETE FROM destination_slots WHERE token = $1", token)

    async def return_leases(self, claims: Sequence[tuple[int, int]]) -> None:
        if not claims:
            return
        async with self._transaction() as connection:
            returned = count_of(await connection.execute(
                f"UPDATE recipients r SET state = 'queued', next_attempt_at = {NOW}, "
                "lease_owner = NULL FROM unnest($1::bigint[], $2::integer[]) AS c(id, attempt) "
                "WHERE r.id = c.id AND r.attempts = c.attempt AND r.state = 'active'",
                [c[0] for c in claims], [c[1] for c in claims]))
            if returned:
                await connection.execute(NOTIFY)

    async def next_due_at(self) -> float | None:
        found = await self._fetchval(
            f"SELECT MIN(next_attempt_at) FROM recipients WHERE {CLAIMABLE}")
        return None if found is None else float(found)

    async def read_body(self, message_id: str) -> bytes:
        cached = self._bodies.get(message_id)
        if cached is not None:
            return cached
        body = await self._fetchval("SELECT body FROM messages WHERE id = $1", message_id)
        if body is None:
            raise FileNotFoundError(message_id)  # deleted meanwhile, as the local backend
        return bytes(body)

    async def record(self, outcomes: Sequence[Outcome]) -> None:
        """Outcomes of jobs that finish together share one transaction (group commit)."""
        if not outcomes:
            return
        if self._records is None:
            raise LocalFailure("queue is not open")
        await self._records.submit(outcomes)

    async def _record_together(self, groups: list[Sequence[Outcome]]) -> None:
        outcomes = [outcome for group in groups for outcome in group]
        now = time.time()  # only to turn the node's retry times into delays
        async with self._transaction() as connection:
            applied = await connection.fetch(
                "UPDATE recipients r SET state = o.state, last_reply = o.reply, "
                "lease_owner = NULL, next_attempt_at = CASE WHEN o.delay IS NULL "
                f"THEN r.next_attempt_at ELSE {NOW} + o.delay END "
                "FROM unnest($1::bigint[], $2::integer[], $3::text[], $4::text[], "
                "$5::float8[]) AS o(id, attempt, state, reply, delay) "
                "WHERE r.id = o.id AND r.attempts = o.attempt AND r.state = 'active' "
                "RETURNING r.id, r.message_id, r.address",
                [o.recipient_id for o in outcomes], [o.attempt for o in outcomes],
                [o.state.value for o in outcomes], [o.reply for o in outcomes],
                [None if o.next_attempt_at is None else max(o.next_attempt_at - now, 0.0)
                 for o in outcomes])
            if len(applied) < len(outcomes):
                log.warning("%d delivery outcomes came after their lease was lost (taken over "
                            "by another node, requeued or deleted): not recorded; what they "
                            "delivered may be delivered again", len(outcomes) - len(applied))
            by_id = {o.recipient_id: o for o in outcomes}
            applied_outcomes = [(by_id[r[0]], r[1], r[2]) for r in applied]
            await events.add_outcome_events(connection, applied_outcomes)
            await feedback.keep_return_paths(connection, applied_outcomes)
            ids = {r[0] for r in applied}
            await broadcasts.record([o for o in outcomes if o.broadcast and o.recipient_id in
                                     ids], connection)
            finished = await finish_messages(connection, sorted({r[1] for r in applied}))
        self._bodies.forget(finished)

    # -- operator commands -----------------------------------------------------------

    async def _queue_now(self, selection: Selection, which: str, event: EventType) -> int:
        """Recipients of `selection` that match `which` to `queued`, due now, and every
        node told; how many."""
        where, params = _selection_sql(selection, first=1)
        if where is None:
            return 0
        async with self._transaction() as connection:
            count = await events.add_events_of(
                connection, event, f"UPDATE recipients SET state = 'queued', "
                f"next_attempt_at = {NOW}, lease_owner = NULL WHERE {which} AND ({where}) "
                "RETURNING message_id, address", *params)
            if count:
                await connection.execute(NOTIFY)
        return count

    async def hold(self, selection: Selection) -> int:
        where, params = _selection_sql(selection, first=1)
        if where is None:
            return 0
        async with self._transaction() as connection:
            return await events.add_events_of(
                connection, EventType.HELD, f"UPDATE recipients SET state = 'held' "
                f"WHERE {HOLDABLE} AND ({where}) RETURNING message_id, address", *params)

    async def delete(self, selection: Selection) -> int:
        where, params = _selection_sql(selection, first=1)
        if where is None:
            return 0
        selected = DELETABLE.format(where)
        async with self._transaction() as connection:
            await events.add_events_of(
                connection, EventType.DELETED, "SELECT message_id, address FROM recipients "
                f"WHERE message_id IN ({selected}) AND {WAITING} ORDER BY id", *params)
            deleted = [row[0] for row in await connection.fetch(
                f"DELETE FROM messages WHERE id IN ({selected}) RETURNING id", *params)]
            await events.finish_history(connection, deleted)
        self._bodies.forget(deleted)
        return len(deleted)

    async def missing(self, message_ids: Sequence[str]) -> list[str]:
        found = {row[0] for row in await self._fetch(
            "SELECT id FROM messages WHERE id = ANY($1::text[])", list(message_ids))}
        return [message_id for message_id in message_ids if message_id not in found]

    # -- broadcasts (queue.postgres.broadcasts) -------------------------------------

    async def open_broadcast(self, broadcast_id: str, mail_from: str, template: bytes,
                             smtputf8: bool, tracking: Tracking = NO_TRACKING) -> None:
        async with self._transaction() as connection:
            await broadcasts.open_broadcast(connection, broadcast_id, mail_from, template,
                                            smtputf8, tracking.stream)
            await events.open_histories(connection, [(broadcast_id, mail_from, len(template),
                                                      tracking)])

    async def add_broadcast_recipients(self, broadcast_id: str,
                                       recipients: Sequence[tuple[str, str]]) -> int:
        async with self._transaction() as connection:
            return await broadcasts.add_recipients(connection, broadcast_id, recipients)

    async def accept_broadcast(self, broadcast_id: str, rejected: int,
                               idempotency: Idempotency | None,
                               answer: dict[str, Any]) -> None:
        async with self._transaction() as connection:
            await broadcasts.accept(connection, broadcast_id, rejected)
            await connection.execute(NOTIFY)
            if idempotency is not None:
                await remember_answer(connection, [(idempotency, answer)])
            await finish_messages(connection, [broadcast_id])

    async def abandon_broadcast(self, broadcast_id: str) -> None:
        async with self._transaction() as connection:
            await broadcasts.abandon(connection, broadcast_id)

    async def cancel_broadcast(self, broadcast_id: str) -> BroadcastStatus | None:
        async with self._transaction() as connection:
            if not await broadcasts.cancel(connection, broadcast_id):
                return None
            await finish_messages(connection, [broadcast_id])
        return await self.broadcast_status(broadcast_id)

    # -- plumbing --------------------------------------------------------------------

    def _connection(self) -> Any:
        if self._pool is None:
            raise LocalFailure("queue is not open")
        return Failing(self._pool.acquire())

    def _transaction(self) -> Any:
        if self._pool is None:
            raise LocalFailure("queue is not open")
        return Failing(self._pool.acquire(), transaction=True)

    async def _fetch(self, sql: str, *params: Any) -> list[asyncpg.Record]:
        async with self._connection() as connection:
            return list(await connection.fetch(sql, *params))

    async def _fetchrow(self, sql: str, *params: Any) -> asyncpg.Record | None:
        async with self._connection() as connection:
            return await connection.fetchrow(sql, *params)

    async def _fetchval(self, sql: str, *params: Any) -> Any:
        async with self._connection() as connection:
            return await connection.fetchval(sql, *params)

    async def _execute(self, sql: str, *params: Any) -> str:
        async with self._connection() as connection:
            return str(await connection.execute(sql, *params))


def _selection_sql(selection: Selection, first: int) -> tuple[str | None, list[Any]]:
    if selection.all:
        return "TRUE", []
    if selection.domain:
        return f"domain = ${first}", [selection.domain.lower()]
    if selection.ids:
        return f"message_id = ANY(${first}::text[])", [list(selection.ids)]
    return None, []
