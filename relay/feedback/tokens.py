"""feedback.tokens: the signed tokens that mail coming back is matched by.

- Return paths (VERP): each recipient's copy goes out from `b-<token>@<bounce domain>`,
  the token the message id and a MAC of message and recipient. The queue keeps which
  delivered copy a token belongs to (Queue.return_path), so a bounce days later finds it.
- Unsubscribe tokens, in a broadcast's `List-Unsubscribe` URL and mailto address, hold
  the message id, the address and the stream themselves, signed: an unsubscribe works as
  long as the key is kept, whatever the queue still remembers (RFC 8058 expects the link
  to work for a long time).

Both are lower case letters, digits and `-`: a local part survives servers that fold case.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
from dataclasses import dataclass

from relay.queue.base import BROADCAST

VERP_PREFIX = "b-"
UNSUBSCRIBE_PREFIX = "u-"
_MAC_BYTES = 5  # 40 bits: 8 base32 characters


@dataclass(frozen=True)
class Copy:
    """One recipient's copy of a message: what an unsubscribe token says, and what a
    return path is found to be about."""

    message_id: str
    recipient: str
    stream: str


def _b32(data: bytes) -> str:
    return base64.b32encode(data).decode("ascii").rstrip("=").lower()


def _unb32(text: str) -> bytes:
    padded = text.upper() + "=" * (-len(text) % 8)
    return base64.b32decode(padded)


class FeedbackTokens:
    """Makes and checks tokens with the relay's feedback key, for one bounce domain."""

    def __init__(self, key: bytes, bounce_domain: str, public_url: str = "") -> None:
        self._key = key
        self.domain = bounce_domain.lower()
        self.public_url = public_url.rstrip("/")

    def _mac(self, purpose: bytes, *parts: str) -> str:
        message = b"\0".join([purpose, *(part.encode("utf-8") for part in parts)])
        return _b32(hmac.new(self._key, message, hashlib.sha256).digest()[:_MAC_BYTES])

    # -- return paths ---------------------------------------------------------------

    def return_path(self, message_id: str, recipient: str) -> tuple[str, str]:
        """(token, address) for the copy of `message_id` sent to `recipient`."""
        token = f"{message_id.lower()}-{self._mac(b'verp', message_id, recipient.lower())}"
        return token, f"{VERP_PREFIX}{token}@{self.domain}"

    # -- unsubscribe ------------------------------------------------------------------

    def unsubscribe(self, message_id: str, recipient: str, stream: str) -> str:
        """The token of an unsubscribe link. The message id (hex) is packed in bytes and
        the broadcast stream left implicit: a shorter mailto address."""
        digits = message_id if len(message_id) % 2 == 0 else "0" + message_id
        payload = bytes([len(message_id)]) + bytes.fromhex(digits)
        payload += recipient.encode("utf-8")
        if stream != BROADCAST:
            payload += b"\0" + stream.encode("utf-8")
        return f"{_b32(payload)}-{self._mac(b'unsubscribe', message_id, recipient, stream)}"

    def read_unsubscribe(self, token: str) -> Copy | None:
        """What a token says, or None when it is not one of ours (forged, cut, altered)."""
        encoded, _, mac = token.lower().rpartition("-")
        try:
            payload = _unb32(encoded)
            digits = payload[0]
            packed = (digits + 1) // 2
            message_id = payload[1:1 + packed].hex().upper()[-digits:]
            recipient, _, stream = payload[1 + packed:].decode("utf-8").partition("\0")
        except (binascii.Error, ValueError, IndexError):  # UnicodeDecodeError is a ValueError
            return None
        stream = stream or BROADCAST
        expected = self._mac(b"unsubscribe", message_id, recipient, stream)
        if not message_id or not hmac.compare_digest(mac, expected):
            return None
        return Copy(message_id, recipient, stream)

    def list_unsubscribe(self, message_id: str, recipient: str, stream: str) -> str:
        """The `List-Unsubscribe` and `List-Unsubscribe-Post` header lines (RFC 2369,
        RFC 8058) of a broadcast's copy; one-click needs the HTTPS link."""
        token = self.unsubscribe(message_id, recipient, stream)
        links = [f"<mailto:{UNSUBSCRIBE_PREFIX}{token}@{self.domain}>"]
        lines = ""
        if self.public_url:
            links.insert(0, f"<{self.public_url}/u/{token}>")
            lines = "List-Unsubscribe-Post: List-Unsubscribe=One-Click\r\n"
        return "List-Unsubscribe: " + ",\r\n ".join(links) + "\r\n" + lines
