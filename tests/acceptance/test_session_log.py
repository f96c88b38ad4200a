"""The one log line per SMTP session: key=value fields a reader can split on spaces (a
value with spaces is quoted), and a TLS client that hangs up with a reset instead of QUIT
is not logged as an error."""

from __future__ import annotations

import re
import smtplib
import socket
import ssl
import struct

import trustme

from tests.acceptance.conftest import MakeRelay
from tests.acceptance.test_relayctl import smtp_port


def test_session_lines_quote_values_with_spaces_and_a_reset_is_no_error(
        relay_process: MakeRelay, server_cert: tuple[str, str], ca: trustme.CA) -> None:
    cert, key = server_cert
    relay = relay_process(smtp={"tls_cert": cert, "tls_key": key}).start()
    context = ssl.create_default_context(cadata=ca.cert_pem.bytes().decode())
    client = smtplib.SMTP("127.0.0.1", smtp_port(relay.config), timeout=30)
    client.starttls(context=context)
    client.ehlo("client.test")
    client.sendmail("app@sender.test", ["someone@example.test"], "Subject: x\r\n\r\nhi\r\n")
    assert client.sock is not None
    # An abortive close (RST), as many TLS clients end a connection.
    client.sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    client.close()  # its socket and the reader smtplib made of it: the fd closes now
    relay.wait_for_lines("session client=[127.0.0.1]")
    [line] = [line for line in relay.log().splitlines() if "session client=" in line]
    assert re.search(r' tls="TLSv1\.[23] with cipher [A-Z0-9_-]+" ', line), line
    assert " helo=client.test " in line and " accepted=1 " in line
    assert "error=" not in line, line
    assert relay.stop() == 0
