"""errors: the relay's one exception hierarchy.

Failures carry what the edges need to answer: a Reply for SMTP and HTTP, and for delivery
failures whether they are permanent and their scope (the site, the message or one
recipient), as Postfix's smtp_trouble distinguishes them.
"""

from __future__ import annotations

from enum import Enum

from relay.core.reply import LOCAL_ERROR, Reply


class RelayError(Exception):
    """Base of every error the relay raises on purpose."""


class ConfigError(RelayError):
    """Invalid configuration or policy; the message is one line naming the key."""


class Rejected(RelayError):
    """Input refused with a reply for the client (SMTP or HTTP)."""

    def __init__(self, reply: Reply, field: str | None = None) -> None:
        super().__init__(str(reply))
        self.reply = reply
        self.field = field


class LocalFailure(RelayError):
    """The spool or index failed; the client must retry (451 4.3.0, never 5xx)."""

    reply = LOCAL_ERROR


class Scope(Enum):
    SITE = "site"  # the host or connection: try another host, affects every recipient
    MESSAGE = "message"  # the transaction: every recipient of this message at this host
    RECIPIENT = "recipient"  # one recipient only


class DeliveryError(RelayError):
    """A delivery failure with its scope; the reply is the remote one or a local verdict."""

    def __init__(self, reply: Reply, scope: Scope, remote_host: str = "",
                 unreachable: bool = False) -> None:
        super().__init__(str(reply))
        self.reply = reply
        self.scope = scope
        self.remote_host = remote_host
        # No connection could be made, or the host never greeted: the destination may be
        # dead (the scheduler then defers its mail without a connection each).
        self.unreachable = unreachable
