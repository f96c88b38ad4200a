"""passwords: salted scrypt hashes for SMTP AUTH users in `policies/access.toml`.

Format: `$scrypt$ln=<log2 N>,r=<r>,p=<p>$<salt, base64>$<key, base64>`. scrypt comes
from the standard library (hashlib, backed by OpenSSL); verification is constant-time.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import re
import secrets

_LOG_N, _R, _P, _KEY_LEN = 14, 8, 1, 32
_FORMAT = re.compile(r"\$scrypt\$ln=(\d+),r=(\d+),p=(\d+)\$([A-Za-z0-9+/=]+)\$([A-Za-z0-9+/=]+)")


def hash_password(password: str) -> str:
    salt = secrets.token_bytes(16)
    key = _derive(password, salt, _LOG_N, _R, _P, _KEY_LEN)
    return f"$scrypt$ln={_LOG_N},r={_R},p={_P}${_b64(salt)}${_b64(key)}"


def is_valid_hash(encoded: str) -> bool:
    return _FORMAT.fullmatch(encoded) is not None


def verify_password(password: str, encoded: str) -> bool:
    match = _FORMAT.fullmatch(encoded)
    if match is None:
        return False
    log_n, r, p = (int(match.group(i)) for i in (1, 2, 3))
    salt, expected = base64.b64decode(match.group(4)), base64.b64decode(match.group(5))
    if log_n > 20:  # refuse hashes that would stall the event loop for seconds
        return False
    return hmac.compare_digest(_derive(password, salt, log_n, r, p, len(expected)), expected)


def _derive(password: str, salt: bytes, log_n: int, r: int, p: int, length: int) -> bytes:
    return hashlib.scrypt(password.encode("utf-8"), salt=salt, n=1 << log_n, r=r, p=p,
                          dklen=length, maxmem=256 * 1024 * 1024)


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")
