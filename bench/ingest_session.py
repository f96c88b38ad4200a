#!/usr/bin/env python3
"""One SMTP session at a time into one ingest worker, alone: its latency and CPU per session.

With one client connection the relay is as fast as one ingest worker's session is short
(bench/README.md). This runs a real worker (`python -m relay.smtp.worker`, its queue files
written and fsynced into a temporary spool) with no main process: a thread stands in for
it and reads what the worker hands off, so nothing is indexed or delivered beside the
session. A client in this process then runs `--count` sessions one after the other, one
connection each (connect, EHLO, MAIL, RCPT, DATA, a 4 KB message, QUIT), as smtp-source
does with one connection, and prints the median time of each phase and the worker's CPU
time per session.

`--floor` runs the same client against the least an asyncio server can do: a few lines
on asyncio's streams that answer each command with a fixed reply and write each message
to a file of its own, fsynced before its 250, as the worker and Postfix do. What the
worker costs above that is its SMTP stack (aiosmtpd and the relay's hooks) and cleanup.

    python bench/ingest_session.py [--count 3000] [--rounds 3] [--floor]

Rounds alternate between the servers, so that the machine's drift hits both alike.
"""

from __future__ import annotations

import argparse
import itertools
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import BinaryIO

sys.path.insert(0, str(Path(__file__).resolve().parent))
from relay_vs_postfix import LOOPBACK, free_port, wait_for_port

REPO = Path(__file__).resolve().parent.parent
MESSAGE = (b"From: <bench@sender.bench>\r\nTo: <rcpt@dest.bench>\r\nSubject: bench\r\n\r\n"
           + (b"x" * 76 + b"\r\n") * 52)  # about 4 KB
DIALOGUE = [("EHLO", b"EHLO client.bench\r\n"), ("MAIL", b"MAIL FROM:<bench@sender.bench>\r\n"),
            ("RCPT", b"RCPT TO:<rcpt@dest.bench>\r\n"), ("DATA", b"DATA\r\n"),
            ("message", MESSAGE + b".\r\n"), ("QUIT", b"QUIT\r\n")]
PHASES = ["greeting", *(name for name, _ in DIALOGUE)]

# The floor: asyncio streams, one fixed reply per command, nothing stored.
FLOOR = r"""
import asyncio, itertools, os, sys
NUMBERS = itertools.count()
def store(message):
    fd = os.open(f"{sys.argv[3]}/{next(NUMBERS)}", os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    os.write(fd, message)
    os.fsync(fd)
    os.close(fd)
REPLIES = {b"EHLO": b"250-floor\r\n250-PIPELINING\r\n250 8BITMIME\r\n", b"MAIL": b"250 Ok\r\n",
           b"RCPT": b"250 Ok\r\n", b"DATA": b"354 Go on\r\n", b"QUIT": b"221 Bye\r\n"}
async def session(reader, writer):
    writer.write(b"220 floor ESMTP\r\n")
    while line := await reader.readline():
        command = line[:4].upper()
        writer.write(REPLIES.get(command, b"500 What\r\n"))
        if command == b"DATA":
            store(await reader.readuntil(b"\r\n.\r\n"))
            writer.write(b"250 Ok: queued\r\n")
        elif command == b"QUIT":
            break
        await writer.drain()
    writer.close()
async def main():
    server = await asyncio.start_server(session, sys.argv[1], int(sys.argv[2]))
    print("ready", flush=True)
    await server.serve_forever()
asyncio.run(main())
"""


class Server:
    """A process that takes the client's sessions; CPU time read from /proc."""

    name: str
    process: subprocess.Popen[bytes]
    port: int

    def cpu_seconds(self) -> float:
        fields = Path(f"/proc/{self.process.pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")

    def stop(self) -> None:
        self.process.terminate()
        self.process.wait(30)


class WorkerAlone(Server):
    """`python -m relay.smtp.worker` on a temporary spool; a thread drains its handoff socket."""

    name = "ingest worker"

    def __init__(self, workdir: Path) -> None:
        self.port = free_port(LOOPBACK)
        spool = workdir / "spool"
        config = workdir / "relay.toml"
        config.write_text(
            f'[server]\nhostname = "relay.bench"\n[smtp]\nlisten = ["{LOOPBACK}:{self.port}"]\n'
            f'min_free_space = "1MB"\nworkers = 1\n[queue]\npath = "{spool}"\n'
            f'[delivery]\nrelayhost = "[{LOOPBACK}]:9"\ntls = "none"\n')
        sys.path.insert(0, str(REPO))
        from relay.queue.local.spoolfiles import SpoolFiles
        SpoolFiles(spool).create_dirs()  # the main process's work, done for it
        ours, theirs = socket.socketpair()
        self._handoff = ours
        self._ready = threading.Event()
        threading.Thread(target=self._drain, daemon=True).start()
        self.process = subprocess.Popen(
            [sys.executable, "-m", "relay.smtp.worker", "--handoff-fd", str(theirs.fileno()),
             "--config", str(config)], pass_fds=[theirs.fileno()], cwd=REPO,
            stderr=subprocess.DEVNULL)
        theirs.close()
        if not self._ready.wait(30):
            self.stop()
            raise RuntimeError("the ingest worker did not start")

    def _drain(self) -> None:
        """Read and drop what the worker hands off (index requests and message bodies)."""
        while data := self._handoff.recv(1 << 20):
            if b'{"ready":true}' in data:
                self._ready.set()

    def stop(self) -> None:
        super().stop()
        self._handoff.close()


class Floor(Server):
    name = "asyncio floor"

    def __init__(self, workdir: Path) -> None:
        self.port = free_port(LOOPBACK)
        self.process = subprocess.Popen(
            [sys.executable, "-c", FLOOR, LOOPBACK, str(self.port), str(workdir)],
            stdout=subprocess.PIPE)
        assert self.process.stdout is not None
        self.process.stdout.readline()
        wait_for_port(LOOPBACK, self.port)


def read_reply(reader: BinaryIO) -> bytes:
    while True:
        line = reader.readline()
        if line[3:4] != b"-":
            return line


def one_session(port: int) -> list[float]:
    """Seconds per phase of one session."""
    started = time.perf_counter()
    with socket.create_connection((LOOPBACK, port)) as connection:
        connection.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        reader = connection.makefile("rb")
        read_reply(reader)
        marks = [started, time.perf_counter()]
        for _, line in DIALOGUE:
            connection.sendall(line)
            reply = read_reply(reader)
            marks.append(time.perf_counter())
        if not reply.startswith(b"221"):
            raise RuntimeError(f"session ended with {reply!r}")
    return [later - earlier for earlier, later in itertools.pairwise(marks)]


def measure(server: Server, count: int) -> tuple[list[float], float]:
    """Median ms per phase, and the server's CPU ms per session."""
    for _ in range(100):
        one_session(server.port)  # warm up
    cpu_before = server.cpu_seconds()
    phases = [one_session(server.port) for _ in range(count)]
    time.sleep(0.2)  # what the last session left to do
    cpu = server.cpu_seconds() - cpu_before
    medians = [statistics.median(p[i] for p in phases) * 1000 for i in range(len(PHASES))]
    return medians, cpu / count * 1000


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--count", type=int, default=3000, help="sessions per round")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--floor", action="store_true", help="also the asyncio floor")
    args = parser.parse_args()
    kinds: list[type[WorkerAlone] | type[Floor]] = [WorkerAlone, *([Floor] if args.floor else [])]
    print(f"{args.count} sessions per round, one at a time; median ms per phase, "
          f"server CPU ms per session, {os.cpu_count()} CPUs")
    print(f"{'round':5}  {'server':14}" + "".join(f"{p:>9}" for p in PHASES)
          + f"{'total':>8}{'CPU':>7}")
    for round_number in range(1, args.rounds + 1):
        for kind in kinds:
            with tempfile.TemporaryDirectory(prefix="bench-") as workdir:
                server = kind(Path(workdir))
                try:
                    medians, cpu = measure(server, args.count)
                finally:
                    server.stop()
            print(f"{round_number:<5}  {kind.name:14}" + "".join(f"{m:9.3f}" for m in medians)
                  + f"{sum(medians):8.3f}{cpu:7.3f}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
