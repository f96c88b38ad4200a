#!/usr/bin/env python3
"""relay and Postfix side by side: messages/s from ingest to delivered, on loopback only.

For each configuration (message size, recipients per message, client concurrency) it
starts Postfix's smtp-sink as the receiving MTA, then the relay (a temporary spool,
`[delivery] relayhost` pointing at the sink), drives it with smtp-source and measures:
ingest rate (smtp-source's run), end-to-end rate (until the sink has every message), CPU
time per message and peak RSS of the relay's processes. Then the same through a private
Postfix instance (`postfix -c DIR`, its own queue, relaying to the same sink, stopped
afterwards). Prints both with the ratio relay/Postfix.

    python bench/relay_vs_postfix.py [--count 2000] [--repeat 1] [--only NAME ...]
                                     [--workers N ...]

It installs nothing; a missing tool is named with the Debian package that has it.
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import os
import re
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

SINK_HOST = "127.0.0.2"
LOOPBACK = "127.0.0.1"
CLOCK_TICKS = os.sysconf("SC_CLK_TCK")


@dataclass(frozen=True)
class Load:
    name: str
    size: int  # bytes per message
    recipients: int
    concurrency: int


LOADS = [
    Load("4KB x1 c1", 4096, 1, 1),
    Load("4KB x1 c10", 4096, 1, 10),
    Load("4KB x1 c50", 4096, 1, 50),
    Load("100KB x1 c10", 102400, 1, 10),
    Load("4KB x10 c10", 4096, 10, 10),
]


@dataclass
class Result:
    ingest_rate: float  # messages/s while smtp-source ran
    e2e_rate: float  # messages/s from the first connection to the last delivery
    cpu_ms: float  # CPU milliseconds per message, all processes of the system
    peak_rss_mb: float  # sum of the processes' peak RSS
    first_cpu_ms: float  # of cpu_ms, the first process's own (the relay's main process)


def free_port(host: str) -> int:
    with socket.socket() as probe:
        probe.bind((host, 0))
        return int(probe.getsockname()[1])


def wait_for_port(host: str, port: int, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with contextlib.suppress(OSError), socket.create_connection((host, port), 0.5):
            return
        time.sleep(0.05)
    raise RuntimeError(f"nothing listens on {host}:{port} after {timeout}s")


# -- process accounting ---------------------------------------------------------------

def descendants(root: int) -> list[int]:
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        with contextlib.suppress(OSError, IndexError):
            fields = Path(f"/proc/{entry}/stat").read_text().rsplit(")", 1)[1].split()
            children.setdefault(int(fields[1]), []).append(int(entry))
    found, todo = [], [root]
    while todo:
        pid = todo.pop()
        found.append(pid)
        todo += children.get(pid, [])
    return found


def cpu_seconds(pids: list[int], reaped: bool = True) -> float:
    """CPU time of `pids`; with `reaped`, also of their children that have exited."""
    total = 0
    for pid in pids:
        with contextlib.suppress(OSError, IndexError):
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
            total += sum(int(f) for f in fields[11:15 if reaped else 13])  # utime stime
            # (cutime cstime)
    return total / CLOCK_TICKS


def peak_rss_mb(pids: list[int]) -> float:
    total = 0
    for pid in pids:
        with contextlib.suppress(OSError):
            match = re.search(r"VmHWM:\s+(\d+) kB", Path(f"/proc/{pid}/status").read_text())
            total += int(match.group(1)) if match else 0
    return total / 1024


# -- the receiving MTA ----------------------------------------------------------------

class SmtpSink:
    """Postfix's smtp-sink; `-c` prints `mesg=N` counters that we follow."""

    def __init__(self) -> None:
        self.port = free_port(SINK_HOST)
        self.delivered = 0
        self._changed = threading.Condition()
        self._process = subprocess.Popen(
            ["smtp-sink", "-u", "nobody", "-c", f"{SINK_HOST}:{self.port}", "1024"],
            stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
        threading.Thread(target=self._follow, daemon=True).start()
        wait_for_port(SINK_HOST, self.port)

    def _follow(self) -> None:
        assert self._process.stdout is not None
        buffer = b""
        while chunk := self._process.stdout.read1(4096):
            buffer = (buffer + chunk)[-256:]
            counts = re.findall(rb"mesg=(\d+)", buffer)
            if counts:
                with self._changed:
                    self.delivered = int(counts[-1])
                    self._changed.notify_all()

    def wait_for(self, count: int, timeout: float) -> None:
        with self._changed:
            if not self._changed.wait_for(lambda: self.delivered >= count, timeout):
                raise RuntimeError(f"sink got {self.delivered} of {count} messages")

    def reset(self) -> None:
        with self._changed:
            self.delivered = 0

    def stop(self) -> None:
        self._process.terminate()
        self._process.wait(10)


# -- systems under test ---------------------------------------------------------------

class RelayUnderTest:
    def __init__(self, sink_port: int, workdir: Path, workers: int | None = None) -> None:
        self.port = free_port(LOOPBACK)
        self.admin_port = free_port(LOOPBACK)
        self.workdir = workdir
        (workdir / "policies").mkdir(parents=True, exist_ok=True)
        (workdir / "relay.toml").write_text(
            f'[server]\nhostname = "relay.bench"\n'
            f'[smtp]\nlisten = ["{LOOPBACK}:{self.port}"]\nmin_free_space = "1MB"\n'
            + (f'workers = {workers}\n' if workers is not None else "") +
            f'[queue]\npath = "spool"\n'
            f'[delivery]\nrelayhost = "[{SINK_HOST}]:{sink_port}"\ntls = "none"\n'
            f'max_connections_per_domain = 20\n'
            f'[admin]\nlisten = "{LOOPBACK}:{self.admin_port}"\n')
        relayctl = shutil.which("relayctl", path=f"{Path(sys.executable).parent}:"
                                                f"{os.environ.get('PATH', '')}")
        if relayctl is None:
            raise SystemExit("relayctl is not installed: run `sh scripts/setup.sh` and use "
                             ".venv/bin/python")
        self._log = (workdir / "relay.log").open("w")
        self._process = subprocess.Popen([relayctl, "-c", str(workdir / "relay.toml"), "serve"],
                                         stdout=self._log, stderr=self._log)
        wait_for_port(LOOPBACK, self.port)

    def pids(self) -> list[int]:
        return descendants(self._process.pid)

    def stop(self) -> None:
        self._process.send_signal(signal.SIGTERM)
        self._process.wait(60)
        self._log.close()


class PostfixUnderTest:
    def __init__(self, sink_port: int, workdir: Path) -> None:
        self.port = free_port(LOOPBACK)
        self.conf = workdir / "conf"
        workdir.chmod(0o755)  # Postfix's daemons run as the postfix user
        for sub in ("conf", "queue", "data"):
            (workdir / sub).mkdir(parents=True, exist_ok=True)
        shutil.chown(workdir / "data", "postfix")
        master = Path("/etc/postfix/master.cf").read_text()
        master = re.sub(r"(?m)^smtp\s+inet\b", f"{LOOPBACK}:{self.port} inet", master)
        (self.conf / "master.cf").write_text(master)
        (self.conf / "main.cf").write_text(
            "compatibility_level = 3.6\n"
            f"queue_directory = {workdir / 'queue'}\ndata_directory = {workdir / 'data'}\n"
            "myhostname = postfix.bench\nmydomain = bench\nmyorigin = bench\n"
            "mydestination =\ninet_interfaces = 127.0.0.1\ninet_protocols = ipv4\n"
            "mynetworks = 127.0.0.0/8\nsmtpd_relay_restrictions = permit_mynetworks, reject\n"
            f"relayhost = [{SINK_HOST}]:{sink_port}\nalias_maps =\nalias_database =\n"
            "local_recipient_maps =\nsmtp_tls_security_level = none\n"
            "smtpd_tls_security_level = none\n"
            "maillog_file = /dev/stdout\n"
            "default_destination_concurrency_limit = 20\n")
        # start-fg keeps the master in the foreground: our child, logging to our file.
        self._log = (workdir / "maillog").open("w")
        self._process = subprocess.Popen(["postfix", "-c", str(self.conf), "start-fg"],
                                         stdout=self._log, stderr=self._log)
        wait_for_port(LOOPBACK, self.port)

    def pids(self) -> list[int]:
        return descendants(self._process.pid)

    def stop(self) -> None:
        subprocess.run(["postfix", "-c", str(self.conf), "stop"], capture_output=True,
                       check=False)
        self._process.wait(60)
        self._log.close()


def run_smtp_source(port: int, load: Load, count: int) -> None:
    subprocess.run(
        ["smtp-source", "-s", str(load.concurrency), "-m", str(count), "-l", str(load.size),
         "-r", str(load.recipients), "-f", "bench@sender.bench", "-t", "rcpt@dest.bench",
         f"{LOOPBACK}:{port}"], check=True, stdout=subprocess.DEVNULL, timeout=600)


System = Callable[[int, Path], "RelayUnderTest | PostfixUnderTest"]


def measure(system_class: System, load: Load, count: int) -> Result:
    sink = SmtpSink()
    with tempfile.TemporaryDirectory(prefix="bench-") as workdir:
        system = system_class(sink.port, Path(workdir))
        try:
            pids = system.pids()
            cpu_before = cpu_seconds(pids)
            first_before = cpu_seconds(pids[:1], reaped=False)
            started = time.monotonic()
            run_smtp_source(system.port, load, count)
            ingested = time.monotonic()
            sink.wait_for(count, timeout=600)
            delivered = time.monotonic()
            pids = system.pids()
            cpu = cpu_seconds(pids) - cpu_before
            first = cpu_seconds(pids[:1], reaped=False) - first_before
            rss = peak_rss_mb(pids)
        finally:
            system.stop()
            sink.stop()
    return Result(count / (ingested - started), count / (delivered - started),
                  cpu / count * 1000, rss, first / count * 1000)


def missing_tools() -> list[str]:
    needed = {"smtp-source": "postfix", "smtp-sink": "postfix", "postfix": "postfix"}
    return [f"{tool} (Debian package {pkg})" for tool, pkg in needed.items()
            if shutil.which(tool, path=os.environ.get("PATH", "") + ":/usr/sbin") is None]


def median_result(results: list[Result]) -> Result:
    return Result(*(statistics.median(getattr(r, f) for r in results)
                    for f in ("ingest_rate", "e2e_rate", "cpu_ms", "peak_rss_mb",
                              "first_cpu_ms")))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--count", type=int, default=2000, help="messages per run")
    parser.add_argument("--repeat", type=int, default=1, help="runs per configuration "
                        "(the median is reported)")
    parser.add_argument("--only", nargs="*", default=None,
                        help=f"configurations to run: {', '.join(load.name for load in LOADS)}")
    parser.add_argument("--systems", nargs="*", default=["relay", "postfix"],
                        choices=["relay", "postfix"])
    parser.add_argument("--workers", nargs="*", type=int, default=None,
                        help="the relay's [smtp] workers (default: its own); several values "
                             "run a relay for each, reps interleaved with the rest")
    args = parser.parse_args()
    os.environ["PATH"] = os.environ.get("PATH", "") + ":/usr/sbin"
    if missing := missing_tools():
        print("missing: " + ", ".join(missing) + "; install them, e.g. apt-get install postfix",
              file=sys.stderr)
        return 2
    if os.geteuid() != 0:
        print("run as root: smtp-sink and a private postfix instance need it", file=sys.stderr)
        return 2
    loads = [load for load in LOADS if args.only is None or load.name in args.only]
    systems: dict[str, System] = {}
    for name in args.systems:
        if name == "postfix":
            systems[name] = PostfixUnderTest
        elif not args.workers:
            systems[name] = RelayUnderTest
        else:
            for workers in args.workers:
                label = name if len(args.workers) == 1 else f"relay/{workers}w"
                systems[label] = functools.partial(RelayUnderTest, workers=workers)
    print(f"{args.count} messages per run, {args.repeat} run(s), median shown, "
          f"{os.cpu_count()} CPUs")
    header = (f"{'configuration':<14} {'system':<8} {'ingest/s':>9} {'e2e/s':>8} "
              f"{'CPU ms/msg':>11} {'peak RSS MB':>12} {'main CPU':>9}")
    print(header)
    print("-" * len(header))
    for load in loads:
        # Reps interleaved (relay, Postfix, relay, ...): a machine that slows down for a
        # while slows both systems, not one of them.
        runs: dict[str, list[Result]] = {name: [] for name in systems}
        for _ in range(args.repeat):
            for name, system in systems.items():
                runs[name].append(measure(system, load, args.count))
        medians: dict[str, Result] = {}
        for name in systems:
            medians[name] = result = median_result(runs[name])
            relay = name.startswith("relay")
            print(f"{load.name:<14} {name:<8} {result.ingest_rate:>9.0f} {result.e2e_rate:>8.0f} "
                  f"{result.cpu_ms:>11.2f} {result.peak_rss_mb:>12.1f}"
                  f" {f'{result.first_cpu_ms:.2f}' if relay else '-':>9}", flush=True)
        if "postfix" in medians:
            for name in medians:
                if name != "postfix":
                    ratio = medians[name].e2e_rate / medians["postfix"].e2e_rate
                    label = "ratio" if name == "relay" else f"ratio{name.removeprefix('relay')}"
                    print(f"{load.name:<14} {label:<8} {'':>9} {ratio:>8.2f}  "
                          f"({name}/Postfix, e2e)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
