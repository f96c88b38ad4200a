"""smtp.auth: SMTP AUTH (RFC 4954, PLAIN and LOGIN) for smtpd, made costly to guess.

- Passwords are checked off the event loop, a few at a time (scrypt takes tens of
  milliseconds of CPU: on the loop, a dozen guessers stall every other session), and an
  unknown user costs the same as a wrong password, so the timing tells nothing.
- Each failure in a session is answered after a delay that doubles (Postfix's
  smtpd_error_sleep_time, growing); the `max_auth_failures`-th ends the session with
  `421 4.7.0`.
- Failures are counted per client address for the whole relay (every ingest worker asks
  the main process, relay.core.ratelimit); past `auth_failure_limit` the address gets
  `454 4.7.0` without its password being looked at, until the window has passed.
"""

from __future__ import annotations

import asyncio
import functools
import logging
from collections.abc import Callable

from relay.config import SmtpSection
from relay.core.ratelimit import RateLimiter
from relay.passwords import hash_password, verify_password
from relay.policy import AccessPolicy

log = logging.getLogger("relay.smtpd")

HASHING_SLOTS = 2  # passwords checked at once, in threads (scrypt releases the GIL)


class AuthGuard:
    def __init__(self, settings: SmtpSection, access: Callable[[], AccessPolicy],
                 rates: RateLimiter) -> None:
        self._settings = settings
        self._access = access
        self._rates = rates
        self._slots = asyncio.Semaphore(HASHING_SLOTS)

    async def locked_out(self, client: str) -> bool:
        """The client address has used up its failures for now."""
        return not await self._rates.peek(_key(client), self._settings.auth_failure_limit)

    async def check(self, name: str, password: str) -> bool:
        """Whether `name` is a user of access.toml with this password."""
        user = self._access().user(name)
        encoded = user.password_hash if user is not None else _nobody()
        async with self._slots:
            valid = await asyncio.get_running_loop().run_in_executor(
                None, verify_password, password, encoded)
        return valid and user is not None

    async def failed(self, client: str, failures: int) -> bool:
        """Count a failure of `client`, the `failures`-th of its session, and wait the
        growing delay; True when the session must end."""
        await self._rates.take(_key(client), self._settings.auth_failure_limit)
        await asyncio.sleep(self._settings.auth_failure_delay * 2 ** (failures - 1))
        return failures >= self._settings.max_auth_failures


@functools.cache
def _nobody() -> str:
    """What an unknown user's password is checked against (made once, when first needed)."""
    return hash_password("a password no user has")


def _key(client: str) -> str:
    return f"auth-failures {client}"
