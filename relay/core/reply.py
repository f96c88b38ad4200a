"""reply: the one type for SMTP replies, and the catalogue of the relay's own replies.

Every reply the relay gives (RFC 5321 codes with RFC 3463 enhanced status codes) is built
here, so the wording and codes are in one place. Edges (smtpd, admin) translate a Reply to
their protocol; nothing else formats reply strings.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

_ENHANCED = re.compile(r"^([245])\.(\d{1,3})\.(\d{1,3})\b")


@dataclass(frozen=True)
class Reply:
    code: int
    enhanced: str
    text: str

    def __str__(self) -> str:
        return f"{self.code} {self.enhanced} {self.text}"

    @property
    def is_success(self) -> bool:
        return 200 <= self.code < 300

    @property
    def is_permanent(self) -> bool:
        return self.code >= 500

    @classmethod
    def parse(cls, code: int, message: str) -> Reply:
        """A remote reply: split out the enhanced code when the server sent one."""
        text = " ".join(message.split())
        match = _ENHANCED.match(text)
        if match:
            return cls(code, match.group(0), text[match.end():].strip())
        return cls(code, f"{str(code)[0]}.0.0", text)


# Submission (smtpd) replies.
QUEUED = "250 2.0.0 Ok: queued as {}"
RELAY_DENIED = Reply(554, "5.7.1", "Relay access denied")
SENDER_NOT_ALLOWED = Reply(553, "5.7.1", "Sender address not owned by the authenticated user")
TOO_MANY_RECIPIENTS = Reply(452, "4.5.3", "Too many recipients")
MESSAGE_TOO_BIG = Reply(552, "5.3.4", "Message size exceeds fixed limit")
SPOOL_FULL = Reply(452, "4.3.1", "Insufficient system storage")
LOCAL_ERROR = Reply(451, "4.3.0", "Local error in processing, try again later")
AUTH_REVOKED = Reply(530, "5.7.0", "Authentication no longer valid, log in again")
RATE_LIMITED = Reply(451, "4.7.0", "Sending rate exceeded, try again later")
CLIENT_CONNECTION_RATE = Reply(421, "4.7.0", "Too many connections from your address, try "
                                             "again later")
CLIENT_MESSAGE_RATE = Reply(450, "4.7.1", "Too much mail from your address, try again later")
SHUTTING_DOWN = Reply(421, "4.3.2", "Service shutting down, try again later")
IDLE_TIMEOUT = Reply(421, "4.4.2", "Timeout exceeded, closing the connection")
AUTH_OK = Reply(235, "2.7.0", "Authentication successful")
AUTH_FAILED = Reply(535, "5.7.8", "Authentication credentials invalid")
AUTH_TOO_MANY_FAILURES = Reply(421, "4.7.0", "Too many failed authentication attempts, "
                                             "closing connection")
AUTH_LOCKED_OUT = Reply(454, "4.7.0", "Too many failed authentication attempts from your "
                                      "address, try again later")


def bad_sender(reason: str) -> Reply:
    return Reply(501, "5.1.7", f"Bad sender address syntax: {reason}")


def bad_recipient(reason: str) -> Reply:
    return Reply(501, "5.1.3", f"Bad recipient address syntax: {reason}")


def impossible_domain(reason: str) -> Reply:
    return Reply(550, "5.1.2", f"Recipient domain cannot exist: {reason}")


def malformed(reason: str) -> Reply:
    return Reply(550, "5.6.0", f"Message rejected: {reason}")


# Delivery outcomes decided locally.
NULL_MX = Reply(556, "5.1.10", "Recipient domain does not accept mail (null MX)")
NO_SUCH_DOMAIN = Reply(550, "5.1.2", "Recipient domain not found")
DNS_TEMPFAIL = Reply(451, "4.4.3", "Temporary failure looking up the recipient domain")
NO_MX_ADDRESS = Reply(451, "4.4.4", "No address found for any MX host of the recipient domain")
NO_ROUTE = Reply(451, "4.4.1", "No answer from any host of the recipient domain")
EXPIRED = Reply(554, "5.4.7", "Delivery time expired")
SUPPRESSED = Reply(550, "5.7.1", "Not sent: the recipient is on the suppression list")
PGP_KEY_MISSING = Reply(554, "5.7.1", "No valid PGP key for this recipient, and its rule "
                                      "requires encryption")
SIGNING_FAILED = Reply(451, "4.3.0", "DKIM signing failed; the message stays queued")
UNRENDERABLE = Reply(554, "5.6.0", "The broadcast template could not be rendered for this "
                                   "recipient")
SMTPUTF8_UNSUPPORTED = Reply(553, "5.6.7", "Remote server does not support SMTPUTF8")
TLS_UNAVAILABLE = Reply(451, "4.7.5", "TLS is required but the remote server does not offer it")
MTA_STS_NO_MX = Reply(451, "4.7.5", "No MX host of the recipient domain matches its MTA-STS policy")
# Mail that came back to the bounce domain (relay.feedback): taken in, never bounced.
FEEDBACK_RECORDED = Reply(250, "2.0.0", "Feedback recorded")
FEEDBACK_DROPPED = Reply(250, "2.0.0", "Matched no message sent from here: dropped")
FEEDBACK_NOT_YET = Reply(451, "4.3.0", "About a delivery not recorded yet: matched again later")
