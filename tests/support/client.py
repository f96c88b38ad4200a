"""Submitting mail with the standard library's smtplib, from a thread so the relay under
test keeps its event loop."""

from __future__ import annotations

import asyncio
import smtplib
from collections.abc import Sequence


def send_blocking(port: int, mail_from: str, rcpts: Sequence[str], data: bytes,
                  host: str = "127.0.0.1", source: str | None = None,
                  options: Sequence[str] = ()) -> str:
    """Send one message; return the final reply text (raises smtplib errors)."""
    with smtplib.SMTP(host, port, timeout=30,
                      source_address=(source, 0) if source else None) as client:
        client.ehlo("client.test")
        client.mail(mail_from, list(options))
        for rcpt in rcpts:
            code, text = client.rcpt(rcpt)
            if code >= 400:
                raise smtplib.SMTPRecipientsRefused({rcpt: (code, text)})
        code, text = client.data(data)
        if code != 250:
            raise smtplib.SMTPDataError(code, text)
        return text.decode()


async def send(port: int, mail_from: str, rcpts: Sequence[str], data: bytes,
               **kwargs: object) -> str:
    return await asyncio.to_thread(send_blocking, port, mail_from, rcpts, data,
                                   **kwargs)  # type: ignore[arg-type]


def message(subject: str = "test", body: str = "hello", extra: str = "") -> bytes:
    return (f"From: app@sender.test\r\nTo: someone@example.test\r\nSubject: {subject}\r\n"
            f"{extra}\r\n{body}\r\n").encode()
