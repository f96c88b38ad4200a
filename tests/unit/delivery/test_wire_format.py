from __future__ import annotations

import pytest
from aiosmtplib.protocol import PERIOD_REGEX, normalize_message_line_endings

from relay.delivery.client import wire_format


@pytest.mark.parametrize("data", [
    b"Subject: x\r\n\r\nbody\r\n",
    b"Subject: x\r\n\r\n.leading dot\r\n..two\r\nend",
    b".first line is a dot\r\n.\r\n",
    b"bare\nlf and bare\rcr\r\n.dot after bare\n.x",
    b"",
    b"no line end at all",
    "ünïcödé\r\n.é\r\n".encode(),
])
def test_same_bytes_on_the_wire_as_aiosmtplib(data: bytes) -> None:
    # aiosmtplib's own encoding (protocol.execute_data_command), the reference.
    expected = PERIOD_REGEX.sub(b"..", normalize_message_line_endings(data))
    if not expected.endswith(b"\r\n"):
        expected += b"\r\n"
    assert wire_format(data) == expected + b".\r\n"
