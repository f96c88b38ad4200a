"""Reports that mailbox providers send back: an ARF complaint (RFC 5965) about a copy a
sink received, with the copy's headers inside, as a feedback loop sends it."""

from __future__ import annotations

from tests.support.sink import Received

ARF = """\
From: Feedback Loop <fbl@provider.test>
To: fbl@{bounces}
Subject: Complaint
MIME-Version: 1.0
Content-Type: multipart/report; report-type=feedback-report; boundary="arf"

--arf
Content-Type: text/plain

This is an email abuse report for an email message received from the relay.

--arf
Content-Type: message/feedback-report

Feedback-Type: abuse
User-Agent: ProviderFBL/1.0
Version: 1
Original-Mail-From: <{return_path}>
Arrival-Date: Thu, 8 Mar 2026 14:00:00 EST
Reported-Domain: sender.test

--arf
Content-Type: text/rfc822-headers

Return-Path: <{return_path}>
{headers}
--arf--
"""



def arf_report(copy: Received, bounce_domain: str, feedback_type: str = "abuse") -> bytes:
    """An ARF report about `copy`: its return path and headers returned, CRLF lines."""
    headers = copy.content.split(b"\r\n\r\n", 1)[0].decode().replace("\r\n", "\n")
    report = ARF.format(bounces=bounce_domain, return_path=copy.mail_from, headers=headers)
    return report.replace("Feedback-Type: abuse", f"Feedback-Type: {feedback_type}").replace(
        "\n", "\r\n").encode()
