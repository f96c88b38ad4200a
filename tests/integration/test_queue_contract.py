"""The queue contract (queue.base), one suite for both backends: the local spool and
PostgreSQL (a real server, a database per test)."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

import pytest

from relay.core.errors import RelayError
from relay.core.units import Rate
from relay.queue import (
    Claimed,
    Idempotency,
    NewMessage,
    Outcome,
    Queue,
    Selection,
    State,
    new_queue_id,
)
from relay.queue.postgres import PostgresQueue
from relay.queue.postgres.pool import schema_status
from relay.queue.postgres.schema import MIGRATIONS
from tests.integration.conftest import QUEUE_LEASE as LEASE

_T = TypeVar("_T")


def message(*recipients: str, idempotency: Idempotency | None = None) -> NewMessage:
    return NewMessage(new_queue_id(), "app@sender.test", recipients or ("a@example.test",),
                      b"Subject: contract\r\n\r\nbody\r\n", idempotency=idempotency)


async def eventually(probe: Callable[[], Awaitable[_T]], accept: Callable[[_T], bool],
                     timeout: float = 10.0) -> _T:
    """Probe until `accept` (a lease or a retry time, in the backend's own clock, passes)."""
    deadline = time.monotonic() + timeout
    while True:
        value = await probe()
        if accept(value):
            return value
        assert time.monotonic() < deadline, f"never accepted: {value!r}"
        await asyncio.sleep(0.05)


def outcome(claim: Claimed, state: State, reply: str = "250 2.0.0 ok", **kwargs: Any
            ) -> Outcome:
    return Outcome(claim.recipient_id, claim.attempts, state, reply, **kwargs)


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


async def test_messages_stored_together_are_each_durable(queue: Queue) -> None:
    batch = [message(f"r{n}@example.test") for n in range(50)]
    await asyncio.gather(*(queue.store(m) for m in batch))
    assert {m.id for m in await queue.list_messages()} == {m.id for m in batch}


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


async def test_activity_counts_outcomes_per_step_since_a_time(queue: Queue) -> None:
    assert await queue.activity(0, 60) == []
    await queue.store(message("old@example.test"))
    [old] = await queue.claim_due(1)
    await queue.record([outcome(old, State.DELIVERED)])
    await asyncio.sleep(0.05)
    since = time.time()
    await asyncio.sleep(0.05)
    await queue.store(message("a@example.test", "b@example.test", "c@example.test"))
    a, b, c = sorted(await queue.claim_due(3), key=lambda claim: claim.address)
    await queue.record([outcome(a, State.DELIVERED), outcome(b, State.BOUNCED, "550 5.1.1 no"),
                        outcome(c, State.DEFERRED, "451 4.3.0 later",
                                next_attempt_at=time.time() + 60)])
    [bucket] = await queue.activity(since, 3600)
    assert (bucket.delivered, bucket.deferred, bucket.bounced) == (1, 1, 1)
    assert bucket.start <= time.time() < bucket.start + 3600
    everything = await queue.activity(0, 10 ** 10)
    assert sum(b.delivered for b in everything) == 2
    assert await queue.activity(time.time() + 60, 60) == []


async def test_lease_holders_name_the_nodes_and_what_they_hold(postgres_dsn: str) -> None:
    nodes = [PostgresQueue(postgres_dsn, lease=LEASE, node=f"node{n}") for n in (1, 2)]
    for node in nodes:
        await node.open()
    try:
        assert await nodes[0].lease_holders() == []
        await nodes[0].store(message("a@example.test", "b@example.test"))
        assert len(await nodes[1].claim_due(1)) == 1
        assert await nodes[0].take_slot("example.test", 2) is not None
        holders = {h.node: h for h in await nodes[0].lease_holders()}
        assert (holders["node2"].recipients, holders["node2"].connections) == (1, 0)
        assert (holders["node1"].recipients, holders["node1"].connections) == (0, 1)
    finally:
        for node in nodes:
            await node.close()


async def test_destination_slots_are_limited_leased_and_released(postgres_dsn: str) -> None:
    """Two nodes on one database share a destination's connection limit."""
    nodes = [PostgresQueue(postgres_dsn, lease=LEASE, node=f"node{n}") for n in (1, 2)]
    for node in nodes:
        await node.open()
    try:
        first = await nodes[0].take_slot("example.test", 2)
        second = await nodes[1].take_slot("example.test", 2)
        assert first and second and first != second
        assert await nodes[0].take_slot("example.test", 2) is None  # the cluster's limit
        assert await nodes[1].take_slot("other.test", 2) is not None  # per destination
        await nodes[1].release_slot(second)
        third = await nodes[0].take_slot("example.test", 2)
        assert third is not None
        for _ in range(3):  # renewed: still held after more than a lease
            await asyncio.sleep(LEASE / 2)
            await nodes[0].renew_slots()
        assert await nodes[1].take_slot("example.test", 2) is None
        # Node 1 stops renewing (it died): its slots come free once their lease expires.
        assert await eventually(lambda: nodes[1].take_slot("example.test", 2),
                                lambda slot: slot is not None) is not None
    finally:
        for node in nodes:
            await node.close()


async def test_rate_limits_hold_for_the_cluster(postgres_dsn: str) -> None:
    nodes = [PostgresQueue(postgres_dsn, node=f"node{n}") for n in (1, 2)]
    for node in nodes:
        await node.open()
    try:
        three_an_hour, short = Rate(3, 3600.0), Rate(1, 0.5)
        taken = [await nodes[n % 2].take("user app1", three_an_hour) for n in range(4)]
        assert taken == [True, True, True, False]
        assert await nodes[1].peek("user app1", three_an_hour) is False
        assert await nodes[0].peek("user other", three_an_hour) is True
        # Both nodes at once for the last one: exactly one gets it.
        results = await asyncio.gather(*(node.take("user burst", Rate(1, 3600.0))
                                         for node in nodes))
        assert sorted(results) == [False, True]
        assert await nodes[0].take("auth 127.0.0.9", short) is True
        assert await eventually(lambda: nodes[1].take("auth 127.0.0.9", short), bool)
    finally:
        for node in nodes:
            await node.close()


@pytest.mark.parametrize("notify", [True, False])
async def test_new_work_wakes_the_other_nodes(postgres_dsn: str, notify: bool) -> None:
    """LISTEN/NOTIFY: mail stored, released or flushed on one node wakes the others;
    with notify = false nobody is woken (nodes poll)."""
    storing, idle = (PostgresQueue(postgres_dsn, node=name, notify=notify)
                     for name in ("storing", "idle"))
    await storing.open()
    await idle.open()
    woken = asyncio.Event()
    idle.listen(woken.set)
    try:
        if notify:
            await asyncio.wait_for(woken.wait(), 10)  # once at first: it listens now
        woken.clear()
        stored = message()
        await storing.store(stored)
        if notify:
            await asyncio.wait_for(woken.wait(), 10)
            woken.clear()
            await storing.hold(Selection([stored.id]))
            await storing.release(Selection([stored.id]))
            await asyncio.wait_for(woken.wait(), 10)
        else:
            await asyncio.sleep(0.5)
            assert not woken.is_set()
    finally:
        await storing.close()
        await idle.close()


async def test_nodes_that_start_together_migrate_once(postgres_dsn: str) -> None:
    """The schema is made under an advisory lock: five nodes starting at once all start."""
    nodes = [PostgresQueue(postgres_dsn, node=f"node{n}") for n in range(5)]
    await asyncio.gather(*(node.open() for node in nodes))
    try:
        assert await schema_status(postgres_dsn) == (len(MIGRATIONS), len(MIGRATIONS))
        await nodes[0].store(message())
        assert len(await nodes[4].list_messages()) == 1
    finally:
        await asyncio.gather(*(node.close() for node in nodes))


async def test_nodes_are_listed_by_name_and_gone_once_their_heartbeat_stops(
        postgres_dsn: str) -> None:
    """A node holds its name while it runs (a twin cannot open), beats every quarter
    lease, and is listed as gone once no heartbeat came within a lease."""
    node = PostgresQueue(postgres_dsn, lease=1.0, node="n1")
    observer = PostgresQueue(postgres_dsn, lease=1.0, node="observer")
    await node.open()
    await observer.open()
    try:
        twin = PostgresQueue(postgres_dsn, lease=1.0, node="n1")
        with pytest.raises(RelayError, match="another node named n1 is running"):
            await twin.open()
        first = {n.name: n for n in await observer.nodes()}["n1"]
        assert first.owner == node.owner and first.owner.startswith("n1/")
        assert not first.gone
        await until(lambda: _heartbeat_after(observer, first.heartbeat_at), "a heartbeat")
        await node.close()
        await until(lambda: _gone(observer, "n1"), "n1 listed as gone")
        again = PostgresQueue(postgres_dsn, lease=1.0, node="n1")  # its name is free
        await again.open()
        await again.close()
    finally:
        await observer.close()


async def until(condition: Callable[[], Awaitable[bool]], what: str,
                timeout: float = 20) -> None:
    deadline = time.monotonic() + timeout
    while not await condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.05)


async def _heartbeat_after(queue: PostgresQueue, at: float) -> bool:
    return any(n.name == "n1" and n.heartbeat_at > at for n in await queue.nodes())


async def _gone(queue: PostgresQueue, name: str) -> bool:
    return any(n.name == name and n.gone for n in await queue.nodes())


async def test_console_sessions_are_kept_found_closed_and_expire(queue: Queue) -> None:
    """The console's sessions live in the queue: every node finds them, a restart keeps
    them; signing out ends one, a revoked key every one it opened."""
    await queue.open_console_session("s1", "token-a", "csrf-1", 60)
    await queue.open_console_session("s2", "token-a", "csrf-2", 60)
    await queue.open_console_session("s3", "token-b", "csrf-3", 60)
    found = await queue.console_session("s1")
    assert found is not None and (found.token_digest, found.csrf) == ("token-a", "csrf-1")
    assert found.checks("csrf-1") and not found.checks("csrf-2")
    assert found.expires_at > time.time() + 50
    assert await queue.console_session("nosuch") is None
    assert await queue.close_console_sessions(id_digest="s3") == 1
    assert await queue.console_session("s3") is None
    assert await queue.close_console_sessions(token_digest="token-a") == 2
    assert await queue.console_session("s2") is None
    await queue.open_console_session("short", "token-c", "csrf-4", 0.2)
    deadline = time.monotonic() + 10
    while await queue.console_session("short") is not None:  # expired: gone
        assert time.monotonic() < deadline, "the session never expired"
        await asyncio.sleep(0.05)
