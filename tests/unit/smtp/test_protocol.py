from __future__ import annotations

import logging

import aiosmtpd.smtp
import pytest

from relay.core.reply import Reply
from relay.smtp.protocol import _sanitized_log, with_enhanced_code


@pytest.mark.parametrize("status, expected", [
    ("250 OK", "250 2.0.0 OK"),
    ("503 Error: need MAIL command", "503 5.5.1 Error: need MAIL command"),
    ("501 Syntax: RSET", "501 5.5.4 Syntax: RSET"),
    ("552 Error: Too much mail data", "552 5.3.4 Error: Too much mail data"),
    ("554 5.7.1 Relay access denied", "554 5.7.1 Relay access denied"),
    ("354 End data with <CR><LF>.<CR><LF>", "354 End data with <CR><LF>.<CR><LF>"),
    ("334 VXNlcm5hbWU6", "334 VXNlcm5hbWU6"),
    ("599 odd", "599 5.0.0 odd"),
])
def test_enhanced_codes_are_added_where_missing(status: str, expected: str) -> None:
    assert with_enhanced_code(status) == expected


@pytest.mark.parametrize("code, message, expected", [
    (550, "5.1.1 <x@y>: user unknown", Reply(550, "5.1.1", "<x@y>: user unknown")),
    (451, "try again\n later", Reply(451, "4.0.0", "try again later")),
    (250, "2.0.0 Ok: queued as X", Reply(250, "2.0.0", "Ok: queued as X")),
])
def test_remote_replies_are_parsed(code: int, message: str, expected: Reply) -> None:
    assert Reply.parse(code, message) == expected


def test_aiosmtpd_command_lines_are_masked_when_logged_and_skipped_when_not(
        caplog: pytest.LogCaptureFixture) -> None:
    logger = logging.getLogger("mail.log")
    assert aiosmtpd.smtp.sanitized_log is _sanitized_log
    with caplog.at_level(logging.INFO, logger="mail.log"):
        aiosmtpd.smtp.sanitized_log(logger.info, "%r >> %r", "peer",
                                    b"AUTH PLAIN c2VjcmV0LXBhc3M=\r\n")
        aiosmtpd.smtp.sanitized_log(logger.debug, "%r", b"dropped")
    assert [r.getMessage() for r in caplog.records] == [
        "'peer' >> b'AUTH PLAIN ********\\r\\n'"]
