"""feedback.intake: mail to the bounce domain, taken in by the delivery loop instead of
being sent on (as Postfix hands a local domain to its local transport).

Such mail was stored like any other before its 250 (smtpd accepts it from anyone: only
for this domain), so it is durable and retried like any other; here each recipient is
matched by its address:

- `b-<token>@`: a return path. The message is a bounce (DSN, or one flufl.bounce
  recognises) or a complaint (ARF); the token names the copy it is about.
- `u-<token>@`: the mailto form of a broadcast's unsubscribe link.
- anything else (`fbl@`, `postmaster@`): a report is matched by the relay's tokens found in
  the message it returns.

A match is recorded as an event of the original message and recipient and, for a hard
bounce (every stream), a complaint or an unsubscribe (its stream), a suppression
(Queue.record_feedback). A report can arrive before the outcome it is about is recorded
(the return path is stored with the outcome): while the message it names is still in
the queue, the report is deferred (451 4.3.0) and matched again with the retry backoff,
up to MATCH_TRIES tries. What matches nothing is logged and dropped, never bounced.
"""

from __future__ import annotations

import logging
import re
import time
from collections.abc import Callable
from typing import Protocol

from relay.cleanup.cleanup import Cleanup, Origin
from relay.core import reply
from relay.core.errors import Rejected
from relay.delivery.agent import Attempt, Job
from relay.feedback.reports import Failure, Report, read_report
from relay.feedback.tokens import UNSUBSCRIBE_PREFIX, VERP_PREFIX, Copy, FeedbackTokens
from relay.outcomes import dsn
from relay.queue.base import EVERY_STREAM
from relay.queue.events import EventType, Feedback
from relay.queue.roles import EventHistory, FeedbackStore, QueueCommands

log = logging.getLogger("relay.feedback")

MAX_TOKENS = 10  # of the relay's tokens looked up in one returned message
# Tries to match a report whose message is still being sent before it is dropped: with
# [retry]'s backoff (5 minutes, doubling to an hour) five tries span over two hours.
MATCH_TRIES = 5


class IntakeQueue(FeedbackStore, EventHistory, QueueCommands, Protocol):
    """The copy a token names, the report written, the message's history and whether
    it is still queued."""


class FeedbackIntake:
    """The transport of the bounce domain: `deliver` reads, matches and records."""

    def __init__(self, queue: IntakeQueue, tokens: FeedbackTokens, cleanup: Cleanup,
                 hostname: str, notify_sender: bool,
                 counted: Callable[[str], None] = lambda kind: None,
                 clock: Callable[[], float] = time.time) -> None:
        self._queue = queue
        self._counted = counted  # the metrics, by kind
        self._tokens = tokens
        self._cleanup = cleanup
        self._hostname = hostname
        self._notify_sender = notify_sender
        self._clock = clock
        domain = re.escape(tokens.domain)
        self._return_path = re.compile(
            rf"{VERP_PREFIX}([0-9a-f]+-[a-z2-7]{{8}})@{domain}".encode(), re.IGNORECASE)
        self._unsubscribe = re.compile(
            rf"{UNSUBSCRIBE_PREFIX}([a-z2-7]+-[a-z2-7]{{8}})@{domain}".encode(), re.IGNORECASE)

    @property
    def domain(self) -> str:
        return self._tokens.domain

    async def deliver(self, job: Job, body: bytes) -> list[Attempt]:
        attempts = []
        for recipient in job.recipients:
            verdict = await self._take(job.message_id, recipient.address, body,
                                       last_try=recipient.attempts >= MATCH_TRIES)
            attempts.append(Attempt(recipient, verdict, "feedback"))
        return attempts

    async def close(self) -> None:
        pass

    async def _take(self, queue_id: str, address: str, body: bytes, last_try: bool
                    ) -> reply.Reply:
        local = address.rpartition("@")[0].lower()
        if local.startswith(UNSUBSCRIBE_PREFIX):
            found = self._tokens.read_unsubscribe(local.removeprefix(UNSUBSCRIBE_PREFIX))
            if found is not None:
                await self._record(queue_id, address, unsubscribed(found, "mailto"))
                return reply.FEEDBACK_RECORDED
            return self._dropped(queue_id, address, "unsubscribe token not valid")
        try:
            report = read_report(body)
        except Exception as exc:  # the email package on hostile MIME: dropped, not retried
            return self._dropped(queue_id, address, f"unreadable ({exc!r})")
        if report.kind == "none":
            return self._dropped(queue_id, address, f"no bounce or complaint ({report.source})")
        tokens = self._tokens_in(local, body)
        copy = await self._copy_of(tokens, body)
        if copy is None and not last_try and await self._still_sending(tokens):
            # A report can overtake the outcome it is about: the copy's return path is
            # stored with it. The message keeps its place and is matched again later.
            log.info("%s: to=<%s>, feedback=%s about a delivery not recorded yet: "
                     "matched again later", queue_id, address, report.kind)
            return reply.FEEDBACK_NOT_YET
        if copy is None:
            return self._dropped(queue_id, address, f"{report.kind} about no copy sent from here")
        if report.kind == "complaint":
            await self._record(queue_id, address, complained(copy, report))
            return reply.FEEDBACK_RECORDED
        failure = report.failures[0]
        notified = self._notify_sender and await self._tell_sender(copy, failure, report)
        await self._record(queue_id, address, bounced_later(copy, failure, report, notified))
        return reply.FEEDBACK_RECORDED

    def _tokens_in(self, local: str, body: bytes) -> list[str]:
        """The return path tokens of a report: the address it came back to, then those
        in the message it returns; the first few only, however many it is stuffed with."""
        tokens = [local.removeprefix(VERP_PREFIX)] if local.startswith(VERP_PREFIX) else []
        tokens += [m.decode().lower() for m in self._return_path.findall(body)]
        return list(dict.fromkeys(tokens))[:MAX_TOKENS]

    async def _still_sending(self, tokens: list[str]) -> bool:
        """Whether a message a token names (its id is the token's first part) is still in
        the queue: its copies' outcomes, and their return paths, are yet to come."""
        for token in tokens:
            message_id = token.rpartition("-")[0].upper()
            if message_id and await self._queue.get_message(message_id) is not None:
                return True
        return False

    async def _copy_of(self, tokens: list[str], body: bytes) -> Copy | None:
        """The copy a report is about: by the return path it came back to, else by the
        relay's tokens in the message it returns."""
        for token in tokens:
            path = await self._queue.return_path(token)
            if path is not None:
                return Copy(path.message_id, path.recipient, path.stream)
        for match in self._unsubscribe.findall(body)[:MAX_TOKENS]:
            found = self._tokens.read_unsubscribe(match.decode())
            if found is not None:
                return found
        return None

    async def _record(self, queue_id: str, address: str, feedback: Feedback) -> None:
        added = await self._queue.record_feedback(feedback)
        self._counted(feedback.kind.value)
        log.info("%s: to=<%s>, feedback=%s, message=%s, recipient=<%s>, suppressed=%s",
                 queue_id, address, feedback.kind.value, feedback.message_id,
                 feedback.recipient, (feedback.suppress_in or "no") if added else "already")

    def _dropped(self, queue_id: str, address: str, why: str) -> reply.Reply:
        log.info("%s: to=<%s>, feedback=dropped (%s)", queue_id, address, why)
        self._counted("dropped")
        return reply.FEEDBACK_DROPPED

    async def _tell_sender(self, copy: Copy, failure: Failure, report: Report) -> bool:
        """With `[bounces] notify_sender`: the application's envelope sender gets a DSN
        of the relay's own about the late bounce."""
        history = await self._queue.history(copy.message_id)
        if history is None or not dsn.should_bounce(history.mail_from):
            return False
        notification = dsn.build_dsn(
            self._hostname, copy.message_id, history.mail_from, history.received_at,
            [dsn.FailedRecipient(copy.recipient, failure.status,
                                 failure.diagnostic or failure.status,
                                 failure.remote_mta)],
            report.original or b"\r\n", self._clock())
        try:
            await self._cleanup.submit("", [history.mail_from], notification,
                                       Origin("local", "127.0.0.1", self._hostname),
                                       smtputf8=not history.mail_from.isascii())
        except Rejected as exc:
            log.error("%s: no notification of the late bounce to <%s>: %s",
                      copy.message_id, history.mail_from, exc)
            return False
        return True


def bounced_later(copy: Copy, failure: Failure, report: Report, dsn: bool) -> Feedback:
    """A bounce after the copy was delivered: hard ones suppress the address everywhere."""
    data = {"reply": failure.diagnostic or failure.status, "status": failure.status,
            "late": True, "source": report.source, "dsn": dsn}
    if failure.remote_mta:
        data["relay"] = failure.remote_mta
    return Feedback(EventType.BOUNCED, copy.message_id, copy.recipient, data,
                    EVERY_STREAM if failure.permanent else None,
                    f"bounced later: {failure.diagnostic or failure.status}"[:500])


def complained(copy: Copy, report: Report) -> Feedback:
    data = {"feedback_type": report.feedback_type, "source": "arf"}
    if report.user_agent:
        data["user_agent"] = report.user_agent
    return Feedback(EventType.COMPLAINED, copy.message_id, copy.recipient, data,
                    copy.stream, f"complaint ({report.feedback_type})")


def unsubscribed(copy: Copy, method: str) -> Feedback:
    return Feedback(EventType.UNSUBSCRIBED, copy.message_id, copy.recipient,
                    {"method": method, "stream": copy.stream}, copy.stream,
                    f"unsubscribed ({method})")
