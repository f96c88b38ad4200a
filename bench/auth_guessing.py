#!/usr/bin/env python3
"""A trusted client's SMTP transaction while password guessers hammer the relay.

Starts `relayctl serve` (shipped defaults: two ingest workers, the default AUTH limits) with
a trustme certificate on loopback, then measures one trusted client's transaction (EHLO,
MAIL, RCPT, DATA, QUIT) from 127.0.0.1: first idle, then with GUESSERS threads that each
connect from 127.0.0.9, STARTTLS and send wrong AUTH PLAIN passwords until the relay cuts
them off (421) or locks the address out (454), and start over. Prints the medians and what
the guessers were answered.

    python bench/auth_guessing.py [--guessers 12] [--samples 40]

Needs the test extras (trustme). Loopback only; everything it starts is stopped.
"""

from __future__ import annotations

import argparse
import base64
import collections
import smtplib
import socket
import ssl
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import trustme

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from relay.passwords import hash_password


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def transaction(port: int) -> float:
    started = time.perf_counter()
    with smtplib.SMTP("127.0.0.1", port, timeout=60) as client:
        client.sendmail("app@sender.test", ["someone@example.test"],
                        b"Subject: bench\r\n\r\nhello\r\n")
    return time.perf_counter() - started


def guess(port: int, context: ssl.SSLContext, stop: threading.Event,
          answers: collections.Counter[int], lock: threading.Lock) -> None:
    wrong = "PLAIN " + base64.b64encode(b"\0app1\0wrong-password").decode()
    while not stop.is_set():
        try:
            with smtplib.SMTP("127.0.0.1", port, timeout=60,
                              source_address=("127.0.0.9", 0)) as client:
                client.ehlo("guesser.test")
                client.starttls(context=context)
                client.ehlo("guesser.test")
                while not stop.is_set():
                    code, _ = client.docmd("AUTH", wrong)
                    with lock:
                        answers[code] += 1
                    if code in (421, 454):
                        break
        except (smtplib.SMTPException, OSError):
            pass


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--guessers", type=int, default=12)
    parser.add_argument("--samples", type=int, default=40)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as directory:
        root = Path(directory)
        ca = trustme.CA()
        cert = ca.issue_cert("relay.test", "127.0.0.1")
        cert.private_key_pem.write_to_path(str(root / "key.pem"))
        cert.cert_chain_pems[0].write_to_path(str(root / "cert.pem"))
        (root / "policies").mkdir()
        (root / "policies" / "access.toml").write_text(
            f'trusted_networks = ["127.0.0.1/32"]\n[[users]]\nname = "app1"\n'
            f'password_hash = "{hash_password("right")}"\nallowed_senders = ["@sender.test"]\n')
        port = free_port()
        (root / "relay.toml").write_text(
            f'[server]\nhostname = "relay.test"\n'
            f'[smtp]\nlisten = ["127.0.0.1:{port}"]\nmin_free_space = "1MB"\n'
            f'tls_cert = "{root / "cert.pem"}"\ntls_key = "{root / "key.pem"}"\n'
            f'[delivery]\nrelayhost = "[127.0.0.1]:{free_port()}"\n'  # nobody: deferred
            f'[admin]\nlisten = "127.0.0.1:{free_port()}"\n')
        relayctl = Path(sys.executable).parent / "relayctl"
        relay = subprocess.Popen([str(relayctl), "serve", "-c", str(root / "relay.toml")],
                                 stderr=subprocess.DEVNULL)
        try:
            deadline = time.monotonic() + 30
            while True:
                try:
                    socket.create_connection(("127.0.0.1", port), timeout=1).close()
                    break
                except OSError:
                    if time.monotonic() > deadline:
                        raise SystemExit("the relay did not start") from None
                    time.sleep(0.1)
            idle = [transaction(port) for _ in range(args.samples)]
            context = ssl.create_default_context()
            ca.configure_trust(context)
            stop, lock = threading.Event(), threading.Lock()
            answers: collections.Counter[int] = collections.Counter()
            guessers = [threading.Thread(target=guess, args=(port, context, stop, answers,
                                                             lock))
                        for _ in range(args.guessers)]
            for thread in guessers:
                thread.start()
            time.sleep(2.0)  # let the guessing get going
            loaded = [transaction(port) for _ in range(args.samples)]
            stop.set()
            for thread in guessers:
                thread.join(120)
        finally:
            relay.terminate()
            relay.wait(30)
    print(f"trusted transaction, idle:             median {statistics.median(idle) * 1000:7.1f} ms")
    print(f"trusted transaction, {args.guessers} guessers:  median "
          f"{statistics.median(loaded) * 1000:7.1f} ms  "
          f"(x{statistics.median(loaded) / statistics.median(idle):.1f})")
    print("answers to the guessers: " + ", ".join(f"{code}: {count}"
                                                 for code, count in sorted(answers.items())))


if __name__ == "__main__":
    main()
