"""smtp.data: the message after DATA (RFC 5321 section 4.5.2), read from the connection
in large pieces instead of line by line (about 4x less CPU for a 100 KB message than
aiosmtpd's own reader, bench/README.md), with memory bounded by the size limit.
"""

from __future__ import annotations

import asyncio


async def read_message(reader: asyncio.StreamReader, limit: int | None) -> bytes | None:
    """The message after DATA's 354 up to the lone "." line, dot-unstuffed (RFC 5321
    section 4.5.2); None when it is larger than `limit` (then it is read and dropped).
    Memory stays bounded by `limit` whatever the client sends."""
    buffer = bytearray(b"\r\n")  # DATA's own line end: the message starts a line
    size = 0
    too_big = False
    while True:
        try:
            piece = await reader.readuntil(b".\r\n")
            found = True
        except asyncio.LimitOverrunError as error:  # no ".\r\n" in a whole buffer
            piece = await reader.readexactly(error.consumed)
            found = False
        size += len(piece)
        buffer += piece
        if limit and size - 3 > limit:
            too_big = True
        if too_big:
            del buffer[:-5]  # keep only what recognises the end
        if found and buffer[-5:-3] == b"\r\n":  # the "." starts a line: the end
            break
    if too_big:
        return None
    content = bytes(buffer[2:-3]).replace(b"\r\n.", b"\r\n")
    return content[1:] if content.startswith(b".") else content
