"""queue.local.schema: the local backend's SQLite index, every table in one place, made
by numbered migrations as the PostgreSQL backend's are (queue.postgres.schema).

The version is SQLite's `user_version`, written in the transaction of the migration
that reaches it, so a migration cut short by a crash is not half applied. A spool from
before numbered migrations has version 0 and tables: what it already has is read once
from what each migration adds (its tables, columns and indexes), and only the rest runs;
their CREATE statements say IF NOT EXISTS because such a spool may have part of the
first one it lacks (the first release had no idempotency keys).
"""

from __future__ import annotations

import sqlite3
from dataclasses import dataclass
from pathlib import Path

from relay.core.errors import RelayError


@dataclass(frozen=True)
class Migration:
    number: int
    what: str
    sql: str
    # What it adds, as a spool from before numbered migrations shows that it ran:
    # "table", "table.column" or "index:name".
    adds: tuple[str, ...]


MIGRATIONS = (
    Migration(1, "messages, recipients, idempotency keys, quarantine", """
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
    last_reply TEXT NOT NULL DEFAULT ''
);
CREATE INDEX IF NOT EXISTS recipients_by_message_state ON recipients(message_id, state);
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
""", ("messages", "recipients", "idempotency", "quarantine")),
    Migration(2, "broadcasts: the broadcasts, a recipient's fields, suppressions", """
CREATE TABLE IF NOT EXISTS broadcasts (
    id TEXT PRIMARY KEY,
    state TEXT NOT NULL,  -- receiving, sending, cancelled
    total INTEGER NOT NULL DEFAULT 0,
    suppressed INTEGER NOT NULL DEFAULT 0,
    rejected INTEGER NOT NULL DEFAULT 0,
    delivered INTEGER NOT NULL DEFAULT 0,
    bounced INTEGER NOT NULL DEFAULT 0,
    cancelled INTEGER NOT NULL DEFAULT 0,
    created_at REAL NOT NULL,
    accepted_at REAL,
    finished_at REAL,
    cancelled_at REAL
);
ALTER TABLE recipients ADD COLUMN fields TEXT;  -- a broadcast recipient's fields (JSON)
CREATE TABLE IF NOT EXISTS suppressions (
    address TEXT PRIMARY KEY,  -- lower case
    reason TEXT NOT NULL,
    created_at REAL NOT NULL
);
""", ("broadcasts", "recipients.fields", "suppressions")),
    # For an active recipient next_attempt_at is when its lease expires.
    Migration(3, "the claim's index: leases that expired are claimable", """
DROP INDEX IF EXISTS recipients_by_message;
DROP INDEX IF EXISTS recipients_due;
CREATE INDEX IF NOT EXISTS recipients_claimable ON recipients(next_attempt_at)
    WHERE state IN ('queued', 'deferred', 'active');
""", ("index:recipients_claimable",)),
    # No index on events' `at`: a time range is read in id order from the cursor, and
    # every index is one more write for every state change.
    Migration(4, "history and events", """
CREATE TABLE IF NOT EXISTS history (
    message_id TEXT PRIMARY KEY,
    mail_from TEXT NOT NULL,
    subject TEXT NOT NULL DEFAULT '',
    size INTEGER NOT NULL,
    received_at REAL NOT NULL,
    finished_at REAL,  -- when the message left the queue
    metadata TEXT,  -- JSON object
    tags TEXT  -- JSON list
);
CREATE INDEX IF NOT EXISTS history_by_finish ON history(finished_at) WHERE finished_at IS NOT NULL;
-- AUTOINCREMENT: an id is never used twice, even after pruning (it is the API's cursor).
CREATE TABLE IF NOT EXISTS events (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    type TEXT NOT NULL,
    at REAL NOT NULL,
    message_id TEXT NOT NULL,
    recipient TEXT NOT NULL,
    data TEXT
);
CREATE INDEX IF NOT EXISTS events_by_message ON events(message_id, id);
""", ("history", "events")),
    Migration(5, "webhook endpoints and their delivery state", """
CREATE TABLE IF NOT EXISTS webhook_endpoints (
    id TEXT PRIMARY KEY,
    url TEXT NOT NULL,
    events TEXT NOT NULL,  -- JSON list; empty: every type
    secret TEXT NOT NULL,
    created_at REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS webhook_state (
    endpoint TEXT PRIMARY KEY,
    cursor TEXT NOT NULL,
    attempts INTEGER NOT NULL DEFAULT 0,
    head_failing_since REAL,
    failing_since REAL,
    next_attempt_at REAL NOT NULL DEFAULT 0,
    disabled_at REAL,
    owner TEXT,
    lease_until REAL NOT NULL DEFAULT 0
);
""", ("webhook_endpoints", "webhook_state")),
    Migration(6, "API keys, and the key that submitted a message", """
CREATE TABLE IF NOT EXISTS api_keys (
    id TEXT PRIMARY KEY,
    name TEXT NOT NULL,
    digest TEXT NOT NULL UNIQUE,
    scopes TEXT NOT NULL,  -- JSON list
    rate_limit TEXT NOT NULL DEFAULT '',
    created_at REAL NOT NULL,
    revoked_at REAL
);
ALTER TABLE history ADD COLUMN api_key TEXT NOT NULL DEFAULT '';  -- the key's id
CREATE INDEX IF NOT EXISTS history_by_key ON history(api_key) WHERE api_key != '';
""", ("api_keys", "history.api_key")),
    Migration(7, "streams: a message's stream, suppressions per stream, VERP return paths", """
ALTER TABLE messages ADD COLUMN stream TEXT NOT NULL DEFAULT 'transactional';
ALTER TABLE suppressions RENAME TO suppressions_before_streams;
CREATE TABLE IF NOT EXISTS suppressions (
    address TEXT NOT NULL,  -- lower case
    stream TEXT NOT NULL DEFAULT '*',  -- '*': every stream
    reason TEXT NOT NULL,
    created_at REAL NOT NULL,
    PRIMARY KEY (address, stream)
);
INSERT INTO suppressions (address, stream, reason, created_at)
    SELECT address, '*', reason, created_at FROM suppressions_before_streams;
DROP TABLE suppressions_before_streams;
-- One row per delivered copy sent with a VERP return path; pruned with the history.
CREATE TABLE IF NOT EXISTS return_paths (
    token TEXT PRIMARY KEY,
    message_id TEXT NOT NULL,
    recipient TEXT NOT NULL,
    stream TEXT NOT NULL,
    at REAL NOT NULL
);
CREATE INDEX IF NOT EXISTS return_paths_by_age ON return_paths(at);
""", ("messages.stream", "suppressions.stream", "return_paths")),
    Migration(8, "the console's sessions", """
CREATE TABLE IF NOT EXISTS console_sessions (
    id TEXT PRIMARY KEY,  -- SHA-256 of the cookie's value (queue.apikeys)
    token TEXT NOT NULL,
    csrf TEXT NOT NULL,
    expires_at REAL NOT NULL
);
CREATE INDEX IF NOT EXISTS console_sessions_by_token ON console_sessions(token);
""", ("console_sessions",)),
)
NEWEST = MIGRATIONS[-1].number


def version(db: sqlite3.Connection) -> int:
    """The index's schema version; for a spool from before numbered migrations, the last
    one whose every addition it has."""
    number = int(db.execute("PRAGMA user_version").fetchone()[0])
    if number or not _has(db, "messages"):
        return number
    for migration in MIGRATIONS:
        if not all(_has(db, thing) for thing in migration.adds):
            return migration.number - 1
    return NEWEST


def migrate(db: sqlite3.Connection) -> list[Migration]:
    """Apply what the index lacks, each migration in its own transaction with its
    version; the ones applied."""
    current = version(db)
    applied = []
    for migration in MIGRATIONS[current:]:
        db.executescript(f"BEGIN;\n{migration.sql}\n"
                         f"PRAGMA user_version = {migration.number};\nCOMMIT;")
        applied.append(migration)
    if current and not applied and not db.execute("PRAGMA user_version").fetchone()[0]:
        db.execute(f"PRAGMA user_version = {current}")  # a spool from before the numbers
    return applied


def _has(db: sqlite3.Connection, thing: str) -> bool:
    if thing.startswith("index:"):
        return db.execute("SELECT 1 FROM sqlite_master WHERE type = 'index' AND name = ?",
                          (thing.removeprefix("index:"),)).fetchone() is not None
    table, _, column = thing.partition(".")
    columns = {row[1] for row in db.execute(f"PRAGMA table_info({table})")}
    return bool(columns) and (not column or column in columns)


def index_status(path: Path) -> int | None:
    """The schema version of the index at `path`, read without changing it (a relay may
    be running on it); None when there is none yet."""
    if not path.exists():
        return None
    db = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
    try:
        return version(db)
    except sqlite3.Error as exc:
        raise RelayError(f"{path}: cannot read the queue index: {exc}") from exc
    finally:
        db.close()
