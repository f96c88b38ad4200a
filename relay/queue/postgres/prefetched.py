"""queue.postgres.prefetched: the bodies of small messages, fetched with their claim (one
query for both, no second round trip per message) and kept until delivery reads them or
their message leaves the queue; the oldest go beyond a byte budget. (The local backend's
own cache, queue.local.bodycache, keeps new mail from its indexing to its first delivery.)
"""

from __future__ import annotations

from collections import OrderedDict


class PrefetchedBodies:
    """Message bodies by id, the oldest dropped beyond `capacity` bytes."""

    def __init__(self, capacity: int) -> None:
        self._capacity = capacity
        self._size = 0
        self._bodies: OrderedDict[str, bytes] = OrderedDict()

    def keep(self, message_id: str, body: bytes) -> None:
        if message_id in self._bodies:
            self._bodies.move_to_end(message_id)
            return
        self._bodies[message_id] = body
        self._size += len(body)
        while self._size > self._capacity and self._bodies:
            self._size -= len(self._bodies.popitem(last=False)[1])

    def get(self, message_id: str) -> bytes | None:
        return self._bodies.get(message_id)

    def forget(self, message_ids: list[str]) -> None:
        for message_id in message_ids:
            body = self._bodies.pop(message_id, None)
            if body is not None:
                self._size -= len(body)
