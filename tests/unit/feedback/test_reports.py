"""feedback.reports and feedback.tokens: what a returned message says, and tokens that
cannot be forged."""

from __future__ import annotations

import pytest

from relay.feedback.reports import read_report
from relay.feedback.tokens import FeedbackTokens
from relay.outcomes.dsn import FailedRecipient, build_dsn

ORIGINAL = (b"Return-Path: <b-19a2b3c4d5e6f7a8b9c-aaaaaaaa@bounces.test>\r\n"
            b"From: app@sender.test\r\nTo: ann@example.test\r\nSubject: Hi\r\n\r\nbody\r\n")


def test_an_rfc3464_dsn_names_each_failed_recipient() -> None:
    dsn = build_dsn("mx.example.test", "Q1", "b-x@bounces.test", 0.0, [
        FailedRecipient("ann@example.test", "5.1.1", "550 5.1.1 no such user", "mx.example.test"),
        FailedRecipient("bob@example.test", "4.2.2", "452 4.2.2 mailbox full")],
        ORIGINAL, 60.0)
    report = read_report(dsn)
    assert (report.kind, report.source) == ("bounce", "dsn")
    ann, bob = report.failures
    assert (ann.status, ann.permanent, ann.recipient) == ("5.1.1", True, "ann@example.test")
    assert ann.diagnostic == "550 5.1.1 no such user" and ann.remote_mta == "mx.example.test"
    assert (bob.status, bob.permanent) == ("4.2.2", False)
    assert b"b-19a2b3c4d5e6f7a8b9c-aaaaaaaa@bounces.test" in report.original


def test_a_dsn_of_delays_only_is_no_bounce() -> None:
    dsn = build_dsn("mx.example.test", "Q1", "b-x@bounces.test", 0.0, [
        FailedRecipient("ann@example.test", "4.4.1", "451 4.4.1 no answer")], ORIGINAL, 60.0)
    delayed = dsn.replace(b"Action: failed", b"Action: delayed")
    assert read_report(delayed).kind == "none"


ARF = (b"From: fbl@provider.test\r\nTo: fbl@bounces.test\r\nSubject: report\r\n"
       b"MIME-Version: 1.0\r\n"
       b'Content-Type: multipart/report; report-type=feedback-report; boundary="b"\r\n\r\n'
       b"--b\r\nContent-Type: text/plain\r\n\r\nA complaint.\r\n"
       b"--b\r\nContent-Type: message/feedback-report\r\n\r\n"
       b"Feedback-Type: {type}\r\nUser-Agent: FBL/2\r\nVersion: 1\r\n\r\n"
       b"--b\r\nContent-Type: message/rfc822\r\n\r\n" + ORIGINAL + b"--b--\r\n")


@pytest.mark.parametrize(("feedback_type", "kind"), [
    (b"abuse", "complaint"), (b"fraud", "complaint"), (b"not-spam", "none")])
def test_an_arf_report_is_a_complaint_unless_it_says_otherwise(feedback_type: bytes,
                                                                kind: str) -> None:
    report = read_report(ARF.replace(b"{type}", feedback_type))
    assert (report.kind, report.source) == (kind, "arf")
    assert report.feedback_type == feedback_type.decode() and report.user_agent == "FBL/2"
    assert b"Subject: Hi" in report.original


QMAIL = (b"From: MAILER-DAEMON@mx.example.test\r\nTo: b-x@bounces.test\r\n"
         b"Subject: failure notice\r\n\r\n"
         b"Hi. This is the qmail-send program at mx.example.test.\r\n"
         b"I'm afraid I wasn't able to deliver your message to the following addresses.\r\n"
         b"This is a permanent error; I've given up. Sorry it didn't work out.\r\n\r\n"
         b"<ann@example.test>:\r\nSorry, no mailbox here by that name. (#5.1.1)\r\n\r\n"
         b"--- Below this line is a copy of the message.\r\n\r\n" + ORIGINAL)


def test_a_bounce_that_is_not_a_dsn_is_read_by_the_detectors() -> None:
    report = read_report(QMAIL)
    assert (report.kind, report.source) == ("bounce", "detector")
    [failure] = report.failures
    assert failure.permanent and failure.recipient == "ann@example.test"


@pytest.mark.parametrize("data", [
    b"", b"Subject: hello\r\n\r\njust a message\r\n", b"\xff\xfe\x00garbage",
    b"Content-Type: multipart/report; report-type=delivery-status\r\n\r\nno parts",
    (b"Content-Type: multipart/report; report-type=feedback-report; boundary=x\r\n\r\n"
     b"--x\r\nContent-Type: message/feedback-report\r\n\r\n--x--\r\n")])
def test_anything_else_is_no_report(data: bytes) -> None:
    assert read_report(data).kind == "none"


def test_tokens_cannot_be_forged_or_altered() -> None:
    tokens = FeedbackTokens(b"k" * 32, "Bounces.Test", "https://relay.test/")
    other = FeedbackTokens(b"x" * 32, "bounces.test")
    token = tokens.unsubscribe("19A2B3C4D5E6F7A8B9C", "Ann@Example.test", "news")
    found = tokens.read_unsubscribe(token.upper())  # a server may fold case
    assert found is not None
    assert (found.message_id, found.recipient, found.stream) == (
        "19A2B3C4D5E6F7A8B9C", "Ann@Example.test", "news")
    assert other.read_unsubscribe(token) is None
    encoded, mac = token.rsplit("-", 1)
    assert tokens.read_unsubscribe(f"{encoded[:-1]}{'a' if encoded[-1] != 'a' else 'b'}-{mac}") \
        is None
    for junk in ("", "-", "abc", "a" * 2000, "1-2-3", "zz9-abcdefgh"):
        assert tokens.read_unsubscribe(junk) is None
    verp, address = tokens.return_path("19A2B3C4D5E6F7A8B9C", "ann@example.test")
    assert address == f"b-{verp}@bounces.test" and verp.startswith("19a2b3c4d5e6f7a8b9c-")
    assert verp != tokens.return_path("19A2B3C4D5E6F7A8B9C", "bob@example.test")[0]
    headers = tokens.list_unsubscribe("19A2B3C4D5E6F7A8B9C", "ann@example.test", "broadcast")
    assert headers.startswith("List-Unsubscribe: <https://relay.test/u/")
    assert "List-Unsubscribe-Post: List-Unsubscribe=One-Click\r\n" in headers
