"""A failed connection is said once, in Postfix's words, whatever aiosmtplib wrapped."""

from __future__ import annotations

import errno
import ssl

import aiosmtplib
import pytest

from relay.delivery.client import connect_failure


def wrapped(outer: BaseException, cause: BaseException) -> BaseException:
    outer.__cause__ = cause
    return outer


@pytest.mark.parametrize("exc, said", [
    (wrapped(aiosmtplib.SMTPConnectError("Error connecting to x on port 25: [Errno 111] ..."),
             ConnectionRefusedError(errno.ECONNREFUSED, "Connect call failed")),
     "Connection refused"),
    (wrapped(aiosmtplib.SMTPConnectError("Error connecting to x on port 25: ..."),
             OSError(errno.ENETUNREACH, "unreachable")), "Network is unreachable"),
    (wrapped(aiosmtplib.SMTPConnectTimeoutError("Timed out connecting to x on port 25"),
             TimeoutError()), "Connection timed out"),
    (wrapped(aiosmtplib.SMTPConnectTimeoutError("Timed out waiting for server ready message"),
             aiosmtplib.SMTPTimeoutError("Timed out")),
     "timed out while receiving the initial server greeting"),
    (wrapped(aiosmtplib.SMTPConnectError("Error connecting to x on port 25: closed"),
             aiosmtplib.SMTPServerDisconnected("Unexpected EOF received")),
     "lost connection while receiving the initial server greeting"),
    (aiosmtplib.SMTPServerDisconnected("Connection lost"),
     "lost connection during the EHLO or STARTTLS exchange"),
    (ssl.SSLError(1, "[SSL: WRONG_VERSION_NUMBER] wrong version number"),
     "TLS handshake failed: [SSL: WRONG_VERSION_NUMBER] wrong version number"),
])
def test_said_once(exc: BaseException, said: str) -> None:
    assert connect_failure(exc) == said
