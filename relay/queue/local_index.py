"""queue.local_index: the local backend's SQLite index: its schema, opening it, and the
recovery that makes it agree with the message files at start.

Recovery on open: partial writes in tmp/ are dropped (never acknowledged), and so are the
index rows of such a file (its rename never reached the disk, so neither did its 250);
recipients that were `active` when the process died go back to `queued`, due now;
finished messages are cleaned up; files without rows are moved to orphans/ and rows
without any file to the quarantine table, each with a log line.
"""

from __future__ import annotations

import json
import logging
import sqlite3
from pathlib import Path

from relay.queue import local_broadcasts as broadcasts
from relay.queue.groupcommit import connect
from relay.queue.local_sql import delete_messages
from relay.queue.spoolfiles import SpoolFiles

log = logging.getLogger("relay.queue")

SCHEMA = """
CREATE TABLE IF NOT EXISTS messages (
    id TEXT PRIMARY KEY,
    mail_from TEXT NOT NULL,
    size INTEGER NOT NULL,
    received_at REAL NOT NULL,
    smtputf8 INTEGER NOT NULL DEFAULT 0,
    done INTEGER NOT NULL DEFAULT 0
);
CREATE TABLE IF NOT EXISTS recipients (
    id INTEGER PRIMARY KEY,
    message_id TEXT NOT NULL,
    address TEXT NOT NULL,
    domain TEXT NOT NULL,
    state TEXT NOT NULL,
    attempts INTEGER NOT NULL DEFAULT 0,
    next_attempt_at REAL NOT NULL,
    last_attempt_at REAL,
    last_reply TEXT NOT NULL DEFAULT '',
    fields TEXT  -- a broadcast recipient's fields (JSON)
);
DROP INDEX IF EXISTS recipients_by_message;
CREATE INDEX IF NOT EXISTS recipients_by_message_state ON recipients(message_id, state);
DROP INDEX IF EXISTS recipients_due;
-- For an active recipient next_attempt_at is when its lease expires.
CREATE INDEX IF NOT EXISTS recipients_claimable ON recipients(next_attempt_at)
    WHERE state IN ('queued', 'deferred', 'active');
CREATE TABLE IF NOT EXISTS idempotency (
    key TEXT PRIMARY KEY,
    digest TEXT NOT NULL,
    answer TEXT NOT NULL,
    created_at REAL NOT NULL
);
CREATE INDEX IF NOT EXISTS idempotency_by_age ON idempotency(created_at);
CREATE TABLE IF NOT EXISTS quarantine (
    message_id TEXT NOT NULL,
    mail_from TEXT NOT NULL,
    recipients TEXT NOT NULL,
    reason TEXT NOT NULL,
    at REAL NOT NULL
);
"""


def open_index(path: Path) -> sqlite3.Connection:
    db = connect(path)
    columns = {r[1] for r in db.execute("PRAGMA table_info(recipients)")}
    if columns and "fields" not in columns:  # a spool from before broadcasts
        db.execute("ALTER TABLE recipients ADD COLUMN fields TEXT")
    db.executescript(SCHEMA + broadcasts.SCHEMA)
    return db


def recover(files: SpoolFiles, now: float, db: sqlite3.Connection) -> None:
    unrenamed = files.clear_tmp()
    files.remove_all(broadcasts.recover(db))
    returned = db.execute("UPDATE recipients SET state = 'queued', next_attempt_at = ? "
                          "WHERE state = 'active'", (now,))
    if returned.rowcount:
        log.warning("recovery: %d in-flight recipients returned to the queue",
                    returned.rowcount)
    db.execute(
        "UPDATE messages SET done = 1 WHERE NOT EXISTS (SELECT 1 FROM recipients r "
        "WHERE r.message_id = messages.id AND r.state NOT IN ('delivered', 'bounced'))")
    finished = [r[0] for r in db.execute("SELECT id FROM messages WHERE done = 1")]
    files.remove_all(finished)
    delete_messages(finished, db)
    indexed = {r[0] for r in db.execute("SELECT id FROM messages")}
    on_disk = files.message_ids()
    for message_id in sorted(on_disk - indexed):
        target = files.move_to_orphans(message_id)
        log.warning("recovery: message file without index entry (a write cut short before "
                    "its 250, or a lost index row) moved to %s", target)
    for message_id in sorted((indexed - on_disk) & unrenamed):
        delete_messages([message_id], db)
        log.warning("recovery: %s: index entry of a write cut short before its 250 removed",
                    message_id)
    for message_id in sorted(indexed - on_disk - unrenamed):
        quarantine(db, message_id, "message file missing", now)
        log.error("recovery: %s: index entry without message file moved to quarantine",
                  message_id)


def quarantine(db: sqlite3.Connection, message_id: str, reason: str, now: float) -> None:
    rows = db.execute(
        "SELECT address FROM recipients WHERE message_id = ? "
        "AND state NOT IN ('delivered', 'bounced')", (message_id,)).fetchall()
    sender = db.execute("SELECT mail_from FROM messages WHERE id = ?", (message_id,)).fetchone()
    db.execute(
        "INSERT INTO quarantine (message_id, mail_from, recipients, reason, at) "
        "VALUES (?,?,?,?,?)",
        (message_id, sender[0] if sender else "", json.dumps([r[0] for r in rows]),
         reason, now))
    delete_messages([message_id], db)
