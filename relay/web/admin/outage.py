"""admin.outage: the admin API while the queue cannot be used (its database is down, the
spool's disk failed).

Every request that needs the queue then answers 503 with the API's error shape, code
`queue_unavailable` and the reason in words, never a 500 and a traceback; relayctl
prints that line. The failures are logged by state change (relay.runtime.trouble), as the SMTP
side and the scheduler log theirs: the first one, a change of cause, the recovery.
"""

from __future__ import annotations

import logging

from relay.core.errors import LocalFailure
from relay.runtime.trouble import Trouble
from relay.web.admin.asgi import Message, Send
from relay.web.admin.errors import ApiError

log = logging.getLogger("relay.admin")

RETRY_AFTER = "5"  # seconds: what a client is told to wait before it asks again


class QueueOutage:
    """The admin API's view of queue failures: what to answer, and when to log."""

    def __init__(self) -> None:
        self._trouble = Trouble("answering admin API requests from the queue", log)

    def answer(self, exc: LocalFailure) -> ApiError:
        self._trouble.failed(exc)
        return ApiError(503, "queue_unavailable", f"the queue cannot be used now: {exc}")

    def watching(self, send: Send) -> Send:
        """`send`, noticing the recovery: the first answer below 500 once failures began
        (nothing is wrapped while all is well)."""
        if not self._trouble.ongoing:
            return send

        async def noting(message: Message) -> None:
            if message["type"] == "http.response.start" and message["status"] < 500:
                self._trouble.succeeded()
            await send(message)

        return noting
