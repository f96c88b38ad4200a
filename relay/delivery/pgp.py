"""delivery.pgp: PGP/MIME (RFC 3156) for recipients that policies/pgp.toml names.

Each such recipient gets a copy of its own, encrypted with real gpg (python-gnupg) to the
recipient's key from the keyring: the message's content (its Content-* header fields and
body) becomes the encrypted part of a multipart/encrypted message; the other header fields
stay outside. A rule in `required` mode bounces the recipient (5.7.1) when the keyring has
no valid encryption key for it; `if-available` sends in clear then. DKIM signs the
encrypted copy afterwards.
"""

from __future__ import annotations

import re
import secrets
from dataclasses import dataclass
from pathlib import Path

import gnupg

from relay.policy import PgpPolicy

_CONTENT_FIELD = re.compile(rb"^(content-|mime-version:)", re.IGNORECASE)


class NoKey(Exception):
    """No valid encryption key for a recipient whose rule requires one."""


@dataclass(frozen=True)
class KeyInfo:
    fingerprint: str
    uids: list[str]
    expires: str  # "" for never
    can_encrypt: bool


def keyring(home: Path) -> gnupg.GPG:
    home.mkdir(parents=True, exist_ok=True, mode=0o700)
    return gnupg.GPG(gnupghome=str(home))


def list_keys(home: Path) -> list[KeyInfo]:
    return [KeyInfo(k["fingerprint"], list(k["uids"]), k.get("expires") or "",
                    "e" in k.get("cap", "").lower())
            for k in keyring(home).list_keys()]


def import_keys(home: Path, armored: bytes) -> list[str]:
    """Import public keys; return their fingerprints (ValueError when there were none)."""
    result = keyring(home).import_keys(armored)
    if not result.fingerprints:
        raise ValueError(f"no key imported: {result.stderr.strip().splitlines()[-1:]}")
    return list(result.fingerprints)


def encrypt_for(message: bytes, address: str, policy: PgpPolicy) -> bytes:
    """`message` as the recipient must get it: encrypted, or as it is when no rule asks
    for it (or `if-available` finds no key). NoKey for `required` without a key."""
    rule = policy.rule_for(address)
    if rule is None or policy.keyring is None:
        return message
    gpg = keyring(policy.keyring)
    fingerprint = _encryption_key(gpg, address)
    if fingerprint is None:
        if rule.mode == "required":
            raise NoKey(address)
        return message
    outer, content = _split(message)
    # The operator imported the key for this purpose: it is used without a web of trust.
    encrypted = gpg.encrypt(content, [fingerprint], armor=True, always_trust=True)
    if not encrypted.ok:
        raise NoKey(f"{address}: gpg: {encrypted.status}")
    return _multipart_encrypted(outer, bytes(str(encrypted), "ascii"))


def _encryption_key(gpg: gnupg.GPG, address: str) -> str | None:
    """The fingerprint of a usable encryption key whose user id has `address`."""
    wanted = f"<{address.lower()}>"
    for key in gpg.list_keys(keys=[address]):
        usable = key.get("trust") not in ("r", "e", "i", "d") and "E" in key.get("cap", "")
        if usable and any(wanted in uid.lower() for uid in key["uids"]):
            return str(key["fingerprint"])
    return None


def _split(message: bytes) -> tuple[list[bytes], bytes]:
    """(header fields that stay outside, the MIME entity that is encrypted)."""
    cut = message.find(b"\r\n\r\n")
    head, body = (message, b"") if cut < 0 else (message[:cut + 2], message[cut + 4:])
    fields: list[bytes] = []
    for line in head.split(b"\r\n")[:-1] if head.endswith(b"\r\n") else head.split(b"\r\n"):
        if line[:1] in (b" ", b"\t") and fields:
            fields[-1] += b"\r\n" + line
        elif line:
            fields.append(line)
    outer = [f for f in fields if not _CONTENT_FIELD.match(f)]
    content_fields = [f for f in fields if _CONTENT_FIELD.match(f)
                      and not f.lower().startswith(b"mime-version:")]
    if not content_fields:
        content_fields = [b"Content-Type: text/plain; charset=utf-8"]
    return outer, b"\r\n".join(content_fields) + b"\r\n\r\n" + body


def _multipart_encrypted(outer: list[bytes], armored: bytes) -> bytes:
    boundary = f"=_relay_pgp_{secrets.token_hex(12)}".encode()
    armored = armored.replace(b"\r\n", b"\n").replace(b"\n", b"\r\n")
    return b"\r\n".join([
        *outer,
        b"MIME-Version: 1.0",
        b'Content-Type: multipart/encrypted; protocol="application/pgp-encrypted";',
        b' boundary="' + boundary + b'"',
        b"",
        b"This is an OpenPGP/MIME encrypted message (RFC 3156).",
        b"--" + boundary,
        b"Content-Type: application/pgp-encrypted",
        b"Content-Description: PGP/MIME version identification",
        b"",
        b"Version: 1",
        b"",
        b"--" + boundary,
        b'Content-Type: application/octet-stream; name="encrypted.asc"',
        b"Content-Description: OpenPGP encrypted message",
        b'Content-Disposition: inline; filename="encrypted.asc"',
        b"",
        armored.rstrip(b"\r\n"),
        b"",
        b"--" + boundary + b"--",
        b"",
    ])
