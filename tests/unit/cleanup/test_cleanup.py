from __future__ import annotations

import pytest

from relay.cleanup.cleanup import Origin, inspect_message, missing_headers, received_header
from relay.core.errors import Rejected


def test_inspect_finds_headers_and_from_addresses() -> None:
    data = (b"From: \"Ann\" <ann@example.com>,\r\n bob@example.com\r\nsubject: hi\r\n"
            b"X-Empty:\r\n\r\nbody: not a header\r\n")
    found = inspect_message(data)
    assert found.header_names == {"from", "subject", "x-empty"}
    assert found.from_addresses == ("ann@example.com", "bob@example.com")
    assert data[found.header_end:] == b"\r\nbody: not a header\r\n"


def test_a_body_without_separator_ends_the_headers() -> None:
    data = b"Subject: x\r\nthis is body text\r\n"
    assert data[inspect_message(data).header_end:] == b"this is body text\r\n"


@pytest.mark.parametrize("data", [b"Subject: a\x00b\r\n\r\n", b"\r\n" + b"a" * 999 + b"\r\n"])
def test_rejects_what_cannot_be_a_message(data: bytes) -> None:
    with pytest.raises(Rejected) as error:
        inspect_message(data)
    assert error.value.reply.code == 550 and error.value.reply.enhanced == "5.6.0"


def test_lenient_with_bare_lf_and_998_octet_lines() -> None:
    inspect_message(b"Subject: x\n\n" + b"a" * 998 + b"\r\nbare\nlf\n")


def test_received_header_says_where_and_how() -> None:
    origin = Origin("ESMTPSA", "192.0.2.7", "app.example", "TLSv1.3 with cipher X", "app1")
    header = received_header("relay.test", origin, "QID1", ["a@example.org"], 0).decode()
    assert header.startswith("Received: from app.example ([192.0.2.7])\r\n")
    assert "\t(using TLSv1.3 with cipher X)\r\n" in header
    assert "\t(Authenticated sender: app1)\r\n" in header
    assert "\tby relay.test (relay) with ESMTPSA id QID1\r\n" in header
    assert "\tfor <a@example.org>; " in header and header.endswith("\r\n")
    several = received_header("relay.test", origin, "QID1", ["a@x", "b@y"], 0).decode()
    assert "for <" not in several


def test_missing_headers_only_when_missing() -> None:
    assert missing_headers(inspect_message(b"Message-ID: <a@b>\r\nDate: x\r\n\r\n"),
                           "relay.test", "Q", 0) == b""
    added = missing_headers(inspect_message(b"Subject: x\r\n\r\n"), "relay.test", "Q", 0)
    assert added.startswith(b"Message-ID: <Q@relay.test>\r\nDate: ")
