"""queue.local: the embedded backend, one node, no services: a queue file per message
under `spool/messages/` (queue.local.spoolfiles: the durability rule) and a SQLite index
derived from them (queue.local.index), written by one thread with group commit
(queue.local.groupcommit). Ingest workers store their messages' files themselves and
hand the index rows over (queue.local.handoff)."""

from relay.queue.local.backend import LocalQueue

__all__ = ["LocalQueue"]
