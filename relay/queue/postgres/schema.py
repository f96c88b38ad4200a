"""queue.postgres.schema: the PostgreSQL backend's tables, created and migrated at start.

Migrations are numbered and applied in order, each in the transaction that records it in
`relay_migrations`, under one advisory lock: nodes that start together wait for each other
instead of racing, and a database is never left half-migrated. `relayctl db status` reads
the version.

The hot tables hold only what is queued: a message leaves (with its recipients) in the
transaction that makes its last recipient final. Due work is found through a partial
index; for an `active` recipient `next_attempt_at` is its lease's expiry, in the
database's clock (seconds since the epoch, as every time here).
"""

from __future__ import annotations

import asyncpg

MIGRATION_LOCK = 0x72656C6179  # pg_advisory_xact_lock key: "relay"

MIGRATIONS: list[str] = [
    # 1: messages, recipients, broadcasts, suppressions, idempotency keys, domain slots.
    """
    CREATE TABLE messages (
        id text PRIMARY KEY,
        mail_from text NOT NULL,
        size integer NOT NULL,
        received_at double precision NOT NULL,
        smtputf8 boolean NOT NULL DEFAULT false,
        body bytea NOT NULL
    );
    CREATE TABLE recipients (
        id bigserial PRIMARY KEY,
        message_id text NOT NULL REFERENCES messages (id) ON DELETE CASCADE,
        address text NOT NULL,
        domain text NOT NULL,
        state text NOT NULL,
        attempts integer NOT NULL DEFAULT 0,
        next_attempt_at double precision NOT NULL,
        last_attempt_at double precision,
        last_reply text NOT NULL DEFAULT '',
        fields text,
        lease_owner text
    );
    CREATE INDEX recipients_claimable ON recipients (next_attempt_at)
        WHERE state IN ('queued', 'deferred', 'active');
    CREATE INDEX recipients_by_message ON recipients (message_id, state);
    CREATE INDEX recipients_by_domain ON recipients (domain);
    CREATE TABLE broadcasts (
        id text PRIMARY KEY,
        state text NOT NULL,
        total integer NOT NULL DEFAULT 0,
        suppressed integer NOT NULL DEFAULT 0,
        rejected integer NOT NULL DEFAULT 0,
        delivered integer NOT NULL DEFAULT 0,
        bounced integer NOT NULL DEFAULT 0,
        cancelled integer NOT NULL DEFAULT 0,
        created_at double precision NOT NULL,
        accepted_at double precision,
        finished_at double precision,
        cancelled_at double precision
    );
    CREATE TABLE suppressions (
        address text PRIMARY KEY,
        reason text NOT NULL,
        created_at double precision NOT NULL
    );
    CREATE TABLE idempotency (
        key text PRIMARY KEY,
        digest text NOT NULL,
        answer text NOT NULL,
        created_at double precision NOT NULL
    );
    CREATE INDEX idempotency_by_age ON idempotency (created_at);
    """,
    # 2: connections to a destination, leased across nodes (max_connections per domain).
    """
    CREATE TABLE destination_slots (
        destination text NOT NULL,
        slot integer NOT NULL,
        owner text NOT NULL,
        token text NOT NULL,
        expires_at double precision NOT NULL,
        PRIMARY KEY (destination, slot)
    );
    CREATE INDEX destination_slots_by_token ON destination_slots (token);
    """,
    # 3: events counted against "N per window" limits (users' rate_limit, failed AUTH),
    # for every node at once.
    """
    CREATE TABLE rate_events (
        key text NOT NULL,
        at double precision NOT NULL
    );
    CREATE INDEX rate_events_by_key ON rate_events (key, at);
    """,
    # 4: what happened (queue.events): every recipient's events (an outbox, written in the
    # transaction of the change; `tx` orders them by commit, queue.postgres.events) and
    # each message's history, kept after it left the queue.
    """
    CREATE TABLE history (
        message_id text PRIMARY KEY,
        mail_from text NOT NULL,
        subject text NOT NULL DEFAULT '',
        size integer NOT NULL,
        received_at double precision NOT NULL,
        finished_at double precision,
        metadata text,
        tags text,
        api_key text NOT NULL DEFAULT ''
    );
    CREATE INDEX history_by_key ON history (api_key) WHERE api_key <> '';
    CREATE INDEX history_by_finish ON history (finished_at) WHERE finished_at IS NOT NULL;
    CREATE TABLE events (
        id bigserial PRIMARY KEY,
        tx xid8 NOT NULL DEFAULT pg_current_xact_id(),
        type text NOT NULL,
        at double precision NOT NULL,
        message_id text NOT NULL,
        recipient text NOT NULL,
        data text
    );
    CREATE INDEX events_by_message ON events (message_id, id);
    CREATE INDEX events_by_commit ON events (tx, id);
    """,
    # 5: webhook endpoints added through the API, and each endpoint's delivery state.
    """
    CREATE TABLE webhook_endpoints (
        id text PRIMARY KEY,
        url text NOT NULL,
        events text NOT NULL,
        secret text NOT NULL,
        created_at double precision NOT NULL
    );
    CREATE TABLE webhook_state (
        endpoint text PRIMARY KEY,
        cursor text NOT NULL,
        attempts integer NOT NULL DEFAULT 0,
        head_failing_since double precision,
        failing_since double precision,
        next_attempt_at double precision NOT NULL DEFAULT 0,
        disabled_at double precision,
        owner text,
        lease_until double precision NOT NULL DEFAULT 0
    );
    """,
    # 6: the admin API's keys (queue.apikeys).
    """
    CREATE TABLE api_keys (
        id text PRIMARY KEY,
        name text NOT NULL,
        digest text NOT NULL UNIQUE,
        scopes text NOT NULL,
        rate_limit text NOT NULL DEFAULT '',
        created_at double precision NOT NULL,
        revoked_at double precision
    );
    """,
    # 7: streams; suppressions by stream ('*': every one); return paths of delivered copies.
    """
    ALTER TABLE messages ADD COLUMN stream text NOT NULL DEFAULT 'transactional';
    ALTER TABLE suppressions ADD COLUMN stream text NOT NULL DEFAULT '*';
    ALTER TABLE suppressions DROP CONSTRAINT suppressions_pkey;
    ALTER TABLE suppressions ADD PRIMARY KEY (address, stream);
    CREATE TABLE return_paths (
        token text PRIMARY KEY,
        message_id text NOT NULL,
        recipient text NOT NULL,
        stream text NOT NULL,
        at double precision NOT NULL
    );
    CREATE INDEX return_paths_by_age ON return_paths (at);
    """,
    # 8: nodes by their stable names, with their heartbeats (queue.postgres.nodes).
    """
    CREATE TABLE nodes (
        name text PRIMARY KEY,
        owner text NOT NULL,
        started_at double precision NOT NULL,
        heartbeat_at double precision NOT NULL
    );
    """,
    # 9: the console's sessions, for every node (queue.apikeys).
    """
    CREATE TABLE console_sessions (
        id text PRIMARY KEY,
        token text NOT NULL,
        csrf text NOT NULL,
        expires_at double precision NOT NULL
    );
    CREATE INDEX console_sessions_by_token ON console_sessions (token);
    """,
]


async def migrate(connection: asyncpg.Connection) -> int:
    """Bring the database to the newest version; returns it."""
    async with connection.transaction():
        await connection.execute("SELECT pg_advisory_xact_lock($1)", MIGRATION_LOCK)
        await connection.execute(
            "CREATE TABLE IF NOT EXISTS relay_migrations (version integer PRIMARY KEY, "
            "applied_at timestamptz NOT NULL DEFAULT now())")
        done = await version(connection)
        for number, statements in enumerate(MIGRATIONS[done:], start=done + 1):
            await connection.execute(statements)
            await connection.execute("INSERT INTO relay_migrations (version) VALUES ($1)",
                                     number)
    return len(MIGRATIONS)


async def version(connection: asyncpg.Connection) -> int:
    """The version a database has (0: none)."""
    exists = await connection.fetchval("SELECT to_regclass('relay_migrations') IS NOT NULL")
    if not exists:
        return 0
    return int(await connection.fetchval(
        "SELECT COALESCE(MAX(version), 0) FROM relay_migrations"))
