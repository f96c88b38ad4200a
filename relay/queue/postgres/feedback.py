"""queue.postgres.feedback: the suppression list, by stream, and what mail that comes back
later needs (relay.feedback) in the PostgreSQL backend, as queue.local.feedback keeps them:
the return paths of delivered copies, and the late bounces, complaints and unsubscribes.
"""

from __future__ import annotations

from collections.abc import Iterable

import asyncpg

from relay.queue.base import EVERY_STREAM, Outcome, State
from relay.queue.events import FEEDBACK_SEEN, EventType, Feedback
from relay.queue.postgres.events import add_events
from relay.queue.postgres.pool import NOW, DatabaseAccess

# The reason a claimed recipient's address is suppressed for its message's stream, if it
# is (in the claim's SELECT: `c` the claimed recipient, `m` its message).
SUPPRESSED_FOR = ("(SELECT s.reason FROM suppressions s WHERE s.address = lower(c.address) "
                  "AND s.stream IN (m.stream, '*') ORDER BY s.stream = '*' LIMIT 1)")


async def suppress(connection: asyncpg.Connection, address: str, reason: str,
                   stream: str) -> bool:
    added = await connection.fetchval(
        "INSERT INTO suppressions (address, stream, reason, created_at) "
        f"VALUES (lower($1), $2, $3, {NOW}) ON CONFLICT DO NOTHING RETURNING 1",
        address, stream, reason)
    return added is not None


async def keep_return_paths(connection: asyncpg.Connection,
                            applied: Iterable[tuple[Outcome, str, str]]) -> None:
    """Delivered copies sent with a VERP token: (outcome, message id, address)."""
    rows = [(o.return_path, m, r) for o, m, r in applied
            if o.return_path and o.state is State.DELIVERED]
    if rows:
        await connection.execute(
            "INSERT INTO return_paths (token, message_id, recipient, stream, at) "
            f"SELECT t.token, t.message_id, t.recipient, m.stream, {NOW} FROM unnest("
            "$1::text[], $2::text[], $3::text[]) AS t(token, message_id, recipient) "
            "JOIN messages m ON m.id = t.message_id ON CONFLICT DO NOTHING",
            [r[0] for r in rows], [r[1] for r in rows], [r[2] for r in rows])


async def record(connection: asyncpg.Connection, feedback: Feedback) -> bool:
    added = True
    if feedback.suppress_in is not None:
        added = await suppress(connection, feedback.recipient, feedback.reason,
                               feedback.suppress_in)
    # An event only while the message's history is kept: pruning removes events with it.
    # One of each kind per copy: the report's own message is delivered at least once.
    if (added or feedback.kind is not EventType.UNSUBSCRIBED) and await connection.fetchval(
            "SELECT 1 FROM history WHERE message_id = $1", feedback.message_id) \
            and not await connection.fetchval(FEEDBACK_SEEN.format("$1", "$2", "$3"),
                                              feedback.message_id, feedback.recipient,
                                              feedback.kind.value):
        await add_events(connection, feedback.kind,
                         [(feedback.message_id, feedback.recipient, feedback.data_json)])
    return added


class FeedbackWrites(DatabaseAccess):
    """SuppressionStore's additions and FeedbackStore's reports, in the database."""

    async def suppress(self, address: str, reason: str,
                       stream: str = EVERY_STREAM) -> bool:
        async with self._connection() as connection:
            return await suppress(connection, address, reason, stream)

    async def record_feedback(self, report: Feedback) -> bool:
        async with self._transaction() as connection:
            return await record(connection, report)
