"""queue.postgres.finish: a message leaves the queue once every recipient is final, in
the transaction that makes the last one final (outcomes, deletes, a broadcast accepted
or cancelled)."""

from __future__ import annotations

import asyncpg

from relay.queue.postgres import events
from relay.queue.postgres.pool import NOW


async def finish_messages(connection: asyncpg.Connection,
                           message_ids: list[str]) -> list[str]:
    """Those of `message_ids` whose recipients are all final leave the queue (a broadcast
    keeps its counts and gets its finish time). The rows are locked first, in order: of
    two nodes finishing a message's last recipients at once, the second sees the first's
    commit."""
    if not message_ids:
        return []
    await connection.execute("SELECT id FROM messages WHERE id = ANY($1::text[]) ORDER BY id "
                             "FOR UPDATE", message_ids)
    finished = [r[0] for r in await connection.fetch(
        "DELETE FROM messages m WHERE m.id = ANY($1::text[]) AND NOT EXISTS ("
        "SELECT 1 FROM recipients r WHERE r.message_id = m.id "
        "AND r.state NOT IN ('delivered', 'bounced')) AND m.id NOT IN "
        "(SELECT id FROM broadcasts WHERE state = 'receiving') RETURNING m.id", message_ids)]
    if finished:
        await connection.execute(f"UPDATE broadcasts SET finished_at = {NOW} "
                                 "WHERE id = ANY($1::text[]) AND finished_at IS NULL",
                                 finished)
        await events.finish_history(connection, finished)
    return finished
