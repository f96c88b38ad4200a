"""queue.postgres: the cluster backend, several nodes on one PostgreSQL database: rows
claimed with FOR UPDATE SKIP LOCKED into leases, group commit, LISTEN/NOTIFY, nodes by
name (queue.postgres.nodes), numbered migrations (queue.postgres.schema)."""

from relay.queue.postgres.backend import PostgresQueue

__all__ = ["PostgresQueue"]
