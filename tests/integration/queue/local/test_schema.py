"""The local index's schema (queue.local.schema): a new spool gets every migration, and
spools written by earlier releases, before migrations were numbered, open, keep what they
hold and are brought up to date. The old schemas below are the earlier releases' own,
written by the test as those releases wrote them."""

from __future__ import annotations

import sqlite3
import time
from pathlib import Path

from relay.queue import NewMessage, new_queue_id
from relay.queue.local import LocalQueue
from relay.queue.local.schema import MIGRATIONS, NEWEST, version

# The index as the release before numbered migrations made it (every table, unversioned).
PREVIOUS_RELEASE = """
CREATE TABLE IF NOT EXISTS messages (
    id TEXT PRIMARY KEY,
    mail_from TEXT NOT NULL,
    size INTEGER NOT NULL,
    received_at REAL NOT NULL,
    smtputf8 INTEGER NOT NULL DEFAULT 0,
    done INTEGER NOT NULL DEFAULT 0,
    stream TEXT NOT NULL DEFAULT 'transactional'
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
CREATE TABLE IF NOT EXISTS history (
    message_id TEXT PRIMARY KEY,
    mail_from TEXT NOT NULL,
    subject TEXT NOT NULL DEFAULT '',
    size INTEGER NOT NULL,
    received_at REAL NOT NULL,
    finished_at REAL,  -- when the message left the queue
    metadata TEXT,  -- JSON object
    tags TEXT,  -- JSON list
    api_key TEXT NOT NULL DEFAULT ''  -- the id of the API key that submitted it
);
CREATE INDEX IF NOT EXISTS history_by_key ON history(api_key) WHERE api_key != '';
CREATE INDEX IF NOT EXISTS history_by_finish ON history(finished_at)
    WHERE finished_at IS NOT NULL;
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
-- No index on `at`: a time range is read in id order from the cursor, and every index
-- is one more write for every state change.
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
CREATE TABLE IF NOT EXISTS api_keys (
    id TEXT PRIMARY KEY,
    name TEXT NOT NULL,
    digest TEXT NOT NULL UNIQUE,
    scopes TEXT NOT NULL,  -- JSON list
    rate_limit TEXT NOT NULL DEFAULT '',
    created_at REAL NOT NULL,
    revoked_at REAL
);
CREATE TABLE IF NOT EXISTS console_sessions (
    id TEXT PRIMARY KEY,  -- SHA-256 of the cookie's value (queue.apikeys)
    token TEXT NOT NULL,
    csrf TEXT NOT NULL,
    expires_at REAL NOT NULL
);
CREATE INDEX IF NOT EXISTS console_sessions_by_token ON console_sessions(token);
CREATE TABLE IF NOT EXISTS suppressions (
    address TEXT NOT NULL,  -- lower case
    stream TEXT NOT NULL DEFAULT '*',  -- '*': every stream
    reason TEXT NOT NULL,
    created_at REAL NOT NULL,
    PRIMARY KEY (address, stream)
);
-- One row per delivered copy sent with a VERP return path; pruned with the history.
CREATE TABLE IF NOT EXISTS return_paths (
    token TEXT PRIMARY KEY,
    message_id TEXT NOT NULL,
    recipient TEXT NOT NULL,
    stream TEXT NOT NULL,
    at REAL NOT NULL
);
CREATE INDEX IF NOT EXISTS return_paths_by_age ON return_paths(at);
"""

# The index of the first release: no broadcasts, streams, history, keys or idempotency.
FIRST_RELEASE = """
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
CREATE INDEX IF NOT EXISTS recipients_by_message ON recipients(message_id);
CREATE INDEX IF NOT EXISTS recipients_due ON recipients(next_attempt_at)
    WHERE state IN ('queued', 'deferred');
CREATE TABLE IF NOT EXISTS quarantine (
    message_id TEXT NOT NULL,
    mail_from TEXT NOT NULL,
    recipients TEXT NOT NULL,
    reason TEXT NOT NULL,
    at REAL NOT NULL
);
"""


def old_spool(root: Path, schema: str, rows: str) -> None:
    (root / "messages").mkdir(parents=True)
    with sqlite3.connect(root / "index.sqlite3") as db:
        db.executescript(schema + rows)


def user_version(root: Path) -> int:
    with sqlite3.connect(root / "index.sqlite3") as db:
        return int(db.execute("PRAGMA user_version").fetchone()[0])


def test_the_migrations_are_numbered_one_by_one() -> None:
    assert [m.number for m in MIGRATIONS] == list(range(1, NEWEST + 1))


async def test_a_new_spool_has_every_migration(tmp_path: Path) -> None:
    queue = LocalQueue(tmp_path)
    await queue.open()
    await queue.close()
    assert user_version(tmp_path) == NEWEST


async def test_a_spool_of_the_previous_release_opens_with_what_it_held(tmp_path: Path) -> None:
    old_spool(tmp_path, PREVIOUS_RELEASE, """
        INSERT INTO suppressions VALUES ('gone@example.test', 'news', 'bounced', 1.0);
        INSERT INTO api_keys VALUES ('k1', 'app', 'digest', '["send"]', '', 1.0, NULL);
    """)
    with sqlite3.connect(tmp_path / "index.sqlite3") as db:
        assert version(db) == NEWEST  # every addition there: nothing to apply
    queue = LocalQueue(tmp_path)
    await queue.open()
    try:
        assert [(s.address, s.stream) for s in await queue.suppressions()] == [
            ("gone@example.test", "news")]
        assert [k.id for k in await queue.api_keys()] == ["k1"]
        await _store_and_claim(queue)
    finally:
        await queue.close()
    assert user_version(tmp_path) == NEWEST


async def test_a_spool_of_the_first_release_is_migrated_step_by_step(tmp_path: Path) -> None:
    now = time.time()
    old_spool(tmp_path, FIRST_RELEASE, f"""
        INSERT INTO messages VALUES ('OLD1', 'app@sender.test', 10, {now}, 0, 0);
        INSERT INTO recipients (message_id, address, domain, state, next_attempt_at)
            VALUES ('OLD1', 'a@example.test', 'example.test', 'deferred', {now + 3600});
    """)
    with sqlite3.connect(tmp_path / "index.sqlite3") as db:
        assert version(db) == 0  # it lacks the idempotency keys of migration 1
    (tmp_path / "messages" / "OLD1").write_bytes(b"")  # recovery keeps indexed mail's file
    queue = LocalQueue(tmp_path)
    await queue.open()
    try:
        [old] = await queue.list_messages()
        assert (old.id, old.recipients[0].address) == ("OLD1", "a@example.test")
        assert await queue.suppress("gone@example.test", "bounced") is True
        await _store_and_claim(queue)
    finally:
        await queue.close()
    assert user_version(tmp_path) == NEWEST
    with sqlite3.connect(tmp_path / "index.sqlite3") as db:
        indexes = {r[0] for r in db.execute("SELECT name FROM sqlite_master WHERE type = 'index'")}
    assert "recipients_claimable" in indexes and "recipients_due" not in indexes


async def _store_and_claim(queue: LocalQueue) -> None:
    message = NewMessage(new_queue_id(), "app@sender.test", ("new@example.test",),
                         b"Subject: s\r\n\r\nbody\r\n")
    await queue.store(message)
    assert [c.address for c in await queue.claim_due(10)] == ["new@example.test"]
