"""A receiving MTA that allows a few sessions at once, as large providers do: one more gets
`421 4.7.0 too many connections` at the greeting. A small SMTP server on asyncio streams
(aiosmtpd greets before a handler can refuse), on loopback; it counts what it sees."""

from __future__ import annotations

import asyncio


class ThrottlingMx:
    def __init__(self, host: str, port: int, sessions: int, data_delay: float = 0.0) -> None:
        self.host, self.port = host, port
        self.sessions = sessions
        self.data_delay = data_delay  # seconds before DATA is answered: sessions overlap
        self.active = 0
        self.refused = 0  # connections refused with 421
        self.delivered: list[str] = []  # recipients of accepted messages
        self._server: asyncio.Server | None = None

    async def start(self) -> ThrottlingMx:
        self._server = await asyncio.start_server(self._session, self.host, self.port)
        return self

    async def stop(self) -> None:
        assert self._server is not None
        self._server.close()
        await self._server.wait_closed()

    async def until_delivered(self, count: int, timeout: float = 30.0) -> None:
        async with asyncio.timeout(timeout):
            while len(self.delivered) < count:
                await asyncio.sleep(0.05)

    async def _session(self, reader: asyncio.StreamReader,
                       writer: asyncio.StreamWriter) -> None:
        if self.active >= self.sessions:
            self.refused += 1
            writer.write(b"421 4.7.0 too many connections\r\n")
            await writer.drain()
            writer.close()
            return
        self.active += 1
        try:
            await self._converse(reader, writer)
        except (ConnectionError, asyncio.IncompleteReadError):
            pass
        finally:
            self.active -= 1
            writer.close()

    async def _converse(self, reader: asyncio.StreamReader,
                        writer: asyncio.StreamWriter) -> None:
        writer.write(b"220 throttle.test ESMTP\r\n")
        recipients: list[str] = []
        while line := await reader.readline():
            command = line[:4].upper()
            if command in (b"EHLO", b"HELO"):
                writer.write(b"250 throttle.test\r\n")
            elif command in (b"MAIL", b"RSET"):
                recipients = []
                writer.write(b"250 2.0.0 Ok\r\n")
            elif command == b"RCPT":
                recipients.append(line.decode().split("<", 1)[1].split(">", 1)[0])
                writer.write(b"250 2.1.5 Ok\r\n")
            elif command == b"DATA":
                writer.write(b"354 go ahead\r\n")
                await writer.drain()
                await reader.readuntil(b"\r\n.\r\n")
                await asyncio.sleep(self.data_delay)
                self.delivered += recipients
                writer.write(b"250 2.0.0 Ok: queued\r\n")
            elif command == b"QUIT":
                writer.write(b"221 2.0.0 Bye\r\n")
                await writer.drain()
                return
            else:
                writer.write(b"502 5.5.2 Not implemented\r\n")
            await writer.drain()
