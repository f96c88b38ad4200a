"""delivery.transform: what a message becomes on its way out.

A broadcast's recipient gets its own message, rendered from the stored template with the
recipient's fields (relay.cleanup.templates) just before it is sent, with a Message-ID of its own.
A recipient that policies/pgp.toml names gets its own PGP/MIME copy (delivery.pgp).
Then every message is DKIM-signed (delivery.dkim), after rendering and encryption.
With `[bounces] domain` (relay.feedback), each recipient's copy goes out from a return
path of its own (VERP: one transaction per recipient, as Postfix's VERP does), and a
broadcast's copy carries its one-click unsubscribe headers (RFC 8058), signed with it.
Mail to the bounce domain itself is not transformed: it is taken in, not sent on.
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
from collections import OrderedDict
from collections.abc import Callable
from typing import Protocol

from relay.cleanup.cleanup import rfc5322_date
from relay.cleanup.templates import Template, render
from relay.core.errors import LocalFailure
from relay.core.reply import PGP_KEY_MISSING
from relay.delivery.agent import Job
from relay.delivery.dkim import Signer
from relay.delivery.pgp import NoKey, encrypt_for
from relay.policy import DkimPolicy, PgpPolicy
from relay.queue import Claimed

TEMPLATE_CACHE = 64  # parsed templates kept: a broadcast is sent one recipient at a time


class FeedbackTokens(Protocol):
    """What the transform needs of the bounce domain's tokens (relay.feedback.tokens makes
    them): a return path per copy, and a broadcast copy's unsubscribe headers."""

    domain: str

    def return_path(self, message_id: str, recipient: str) -> tuple[str, str]: ...

    def list_unsubscribe(self, message_id: str, recipient: str, stream: str) -> str: ...


class BroadcastRenderer:
    def __init__(self, hostname: str, clock: Callable[[], float],
                 tokens: FeedbackTokens | None = None) -> None:
        self._hostname = hostname
        self._clock = clock
        self._tokens = tokens
        self._templates: OrderedDict[str, Template] = OrderedDict()

    def knows(self, broadcast_id: str) -> bool:
        """Whether the template is at hand (render then needs no stored body)."""
        return broadcast_id in self._templates

    def render(self, job: Job, stored: bytes) -> tuple[Job, bytes]:
        """The job's one recipient's message, from the template stored as its body (or
        from the one at hand)."""
        assert job.broadcast is not None and len(job.recipients) == 1
        fields = json.loads(job.broadcast)
        _, data, smtputf8 = render(self._template(job.message_id, stored), fields)
        recipient = job.recipients[0]
        trace = (f"Message-ID: <{job.message_id}.{recipient.recipient_id}@{self._hostname}>\r\n"
                 f"Date: {rfc5322_date(self._clock())}\r\n")
        if self._tokens is not None:
            trace += self._tokens.list_unsubscribe(job.message_id, recipient.address,
                                                   recipient.stream)
        return (dataclasses.replace(job, smtputf8=job.smtputf8 or smtputf8),
                trace.encode("ascii", "replace") + data)

    def _template(self, broadcast_id: str, stored: bytes) -> Template:
        template = self._templates.get(broadcast_id)
        if template is None:
            template = Template.model_validate_json(stored)
            self._templates[broadcast_id] = template
            if len(self._templates) > TEMPLATE_CACHE:
                self._templates.popitem(last=False)
        else:
            self._templates.move_to_end(broadcast_id)
        return template


class PgpKeyMissing(LocalFailure):
    reply = PGP_KEY_MISSING


class Transform:
    """Everything a stored message goes through before it is sent."""

    def __init__(self, hostname: str, clock: Callable[[], float],
                 dkim: Callable[[], DkimPolicy], pgp: Callable[[], PgpPolicy],
                 tokens: FeedbackTokens | None = None) -> None:
        self.renderer = BroadcastRenderer(hostname, clock, tokens)
        self._signer = Signer(dkim)
        self._pgp = pgp
        self._tokens = tokens

    def needs_stored_body(self, job: Job) -> bool:
        """False when the template of a broadcast is at hand: it is read once, not once per
        recipient."""
        return job.broadcast is None or not self.renderer.knows(job.message_id)

    def needs_own_copy(self, recipient: Claimed) -> bool:
        """Whether a recipient gets a message of its own (a job of its own)."""
        return (recipient.fields is not None or self._verp(recipient.mail_from, recipient.domain)
                or self._pgp().rule_for(recipient.address) is not None)

    def _verp(self, mail_from: str, domain: str) -> bool:
        """Whether mail from `mail_from` to `domain` goes out from a return path of its own:
        with a bounce domain, except bounces (<> stays <>) and the bounce domain's mail."""
        return self._tokens is not None and mail_from != "" and domain != self._tokens.domain

    async def prepare(self, job: Job, stored: bytes) -> tuple[Job, bytes]:
        """The job and the bytes to send: rendered (broadcasts), encrypted (PGP rules),
        then signed; PgpKeyMissing when a rule requires a key there is not."""
        if self._tokens is not None and job.destination == self._tokens.domain:
            return job, stored  # taken in by feedback.intake
        message, shared = stored, job.broadcast is None
        if self._tokens is not None and self._verp(job.mail_from, job.recipients[0].domain):
            token, address = self._tokens.return_path(job.message_id, job.recipients[0].address)
            job = dataclasses.replace(job, return_path=address, verp=token)
        if job.broadcast is not None:
            job, message = self.renderer.render(job, stored)
        policy = self._pgp()
        if len(job.recipients) == 1 and policy.rule_for(job.recipients[0].address):
            try:
                message = await asyncio.to_thread(encrypt_for, message,
                                                  job.recipients[0].address, policy)
            except NoKey as exc:
                raise PgpKeyMissing(str(exc)) from exc
            shared = False
        return job, await self._signer.sign(job.message_id if shared else None, message)
