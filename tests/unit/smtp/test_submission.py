"""smtp.submission.SubmissionHandler: who may send what, hook by hook, with aiosmtpd's own
session and envelope and a fake of the one role cleanup stores with (a MessageStore)."""

from __future__ import annotations

import asyncio
from typing import Any

from aiosmtpd.smtp import Envelope

from relay.cleanup.cleanup import Cleanup
from relay.config import SmtpSection
from relay.core import reply
from relay.core.errors import LocalFailure
from relay.passwords import hash_password
from relay.policy import AccessPolicy
from relay.queue import NewMessage
from relay.smtp.sessions import RelaySession
from relay.smtp.submission import SubmissionHandler

PASSWORD_HASH = hash_password("secret")
MESSAGE = b"From: app@sender.test\r\nSubject: hi\r\n\r\nbody\r\n"


class Store:
    def __init__(self, failing: bool = False) -> None:
        self.messages: list[NewMessage] = []
        self._failing = failing

    async def store(self, message: NewMessage) -> None:
        if self._failing:
            raise LocalFailure("disk full")
        self.messages.append(message)


def handler(store: Store | None = None, free: int | None = None, **policy: Any
            ) -> SubmissionHandler:
    access = AccessPolicy.model_validate(policy)
    return SubmissionHandler(Cleanup(store or Store(), "relay.test"),
                             SmtpSection(max_recipients=2, min_free_space=1000),
                             lambda: access, free_space=lambda: free,
                             bounce_domain="bounces.relay.test")


def session(client: str, user: str = "") -> RelaySession:
    made = RelaySession(asyncio.get_running_loop())
    made.peer = (client, 40000)
    made.authenticated = bool(user)
    made.user = user
    return made


async def transaction(hooks: SubmissionHandler, who: RelaySession, sender: str,
                      *recipients: str, data: bytes = MESSAGE) -> list[str]:
    envelope = Envelope()
    replies = [await hooks.handle_MAIL(None, who, envelope, sender, [])]  # type: ignore[arg-type]
    for address in recipients:
        replies.append(await hooks.handle_RCPT(None, who, envelope, address, []))  # type: ignore[arg-type]
    envelope.original_content = data
    replies.append(await hooks.handle_DATA(None, who, envelope))  # type: ignore[arg-type]
    return replies


async def test_a_trusted_client_relays_and_the_message_is_stored() -> None:
    store = Store()
    replies = await transaction(handler(store), session("127.0.0.1"), "app@sender.test",
                                "a@example.test")
    assert replies[:2] == ["250 2.1.0 Ok", "250 2.1.5 Ok"]
    assert replies[2].startswith("250 2.0.0 Ok: queued as ")
    [stored] = store.messages
    assert stored.recipients == ("a@example.test",) and stored.data.startswith(b"Received: ")


async def test_anyone_else_may_only_send_to_the_bounce_domain() -> None:
    hooks, stranger = handler(), session("192.0.2.7")
    envelope = Envelope()
    assert await hooks.handle_MAIL(None, stranger, envelope, "x@elsewhere.test", [])  # type: ignore[arg-type]
    assert await hooks.handle_RCPT(None, stranger, envelope, "a@example.test", []  # type: ignore[arg-type]
                                   ) == str(reply.RELAY_DENIED)
    assert await hooks.handle_RCPT(None, stranger, envelope, "b+t@bounces.relay.test", []  # type: ignore[arg-type]
                                   ) == "250 2.1.5 Ok"
    assert stranger.rejected == 1


async def test_a_user_sends_only_as_the_addresses_it_owns() -> None:
    hooks = handler(trusted_networks=[], users=[{
        "name": "app", "password_hash": PASSWORD_HASH, "allowed_senders": ["@sender.test"]}])
    assert (await transaction(hooks, session("192.0.2.7", "app"), "x@other.test",
                              "a@example.test"))[0] == str(reply.SENDER_NOT_ALLOWED)
    forged = b"From: boss@other.test\r\n\r\nbody\r\n"
    replies = await transaction(hooks, session("192.0.2.7", "app"), "app@sender.test",
                                "a@example.test", data=forged)
    assert replies[-1] == str(reply.SENDER_NOT_ALLOWED)  # the header From counts too


async def test_a_user_taken_out_of_the_policy_is_logged_out() -> None:
    hooks = handler(trusted_networks=[])
    assert (await transaction(hooks, session("192.0.2.7", "gone"), "app@sender.test",
                              "a@example.test"))[0] == str(reply.AUTH_REVOKED)


async def test_limits_answer_4xx_so_that_clients_try_again() -> None:
    nearly_full = await transaction(handler(free=999), session("127.0.0.1"),
                                    "app@sender.test", "a@example.test")
    assert nearly_full[0] == str(reply.SPOOL_FULL)
    too_many = await transaction(handler(), session("127.0.0.1"), "app@sender.test",
                                 "a@example.test", "b@example.test", "c@example.test")
    assert too_many[3] == str(reply.TOO_MANY_RECIPIENTS)
    failing = await transaction(handler(Store(failing=True)), session("127.0.0.1"),
                                "app@sender.test", "a@example.test")
    assert failing[-1] == str(reply.LOCAL_ERROR)  # never a 250 for mail not on disk
