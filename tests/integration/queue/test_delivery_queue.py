"""The delivery queue (queue.roles.DeliveryQueue, OutcomeStore, MessageStore), one suite
for both backends: stored mail claimed once, leases that expire, renew and return, deferred
work that comes back, outcomes fenced by the attempt."""

from __future__ import annotations

import asyncio
import time

from relay.queue import (
    Queue,
    State,
)
from tests.integration.conftest import QUEUE_LEASE as LEASE
from tests.integration.queue.contract import (
    eventually,
    message,
    outcome,
)


async def test_stored_mail_is_claimed_once_and_leaves_when_final(queue: Queue) -> None:
    stored = message("a@example.test", "b@Example.TEST")
    await queue.store(stored)
    info = await queue.get_message(stored.id)
    assert info is not None and [r.state for r in info.recipients] == [State.QUEUED] * 2
    assert (await queue.stats()).depth == {State.QUEUED: 2}
    claimed = await queue.claim_due(10)
    assert sorted(c.domain for c in claimed) == ["example.test", "example.test"]
    assert {c.attempts for c in claimed} == {1} and claimed[0].mail_from == "app@sender.test"
    assert await queue.claim_due(10) == []  # leased
    assert await queue.read_body(stored.id) == stored.data
    await queue.record([outcome(claimed[0], State.DELIVERED)])
    assert await queue.get_message(stored.id) is not None  # one recipient still active
    await queue.record([outcome(claimed[1], State.BOUNCED, "550 5.1.1 gone")])
    assert await queue.get_message(stored.id) is None
    assert await queue.list_messages() == []

    async def body_gone() -> bool:  # the local backend removes it once the commit is durable
        try:
            await queue.read_body(stored.id)
        except FileNotFoundError:
            return True
        return False

    await eventually(body_gone, bool)


async def test_an_expired_lease_returns_the_work_and_fences_the_late_outcome(
        queue: Queue) -> None:
    stored = message()
    await queue.store(stored)
    [first] = await queue.claim_due(10)
    [second] = await eventually(lambda: queue.claim_due(10), bool)  # after LEASE seconds
    assert (second.recipient_id, second.attempts) == (first.recipient_id, 2)
    await queue.record([outcome(first, State.DELIVERED)])  # the lost lease: ignored
    info = await queue.get_message(stored.id)
    assert info is not None and info.recipients[0].state is State.ACTIVE
    await queue.record([outcome(second, State.DELIVERED)])
    assert await queue.get_message(stored.id) is None


async def test_returned_leases_are_due_at_once(queue: Queue) -> None:
    stored = message()
    await queue.store(stored)
    [claim] = await queue.claim_due(10)
    await queue.return_leases([(claim.recipient_id, claim.attempts)])
    [again] = await queue.claim_due(10)  # at once, not after the lease
    assert (again.recipient_id, again.attempts) == (claim.recipient_id, 2)
    await queue.return_leases([(claim.recipient_id, claim.attempts)])  # stale: ignored
    assert await queue.claim_due(10) == []


async def test_renewed_leases_hold(queue: Queue) -> None:
    await queue.store(message())
    [claim] = await queue.claim_due(10)
    for _ in range(4):  # twice the lease in all, renewed every half lease
        await asyncio.sleep(LEASE / 2)
        await queue.renew_leases([(claim.recipient_id, claim.attempts)])
        assert await queue.claim_due(10) == []


async def test_deferred_recipients_come_back_when_due(queue: Queue) -> None:
    stored = message()
    await queue.store(stored)
    [claim] = await queue.claim_due(10)
    await queue.record([outcome(claim, State.DEFERRED, "451 4.2.0 later",
                                next_attempt_at=time.time() + 0.5)])
    info = await queue.get_message(stored.id)
    assert info is not None and info.recipients[0].state is State.DEFERRED
    assert info.recipients[0].last_reply == "451 4.2.0 later"
    due_at = await queue.next_due_at()
    assert due_at is not None and due_at > time.time() - 1
    [again] = await eventually(lambda: queue.claim_due(10), bool)
    assert again.attempts == 2


async def test_messages_stored_together_are_each_durable(queue: Queue) -> None:
    batch = [message(f"r{n}@example.test") for n in range(50)]
    await asyncio.gather(*(queue.store(m) for m in batch))
    assert {m.id for m in await queue.list_messages()} == {m.id for m in batch}
