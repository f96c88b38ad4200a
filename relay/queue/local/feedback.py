"""queue.local.feedback: the suppression list, by stream, and what mail that comes back
later needs (relay.feedback) in the local backend's index: the return paths of delivered
copies and the late bounces, complaints and unsubscribes themselves.

The functions run in the index writer thread, inside the transaction of the change;
FeedbackWrites hands them to it.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Iterable
from functools import partial

from relay.queue.base import EVERY_STREAM, Outcome, State
from relay.queue.events import FEEDBACK_SEEN, EventType, Feedback
from relay.queue.local.access import IndexAccess
from relay.queue.local.events import add_events

_LOOKUP_CHUNK = 500  # addresses per statement (SQLite binds at most 32766 values)


def suppressed_in(db: sqlite3.Connection, wanted: Iterable[tuple[str, str]]) -> dict[
        tuple[str, str], str]:
    """Of (address, stream) pairs, those suppressed in their stream or in every stream,
    with the reason (the stream's own entry first). One statement for a claim's addresses
    (by the primary key's prefix), not one each: a statement costs more than the lookup."""
    pairs = set(wanted)
    addresses = sorted({address.lower() for address, _ in pairs})
    held: dict[str, dict[str, str]] = {}
    for start in range(0, len(addresses), _LOOKUP_CHUNK):
        chunk = addresses[start:start + _LOOKUP_CHUNK]
        for address, stream, reason in db.execute(
                "SELECT address, stream, reason FROM suppressions "
                f"WHERE address IN ({','.join('?' * len(chunk))})", chunk):
            held.setdefault(address, {})[stream] = reason
    found = {}
    for address, stream in pairs:
        entries = held.get(address.lower(), {})
        reason = entries.get(stream) or entries.get(EVERY_STREAM)
        if reason is not None:
            found[(address, stream)] = reason
    return found


def suppress(address: str, reason: str, stream: str, now: float,
             db: sqlite3.Connection) -> bool:
    return db.execute("INSERT OR IGNORE INTO suppressions (address, stream, reason, "
                      "created_at) VALUES (?, ?, ?, ?)",
                      (address.lower(), stream, reason, now)).rowcount > 0


def keep_return_paths(db: sqlite3.Connection, now: float,
                      applied: Iterable[tuple[Outcome, str, str]]) -> None:
    """Delivered copies sent with a VERP token: (outcome, message id, address)."""
    rows = [(o.return_path, m, r, m, now) for o, m, r in applied
            if o.return_path and o.state is State.DELIVERED]
    if rows:
        db.executemany("INSERT OR IGNORE INTO return_paths (token, message_id, recipient, "
                       "stream, at) SELECT ?, ?, ?, COALESCE((SELECT stream FROM messages "
                       "WHERE id = ?), 'transactional'), ?", rows)


def record(feedback: Feedback, now: float, db: sqlite3.Connection) -> bool:
    added = True
    if feedback.suppress_in is not None:
        added = suppress(feedback.recipient, feedback.reason, feedback.suppress_in, now, db)
    # An event only while the message's history is kept: pruning removes events with it.
    # One of each kind per copy: the report's own message is delivered at least once.
    if (added or feedback.kind is not EventType.UNSUBSCRIBED) and db.execute(
            "SELECT 1 FROM history WHERE message_id = ?", (feedback.message_id,)).fetchone() \
            and not db.execute(FEEDBACK_SEEN.format("?", "?", "?"), (
                feedback.message_id, feedback.recipient, feedback.kind.value)).fetchone():
        add_events(db, feedback.kind, now,
                   [(feedback.message_id, feedback.recipient, feedback.data_json)])
    return added


class FeedbackWrites(IndexAccess):
    """SuppressionStore's additions and FeedbackStore's reports, on the index."""

    async def suppress(self, address: str, reason: str,
                       stream: str = EVERY_STREAM) -> bool:
        return bool(await self._write(partial(suppress, address, reason, stream,
                                              self._clock())))

    async def record_feedback(self, report: Feedback) -> bool:
        return bool(await self._write(partial(record, report, self._clock())))
