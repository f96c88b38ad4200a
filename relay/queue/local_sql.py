"""queue.local_sql: statements that local.py and local_broadcasts.py share. They run in the
index writer thread, inside the group committer's transaction."""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Sequence
from typing import Any

from relay.queue.base import IDEMPOTENCY_WINDOW, Idempotency, MessageMeta, domain_of

IDS = "(SELECT value FROM json_each(?))"  # a JSON list bound as one parameter


def remember_answer(db: sqlite3.Connection, idempotency: Idempotency,
                    answer: dict[str, Any], now: float) -> None:
    """Keep an API answer for its Idempotency-Key, in the transaction of what it stored;
    keys older than the window go at the same time."""
    db.execute("DELETE FROM idempotency WHERE created_at < ?", (now - IDEMPOTENCY_WINDOW,))
    db.execute("INSERT INTO idempotency (key, digest, answer, created_at) VALUES (?,?,?,?)",
               (idempotency.key, idempotency.digest, json.dumps(answer), now))


def insert_message(meta: MessageMeta, received_at: float, now: float,
                   db: sqlite3.Connection) -> None:
    """A new message's index rows: every recipient queued, due now."""
    db.execute(
        "INSERT INTO messages (id, mail_from, size, received_at, smtputf8) VALUES (?,?,?,?,?)",
        (meta.id, meta.mail_from, meta.size, received_at, int(meta.smtputf8)))
    db.executemany(
        "INSERT INTO recipients (message_id, address, domain, state, next_attempt_at) "
        "VALUES (?, ?, ?, 'queued', ?)",
        [(meta.id, rcpt, domain_of(rcpt), now) for rcpt in meta.recipients])
    if meta.idempotency is not None:
        remember_answer(db, meta.idempotency, {"id": meta.id,
                                               "recipients": len(meta.recipients)}, now)


def finish_messages(message_ids: Sequence[str], now: float,
                    db: sqlite3.Connection) -> list[str]:
    """Those of `message_ids` whose recipients are now all final: marked done (a broadcast
    also gets its finish time). Their files go once the commit is durable; their rows with
    a later write."""
    finished = [r[0] for r in db.execute(
        f"SELECT id FROM messages m WHERE id IN {IDS} AND done = 0 AND NOT EXISTS ("
        "SELECT 1 FROM recipients r WHERE r.message_id = m.id "
        "AND r.state NOT IN ('delivered', 'bounced'))", (json.dumps(list(message_ids)),))]
    if finished:
        ids = json.dumps(finished)
        db.execute(f"UPDATE messages SET done = 1 WHERE id IN {IDS}", (ids,))
        db.execute(f"UPDATE broadcasts SET finished_at = ? WHERE id IN {IDS} "
                   "AND finished_at IS NULL", (now, ids))
    return finished


def delete_messages(message_ids: list[str], db: sqlite3.Connection) -> int:
    ids = json.dumps(message_ids)
    db.execute(f"DELETE FROM recipients WHERE message_id IN {IDS}", (ids,))
    return db.execute(f"DELETE FROM messages WHERE id IN {IDS}", (ids,)).rowcount


def delete_selected(select_ids: str, params: Sequence[Any], db: sqlite3.Connection) -> list[str]:
    """Delete the messages `select_ids` finds; their ids (whose files go next)."""
    message_ids = [row[0] for row in db.execute(select_ids, params)]
    delete_messages(message_ids, db)
    return message_ids
