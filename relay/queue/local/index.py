"""queue.local.index: the local backend's SQLite index: opening it (its schema is
queue.local.schema's), and the recovery that makes it agree with the message files at
start.

Recovery on open: the index is derived from the queue files, so a complete queue file
without rows (acknowledged, its rows not yet committed, or the index lost) is indexed
again, every recipient queued (one delivered before may go again: at-least-once); a file
without its completion mark was cut short before its 250 and is removed. Recipients
that were `active` when the process died go back to `queued`, due now; finished
messages are cleaned up; a file that is not a queue file is moved to orphans/ and rows
without any file go to the quarantine table, each with a log line. (tmp/ holds partial
writes of spools from before the queue file format: dropped, with their rows.)
"""

from __future__ import annotations

import json
import logging
import sqlite3
from pathlib import Path

from relay.queue.local import broadcasts
from relay.queue.local.groupcommit import connect
from relay.queue.local.schema import migrate
from relay.queue.local.spoolfiles import SpoolFiles
from relay.queue.local.sql import delete_messages, insert_message

log = logging.getLogger("relay.queue")


def open_index(path: Path) -> sqlite3.Connection:
    """The index, its schema brought up to date (queue.local.schema)."""
    db = connect(path)
    for migration in migrate(db):
        log.info("queue index %s: migration %d applied (%s)", path, migration.number,
                 migration.what)
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
    again = [message_id for message_id in sorted(on_disk - indexed)
             if index_again(files, message_id, now, db)]
    if again:
        # One line, however many: after a lost index that is every message in the spool.
        log.warning("recovery: %d queue files indexed again (acknowledged before their index "
                    "rows were committed, or the index was lost): %s%s", len(again),
                    " ".join(again[:5]), " ..." if len(again) > 5 else "")
    for message_id in sorted((indexed - on_disk) & unrenamed):
        delete_messages([message_id], db)
        log.warning("recovery: %s: index entry of a write cut short before its 250 removed",
                    message_id)
    for message_id in sorted(indexed - on_disk - unrenamed):
        quarantine(db, message_id, "message file missing", now)
        log.error("recovery: %s: index entry without message file moved to quarantine",
                  message_id)


def index_again(files: SpoolFiles, message_id: str, now: float,
                db: sqlite3.Connection) -> bool:
    """A queue file the index lacks: its rows again from its envelope (True), or a log
    line saying why not."""
    try:
        envelope = files.envelope(message_id)
    except (OSError, ValueError, KeyError, TypeError) as exc:
        target = files.move_to_orphans(message_id)
        log.warning("recovery: %s is not a queue file (%s): moved to %s", message_id, exc,
                    target)
        return False
    if envelope is None:
        files.remove(message_id)
        log.warning("recovery: %s: removing a queue file cut short before its 250 "
                    "(no completion mark)", message_id)
    elif envelope.broadcast:
        files.remove(message_id)  # its recipients were never committed: never accepted
        log.warning("recovery: %s: removing the template of a broadcast never accepted",
                    message_id)
    else:
        insert_message(envelope.meta(message_id), envelope.received_at, now, db)
        return True
    return False


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
