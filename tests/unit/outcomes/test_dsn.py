from __future__ import annotations

import email
import email.policy
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from relay.outcomes.dsn import FailedRecipient, build_dsn, should_bounce

GOLDEN = Path(__file__).parent / "golden" / "dsn.eml"
ORIGINAL = (b"From: app@sender.test\r\nTo: gone@example.test\r\nSubject: hello\r\n\r\n"
            b"the body is not returned\r\n")


@pytest.fixture
def utc(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    monkeypatch.setenv("TZ", "UTC")
    time.tzset()
    yield
    monkeypatch.undo()
    time.tzset()


def golden_dsn() -> bytes:
    failed = [
        FailedRecipient("gone@example.test", "5.1.1", "550 5.1.1 <gone@example.test>: no such user",
                        "mx1.example.test"),
        FailedRecipient("late@example.test", "5.4.7",
                        "554 5.4.7 Delivery time expired (last reply: 451 4.3.0 busy)"),
    ]
    return build_dsn("relay.test", "QID123", "app@sender.test", 1_795_000_000.0, failed,
                     ORIGINAL, 1_795_432_000.0, boundary="QID123.b/relay.test")


def test_dsn_matches_the_golden_file(utc: None) -> None:
    assert golden_dsn() == GOLDEN.read_bytes()


def test_dsn_parses_as_a_delivery_report(utc: None) -> None:
    parsed = email.message_from_bytes(golden_dsn(), policy=email.policy.default)
    assert parsed["To"].addresses[0].addr_spec == "app@sender.test"
    assert parsed["Auto-Submitted"] == "auto-replied"
    _, status, headers = parsed.get_payload()
    per_message, *recipients = status.get_payload()
    assert per_message["Reporting-MTA"] == "dns; relay.test"
    assert [r["Status"] for r in recipients] == ["5.1.1", "5.4.7"]
    assert recipients[0]["Remote-MTA"] == "dns; mx1.example.test"
    assert recipients[1]["Remote-MTA"] is None
    assert headers.get_payload().endswith("Subject: hello\r\n")
    assert b"the body is not returned" not in golden_dsn()


def test_bounces_are_never_bounced() -> None:
    assert should_bounce("app@sender.test") and not should_bounce("")
