"""queue.local.sql: statements the local backend's modules share, run in the index writer
thread inside the group committer's transaction."""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Sequence
from typing import Any

from relay.queue.base import IDEMPOTENCY_WINDOW, WAITING, Idempotency, MessageMeta, domain_of
from relay.queue.events import EventType
from relay.queue.local.events import add_events, message_accepted

IDS = "(SELECT value FROM json_each(?))"  # a JSON list bound as one parameter

def remember_answer(db: sqlite3.Connection, idempotency: Idempotency,
                    answer: dict[str, Any], now: float) -> None:
    """Keep an API answer for its Idempotency-Key, in the transaction of what it stored;
    keys older than the window go at the same time."""
    db.execute("DELETE FROM idempotency WHERE created_at < ?", (now - IDEMPOTENCY_WINDOW,))
    db.execute("INSERT INTO idempotency (key, digest, answer, created_at) VALUES (?,?,?,?)",
               (idempotency.key, idempotency.digest, json.dumps(answer), now))


def insert_message(meta: MessageMeta, received_at: float, now: float,
                   db: sqlite3.Connection, leased_until: float | None = None) -> None:
    """A new message's index rows: every recipient queued, due now (or, with
    `leased_until`, claimed at once: active, its first attempt counted, leased until
    then); its history."""
    db.execute(
        "INSERT INTO messages (id, mail_from, size, received_at, smtputf8, stream) "
        "VALUES (?,?,?,?,?,?)",
        (meta.id, meta.mail_from, meta.size, received_at, int(meta.smtputf8),
         meta.tracking.stream))
    # Claimed in the insert rather than by an UPDATE after it: a state change moves the
    # row in both of its indexes, the costliest write of a recipient (bench/README.md).
    state, attempts, last_attempt_at, due = (
        ("queued", 0, None, now) if leased_until is None
        else ("active", 1, now, leased_until))
    db.executemany(
        "INSERT INTO recipients (message_id, address, domain, state, attempts, "
        "last_attempt_at, next_attempt_at) VALUES (?, ?, ?, ?, ?, ?, ?)",
        [(meta.id, rcpt, domain_of(rcpt), state, attempts, last_attempt_at, due)
         for rcpt in meta.recipients])
    message_accepted(db, meta, received_at, now)
    if meta.idempotency is not None:
        remember_answer(db, meta.idempotency, {"id": meta.id,
                                               "recipients": len(meta.recipients)}, now)


def finish_messages(message_ids: Sequence[str], now: float,
                    db: sqlite3.Connection) -> list[str]:
    """Those of `message_ids` whose recipients are now all final: marked done (a broadcast
    also gets its finish time, the history its retention start). Their files go once the
    commit is durable; their rows with a later write."""
    finished = [r[0] for r in db.execute(
        f"SELECT id FROM messages m WHERE id IN {IDS} AND done = 0 AND NOT EXISTS ("
        "SELECT 1 FROM recipients r WHERE r.message_id = m.id "
        "AND r.state NOT IN ('delivered', 'bounced'))", (json.dumps(list(message_ids)),))]
    if finished:
        ids = json.dumps(finished)
        db.execute(f"UPDATE messages SET done = 1 WHERE id IN {IDS}", (ids,))
        db.execute(f"UPDATE broadcasts SET finished_at = ? WHERE id IN {IDS} "
                   "AND finished_at IS NULL", (now, ids))
        finish_history(ids, now, db)
    return finished


def finish_history(ids: str, now: float, db: sqlite3.Connection) -> None:
    """Messages (a JSON list of ids) left the queue: their history's retention starts."""
    db.execute(f"UPDATE history SET finished_at = ? WHERE message_id IN {IDS} "
               "AND finished_at IS NULL", (now, ids))


def delete_messages(message_ids: list[str], db: sqlite3.Connection) -> int:
    ids = json.dumps(message_ids)
    db.execute(f"DELETE FROM recipients WHERE message_id IN {IDS}", (ids,))
    return db.execute(f"DELETE FROM messages WHERE id IN {IDS}", (ids,)).rowcount


def delete_selected(select_ids: str, params: Sequence[Any], now: float,
                    db: sqlite3.Connection) -> list[str]:
    """Delete the messages `select_ids` finds (a `deleted` event for each recipient still
    waiting); their ids (whose files go next)."""
    message_ids = [row[0] for row in db.execute(select_ids, params)]
    ids = json.dumps(message_ids)
    add_events(db, EventType.DELETED, now, db.execute(
        f"SELECT message_id, address, NULL FROM recipients WHERE message_id IN {IDS} "
        f"AND {WAITING} ORDER BY id", (ids,)).fetchall())
    delete_messages(message_ids, db)
    finish_history(ids, now, db)
    return message_ids
