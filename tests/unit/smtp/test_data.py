"""DATA's message reader against a real StreamReader, fed the way a socket feeds it."""

from __future__ import annotations

import asyncio

import pytest

from relay.smtp.data import read_message


async def read(chunks: list[bytes], limit: int | None = None,
               buffer_limit: int = 64 * 1024) -> tuple[bytes | None, bytes]:
    reader = asyncio.StreamReader(limit=buffer_limit)
    for chunk in chunks:
        reader.feed_data(chunk)
    reader.feed_eof()
    content = await read_message(reader, limit)
    return content, await reader.read()


@pytest.mark.parametrize("wire, content", [
    (b".\r\n", b""),
    (b"Subject: x\r\n.\r\n", b"Subject: x\r\n"),
    (b"Subject: x\r\n\r\nEnd of a sentence.\r\nNext.\r\n.\r\n",
     b"Subject: x\r\n\r\nEnd of a sentence.\r\nNext.\r\n"),
    (b"..leading dot\r\n..\r\n...\r\n.\r\n", b".leading dot\r\n.\r\n..\r\n"),
    (b"a\r\n\r\n.\r\n", b"a\r\n\r\n"),
    (b"bare\nlf.\r\nx\r\n.\r\n", b"bare\nlf.\r\nx\r\n"),
])
async def test_messages(wire: bytes, content: bytes) -> None:
    assert await read([wire]) == (content, b"")


async def test_what_follows_the_end_stays_for_the_next_command() -> None:
    assert await read([b"x\r\n.\r\nQUIT\r\n"]) == (b"x\r\n", b"QUIT\r\n")


async def test_split_across_reads_and_larger_than_the_reader_buffer() -> None:
    body = b"".join(b"line %d of a long message.\r\n" % n for n in range(20000))
    wire = body + b".\r\nQUIT\r\n"
    chunks = [wire[i:i + 1000] for i in range(0, len(wire), 1000)]
    assert await read(chunks, buffer_limit=4096) == (body, b"QUIT\r\n")


async def test_too_big_is_read_to_the_end_and_dropped() -> None:
    body = b"y" * 5000 + b"\r\n"
    assert await read([body * 10 + b".\r\nRSET\r\n"], limit=20000,
                      buffer_limit=1024) == (None, b"RSET\r\n")
    assert await read([body + b".\r\n"], limit=len(body)) == (body, b"")
    assert await read([body + b".\r\n"], limit=len(body) - 1) == (None, b"")
