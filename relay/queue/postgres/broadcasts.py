"""queue.postgres.broadcasts: broadcasts and the suppression list in the PostgreSQL backend,
as queue.local.broadcasts keeps them: the template stored once (the message row's body),
one recipient row per address, `held` while the upload runs and made due in the one
transaction that accepts it. Final counts live in the `broadcasts` row, which outlives the
message. Uploads are per node, so an upload cut short by a dead node is removed only once
it is clearly abandoned (STALE_UPLOAD), never while another node may still be receiving it.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence

import asyncpg

from relay.queue.base import (
    HARD_BOUNCE,
    Outcome,
    domain_of,
)
from relay.queue.events import EventType
from relay.queue.postgres.events import add_events_of
from relay.queue.postgres.pool import NOW

log = logging.getLogger("relay.queue")

STALE_UPLOAD = 6 * 3600.0  # seconds: an upload still "receiving" after this is dead
_STREAM_OF_BROADCAST = "(SELECT stream FROM messages WHERE id = $1)"


async def open_broadcast(connection: asyncpg.Connection, broadcast_id: str, mail_from: str,
                         template: bytes, smtputf8: bool, stream: str) -> None:
    await connection.execute(
        "INSERT INTO messages (id, mail_from, size, received_at, smtputf8, body, stream) "
        f"VALUES ($1, $2, $3, {NOW}, $4, $5, $6)", broadcast_id, mail_from, len(template),
        smtputf8, template, stream)
    await connection.execute(
        f"INSERT INTO broadcasts (id, state, created_at) VALUES ($1, 'receiving', {NOW})",
        broadcast_id)


async def add_recipients(connection: asyncpg.Connection, broadcast_id: str,
                         recipients: Sequence[tuple[str, str]]) -> int:
    """Insert `(address, fields JSON)` rows as `held`; returns how many were suppressed."""
    inserted = await connection.fetchval(
        "WITH candidates AS (SELECT * FROM unnest($2::text[], $3::text[], $4::text[]) "
        "AS c(address, domain, fields)), "
        "added AS (INSERT INTO recipients (message_id, address, domain, state, "
        f"next_attempt_at, fields) SELECT $1, c.address, c.domain, 'held', {NOW}, c.fields "
        "FROM candidates c WHERE lower(c.address) NOT IN (SELECT address FROM suppressions "
        f"WHERE stream IN ({_STREAM_OF_BROADCAST}, '*')) "
        "RETURNING 1) SELECT COUNT(*) FROM added",
        broadcast_id, [r[0] for r in recipients], [domain_of(r[0]) for r in recipients],
        [r[1] for r in recipients])
    skipped = len(recipients) - int(inserted)
    if skipped:
        await add_events_of(
            connection, EventType.SUPPRESSED, "SELECT $1::text AS message_id, address FROM "
            "unnest($2::text[]) AS c(address) WHERE lower(address) IN (SELECT address FROM "
            f"suppressions WHERE stream IN ({_STREAM_OF_BROADCAST}, '*'))", broadcast_id,
            [r[0] for r in recipients])
    await connection.execute("UPDATE broadcasts SET total = total + $2, "
                             "suppressed = suppressed + $3 WHERE id = $1",
                             broadcast_id, int(inserted), skipped)
    return skipped


async def accept(connection: asyncpg.Connection, broadcast_id: str, rejected: int) -> None:
    """The upload is complete: its recipients become due."""
    await add_events_of(connection, EventType.ACCEPTED, "SELECT message_id, address FROM "
                        "recipients WHERE message_id = $1 AND state = 'held' ORDER BY id",
                        broadcast_id)
    await connection.execute(f"UPDATE recipients SET state = 'queued', next_attempt_at = {NOW} "
                             "WHERE message_id = $1 AND state = 'held'", broadcast_id)
    await connection.execute(f"UPDATE broadcasts SET state = 'sending', accepted_at = {NOW}, "
                             "rejected = $2 WHERE id = $1", broadcast_id, rejected)


async def abandon(connection: asyncpg.Connection, broadcast_id: str) -> None:
    """An upload that failed before its 202: nothing of it stays."""
    for table, column in (("messages", "id"), ("broadcasts", "id"),
                          ("events", "message_id"), ("history", "message_id")):
        await connection.execute(f"DELETE FROM {table} WHERE {column} = $1", broadcast_id)


async def abandon_stale_uploads(connection: asyncpg.Connection) -> None:
    stale = [r[0] for r in await connection.fetch(
        f"SELECT id FROM broadcasts WHERE state = 'receiving' AND created_at < {NOW} - $1",
        STALE_UPLOAD)]
    for broadcast_id in stale:
        log.warning("broadcast %s was still being uploaded %.0f hours after it began (never "
                    "accepted): removed", broadcast_id, STALE_UPLOAD / 3600)
        async with connection.transaction():
            await abandon(connection, broadcast_id)


async def record(outcomes: Sequence[Outcome], connection: asyncpg.Connection) -> None:
    """Final outcomes of broadcast recipients (already applied) counted in their broadcast;
    hard bounces go on the suppression list of every stream."""
    ids = [o.recipient_id for o in outcomes]
    if not ids:
        return
    await connection.execute(
        "UPDATE broadcasts b SET delivered = b.delivered + c.delivered, "
        "bounced = b.bounced + c.bounced FROM (SELECT message_id, "
        "COUNT(*) FILTER (WHERE state = 'delivered') AS delivered, "
        "COUNT(*) FILTER (WHERE state = 'bounced') AS bounced FROM recipients "
        "WHERE id = ANY($1::bigint[]) GROUP BY message_id) AS c WHERE b.id = c.message_id",
        ids)
    await connection.execute(
        "INSERT INTO suppressions (address, stream, reason, created_at) "
        f"SELECT lower(r.address), '*', r.last_reply, {NOW} FROM recipients r "
        f"WHERE r.id = ANY($1::bigint[]) AND r.state = 'bounced' AND {HARD_BOUNCE} "
        "ON CONFLICT DO NOTHING", [o.recipient_id for o in outcomes if not o.suppressed])


async def cancel(connection: asyncpg.Connection, broadcast_id: str) -> bool:
    """Drop what has not been sent (recipients being sent right now finish). False when
    there is no such broadcast."""
    found = await connection.fetchrow("SELECT state, finished_at FROM broadcasts "
                                      "WHERE id = $1 FOR UPDATE", broadcast_id)
    if found is None or found[0] == "receiving":
        return False
    if found[1] is not None:
        return True  # all sent already: nothing to cancel
    dropped = await add_events_of(
        connection, EventType.CANCELLED, "DELETE FROM recipients WHERE message_id = $1 AND "
        "state IN ('queued', 'deferred', 'held') RETURNING message_id, address", broadcast_id)
    await connection.execute(
        "UPDATE broadcasts SET state = 'cancelled', cancelled = cancelled + $2, "
        f"cancelled_at = COALESCE(cancelled_at, {NOW}) WHERE id = $1",
        broadcast_id, int(dropped))
    return True
