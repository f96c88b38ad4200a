"""delivery.dkim: DKIM signatures (dkimpy) on the way out.

A message is signed by every key in policies/dkim.toml whose domain is its From: domain or
a parent of it, so an RSA and an Ed25519 key give dual signatures (RFC 8463). relaxed/
relaxed canonicalization; the headers below are signed when present, and From once more
than it appears (oversigning: nobody can add a second From). Each distinct message is
signed once: the signed bytes of a message going to several destinations are kept for a
while; a broadcast's rendered copies are signed one by one. Signing runs on a thread (an
RSA-2048 signature is about a millisecond of CPU).
"""

from __future__ import annotations

import asyncio
import base64
import email.utils
import logging
import re
from collections import OrderedDict
from collections.abc import Callable

import dkim
import dns.asyncresolver
import nacl.signing
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

from relay.core.errors import LocalFailure
from relay.core.reply import SIGNING_FAILED
from relay.delivery.mx import txt_records
from relay.policy import DkimPolicy

log = logging.getLogger("relay.delivery")

SIGNED_HEADERS = [
    b"from", b"from", b"reply-to", b"sender", b"to", b"cc", b"subject", b"date",
    b"message-id", b"in-reply-to", b"references", b"mime-version", b"content-type",
    b"content-transfer-encoding", b"list-id", b"list-unsubscribe", b"list-unsubscribe-post",
]
CACHE = 256  # signed messages kept for their other destinations...
CACHE_MAX_SIZE = 256 * 1024  # ...when they are no larger than this
_FROM = re.compile(rb"^From:[ \t]*(.*(?:\r?\n[ \t].*)*)", re.IGNORECASE | re.MULTILINE)


def from_domain(message: bytes) -> str | None:
    """The domain of the (first) From: address in the header section."""
    header_end = message.find(b"\r\n\r\n")
    match = _FROM.search(message, 0, header_end if header_end >= 0 else len(message))
    if match is None:
        return None
    value = match.group(1).decode("utf-8", "replace").replace("\r\n", "")
    addresses = email.utils.getaddresses([value])
    address = addresses[0][1] if addresses else ""
    return address.rpartition("@")[2].lower() or None


def sign(message: bytes, policy: DkimPolicy) -> bytes:
    """`message` with a DKIM-Signature for each key that covers its From: domain."""
    domain = from_domain(message)
    keys = policy.keys_for(domain) if domain else []
    signatures = b""
    for key in keys:
        signatures += dkim.sign(
            message, key.selector.encode(), key.domain.encode(), key.key,
            canonicalize=(b"relaxed", b"relaxed"), include_headers=SIGNED_HEADERS,
            signature_algorithm=key.algorithm.encode())
    return signatures + message


class SigningFailed(LocalFailure):
    reply = SIGNING_FAILED


class Signer:
    """Signs with the policy in force (a SIGHUP reload applies to mail still queued)."""

    def __init__(self, policy: Callable[[], DkimPolicy]) -> None:
        self._policy = policy
        self._signed: OrderedDict[str, tuple[DkimPolicy, bytes]] = OrderedDict()

    async def sign(self, message_id: str | None, message: bytes) -> bytes:
        """Signed bytes; `message_id` (None for a one-off rendering) lets the signature
        of a message be reused for its other destinations."""
        policy = self._policy()
        if not policy.keys:
            return message
        if message_id is not None:
            kept = self._signed.get(message_id)
            if kept is not None and kept[0] is policy:
                self._signed.move_to_end(message_id)
                return kept[1]
        try:
            signed = await asyncio.to_thread(sign, message, policy)
        except dkim.DKIMException as exc:  # never sent unsigned: deferred instead
            log.error("%s: DKIM signing failed: %s", message_id or "-", exc)
            raise SigningFailed(str(exc)) from exc
        if message_id is not None and len(message) <= CACHE_MAX_SIZE:
            self._signed[message_id] = (policy, signed)
            if len(self._signed) > CACHE:
                self._signed.popitem(last=False)
        return signed


# -- keys: relayctl dkim keygen / check --------------------------------------------------

def generate_key(algorithm: str, bits: int = 2048) -> bytes:
    """A new private key in the format dkimpy signs with: PEM (RSA), base64 seed (Ed25519)."""
    if algorithm == "ed25519-sha256":
        return base64.b64encode(bytes(nacl.signing.SigningKey.generate())) + b"\n"
    private = rsa.generate_private_key(public_exponent=65537, key_size=bits)
    return private.private_bytes(serialization.Encoding.PEM,
                                 serialization.PrivateFormat.TraditionalOpenSSL,
                                 serialization.NoEncryption())


def public_key(private: bytes, algorithm: str) -> str:
    """The p= value of the DNS record for a private key."""
    if algorithm == "ed25519-sha256":
        signing = nacl.signing.SigningKey(base64.b64decode(private.strip()))
        return base64.b64encode(bytes(signing.verify_key)).decode()
    loaded = serialization.load_pem_private_key(private, password=None)
    der = loaded.public_key().public_bytes(serialization.Encoding.DER,
                                           serialization.PublicFormat.SubjectPublicKeyInfo)
    return base64.b64encode(der).decode()


def dns_record(domain: str, selector: str, algorithm: str, public: str) -> str:
    """The TXT record to publish, in zone-file syntax (strings of at most 255 octets)."""
    kind = "ed25519" if algorithm == "ed25519-sha256" else "rsa"
    text = f"v=DKIM1; k={kind}; p={public}"
    strings = " ".join(f'"{text[i:i + 255]}"' for i in range(0, len(text), 255))
    return f"{selector}._domainkey.{domain}. IN TXT ( {strings} )"


async def published_key(domain: str, selector: str, resolver: dns.asyncresolver.Resolver
                        ) -> str | None:
    """The p= of the published record, "" for a revoked key, None when there is none."""
    for text in await txt_records(resolver, f"{selector}._domainkey.{domain}"):
        tags = dict(tag.strip().partition("=")[::2] for tag in text.split(";") if "=" in tag)
        if tags.get("v", "DKIM1").strip() == "DKIM1" and "p" in tags:
            return "".join(tags["p"].split())
    return None
