"""Streams, the suppression list by stream, return paths and late feedback (queue.base),
one suite for both backends."""

from __future__ import annotations

from relay.queue import NewMessage, Queue, State, Tracking, new_queue_id
from relay.queue.events import EventFilter, EventType, Feedback
from tests.integration.queue.contract import outcome


def in_stream(stream: str, *recipients: str) -> NewMessage:
    return NewMessage(new_queue_id(), "app@sender.test", recipients,
                      b"Subject: streams\r\n\r\nbody\r\n", tracking=Tracking(stream=stream))


async def test_a_suppression_holds_in_its_stream_and_everywhere_for_every_stream(
        queue: Queue) -> None:
    assert await queue.suppress("Ann@Example.test", "unsubscribed", "newsletter")
    assert not await queue.suppress("ann@example.test", "again", "newsletter")
    assert await queue.suppress("bob@example.test", "550 5.1.1 gone")  # every stream
    news = in_stream("newsletter", "ann@example.test", "bob@example.test", "cy@example.test")
    receipt = in_stream("transactional", "ann@example.test", "bob@example.test")
    await queue.store(news)
    await queue.store(receipt)
    claimed = {(c.message_id, c.address): c for c in await queue.claim_due(10)}
    assert {key: (c.stream, c.suppressed) for key, c in claimed.items()} == {
        (news.id, "ann@example.test"): ("newsletter", "unsubscribed"),
        (news.id, "bob@example.test"): ("newsletter", "550 5.1.1 gone"),
        (news.id, "cy@example.test"): ("newsletter", ""),
        (receipt.id, "ann@example.test"): ("transactional", ""),
        (receipt.id, "bob@example.test"): ("transactional", "550 5.1.1 gone"),
    }
    suppressed = claimed[(news.id, "ann@example.test")]
    await queue.record([outcome(suppressed, State.BOUNCED, "550 5.7.1 suppressed",
                                suppressed=True)])
    [event] = (await queue.events(EventFilter(message_id=news.id, recipient="ann@example.test",
                                              types=[EventType.SUPPRESSED]))).events
    assert event.data["reply"] == "550 5.7.1 suppressed"

    assert [(s.address, s.stream) for s in await queue.suppressions()] == [
        ("ann@example.test", "newsletter"), ("bob@example.test", "*")]
    assert [s.address for s in await queue.suppressions("*")] == ["bob@example.test"]
    assert await queue.suppress("ann@example.test", "complained", "broadcast")
    assert await queue.unsuppress("ANN@example.test", "broadcast") == 1
    assert await queue.unsuppress("ann@example.test", "broadcast") == 0
    assert await queue.suppress("ann@example.test", "complained", "broadcast")
    assert await queue.unsuppress("ann@example.test") == 2  # every stream's entry


async def test_a_broadcast_skips_what_is_suppressed_in_its_stream(queue: Queue) -> None:
    await queue.suppress("ann@example.test", "unsubscribed", "broadcast")
    await queue.suppress("bob@example.test", "unsubscribed", "newsletter")
    await queue.suppress("cy@example.test", "hard bounce")
    await queue.open_broadcast("B1", "news@sender.test", b"{}", False,
                               Tracking(stream="broadcast"))
    skipped = await queue.add_broadcast_recipients("B1", [
        ("ann@example.test", "{}"), ("bob@example.test", "{}"), ("cy@example.test", "{}")])
    assert skipped == 2  # bob unsubscribed from another stream only


async def test_a_delivered_copy_keeps_its_return_path_and_feedback_is_recorded(
        queue: Queue) -> None:
    sent = in_stream("newsletter", "ann@example.test", "bob@example.test")
    await queue.store(sent)
    ann, bob = sorted(await queue.claim_due(10), key=lambda c: c.address)
    await queue.record([
        outcome(ann, State.DELIVERED, return_path="tok-ann"),
        outcome(bob, State.DEFERRED, "451 4.2.0 later", next_attempt_at=4e9,
                return_path="tok-bob")])
    path = await queue.return_path("tok-ann")
    assert path is not None
    assert (path.message_id, path.recipient, path.stream) == (
        sent.id, "ann@example.test", "newsletter")
    assert await queue.return_path("tok-bob") is None  # not delivered: nothing comes back

    unsubscribe = Feedback(EventType.UNSUBSCRIBED, sent.id, "ann@example.test",
                           {"method": "one-click"}, "newsletter", "unsubscribed")
    assert await queue.record_feedback(unsubscribe)
    assert not await queue.record_feedback(unsubscribe)  # idempotent: one event
    late = Feedback(EventType.BOUNCED, sent.id, "ann@example.test",
                    {"reply": "550 5.1.1 gone", "late": True}, "*", "bounced later")
    assert await queue.record_feedback(late)
    # The same report taken in again (its message delivered twice: at least once, a
    # crash before its outcome was committed) is one event, whatever its kind.
    complaint = Feedback(EventType.COMPLAINED, sent.id, "ann@example.test",
                         {"feedback_type": "abuse"}, "newsletter", "complaint")
    await queue.record_feedback(complaint)
    await queue.record_feedback(complaint)
    assert not await queue.record_feedback(late)
    events = (await queue.events(EventFilter(message_id=sent.id,
                                             recipient="ann@example.test"))).events
    assert [e.type for e in events] == [EventType.ACCEPTED, EventType.DELIVERED,
                                        EventType.UNSUBSCRIBED, EventType.BOUNCED,
                                        EventType.COMPLAINED]
    assert {(s.address, s.stream) for s in await queue.suppressions()} == {
        ("ann@example.test", "newsletter"), ("ann@example.test", "*")}

    # Once the history is pruned, feedback still suppresses but has no message to tell.
    gone = Feedback(EventType.COMPLAINED, "NOSUCHMESSAGE", "cy@example.test",
                    {"feedback_type": "abuse"}, "newsletter", "complaint")
    assert await queue.record_feedback(gone)
    assert (await queue.events(EventFilter(message_id="NOSUCHMESSAGE"))).events == []
    assert ("cy@example.test", "newsletter") in {
        (s.address, s.stream) for s in await queue.suppressions()}
    while await queue.prune_history(4e9) > 0:
        pass
    assert await queue.return_path("tok-ann") is None  # pruned with the history
