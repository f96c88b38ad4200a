"""outcomes.recorder: turn delivery attempts into recipient states, DSNs and log lines.

2xx: delivered. 4xx and connection trouble: deferred with backoff (retry), or bounced once
the message is older than `max_age`. 5xx: bounced at once. Bounced recipients of a
message get one DSN (bounce), stored in the queue *before* the recipients are marked
bounced, so a crash can duplicate a DSN but never lose one.

An outcome that cannot be written (a full disk) is kept and written again with a growing
delay until it can be (relay.runtime.trouble logs when that starts and when it ends): the worker
waits with it, its recipients stay leased, and a recipient the remote server accepted is
not sent again by this process.

One log line per recipient and attempt, in the style of Postfix:
`QID: to=<rcpt>, relay=host[addr]:port, delay=1.2, attempts=1, dsn=2.0.0, status=sent (...)`,
and the same outcome counted in the metrics.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace

from relay.cleanup.cleanup import Cleanup, Origin
from relay.config import RetrySection
from relay.core import reply
from relay.core.errors import Rejected
from relay.core.reply import Reply
from relay.delivery import Attempt, Job
from relay.outcomes import dsn, retry
from relay.queue import Outcome, State
from relay.queue.roles import OutcomeStore
from relay.runtime.metrics import Metrics
from relay.runtime.trouble import Trouble

log = logging.getLogger("relay.delivery")

_STATUS_WORD = {State.DELIVERED: "sent", State.DEFERRED: "deferred", State.BOUNCED: "bounced"}


class OutcomeRecorder:
    def __init__(self, queue: OutcomeStore, cleanup: Cleanup, hostname: str,
                 policy: RetrySection, metrics: Metrics,
                 clock: Callable[[], float] = time.time, notify_sender: bool = True) -> None:
        self._queue = queue
        # False with a bounce domain whose notify_sender is off: the application learns
        # of bounces from events, not DSNs.
        self._notify_sender = notify_sender
        self._metrics = metrics
        self._cleanup = cleanup
        self._hostname = hostname
        self._policy = policy
        self._clock = clock
        self._trouble = Trouble("recording delivery outcomes", log)

    async def settle(self, job: Job, attempts: Sequence[Attempt], body: bytes) -> None:
        """Decide, log and count each attempt, then write the outcomes (and the DSN first),
        retrying until they are written."""
        now = self._clock()
        verdicts = [self._decide(job, attempt, now) for attempt in attempts]
        bounced = [v for v in verdicts if v.outcome.state is State.BOUNCED]
        notification = None
        # A broadcast's bounces are counted in its status and suppress the address for
        # later broadcasts; a DSN per bounced recipient would flood the sender.
        if (bounced and job.broadcast is None and self._notify_sender
                and dsn.should_bounce(job.mail_from)):
            notification = self._build_dsn(job, bounced, body, now)
        for verdict in verdicts:
            self._log(job, verdict, now)
            state = verdict.outcome.state
            self._metrics.delivery(state, verdict.attempt.recipient.domain,
                                   now - job.received_at if state is State.DELIVERED else None)
        outcomes = [v.outcome for v in verdicts]
        if notification is not None:  # the bounce events say that the sender got a DSN
            outcomes = [replace(o, dsn=True) if o.state is State.BOUNCED else o
                        for o in outcomes]
        await self._write(job, notification, outcomes)

    async def _write(self, job: Job, notification: bytes | None,
                     outcomes: list[Outcome]) -> None:
        async def write_once() -> None:
            nonlocal notification
            if notification is not None:
                await self._submit_dsn(job, notification)
                notification = None  # stored: not again when only the outcomes failed
            await self._queue.record(outcomes)

        await self._trouble.until_done(write_once)

    def _decide(self, job: Job, attempt: Attempt, now: float) -> _Verdict:
        answer = attempt.reply
        retry_at: float | None = None
        if answer.is_success:
            state = State.DELIVERED
        elif answer.is_permanent:
            state = State.BOUNCED
        else:
            decision = retry.after_temporary_failure(
                attempt.recipient.attempts, job.received_at, now, self._policy)
            if isinstance(decision, retry.GiveUp):
                state = State.BOUNCED
                answer = Reply(reply.EXPIRED.code, reply.EXPIRED.enhanced,
                               f"{reply.EXPIRED.text} (last reply: {answer})")
            else:
                state, retry_at = State.DEFERRED, decision.at
        claim = attempt.recipient
        return _Verdict(attempt, answer, Outcome(
            claim.recipient_id, claim.attempts, state, str(answer), retry_at,
            broadcast=job.broadcast is not None,
            relay="" if attempt.relay == "none" else attempt.relay, tls=attempt.tls,
            suppressed=attempt.suppressed, return_path=job.verp))

    def _build_dsn(self, job: Job, bounced: list[_Verdict], body: bytes, now: float) -> bytes:
        failed = [
            dsn.FailedRecipient(
                address=v.attempt.recipient.address,
                status=v.reply.enhanced,
                diagnostic=str(v.reply),
                remote_mta=v.attempt.relay.split("[")[0] if v.attempt.relay != "none" else "")
            for v in bounced
        ]
        return dsn.build_dsn(self._hostname, job.message_id, job.mail_from,
                             job.received_at, failed, body, now)

    async def _submit_dsn(self, job: Job, dsn: bytes) -> None:
        try:
            dsn_id = await self._cleanup.submit("", [job.mail_from], dsn,
                                                Origin("local", "127.0.0.1", self._hostname),
                                                smtputf8=not job.mail_from.isascii())
        except Rejected as exc:  # our own DSN refused by cleanup: trying again cannot help
            log.error("%s: no non-delivery notification to <%s>: %s", job.message_id,
                      job.mail_from, exc)
            return
        log.info("%s: sender non-delivery notification: %s", job.message_id, dsn_id)

    def _log(self, job: Job, verdict: _Verdict, now: float) -> None:
        outcome, attempt = verdict.outcome, verdict.attempt
        extra = ""
        if outcome.state is State.DEFERRED and outcome.next_attempt_at is not None:
            extra = f", retry_in={outcome.next_attempt_at - now:.0f}s"
        log.info("%s: to=<%s>, relay=%s, delay=%.2f, attempts=%d, dsn=%s, status=%s (%s)%s",
                 job.message_id, attempt.recipient.address, attempt.relay,
                 now - job.received_at, attempt.recipient.attempts, verdict.reply.enhanced,
                 _STATUS_WORD[outcome.state], verdict.reply, extra)


@dataclass(frozen=True)
class _Verdict:
    attempt: Attempt
    reply: Reply  # the reply that decided: the remote one, or a local one (expiry)
    outcome: Outcome
