"""Broadcasts and suppressions (queue.roles.BroadcastStore, SuppressionStore), one suite for
both backends: stored once, counted, cancelled, abandoned, listed."""

from __future__ import annotations

import asyncio
import time

from relay.queue import (
    Idempotency,
    Queue,
    State,
)
from tests.integration.queue.contract import (
    message,
    outcome,
)


async def test_broadcasts_are_stored_once_and_counted(queue: Queue) -> None:
    assert await queue.suppress("Gone@Example.test", "bounced earlier") is True
    assert await queue.suppress("gone@example.test", "again") is False
    await queue.open_broadcast("B1", "news@sender.test", b'{"subject": "hi"}', False)
    skipped = await queue.add_broadcast_recipients(
        "B1", [("a@example.test", '{"name": "A"}'), ("gone@example.test", "{}"),
               ("b@example.test", '{"name": "B"}')])
    assert skipped == 1
    assert await queue.claim_due(10) == []  # not due before it is accepted
    await queue.accept_broadcast("B1", 3, Idempotency("bk", "bd"), {"id": "B1"})
    status = await queue.broadcast_status("B1")
    assert status is not None and (status.total, status.suppressed, status.rejected,
                                   status.queued) == (2, 1, 3, 2)
    claimed = sorted(await queue.claim_due(10), key=lambda c: c.address)
    assert [c.fields for c in claimed] == ['{"name": "A"}', '{"name": "B"}']
    await queue.record([outcome(claimed[0], State.DELIVERED, broadcast=True),
                        outcome(claimed[1], State.BOUNCED, "550 5.1.1 no", broadcast=True)])
    status = await queue.broadcast_status("B1")
    assert status is not None and (status.state, status.delivered, status.bounced) == (
        "done", 1, 1)
    assert {s.address for s in await queue.suppressions()} == {"gone@example.test",
                                                               "b@example.test"}
    assert await queue.unsuppress("GONE@example.test") == 1


async def test_a_cancelled_broadcast_drops_what_was_not_sent(queue: Queue) -> None:
    await queue.open_broadcast("B2", "news@sender.test", b"{}", False)
    await queue.add_broadcast_recipients("B2", [(f"r{n}@example.test", "{}")
                                                for n in range(3)])
    await queue.accept_broadcast("B2", 0, None, {})
    [claim] = await queue.claim_due(1)
    status = await queue.cancel_broadcast("B2")
    assert status is not None and (status.state, status.cancelled) == ("cancelled", 2)
    await queue.record([outcome(claim, State.DELIVERED, broadcast=True)])
    status = await queue.broadcast_status("B2")
    assert status is not None and status.delivered == 1 and status.finished_at is not None
    assert await queue.cancel_broadcast("nope") is None


async def test_an_abandoned_upload_leaves_nothing(queue: Queue) -> None:
    await queue.open_broadcast("B3", "news@sender.test", b"{}", False)
    await queue.add_broadcast_recipients("B3", [("a@example.test", "{}")])
    await queue.abandon_broadcast("B3")
    assert await queue.broadcast_status("B3") is None
    assert await queue.list_messages() == []


async def test_broadcasts_are_listed_newest_first_with_their_counts(queue: Queue) -> None:
    for name in ("B4", "B5"):
        await queue.open_broadcast(name, "news@sender.test", b"{}", False)
        await queue.add_broadcast_recipients(name, [(f"r{n}@example.test", "{}")
                                                    for n in range(2)])
        await queue.accept_broadcast(name, 0, None, {})
        await asyncio.sleep(0.01)  # created at different times
    claims = [c for c in await queue.claim_due(10) if c.message_id == "B4"]
    await queue.record([outcome(claims[0], State.DEFERRED, "451 4.3.0 later",
                                next_attempt_at=time.time() + 60)])
    listed = await queue.broadcasts()
    assert [b.id for b in listed] == ["B5", "B4"]
    assert (listed[1].total, listed[1].deferred) == (2, 1)
    assert listed[1].next_attempt_at is not None and \
        listed[1].next_attempt_at > time.time() + 50
    assert listed[1] == await queue.broadcast_status("B4")
    first = await queue.broadcasts(limit=1)
    assert [b.id for b in first] == ["B5"]
    after = (first[0].created_at, first[0].id)  # the next page starts after the last
    assert [b.id for b in await queue.broadcasts(limit=1, after=after)] == ["B4"]
    assert await queue.broadcasts(after=(listed[1].created_at, "B4")) == []
    assert [b.id for b in await queue.broadcasts(state="sending")] == ["B5", "B4"]
    assert await queue.broadcasts(state="done") == []
    await queue.cancel_broadcast("B5")
    assert [b.id for b in await queue.broadcasts(state="cancelled")] == ["B5"]
    assert [b.id for b in await queue.broadcasts(state="sending")] == ["B4"]


async def test_a_broadcast_still_uploading_is_listed_as_an_upload_not_as_mail(queue: Queue) -> None:
    """Between open_broadcast and accept_broadcast the API has not answered 202: nothing
    of it may be sent, counted or listed as queued mail; the broadcasts' listing shows
    it as what it is, an upload ("receiving")."""
    await queue.store(message("a@example.test"))
    await queue.open_broadcast("B6", "news@sender.test", b"{}", False)
    await queue.add_broadcast_recipients("B6", [(f"r{n}@example.test", "{}")
                                                for n in range(3)])
    assert [m.mail_from for m in await queue.list_messages()] == ["app@sender.test"]
    assert await queue.get_message("B6") is None
    [uploading] = await queue.broadcasts()
    assert (uploading.id, uploading.state) == ("B6", "receiving")
    assert uploading == await queue.broadcast_status("B6")
    assert sum((await queue.stats()).depth.values()) == 1
    assert sum(s.total for s in await queue.summary()) == 1
    assert [c.address for c in await queue.claim_due(10)] == ["a@example.test"]
    await queue.accept_broadcast("B6", 0, None, {})
    assert [b.state for b in await queue.broadcasts()] == ["sending"]
    assert {m.id for m in await queue.list_messages()} >= {"B6"}
