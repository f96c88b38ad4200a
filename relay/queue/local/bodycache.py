"""queue.local.bodycache: new mail's bodies kept in memory from indexing to first delivery.

The process that indexes a message often has its body in hand already (an ingest worker
sends it along with the index rows, the API stores it itself), and its first delivery
follows within milliseconds. Reading it back from the queue file costs a trip to an I/O
thread for each message (bench/README.md); this keeps it instead, for the scheduler's
first read. Bounded in bytes, oldest out first: whatever is not here is read from the
file, which stays the one durable copy.
"""

from __future__ import annotations

from collections import OrderedDict

MAX_BODY = 128 * 1024  # larger bodies are read from their files
MAX_BYTES = 32 * 1024 * 1024


class BodyCache:
    def __init__(self, max_body: int = MAX_BODY, max_bytes: int = MAX_BYTES) -> None:
        self.max_body = max_body
        self._max_bytes = max_bytes
        self._bodies: OrderedDict[str, bytes] = OrderedDict()
        self._bytes = 0

    def put(self, message_id: str, body: bytes) -> None:
        if len(body) > self.max_body or message_id in self._bodies:
            return
        self._bodies[message_id] = body
        self._bytes += len(body)
        while self._bytes > self._max_bytes:
            self._bytes -= len(self._bodies.popitem(last=False)[1])

    def take(self, message_id: str) -> bytes | None:
        """The body, once: a message's later reads (other destinations, retries) go to
        its file."""
        body = self._bodies.pop(message_id, None)
        if body is not None:
            self._bytes -= len(body)
        return body

    def discard(self, message_ids: list[str]) -> None:
        for message_id in message_ids:
            self.take(message_id)
