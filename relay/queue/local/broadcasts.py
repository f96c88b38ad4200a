"""queue.local.broadcasts: broadcasts and the suppression list in the local backend.

A broadcast is stored once: its template is the message file (JSON), `messages` has one
row for it, and `recipients` one row per recipient with the recipient's fields. While the
upload runs, recipients are written `held` in chunks without an fsync each; `accept` makes
them `queued` in one durable commit, and only then does the API answer 202. A relay that
dies during an upload finds the broadcast still `receiving` at the next start and removes
it: it was never acknowledged. Final counts (delivered, bounced, cancelled) are kept in the
`broadcasts` row, so they survive the recipients' rows, which leave with the message.
A recipient that bounces with a 5xx reply from its server goes on the suppression list,
which later broadcasts skip.
"""

from __future__ import annotations

import json
import logging
import sqlite3
from collections.abc import Sequence
from typing import Any

from relay.queue.base import HARD_BOUNCE, Idempotency, Outcome, Tracking, domain_of
from relay.queue.events import EventType
from relay.queue.local.events import add_events, open_history
from relay.queue.local.sql import IDS, finish_messages, remember_answer

log = logging.getLogger("relay.queue")



def open_broadcast(broadcast_id: str, mail_from: str, size: int, smtputf8: bool,
                   tracking: Tracking, now: float, db: sqlite3.Connection) -> None:
    db.execute("INSERT INTO messages (id, mail_from, size, received_at, smtputf8, stream) "
               "VALUES (?,?,?,?,?,?)", (broadcast_id, mail_from, size, now, int(smtputf8),
                                        tracking.stream))
    db.execute("INSERT INTO broadcasts (id, state, created_at) VALUES (?, 'receiving', ?)",
               (broadcast_id, now))
    open_history(db, broadcast_id, mail_from, size, now, tracking)


def add_recipients(broadcast_id: str, recipients: Sequence[tuple[str, str]], now: float,
                   db: sqlite3.Connection) -> int:
    """Insert `(address, fields JSON)` rows as `held`; returns how many were suppressed."""
    lowered = json.dumps(sorted({address.lower() for address, _ in recipients}))
    suppressed = {r[0] for r in db.execute(
        f"SELECT address FROM suppressions WHERE address IN {IDS} AND stream IN "
        "((SELECT stream FROM messages WHERE id = ?), '*')", (lowered, broadcast_id))}
    rows = [(broadcast_id, address, domain_of(address), now, fields)
            for address, fields in recipients if address.lower() not in suppressed]
    db.executemany(
        "INSERT INTO recipients (message_id, address, domain, state, next_attempt_at, fields) "
        "VALUES (?, ?, ?, 'held', ?, ?)", rows)
    skipped = len(recipients) - len(rows)
    if skipped:
        add_events(db, EventType.SUPPRESSED, now, [
            (broadcast_id, address, None) for address, _ in recipients
            if address.lower() in suppressed])
    db.execute("UPDATE broadcasts SET total = total + ?, suppressed = suppressed + ? "
               "WHERE id = ?", (len(rows), skipped, broadcast_id))
    return skipped


def accept(broadcast_id: str, rejected: int, idempotency: Idempotency | None,
           answer: dict[str, Any], now: float, db: sqlite3.Connection) -> list[str]:
    """The upload is complete: its recipients become due. Returns [broadcast_id] when there
    is nothing to send at all (the message is finished at once)."""
    db.execute("INSERT INTO events (type, at, message_id, recipient) SELECT ?, ?, "
               "message_id, address FROM recipients WHERE message_id = ? AND state = 'held' "
               "ORDER BY id", (EventType.ACCEPTED.value, now, broadcast_id))
    db.execute("UPDATE recipients SET state = 'queued', next_attempt_at = ? "
               "WHERE message_id = ? AND state = 'held'", (now, broadcast_id))
    db.execute("UPDATE broadcasts SET state = 'sending', accepted_at = ?, rejected = ? "
               "WHERE id = ?", (now, rejected, broadcast_id))
    if idempotency is not None:
        remember_answer(db, idempotency, answer, now)
    return finish_messages([broadcast_id], now, db)


def abandon(broadcast_id: str, db: sqlite3.Connection) -> None:
    """An upload that failed before its 202: nothing of it stays."""
    for table, column in (("recipients", "message_id"), ("messages", "id"),
                          ("broadcasts", "id"), ("events", "message_id"),
                          ("history", "message_id")):
        db.execute(f"DELETE FROM {table} WHERE {column} = ?", (broadcast_id,))


def recover(db: sqlite3.Connection) -> list[str]:
    """Uploads cut short by a crash; returns their ids (their template files go too)."""
    unfinished = [r[0] for r in db.execute("SELECT id FROM broadcasts WHERE state = 'receiving'")]
    for broadcast_id in unfinished:
        log.warning("recovery: broadcast %s was still being uploaded (never accepted): "
                    "removed", broadcast_id)
        abandon(broadcast_id, db)
    return unfinished


def record(outcomes: Sequence[Outcome], now: float, db: sqlite3.Connection) -> None:
    """After `queue.local._record`: count final outcomes of broadcast recipients and put
    hard bounces on the suppression list of every stream."""
    ids = json.dumps([o.recipient_id for o in outcomes if o.broadcast])
    if ids == "[]":
        return
    db.execute(
        "UPDATE broadcasts SET "
        "delivered = delivered + (SELECT COUNT(*) FROM recipients r WHERE r.message_id = "
        f"broadcasts.id AND r.id IN {IDS} AND r.state = 'delivered'), "
        "bounced = bounced + (SELECT COUNT(*) FROM recipients r WHERE r.message_id = "
        f"broadcasts.id AND r.id IN {IDS} AND r.state = 'bounced') "
        f"WHERE id IN (SELECT DISTINCT message_id FROM recipients WHERE id IN {IDS})",
        (ids, ids, ids))
    refused = json.dumps([o.recipient_id for o in outcomes if o.broadcast and not o.suppressed])
    db.execute(
        "INSERT OR IGNORE INTO suppressions (address, stream, reason, created_at) "
        f"SELECT lower(r.address), '*', r.last_reply, ? FROM recipients r WHERE r.id IN {IDS} "
        f"AND r.state = 'bounced' AND {HARD_BOUNCE}", (now, refused))


def cancel(broadcast_id: str, now: float, db: sqlite3.Connection) -> list[str] | None:
    """Drop what has not been sent (recipients being sent right now finish). None when
    there is no such broadcast; else the finished message ids (for file removal)."""
    found = db.execute("SELECT state, finished_at FROM broadcasts WHERE id = ?",
                       (broadcast_id,)).fetchone()
    if found is None or found[0] == "receiving":
        return None
    if found[1] is not None:
        return []  # all sent already: nothing to cancel
    dropped = db.execute(
        "DELETE FROM recipients WHERE message_id = ? AND state IN ('queued', 'deferred', "
        "'held') RETURNING address", (broadcast_id,)).fetchall()
    add_events(db, EventType.CANCELLED, now, [(broadcast_id, a, None) for (a,) in dropped])
    db.execute("UPDATE broadcasts SET state = 'cancelled', cancelled = cancelled + ?, "
               "cancelled_at = COALESCE(cancelled_at, ?) WHERE id = ?",
               (len(dropped), now, broadcast_id))
    return finish_messages([broadcast_id], now, db)



