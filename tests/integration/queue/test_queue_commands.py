"""The operator's commands (queue.roles.QueueCommands, IdempotencyStore), one suite for both
backends: selections held, released, flushed and deleted; summaries; listings."""

from __future__ import annotations

import asyncio
import time

from relay.queue import (
    Idempotency,
    NewMessage,
    Queue,
    Selection,
    State,
    new_queue_id,
)
from tests.integration.queue.contract import (
    message,
)


async def test_operator_commands(queue: Queue) -> None:
    held, other = message("h@example.test"), message("o@other.test")
    await queue.store(held)
    await queue.store(other)
    assert await queue.hold(Selection([held.id])) == 1
    assert await queue.hold(Selection([held.id])) == 0  # held already
    assert [c.address for c in await queue.claim_due(10)] == ["o@other.test"]
    assert [m.id for m in await queue.list_messages(state=State.HELD)] == [held.id]
    assert [m.id for m in await queue.list_messages(domain="OTHER.test")] == [other.id]
    shape = await queue.summary()
    assert [(s.domain, s.total, s.by_age[0]) for s in shape] == [
        ("example.test", 1, 1), ("other.test", 1, 1)]
    assert await queue.release(Selection(all=True)) == 1
    assert await queue.flush(Selection()) == 0  # nothing selected
    assert await queue.flush(Selection(domain="example.test")) == 1
    assert await queue.requeue(Selection(ids=[other.id])) == 1  # the active one too
    assert {m.id for m in await queue.list_messages(state=State.QUEUED)} == {held.id, other.id}
    assert await queue.missing(["NOSUCHID", held.id, "ANOTHER"]) == ["NOSUCHID", "ANOTHER"]
    assert await queue.delete(Selection([held.id])) == 1
    assert await queue.delete(Selection([held.id])) == 0
    assert await queue.missing([held.id]) == [held.id]
    assert [m.id for m in await queue.list_messages()] == [other.id]


async def test_operator_commands_by_domain_and_all(queue: Queue) -> None:
    first, second, third = (message("a@example.test", "b@other.test"),
                            message("c@example.test"), message("d@third.test"))
    for stored in (first, second, third):
        await queue.store(stored)
    assert await queue.hold(Selection(domain="example.test")) == 2  # recipients
    assert await queue.release(Selection(domain="example.test")) == 2
    assert await queue.hold(Selection(all=True)) == 4
    assert await queue.delete(Selection(domain="Example.TEST")) == 2  # messages, whole
    assert [m.id for m in await queue.list_messages()] == [third.id]
    assert await queue.delete(Selection(all=True)) == 1
    assert await queue.list_messages() == []


async def test_summary_by_sender_counts_messages_per_sender_domain(queue: Queue) -> None:
    for sender, recipients in (("app@Shop.test", ("a@x.test", "b@y.test")),
                               ("news@shop.test", ("c@x.test",)),
                               ("", ("d@x.test",))):
        await queue.store(NewMessage(new_queue_id(), sender, recipients, b"\r\n"))
    shapes = await queue.summary(by="sender")
    assert [(s.domain, s.total, s.by_age[0]) for s in shapes] == [
        ("shop.test", 2, 2), ("MAILER-DAEMON", 1, 1)]
    assert [(s.domain, s.total) for s in await queue.summary()] == [("x.test", 3), ("y.test", 1)]


async def test_idempotency_keys_are_stored_with_the_message(queue: Queue) -> None:
    stored = message(idempotency=Idempotency("key-1", "digest-1"))
    await queue.store(stored)
    answer = await queue.idempotent_answer("key-1")
    assert answer is not None and answer.digest == "digest-1" and stored.id in answer.answer
    assert await queue.idempotent_answer("key-2") is None


async def test_messages_are_listed_by_sender_age_and_up_to_a_limit(queue: Queue) -> None:
    def sent_by(sender: str) -> NewMessage:
        return NewMessage(new_queue_id(), sender, ("a@example.test",), b"Subject: s\r\n\r\n")

    first = sent_by("News_Letter@Sender.test")
    await queue.store(first)
    await asyncio.sleep(0.02)
    between = time.time()
    await asyncio.sleep(0.02)
    for sender in ("newsXletter@sender.test", "app@sender.test"):
        await queue.store(sent_by(sender))
    assert [m.id for m in await queue.list_messages(sender="news_letter")] == [first.id]
    assert len(await queue.list_messages(sender="%")) == 0  # a literal %, not a wildcard
    assert len(await queue.list_messages(sender="SENDER.TEST")) == 3
    assert [m.id for m in await queue.list_messages(received_before=between)] == [first.id]
    assert [m.id for m in await queue.list_messages(limit=1)] == [first.id]  # oldest first
    assert len(await queue.list_messages(sender="sender", limit=2)) == 2
