"""delivery.pipelining: reading SMTP replies to pipelined commands (RFC 2920).

aiosmtplib waits for each reply before it sends the next command, one await and one write
per command, and cannot do otherwise (its protocol keeps a single pending reply). When the
server offers PIPELINING, the relay takes the connection over from aiosmtplib after the
greeting, EHLO, STARTTLS and AUTH, and sends MAIL, every RCPT and DATA in one write; this
protocol then hands back the replies in order as they arrive.
"""

from __future__ import annotations

import asyncio
from collections import deque
from typing import cast

from relay.core.reply import Reply

MAX_REPLY = 64 * 1024


class ReplyReader(asyncio.Protocol):
    """The protocol of a taken-over transport: buffers complete replies in order."""

    def __init__(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)
        self._buffer = bytearray()
        self._lines: list[str] = []
        self._replies: deque[Reply] = deque()
        self._waiter: asyncio.Future[None] | None = None
        self._lost: BaseException | None = None
        transport.set_protocol(self)

    @property
    def is_open(self) -> bool:
        return self._lost is None and not self.transport.is_closing()

    def write(self, data: bytes) -> None:
        if not self.is_open:
            raise ConnectionResetError("connection closed")
        self.transport.write(data)

    async def next(self, timeout: float) -> Reply:
        """The next reply, in the order the commands were sent."""
        while not self._replies:
            if self._lost is not None:
                raise self._lost
            self._waiter = asyncio.get_running_loop().create_future()
            try:
                await asyncio.wait_for(self._waiter, timeout)
            finally:
                self._waiter = None
        return self._replies.popleft()

    def data_received(self, data: bytes) -> None:
        self._buffer += data
        while (end := self._buffer.find(b"\n")) >= 0:
            line = bytes(self._buffer[:end + 1]).rstrip(b"\r\n").decode("utf-8", "replace")
            del self._buffer[:end + 1]
            self._lines.append(line)
            if line[3:4] != "-":  # the last line of a reply
                self._complete_reply()
        if len(self._buffer) > MAX_REPLY:
            self._fail(ConnectionResetError("reply too long"))
            self.transport.close()

    def _complete_reply(self) -> None:
        lines, self._lines = self._lines, []
        try:
            code = int(lines[0][:3])
        except ValueError:
            self._fail(ConnectionResetError(f"malformed reply {lines[0][:80]!r}"))
            self.transport.close()
            return
        self._replies.append(Reply.parse(code, " ".join(line[4:] for line in lines)))
        self._wake()

    def connection_lost(self, exc: Exception | None) -> None:
        self._fail(exc or ConnectionResetError("connection closed by the server"))

    def _fail(self, exc: BaseException) -> None:
        if self._lost is None:
            self._lost = exc
        self._wake()

    def _wake(self) -> None:
        if self._waiter is not None and not self._waiter.done():
            self._waiter.set_result(None)
