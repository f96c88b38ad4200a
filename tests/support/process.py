"""`relayctl serve` as a real subprocess, for acceptance tests."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import threading
from pathlib import Path

READY_LINE = "relay started"


def relayctl_path() -> str:
    beside = Path(sys.executable).parent / "relayctl"
    found = str(beside) if beside.exists() else shutil.which("relayctl")
    if not found:
        raise RuntimeError("relayctl is not installed (pip install -e .)")
    return found


def relayctl(config: Path, *args: str, stdin: str | None = None, timeout: float = 60,
             env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    """`relayctl -c CONFIG ARGS...`, with `env` added to the environment."""
    return subprocess.run([relayctl_path(), "-c", str(config), *args], input=stdin,
                          capture_output=True, text=True, timeout=timeout, check=False,
                          env={**os.environ, **env} if env else None)


class RelayProcess:
    def __init__(self, config: Path, log_path: Path, relayctl: str | None = None) -> None:
        self.config = config
        self.log_path = log_path
        self.relayctl = relayctl or relayctl_path()
        self.process: subprocess.Popen[str] | None = None
        self._ready = threading.Event()
        self._reader: threading.Thread | None = None
        self._lines: list[str] = []
        self._new_line = threading.Condition()

    def start(self, timeout: float = 30, env: dict[str, str] | None = None) -> RelayProcess:
        """Start and wait for the "started" line; `env` adds to the environment."""
        self._ready.clear()
        env = {k: v for k, v in os.environ.items() if not k.startswith("RELAY_")} | (env or {})
        self.process = subprocess.Popen(
            [self.relayctl, "serve", "-c", str(self.config)], stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE, text=True, env=env)
        self._reader = threading.Thread(target=self._read_log, args=(self.process,),
                                        daemon=True)
        self._reader.start()
        if not self._ready.wait(timeout):
            self.kill()
            raise AssertionError(f"relay did not start:\n{self.log_path.read_text()}")
        return self

    def _read_log(self, process: subprocess.Popen[str]) -> None:
        assert process.stderr is not None
        with self.log_path.open("a") as log:
            for line in process.stderr:
                log.write(line)
                log.flush()
                with self._new_line:
                    self._lines.append(line)
                    self._new_line.notify_all()
                if READY_LINE in line:
                    self._ready.set()

    def wait_for_lines(self, text: str, count: int = 1, timeout: float = 30) -> None:
        """Until `count` log lines (since the first start) contain `text`."""
        def enough() -> bool:
            return sum(text in line for line in self._lines) >= count

        with self._new_line:
            if not self._new_line.wait_for(enough, timeout):
                raise AssertionError(f"no {count} log lines with {text!r}:\n{self.log()}")

    def stop(self, timeout: float = 30) -> int:
        """SIGTERM and wait: the graceful stop."""
        assert self.process is not None
        self.process.send_signal(signal.SIGTERM)
        code = self.process.wait(timeout)
        self._join_reader()
        return code

    def kill(self) -> None:
        """SIGKILL: the crash."""
        if self.process is not None and self.process.poll() is None:
            self.process.kill()
            self.process.wait(30)
        self._join_reader()

    def _join_reader(self) -> None:
        if self._reader is not None:
            self._reader.join(10)

    def log(self) -> str:
        return self.log_path.read_text()
