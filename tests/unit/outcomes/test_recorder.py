"""outcomes.recorder.OutcomeRecorder: what each reply becomes, and the DSN the sender
gets, with fakes of the two roles it uses (an OutcomeStore, and cleanup's MessageStore)."""

from __future__ import annotations

from collections.abc import Sequence

from relay.cleanup.cleanup import Cleanup
from relay.config import RetrySection
from relay.core.reply import Reply
from relay.delivery import Attempt, Job
from relay.outcomes.recorder import OutcomeRecorder
from relay.queue import Claimed, NewMessage, Outcome, State
from relay.runtime.metrics import Metrics

NOW = 1_800_000_000.0
DAY = 86400.0


class Outcomes:
    def __init__(self) -> None:
        self.recorded: list[Outcome] = []

    async def record(self, outcomes: Sequence[Outcome]) -> None:
        self.recorded += outcomes


class Stored:
    def __init__(self) -> None:
        self.messages: list[NewMessage] = []

    async def store(self, message: NewMessage) -> None:
        self.messages.append(message)


def claim(address: str, attempts: int = 1, received_at: float = NOW - 60,
          mail_from: str = "app@sender.test") -> Claimed:
    return Claimed(attempts, "Q1", address, address.split("@")[1], attempts, mail_from,
                   received_at, False)


def attempt(claimed: Claimed, code: int, enhanced: str = "") -> Attempt:
    return Attempt(claimed, Reply(code, enhanced or f"{code // 100}.0.0", "said so"),
                   "mx.example.test[127.0.0.2]:25", tls="TLSv1.3")


async def settled(*attempts: Attempt, broadcast: str | None = None
                  ) -> tuple[list[Outcome], list[NewMessage]]:
    outcomes, stored = Outcomes(), Stored()
    recorder = OutcomeRecorder(outcomes, Cleanup(stored, "relay.test", clock=lambda: NOW),
                               "relay.test", RetrySection(), Metrics(), clock=lambda: NOW)
    first = attempts[0].recipient
    job = Job(first.message_id, first.mail_from, first.received_at, False, "example.test",
              tuple(a.recipient for a in attempts), broadcast=broadcast)
    await recorder.settle(job, attempts, b"Subject: hello\r\n\r\nbody\r\n")
    return outcomes.recorded, stored.messages


async def test_2xx_is_delivered_and_says_through_which_host() -> None:
    [outcome], dsns = await settled(attempt(claim("a@example.test"), 250))
    assert (outcome.state, outcome.relay, outcome.tls) == (
        State.DELIVERED, "mx.example.test[127.0.0.2]:25", "TLSv1.3")
    assert dsns == []


async def test_4xx_is_deferred_with_a_next_attempt_that_backs_off() -> None:
    [first], _ = await settled(attempt(claim("a@example.test", attempts=1), 451))
    [later], _ = await settled(attempt(claim("a@example.test", attempts=4), 451))
    assert first.state is later.state is State.DEFERRED
    assert first.next_attempt_at is not None and later.next_attempt_at is not None
    assert NOW < first.next_attempt_at < later.next_attempt_at


async def test_5xx_bounces_at_once_and_the_sender_gets_one_dsn_for_all() -> None:
    outcomes, [dsn] = await settled(attempt(claim("a@example.test"), 550, "5.1.1"),
                                    attempt(claim("b@example.test"), 554, "5.7.1"),
                                    attempt(claim("c@example.test"), 250))
    assert [o.state for o in outcomes] == [State.BOUNCED, State.BOUNCED, State.DELIVERED]
    assert [o.dsn for o in outcomes] == [True, True, False]  # the events say a DSN went
    assert (dsn.mail_from, dsn.recipients) == ("", ("app@sender.test",))
    assert b"Final-Recipient: rfc822; a@example.test" in dsn.data
    assert b"Status: 5.7.1" in dsn.data


async def test_4xx_past_max_age_bounces_with_the_last_reply_said() -> None:
    old = claim("a@example.test", attempts=30, received_at=NOW - 6 * DAY)
    [outcome], [dsn] = await settled(attempt(old, 451, "4.2.0"))
    assert outcome.state is State.BOUNCED
    assert outcome.reply.startswith("554 5.4.7") and "451 4.2.0 said so" in outcome.reply
    assert b"Status: 5.4.7" in dsn.data


async def test_no_dsn_for_a_bounce_nor_for_a_broadcasts_recipient() -> None:
    _, to_nobody = await settled(attempt(claim("a@example.test", mail_from=""), 550))
    _, broadcast = await settled(attempt(claim("a@example.test"), 550), broadcast="{}")
    assert to_nobody == [] and broadcast == []
