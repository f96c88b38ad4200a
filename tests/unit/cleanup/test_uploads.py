"""cleanup.uploads: a broadcast taken in, with a fake of the one role it writes to (a
BroadcastStore): recipients checked one by one and written in chunks, nothing left
behind when the upload fails before it was accepted."""

from __future__ import annotations

from collections.abc import AsyncIterator, Sequence
from typing import Any

import pytest

from relay.cleanup import uploads
from relay.cleanup.compose import ComposeError
from relay.cleanup.templates import Template
from relay.cleanup.uploads import NOT_JSON, TooLarge, store_broadcast
from relay.queue import Idempotency

TEMPLATE = Template.model_validate({"from": "news@sender.test", "text": "Hi {{name}}"})


class Broadcasts:
    """The BroadcastStore methods an upload uses, kept in lists."""

    def __init__(self, suppressed: frozenset[str] = frozenset(), fail_at: int = -1) -> None:
        self.chunks: list[list[str]] = []
        self.accepted: list[tuple[str, int, Idempotency | None]] = []
        self.abandoned: list[str] = []
        self._suppressed = suppressed
        self._fail_at = fail_at

    async def open_broadcast(self, broadcast_id: str, *_: Any) -> None:
        self.opened = broadcast_id

    async def add_broadcast_recipients(self, broadcast_id: str,
                                       recipients: Sequence[tuple[str, str]]) -> int:
        if len(self.chunks) == self._fail_at:
            raise OSError("disk full")
        self.chunks.append([address for address, _ in recipients])
        return sum(address in self._suppressed for address, _ in recipients)

    async def accept_broadcast(self, broadcast_id: str, rejected: int,
                               idempotency: Idempotency | None, answer: dict[str, Any]
                               ) -> None:
        self.accepted.append((broadcast_id, rejected, idempotency))

    async def abandon_broadcast(self, broadcast_id: str) -> None:
        self.abandoned.append(broadcast_id)


async def listed(items: list[Any]) -> AsyncIterator[Any]:
    for item in items:
        yield item


async def upload(store: Broadcasts, items: list[Any], template: Template = TEMPLATE,
                 key: str | None = None, max_size: int = 10_000) -> dict[str, Any]:
    return await store_broadcast(store, template, listed(items),  # type: ignore[arg-type]
                                 idempotency_key=key, digest=lambda: "d1",
                                 max_message_size=max_size, api_key="")


def person(n: int) -> dict[str, Any]:
    return {"email": f"r{n}@example.test", "fields": {"name": f"R{n}"}}


async def test_recipients_are_checked_one_by_one_and_written_in_chunks(
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(uploads, "CHUNK", 2)
    store = Broadcasts(suppressed=frozenset({"r3@example.test"}))
    answer = await upload(store, [person(1), {"email": "nope"}, person(2), NOT_JSON,
                                  person(3), {"email": "r4@example.test"}], key="k")
    assert store.chunks == [["r1@example.test", "r2@example.test"], ["r3@example.test"]]
    assert (answer["accepted"], answer["suppressed"], answer["rejected_total"]) == (2, 1, 3)
    assert [(r["index"], r["email"]) for r in answer["rejected"]] == [
        (1, "nope"), (3, None), (5, "r4@example.test")]
    assert "missing field: name" in answer["rejected"][2]["reason"]
    assert store.accepted == [(answer["id"], 3, Idempotency("k", "d1"))]
    assert store.abandoned == []


async def test_a_failure_before_acceptance_leaves_nothing(
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(uploads, "CHUNK", 1)
    store = Broadcasts(fail_at=1)
    with pytest.raises(OSError):
        await upload(store, [person(1), person(2)])
    assert store.accepted == [] and store.abandoned == [store.opened]


async def test_a_template_that_cannot_be_sent_is_refused_before_anything_is_stored() -> None:
    store = Broadcasts()
    with pytest.raises(TooLarge):
        await upload(store, [person(1)], max_size=10)
    varying = Template.model_validate({"from": "{{who}}@sender.test", "text": "x"})
    with pytest.raises(ComposeError):
        await upload(store, [person(1)], template=varying)
    assert not hasattr(store, "opened")
    with pytest.raises(ComposeError) as empty:
        await upload(store, [])
    assert empty.value.field == "recipients" and store.abandoned == [store.opened]
