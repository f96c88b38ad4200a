"""Events and message history (queue.events), part of the queue contract: both backends,
a real PostgreSQL for the second."""

from __future__ import annotations

import json
import time
from dataclasses import replace

import asyncpg

from relay.notify.pruner import HistoryPruner
from relay.queue import NewMessage, Queue, Selection, State, Tracking, new_queue_id
from relay.queue.apikeys import ApiScope, digest_of
from relay.queue.events import EventFilter, EventType
from relay.queue.postgres import PostgresQueue
from relay.queue.webhooks import WebhookEndpoint
from relay.web.admin.callers import new_key
from tests.integration.queue.contract import outcome

TRACKING = Tracking("=?utf-8?q?Caf=C3=A9?= news", {"user": 42}, ("welcome",))


def tracked(*recipients: str) -> NewMessage:
    return NewMessage(new_queue_id(), "app@sender.test", recipients,
                      b"Subject: x\r\n\r\nbody\r\n", tracking=TRACKING)


async def all_events(queue: Queue, **wanted: object) -> list[tuple[str, str]]:
    """(type, recipient) of every matching event, read a page of two at a time."""
    found: list[tuple[str, str]] = []
    cursor, seen = "", set()
    while True:
        page = await queue.events(EventFilter(after=cursor, limit=2, **wanted))  # type: ignore[arg-type]
        if not page.events:
            return found
        for event in page.events:
            assert event.id not in seen  # no page repeats an event
            seen.add(event.id)
            found.append((event.type.value, event.recipient))
        cursor = page.cursor


async def test_a_message_history_and_timelines_outlive_it(queue: Queue) -> None:
    stored = tracked("a@example.test", "b@example.test")
    await queue.store(stored)
    first = {c.address: c for c in await queue.claim_due(10)}
    await queue.record([
        outcome(first["a@example.test"], State.DEFERRED, "451 4.3.0 later",
                next_attempt_at=4e9, relay="mx[127.0.0.2]:25"),
        outcome(first["b@example.test"], State.DELIVERED, relay="mx[127.0.0.2]:25",
                tls="TLSv1.3")])
    assert await queue.flush(Selection(ids=[stored.id])) == 1
    [again] = await queue.claim_due(10)
    await queue.record([outcome(again, State.BOUNCED, "550 5.1.1 gone", dsn=True)])
    assert await queue.get_message(stored.id) is None  # left the queue

    history = await queue.history(stored.id)
    assert history is not None and history.finished_at is not None
    assert (history.subject, history.metadata, history.tags) == (
        "Café news", {"user": 42}, ("welcome",))
    timelines = {r.address: r for r in history.recipients}
    assert [e.type.value for e in timelines["a@example.test"].events] == [
        "accepted", "deferred", "requeued", "bounced"]
    assert timelines["a@example.test"].state == "bounced"
    deferred, bounced = (timelines["a@example.test"].events[i] for i in (1, 3))
    assert deferred.data == {"reply": "451 4.3.0 later", "attempt": 1,
                             "relay": "mx[127.0.0.2]:25", "next_attempt_at": 4e9}
    assert bounced.data == {"reply": "550 5.1.1 gone", "attempt": 2, "dsn": True}
    delivered = timelines["b@example.test"].events[-1]
    assert delivered.type is EventType.DELIVERED
    assert delivered.data["tls"] == "TLSv1.3" and delivered.data["relay"] == "mx[127.0.0.2]:25"
    # every event carries the message's metadata and tags
    assert {(json.dumps(e.metadata), e.tags)
            for e in (await queue.events(EventFilter())).events} == {('{"user": 42}',
                                                                     ("welcome",))}
    assert await all_events(queue, message_id=stored.id, recipient="A@example.test") == [
        ("accepted", "a@example.test"), ("deferred", "a@example.test"),
        ("requeued", "a@example.test"), ("bounced", "a@example.test")]
    assert await all_events(queue, types=(EventType.DELIVERED, EventType.BOUNCED)) == [
        ("delivered", "b@example.test"), ("bounced", "a@example.test")]
    assert await queue.history("nosuchmessage") is None
    assert await queue.count_events(EventFilter(), 100) == 6
    assert await queue.count_events(EventFilter(), 4) == 4  # counted up to the cap
    assert await queue.count_events(EventFilter(types=(EventType.BOUNCED,)), 100) == 1


async def test_operator_commands_are_events(queue: Queue) -> None:
    stored = tracked("h@example.test")
    await queue.store(stored)
    one = Selection(ids=[stored.id])
    assert await queue.hold(one) == 1
    assert await queue.release(one) == 1
    assert await queue.delete(one) == 1
    history = await queue.history(stored.id)
    assert history is not None and history.finished_at is not None
    assert [e.type.value for e in history.recipients[0].events] == [
        "accepted", "held", "released", "deleted"]


async def test_pruning_removes_only_what_left_the_queue(queue: Queue) -> None:
    done, waiting = tracked("d@example.test"), tracked("w@example.test")
    await queue.store(done)
    await queue.store(waiting)
    claims = {c.address: c for c in await queue.claim_due(10)}
    await queue.record([outcome(claims["d@example.test"], State.DELIVERED)])
    await queue.return_leases([(claims["w@example.test"].recipient_id,
                                claims["w@example.test"].attempts)])
    # A cut-off in the past: nothing finished before it.
    assert await queue.prune_history(0.0) == 0
    removed = 0
    while (batch := await queue.prune_history(4e9)) > 0:
        removed += batch
    assert removed == 3  # the finished message's two events and its history row
    assert await queue.history(done.id) is None
    kept = await queue.history(waiting.id)
    assert kept is not None and kept.finished_at is None
    assert [e.type.value for e in kept.recipients[0].events] == ["accepted"]
    assert await queue.get_message(waiting.id) is not None


async def test_the_pruner_removes_what_is_past_retention(queue: Queue) -> None:
    finished = tracked("d@example.test")
    await queue.store(finished)
    [claim] = await queue.claim_due(10)
    await queue.record([outcome(claim, State.DELIVERED)])
    await queue.store(tracked("w@example.test"))
    now = [time.time()]
    pruner = HistoryPruner(queue, retention=3600, clock=lambda: now[0])
    assert await pruner.prune_now() == 0  # delivered a moment ago: kept
    now[0] += 3601
    assert await pruner.prune_now() == 3  # two events and the history row
    assert await queue.history(finished.id) is None
    assert (await queue.events(EventFilter())).events[0].recipient == "w@example.test"


async def test_broadcast_recipients_have_events(queue: Queue) -> None:
    broadcast_id = new_queue_id()
    await queue.suppress("Gone@example.test", "550 5.1.1 gone")
    template = json.dumps({"from": "news@sender.test", "subject": "Hi"}).encode()
    await queue.open_broadcast(broadcast_id, "news@sender.test", template, False,
                               Tracking("Hi {{name}}", {"campaign": "june"}))
    assert await queue.add_broadcast_recipients(broadcast_id, [
        ("a@example.test", "{}"), ("gone@example.test", "{}"), ("b@example.test", "{}")]) == 1
    await queue.accept_broadcast(broadcast_id, 0, None, {})
    cancelled = await queue.cancel_broadcast(broadcast_id)
    assert cancelled is not None and cancelled.cancelled == 2
    history = await queue.history(broadcast_id)
    assert history is not None and history.metadata == {"campaign": "june"}
    assert {r.address: [e.type.value for e in r.events] for r in history.recipients} == {
        "gone@example.test": ["suppressed"],
        "a@example.test": ["accepted", "cancelled"],
        "b@example.test": ["accepted", "cancelled"]}


async def test_a_page_never_skips_an_event_that_commits_later(postgres_dsn: str) -> None:
    """PostgreSQL hands out event ids before commit: an open transaction holding a small id
    must not be passed by the cursor while a larger id is read."""
    cluster = PostgresQueue(postgres_dsn)
    await cluster.open()
    slow = await asyncpg.connect(postgres_dsn)
    try:
        await slow.execute("BEGIN")
        await slow.execute("INSERT INTO events (type, at, message_id, recipient) "
                           "VALUES ('accepted', 0, 'slow', 'late@example.test')")
        stored = tracked("soon@example.test")
        await cluster.store(stored)  # committed with a larger id
        early = await cluster.events(EventFilter())
        assert early.events == []  # not yet: the smaller id is still being written
        await slow.execute("COMMIT")
        page = await cluster.events(EventFilter(after=early.cursor))
        assert [e.recipient for e in page.events] == ["late@example.test",
                                                      "soon@example.test"]
        assert (await cluster.events(EventFilter(after=page.cursor))).events == []
    finally:
        await slow.close()
        await cluster.close()


async def test_api_keys_are_kept_as_digests_and_revoked(queue: Queue) -> None:
    record, key = new_key("billing", (ApiScope.SEND, ApiScope.READ), "100/m")
    await queue.add_api_key(record)
    found = await queue.api_key(digest_of(key))
    assert found is not None and found.scopes == (ApiScope.SEND, ApiScope.READ)
    assert key not in json.dumps(found.to_json()) and found.rate_limit == "100/m"
    assert await queue.api_key(digest_of(key + "x")) is None
    assert await queue.revoke_api_key(record.id)
    assert not await queue.revoke_api_key(record.id)  # once
    revoked = await queue.api_key(digest_of(key))
    assert revoked is not None and revoked.revoked_at is not None
    assert [k.id for k in await queue.api_keys()] == [record.id]


async def test_webhook_state_is_leased_to_one_owner(queue: Queue) -> None:
    stored = tracked("a@example.test")
    await queue.store(stored)  # before the endpoint: not its event
    endpoint = WebhookEndpoint("wh_1", "http://127.0.0.1:9/", (EventType.DELIVERED,),
                               "whsec_eA==", 1.0)
    await queue.add_webhook_endpoint(endpoint)
    assert [e.id for e in await queue.webhook_endpoints()] == ["wh_1"]
    first = await queue.lease_webhook("wh_1", "node-a", 30)
    assert first is not None and first.attempts == 0
    assert await queue.lease_webhook("wh_1", "node-b", 30) is None  # node-a holds it
    assert (await queue.events(EventFilter(after=first.cursor))).events == []
    later = tracked("b@example.test")
    await queue.store(later)
    [event] = (await queue.events(EventFilter(after=first.cursor))).events
    assert event.message_id == later.id
    failing = replace(first, cursor=event.position, attempts=2, disabled_at=5.0)
    assert await queue.save_webhook(failing, "node-a")
    assert not await queue.save_webhook(first, "node-b")  # fenced
    [state] = await queue.webhook_states()
    assert (state.cursor, state.attempts, state.disabled_at) == (event.position, 2, 5.0)
    assert await queue.enable_webhook("wh_1")
    again = await queue.lease_webhook("wh_1", "node-a", 30)
    assert again is not None and again.disabled_at is None and again.attempts == 0
    assert await queue.remove_webhook_endpoint("wh_1")
    assert await queue.webhook_endpoints() == [] and await queue.webhook_states() == []
    # A round still under way for the removed endpoint does not bring its state back.
    assert await queue.lease_webhook("wh_1", "node-a", 30) is None
    assert await queue.webhook_states() == []
