"""queue.local.bodycache: new mail's bodies between indexing and first delivery, bounded."""

from __future__ import annotations

from relay.queue.local.bodycache import BodyCache


def test_a_body_is_taken_once_and_the_oldest_go_first() -> None:
    cache = BodyCache(max_body=10, max_bytes=20)
    cache.put("a", b"x" * 10)
    cache.put("b", b"y" * 10)
    cache.put("c", b"z" * 10)  # over 20 bytes: "a" goes
    cache.put("big", b"w" * 11)  # larger than a body may be: read from its file instead
    assert cache.take("a") is None and cache.take("big") is None
    assert cache.take("b") == b"y" * 10
    assert cache.take("b") is None  # later reads (other destinations, retries): the file
    cache.discard(["c"])  # deleted, or finished without being read
    assert cache.take("c") is None
    cache.put("d", b"v" * 10)
    cache.put("e", b"u" * 10)  # room again: nothing of the taken ones is counted
    assert cache.take("d") == b"v" * 10 and cache.take("e") == b"u" * 10
